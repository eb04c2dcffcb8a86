"""An exported model (``scripts/export.py --format onnx``) run by ONNX Runtime: predict and serve take
the ``.onnx`` file in place of a checkpoint.

The file carries what a checkpoint does (class names, input size, TTA, in its metadata, range-checked
here before use) and the same input contract, uint8 images (N, 3, H, W); normalisation and the TTA
views are inside its graph. Export checked it against the checkpoint (logits within tolerance, every
top-1 the same) before writing it. On a CPU, ONNX Runtime runs the tutorial network's forward
~1.4x faster than torch (``scripts/bench/predict_speed.py``).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch

from lightning_modules.inference.checkpoints import CheckpointError, check_class_names, check_image_size
from lightning_modules.inference.model import check_tta


class OnnxClassifier:
    """uint8 images in, logits out, like InferenceClassifier; knows its class names, input size and TTA."""

    def __init__(self, path: str | os.PathLike, tta: str | None = None) -> None:
        path = Path(path)
        try:
            import onnxruntime
        except ImportError:
            raise CheckpointError(f"{path}: ONNX Runtime is not installed: pip install -e '.[deploy]'") from None
        self._onnxruntime, self._path, self._sessions, self._lock = onnxruntime, str(path), {}, threading.Lock()
        try:
            self.session = self._session(torch.get_num_threads())
        except Exception as err:  # protobuf parse errors, missing file, unsupported operators
            reason = str(err).strip().splitlines()[0][:200] if str(err) else type(err).__name__
            raise CheckpointError(f"cannot load {path} ({reason}): pass a file written by scripts/export.py") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.class_names, self.image_size, self.tta = _checked_metadata(meta, path)
        if tta is not None and check_tta(tta) != self.tta:
            raise CheckpointError(
                f"{path} has TTA {self.tta!r} inside its graph: export the checkpoint again with --tta {tta}, "
                "or pass the checkpoint itself"
            )
        self.num_classes = len(self.class_names)
        self.class_names_assumed = False
        self.input_name = self.session.get_inputs()[0].name
        probe = self(torch.zeros(1, 3, self.image_size, self.image_size, dtype=torch.uint8))
        if probe.shape != (1, self.num_classes) or not probe.isfinite().all():
            raise CheckpointError(
                f"refused {path}: it answers a black image with {tuple(probe.shape)} scores (not finite, or not "
                f"one per class of its {self.num_classes})"
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"the classifier takes uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        session = self._session(torch.get_num_threads())
        return torch.from_numpy(session.run(None, {self.input_name: images.cpu().numpy()})[0])

    def _session(self, threads: int):
        """A session whose thread pool has torch's current thread count, so that predict's lanes
        (``predictor.classify``), which share torch's threads among them, share the cores alike: with
        one session of 2 threads, 2 lanes ran 4 threads on 2 cores and predicted 1.26x slower. A session
        runs calls from several threads at once; one per thread count, made on first use."""
        with self._lock:
            if threads not in self._sessions:
                options = self._onnxruntime.SessionOptions()
                options.intra_op_num_threads = threads
                self._sessions[threads] = self._onnxruntime.InferenceSession(
                    self._path, options, providers=["CPUExecutionProvider"]
                )
            return self._sessions[threads]


def _checked_metadata(meta: dict[str, str], path: Path) -> tuple[list[str], int, str]:
    """Class names, input size and TTA from the file's metadata, range-checked before any use."""
    try:
        names, size, tta = json.loads(meta["class_names"]), int(meta["image_size"]), check_tta(meta["tta"])
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"refused {path}: its metadata lacks class_names, image_size or tta ({err}); export it with "
            "scripts/export.py"
        ) from None
    return check_class_names(names, path), check_image_size(size, path), tta
