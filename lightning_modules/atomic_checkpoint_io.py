"""Checkpoint files that are either complete or absent, never half-written.

Lightning (2.6) saves through an fsspec transaction. On a local disk that writes the bytes to
``tempfile.mkstemp()``, i.e. into ``$TMPDIR``, and moves the file into place on commit: when
``$TMPDIR`` is another filesystem (tmpfs, a small /tmp), the "move" is a copy straight into
the final path, so a kill or a full disk during it leaves a truncated ``.ckpt`` behind, and
nothing is fsynced. Here the temporary file is created in the checkpoint's own folder, fsynced,
and renamed over the target with ``os.replace`` (atomic on POSIX and Windows), then the folder
is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        if "://" in str(path):  # remote URLs keep Lightning's own handling
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomically(checkpoint, path)


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save ``obj`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
