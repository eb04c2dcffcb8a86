"""Export an InferenceClassifier to ONNX or TorchScript, and check the file against the model.

The exported graph keeps the checkpoint's input contract: uint8 images (N, 3, H, W) with a
dynamic batch size; normalisation and the test-time augmentation views are inside the graph.
Class names, input size, TTA and the input contract travel in the file's metadata (ONNX
``metadata_props``; TorchScript extra file ``metadata.json``).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
# Logit differences are judged relative to the logits' own scale (fp32 export noise grows with it).
RELATIVE_TOLERANCE = 1e-5
MIN_TOLERANCE = 1e-4


def metadata(model) -> dict[str, str]:
    return {
        "class_names": json.dumps(model.class_names),
        "image_size": str(model.image_size),
        "tta": model.tta,
        "input": "uint8 images (N, 3, H, W), values 0..255; the model normalises them itself",
        "output": "logits (N, num_classes), averaged over the tta views; softmax gives probabilities",
    }


def export_onnx(model, example: torch.Tensor, path: Path) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter narrates every stage on stdout; the CLI prints its own one-line summary.
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: batch}},
            dynamo=True,
        )
    proto = onnx.load(str(path))
    for key, value in metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def export_torchscript(model, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but TorchScript files are still what
        # C++ (libtorch) and many serving stacks load; tracing a plain CNN is reliable.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps(metadata(model))})


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation, see export_torchscript
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return loaded(images)


def read_metadata(path: Path, fmt: str) -> dict[str, str]:
    if fmt == "onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    extra = {"metadata.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["metadata.json"])


def parity(model, path: Path, fmt: str, images: torch.Tensor) -> tuple[float, float, int]:
    """(max |logit difference|, the tolerance for it, images whose top-1 differs) between the model
    and the exported file, over ``images`` and over one image alone (the batch axis is dynamic)."""
    with torch.inference_mode():
        expected = model(images)
    got = run_exported(path, fmt, images)
    single = run_exported(path, fmt, images[:1])
    diff = max((got - expected).abs().max().item(), (single - expected[:1]).abs().max().item())
    mismatches = int((got.argmax(-1) != expected.argmax(-1)).sum())
    return diff, tolerance(expected), mismatches


def tolerance(expected: torch.Tensor) -> float:
    """The largest |logit difference| that still counts as the same model, for these logits."""
    return max(MIN_TOLERANCE, RELATIVE_TOLERANCE * float(expected.abs().max()))
