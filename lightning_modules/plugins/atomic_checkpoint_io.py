"""Checkpoint files that are either complete or absent, never half-written.

Lightning (2.6) saves through an fsspec transaction. On a local disk that writes the bytes to
``tempfile.mkstemp()``, i.e. into ``$TMPDIR``, and moves the file into place on commit: when
``$TMPDIR`` is another filesystem (tmpfs, a small /tmp), the "move" is a copy straight into
the final path, so a kill or a full disk during it leaves a truncated ``.ckpt`` behind, and
nothing is fsynced. Here the file goes through ``atomic_write``: a temporary file in the
checkpoint's own folder, fsynced, renamed over the target.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from datamodules.atomic_files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote URLs keep Lightning's own handling
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            atomic_write(Path(path), lambda f: torch.save(checkpoint, f))
        except RuntimeError as err:
            # torch.save reports a full disk as RuntimeError ("PytorchStreamWriter failed writing file");
            # as the OSError it is, the command says it in one line. The previous file is untouched.
            reason = (str(err).strip().splitlines() or ["write failed"])[0][:160]
            raise OSError(errno.EIO, f"could not write the checkpoint ({reason})", str(path)) from None
