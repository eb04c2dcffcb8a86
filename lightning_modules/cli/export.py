"""The command line of scripts/export.py: a checkpoint to ONNX or TorchScript, checked for parity.

    python scripts/export.py --ckpt_path CKPT --format onnx|torchscript [--output FILE] [--images PATH ...]
                             [--tta none|mirror|mirror_translate]

The checkpoint's test-time augmentation is baked into the graph (``--tta`` overrides it) and
recorded in the metadata. After exporting, the file is run (onnxruntime for ONNX) on images and
compared with the checkpoint: max |logit difference| within a tolerance relative to the logits'
scale, and the same top-1 everywhere. The file is written beside the output under a temporary
name and only renamed into place when that check passes, so a failed export never leaves a file
that looks usable. Nothing the user has is written over (``outputs.check_output``): never the
checkpoint or an image of the check; the default name (the checkpoint's with the format's suffix)
only if no file has it yet, else ``--output`` chooses; a named ``--output`` only if it is a file
of the format's suffix (an earlier export), never a checkpoint or another kind of file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from datamodules.atomic_files import fsync_dir, make_readable
from datamodules.image_reader import ImageFileError, expand_inputs, read_image
from lightning_modules.cli.frame import (
    OneLineArgumentParser,
    UsageError,
    add_model_options,
    file_name,
    interrupt_on_signals,
    interrupts_held,
    one_line_errors,
)
from lightning_modules.cli.outputs import check_output
from lightning_modules.inference.export import FORMATS, export_onnx, export_torchscript, parity


def check_images(paths: list[str], size: int, count: int = 64) -> tuple[torch.Tensor, str]:
    """The images of the parity check: the given files through the one image reader, or random pixels."""
    if paths:
        images = []
        for _, path, error in expand_inputs(paths):
            if error is None:
                with contextlib.suppress(ImageFileError):
                    images.append(read_image(path, size))
        if not images:
            raise UsageError(
                f"none of {', '.join(map(repr, paths))} is a readable image; pass --images with real image files"
            )
        return torch.stack(images), f"{len(images)} images from {', '.join(paths)}"
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator),
        f"{count} random images (pass --images for real ones)",
    )


def default_output(ckpt_path: str, fmt: str) -> Path:
    """The checkpoint's name with the format's suffix, never the checkpoint itself (``model.pt`` ->
    ``model.torchscript.pt``)."""
    ckpt = Path(ckpt_path)
    if not ckpt.name:  # "", ".", "/": no file name to give the export
        raise UsageError(f"--ckpt_path {ckpt_path!r} names no file; pass the checkpoint's path")
    output = ckpt.with_suffix(FORMATS[fmt])
    return ckpt.with_suffix(f".{fmt}{FORMATS[fmt]}") if output == ckpt else output


def check_export_output(output: Path, ckpt_path: str, fmt: str, image_paths: list[str], named: bool) -> None:
    """Refuse, in one line, an output that is the checkpoint or an image of the check, a derived name
    that exists already, or a named file that is not of the format's suffix."""
    suffix = FORMATS[fmt]
    check_output(
        output,
        option="--output",
        named=named,
        inputs=[ckpt_path, *image_paths],
        ours=lambda p: p.is_file() and p.suffix.lower() == suffix,
        what=f"{suffix} file (an earlier export)",
    )


# What an exported file holds beyond the weights (graph, names, metadata), generously.
EXPORT_OVERHEAD_BYTES = 16 << 20


def check_free_space(folder: Path, model: torch.nn.Module) -> None:
    """Refuse, in one line, to export into a folder without room for the file: TorchScript's writer
    aborts the whole process (SIGABRT) on a full disk instead of raising an error."""
    needed = sum(t.numel() * t.element_size() for t in model.state_dict().values()) + EXPORT_OVERHEAD_BYTES
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UsageError(
            f"{folder}: {free / 2**20:.0f} MiB free, the export needs about {needed / 2**20:.0f} MiB; "
            "free some space or pass --output in another folder"
        )


def export(
    ckpt_path: str, fmt: str, output: Path, image_paths: list[str], tta: str | None = None, named: bool = True,
    signals: list[int] | None = None,
) -> tuple[float, float, int, str]:  # fmt: skip
    """Export, check parity, and move the file into place only if it passed; returns the parity figures.
    ``named``: the user chose ``output`` (else it was derived from the checkpoint and must not exist).
    ``signals``: those received so far (``interrupt_on_signals``), checked after the exporter ran."""
    from lightning_modules.inference.checkpoints import load_classifier

    check_export_output(output, ckpt_path, fmt, image_paths, named)
    model = load_classifier(ckpt_path, map_location="cpu", tta=tta)
    # Exported graphs run anywhere (onnxruntime, libtorch): keep the default memory layout.
    model.channels_last = False
    model.net.to(memory_format=torch.contiguous_format)
    images, described = check_images(image_paths, model.image_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(output.parent, model)
    if fmt == "onnx":
        with interrupts_held():  # onnx's native module crashes the process if Ctrl-C stops its import
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
    tmp = None
    try:  # Ctrl-C or SIGTERM (KeyboardInterrupt, see export_main) too: no temporary file is left
        with interrupts_held():  # until tmp names the file, which the finally then removes
            fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
            os.close(fd)
            tmp = Path(tmp_name)
        try:
            (export_onnx if fmt == "onnx" else export_torchscript)(model, images[:2], tmp)
        except Exception:
            if signals:  # a KeyboardInterrupt inside torch's exporter comes out as its own error
                raise KeyboardInterrupt from None
            raise
        if signals:  # or is swallowed while it imports torch._dynamo: stop as interrupted all the same
            raise KeyboardInterrupt
        diff, limit, mismatches = parity(model, tmp, fmt, images)
        if diff <= limit and mismatches == 0:
            make_readable(tmp)
            os.replace(tmp, output)
            fsync_dir(output.parent)
        return diff, limit, mismatches, described
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
            # The ONNX exporter may write external weights beside the temporary file.
            Path(f"{tmp}.data").unlink(missing_ok=True)


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="export.py", description="Export a checkpoint to ONNX or TorchScript.")
    add_model_options(parser)  # the export runs on the CPU: --trainer.accelerator is accepted and not used
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="onnx or torchscript")
    parser.add_argument(
        "--output",
        type=file_name,
        help="output file (default: the checkpoint's name with .onnx or .pt, if no file has that name)",
    )
    parser.add_argument("--images", nargs="*", default=[], metavar="PATH", help="images for the parity check")
    return parser


@one_line_errors(interrupted="nothing was written")
def export_main(argv: list[str] | None = None) -> int:
    with interrupt_on_signals() as signals:  # SIGTERM as Ctrl-C: export's finally removes the temporary files
        return _export_main(argv, signals)


def _export_main(argv: list[str] | None, signals: list[int]) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output) if args.output else default_output(args.ckpt_path, args.format)
    diff, limit, mismatches, described = export(
        args.ckpt_path, args.format, output, args.images, args.tta, named=bool(args.output), signals=signals
    )
    verdict = "passed" if diff <= limit and mismatches == 0 else "FAILED"
    print(
        f"parity {verdict} on {described}: max |logit difference| {diff:.2e} (limit {limit:.0e}), "
        f"top-1 differs on {mismatches}"
    )
    if verdict == "FAILED":
        print(f"error: not written: the exported model does not match {args.ckpt_path}", file=sys.stderr)
        return 1
    print(f"wrote {output} ({args.format}, uint8 input, dynamic batch)")
    return 0
