"""The command line of scripts/predict.py: classify image files with any checkpoint.

    python scripts/predict.py --ckpt_path CKPT PATH [PATH ...] [--top_k K] [--output preds.json|preds.csv]

Deliberately not a LightningCLI: prediction must start fast (the tutorial's test.py is the bar),
so it parses with argparse, takes only ``--trainer.accelerator`` from the Trainer's options, and
runs the model directly under ``torch.inference_mode`` in batches.

Exit status: 0 every input classified; 1 some inputs failed (the others are still classified and
written); 2 a usage error (no such checkpoint, no inputs, bad option).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from datamodules.image_files import ImageFileError, expand_inputs, read_image
from lightning_modules.atomic_files import atomic_write
from lightning_modules.errors import UsageError

OUTPUT_FORMATS = (".json", ".csv")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Classify images with a trained checkpoint (ours, or the tutorial's .pth files).",
    )
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt from scripts/fit.py, or a tutorial .pth file")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    parser.add_argument("--top_k", type=int, default=1, help="also list the K most likely classes (default 1)")
    parser.add_argument("--output", help="write every result to this .json or .csv file (written atomically)")
    parser.add_argument("--batch_size", type=int, default=256, help="images per forward pass (default 256)")
    parser.add_argument(
        "--trainer.accelerator",
        dest="accelerator",
        default="auto",
        choices=ACCELERATORS,
        help="device, as in fit.py: auto picks cuda, then mps, then cpu",
    )
    return parser


def pick_device(accelerator: str) -> torch.device:
    if accelerator in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise UsageError(f"--trainer.accelerator {accelerator}: no CUDA GPU here; use cpu or auto")
        return torch.device("cuda")
    if accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--trainer.accelerator mps: MPS is not available here; use cpu or auto")
        return torch.device("mps")
    if accelerator == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
    return torch.device("cpu")


def predict_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from lightning_modules.checkpoints import CheckpointError, load_classifier

    if not args.paths:
        raise UsageError("no inputs: pass image files, folders or glob patterns after the options")
    if args.top_k < 1 or args.batch_size < 1:
        raise UsageError("--top_k and --batch_size must be positive integers")
    if args.output and Path(args.output).suffix.lower() not in OUTPUT_FORMATS:
        raise UsageError(f"--output {args.output}: the file name must end in {' or '.join(OUTPUT_FORMATS)}")
    device = pick_device(args.accelerator)
    try:
        model = load_classifier(args.ckpt_path, map_location=device)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    if getattr(model, "class_names_assumed", False):
        print(f"note: {args.ckpt_path} stores no class names; using CIFAR-10's", file=sys.stderr)
    size = model.image_size
    top_k = min(args.top_k, model.num_classes)

    start = time.perf_counter()
    records = []
    for record in classify(model, expand_inputs(args.paths), size, top_k, args.batch_size, device):
        records.append(record)
        print(format_row(record, top_k), flush=False)
    sys.stdout.flush()
    failed = sum(r["error"] is not None for r in records)
    elapsed = time.perf_counter() - start
    print(
        f"{len(records) - failed} classified, {failed} failed in {elapsed:.2f} s "
        f"({(len(records) - failed) / max(elapsed, 1e-9):.0f} images/s on {device.type})",
        file=sys.stderr,
    )
    if args.output:
        try:
            write_atomically(Path(args.output), records)
        except OSError as err:
            print(f"error: cannot write {args.output} ({err.strerror}); the rows above are complete", file=sys.stderr)
            return 1
        print(f"wrote {args.output}", file=sys.stderr)
    return 1 if failed else 0


def classify(model, inputs, size: int, top_k: int, batch_size: int, device: torch.device) -> Iterator[dict]:
    """One record per input row, in input order; images are run through the model in batches."""
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # matches the batches rank() makes

    def read(row: tuple[str, Path | None, str | None]) -> tuple[str, torch.Tensor | None, str | None]:
        label, path, error = row
        if error is not None:
            return label, None, error
        try:
            return label, read_image(path, size, name=label), None
        except ImageFileError as err:
            return label, None, str(err)

    # One reader thread decodes the next images while the model runs on the current batch
    # (Pillow and torch both release the GIL in their C code); map() keeps the input order.
    with ThreadPoolExecutor(max_workers=1) as pool:
        chunk: list[tuple[str, torch.Tensor | None, str | None]] = []
        for item in pool.map(read, inputs):
            chunk.append(item)
            if sum(image is not None for _, image, _ in chunk) >= batch_size:
                yield from _classify_chunk(model, chunk, top_k, device)
                chunk = []
        yield from _classify_chunk(model, chunk, top_k, device)


def rank(model, images: torch.Tensor, top_k: int) -> list[dict]:
    """``{label, probability, top_k}`` for each uint8 image of a batch, in one forward pass.

    Shared by predict.py and serve.py, so a file gets the same answer from both. On a CPU the
    batch runs channels-last (oneDNN's convolutions and pooling are about 2x faster that way).
    """
    if images.device.type == "cpu":
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        probabilities = model(images).float().softmax(dim=-1)
    top_p, top_i = probabilities.topk(top_k, dim=-1)
    records = []
    for ps, ids in zip(top_p.tolist(), top_i.tolist(), strict=True):
        ranked = [{"label": model.class_names[i], "probability": round(p, 6)} for p, i in zip(ps, ids, strict=True)]
        records.append({"label": ranked[0]["label"], "probability": ranked[0]["probability"], "top_k": ranked})
    return records


def _classify_chunk(model, chunk, top_k: int, device: torch.device) -> Iterator[dict]:
    images = [image for _, image, _ in chunk if image is not None]
    ranked = iter(rank(model, torch.stack(images).to(device), top_k) if images else [])
    for label, image, error in chunk:
        if image is None:
            yield {"path": label, "label": None, "probability": None, "top_k": [], "error": error}
        else:
            yield {"path": label, **next(ranked), "error": None}


def format_row(record: dict, top_k: int) -> str:
    if record["error"] is not None:
        return f"{record['path']}\tERROR\t{record['error']}"
    row = f"{record['path']}\t{record['label']}\t{record['probability']:.4f}"
    if top_k > 1:
        row += "\t" + ", ".join(f"{t['label']} {t['probability']:.4f}" for t in record["top_k"])
    return row


def write_atomically(path: Path, records: list[dict]) -> None:
    """Write all records at once through a temporary file: readers never see half a file."""
    if path.suffix.lower() == ".json":
        text = json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["path", "label", "probability", "top_k", "error"])
        writer.writeheader()
        for r in records:
            writer.writerow({**r, "top_k": json.dumps(r["top_k"], ensure_ascii=False)})
        text = buffer.getvalue()
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
