"""The command line of scripts/predict.py: classify image files with any checkpoint.

    python scripts/predict.py --ckpt_path CKPT|MODEL.onnx PATH [PATH ...] [--top_k K]
                              [--tta none|mirror|mirror_translate] [--output preds.json|preds.csv]

Deliberately not a LightningCLI: prediction must start fast (the tutorial's test.py is the bar),
so it parses with argparse, takes only ``--trainer.accelerator`` from the Trainer's options, and
runs the model directly under ``torch.inference_mode`` in batches, with the checkpoint's
test-time augmentation unless ``--tta`` says otherwise. When every input sits in a folder named
after a class (``test/<class>/*``), it also prints the accuracy.

Exit status: 0 every input classified; 1 some inputs failed (the others are still classified and
written); 2 a usage error (no such checkpoint, no inputs, bad option); 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

# Before torch loads OpenMP: its idle threads then sleep at once instead of spinning for the core
# the reading threads need between forward passes (+10-15% images/s on 2 cores, the model's own
# rate unchanged; scripts/bench/predict_speed.py). A value the user set wins; imported after torch
# (a test, a notebook), it would change nothing here and only the processes started later.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from datamodules.atomic_files import atomic_write  # noqa: E402 - torch loads here
from datamodules.image_reader import expand_inputs  # noqa: E402
from lightning_modules.cli.frame import (  # noqa: E402
    CKPT_OR_ONNX,
    OneLineArgumentParser,
    UsageError,
    add_model_options,
    file_name,
    interrupt_on_signals,
    interrupts_held,
    one_line_errors,
    pick_device,
    positive_int,
    reuse_freed_memory,
)

OUTPUT_FORMATS = (".json", ".csv")


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog="predict.py",
        description="Classify images with a trained checkpoint (ours, or the tutorial's .pth files).",
    )
    add_model_options(parser, ckpt_help=CKPT_OR_ONNX)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    parser.add_argument("--top_k", type=positive_int, default=1, help="also list the K most likely classes (default 1)")
    parser.add_argument(
        "--output", type=file_name, help="write every result to this .json or .csv file (written atomically)"
    )
    parser.add_argument("--batch_size", type=positive_int, default=256, help="images per forward pass (default 256)")
    return parser


@one_line_errors(interrupted="the rows printed above are complete; no --output file was written")
@interrupt_on_signals()  # SIGTERM as Ctrl-C: exit status 130 in one line, no half-written --output
def predict_main(argv: list[str] | None = None) -> int:
    reuse_freed_memory()
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from lightning_modules.inference.checkpoints import load_classifier
    from lightning_modules.inference.predictor import classify, folder_accuracy

    if not args.paths:
        raise UsageError("no inputs: pass image files, folders or glob patterns after the options")
    if args.output and Path(args.output).suffix.lower() not in OUTPUT_FORMATS:
        raise UsageError(f"--output {args.output}: the file name must end in {' or '.join(OUTPUT_FORMATS)}")
    device = pick_device(args.accelerator)
    if args.ckpt_path.lower().endswith(".onnx"):
        with interrupts_held():  # onnxruntime's native module crashes the process if Ctrl-C stops its import
            with contextlib.suppress(ImportError):  # load_classifier names the extra to install
                import onnxruntime  # noqa: F401
    model = load_classifier(args.ckpt_path, map_location=device, tta=args.tta, onnx=True)
    if getattr(model, "class_names_assumed", False):
        print(f"note: {args.ckpt_path} stores no class names; using CIFAR-10's", file=sys.stderr)
    top_k = min(args.top_k, model.num_classes)

    start = time.perf_counter()
    records = []
    for record in classify(model, expand_inputs(args.paths), top_k, args.batch_size, device):
        records.append(record)
        print(format_row(record, top_k), flush=False)
    sys.stdout.flush()
    failed = sum(r["error"] is not None for r in records)
    elapsed = time.perf_counter() - start
    print(
        f"{len(records) - failed} classified, {failed} failed in {elapsed:.2f} s "
        f"({(len(records) - failed) / max(elapsed, 1e-9):.0f} images/s on {device.type}, tta {model.tta})",
        file=sys.stderr,
    )
    scored = folder_accuracy(records, model.class_names)
    if scored is not None:
        correct, total = scored
        print(f"accuracy {correct / total:.2%} ({correct}/{total}, true classes from folder names)", file=sys.stderr)
    if args.output:
        try:
            write_atomically(Path(args.output), records)
        except OSError as err:
            print(f"error: cannot write {args.output} ({err.strerror}); the rows above are complete", file=sys.stderr)
            return 1
        print(f"wrote {args.output}", file=sys.stderr)
    return 1 if failed else 0


# Tabs and line breaks inside a field would split a row or start a new one.
ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def printable(text: str) -> str:
    """One field as any terminal can show it on one row: bytes that are not UTF-8 become \\xNN,
    tabs and line breaks \\t, \\n and \\r."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").translate(ESCAPES)


def format_row(record: dict, top_k: int) -> str:
    """One row per input, tab-separated: path, label (or ERROR), probability (or the reason)."""
    path = printable(record["path"])
    if record["error"] is not None:
        return f"{path}\tERROR\t{printable(record['error'])}"
    row = f"{path}\t{record['label']}\t{record['probability']:.4f}"
    if top_k > 1:
        row += "\t" + ", ".join(f"{t['label']} {t['probability']:.4f}" for t in record["top_k"])
    return row


def write_atomically(path: Path, records: list[dict]) -> None:
    """Write all records at once through a temporary file: readers never see half a file."""
    if path.suffix.lower() == ".json":
        # File names that are not UTF-8 are written as \\udcNN escapes, which read back as the same name.
        text = json.dumps(records, indent=2, ensure_ascii=False) + "\n"
        data = text.encode("utf-8", "backslashreplace")
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["path", "label", "probability", "top_k", "error"])
        writer.writeheader()
        for r in records:
            writer.writerow({**r, "top_k": json.dumps(r["top_k"], ensure_ascii=False)})
        data = buffer.getvalue().encode("utf-8", "surrogateescape")  # a file name's own bytes
    atomic_write(path, lambda f: f.write(data))
