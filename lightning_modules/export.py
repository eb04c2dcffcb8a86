"""The command line of scripts/export.py: a checkpoint to ONNX or TorchScript, checked for parity.

    python scripts/export.py --ckpt_path CKPT --format onnx|torchscript [--output FILE] [--images PATH ...]

The exported model keeps the checkpoint's input contract: uint8 images (N, 3, H, W) with a
dynamic batch size; normalisation is inside the graph. Class names, input size and the input
contract travel in the file's metadata (ONNX ``metadata_props``; TorchScript extra file
``metadata.json``). After exporting, the file is run (onnxruntime for ONNX) on images and
compared with the checkpoint: max |logit difference| <= 1e-4 and the same top-1 everywhere.
The file is written beside the output under a temporary name and only renamed into place when
that check passes, so a failed export never leaves a file that looks usable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from datamodules.image_files import ImageFileError, expand_inputs, read_image
from lightning_modules.atomic_files import fsync_dir, make_readable

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4


class ExportError(Exception):
    pass


def metadata(model) -> dict[str, str]:
    return {
        "class_names": json.dumps(model.class_names),
        "image_size": str(model.image_size),
        "input": "uint8 images (N, 3, H, W), values 0..255; the model normalises them itself",
        "output": "logits (N, num_classes); softmax gives probabilities",
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


def parity(model, path: Path, fmt: str, images: torch.Tensor) -> tuple[float, int]:
    """(max |logit difference|, number of images whose top-1 differs) over ``images`` and over one image alone."""
    with torch.inference_mode():
        expected = model(images)
    got = run_exported(path, fmt, images)
    single = run_exported(path, fmt, images[:1])  # a different batch size: the batch axis is dynamic
    diff = max((got - expected).abs().max().item(), (single - expected[:1]).abs().max().item())
    mismatches = int((got.argmax(-1) != expected.argmax(-1)).sum())
    return diff, mismatches


def check_images(paths: list[str], size: int, count: int = 64) -> tuple[torch.Tensor, str]:
    if paths:
        images = []
        for _, path, error in expand_inputs(paths):
            if error is None:
                with contextlib.suppress(ImageFileError):
                    images.append(read_image(path, size))
        if not images:
            raise ExportError(f"none of {', '.join(paths)} is a readable image")
        return torch.stack(images), f"{len(images)} images from {', '.join(paths)}"
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator),
        f"{count} random images (pass --images for real ones)",
    )


def export(ckpt_path: str, fmt: str, output: Path, image_paths: list[str]) -> tuple[float, int, str]:
    from lightning_modules.checkpoints import CheckpointError, load_classifier

    try:
        model = load_classifier(ckpt_path, map_location="cpu")
    except CheckpointError as err:
        raise ExportError(str(err)) from None
    images, described = check_images(image_paths, model.image_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        (export_onnx if fmt == "onnx" else export_torchscript)(model, images[:2], tmp)
        diff, mismatches = parity(model, tmp, fmt, images)
        if diff <= TOLERANCE and mismatches == 0:
            make_readable(tmp)
            os.replace(tmp, output)
            fsync_dir(output.parent)
        return diff, mismatches, described
    finally:
        tmp.unlink(missing_ok=True)


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export.py", description="Export a checkpoint to ONNX or TorchScript.")
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt from scripts/fit.py, or a tutorial .pth file")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="onnx or torchscript")
    parser.add_argument("--output", help="output file (default: the checkpoint's name with .onnx or .pt)")
    parser.add_argument("--images", nargs="*", default=[], metavar="PATH", help="images for the parity check")
    args = parser.parse_args(argv)
    output = Path(args.output) if args.output else Path(args.ckpt_path).with_suffix(FORMATS[args.format])
    try:
        diff, mismatches, described = export(args.ckpt_path, args.format, output, args.images)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verdict = "passed" if diff <= TOLERANCE and mismatches == 0 else "FAILED"
    print(
        f"parity {verdict} on {described}: max |logit difference| {diff:.2e} (limit {TOLERANCE:.0e}), "
        f"top-1 differs on {mismatches}"
    )
    if verdict == "FAILED":
        print(f"error: not written: the exported model does not match {args.ckpt_path}", file=sys.stderr)
        return 1
    print(f"wrote {output} ({args.format}, uint8 input, dynamic batch)")
    return 0
