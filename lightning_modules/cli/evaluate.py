"""The command line of scripts/evaluate.py: score any checkpoint on a labelled split.

    python scripts/evaluate.py --ckpt_path CKPT [--data.data_dir DIR] [--split test|val|train]
                               [--tta none|mirror|mirror_translate] [--output_dir DIR]

Any file predict.py loads (our .ckpt, the tutorial's state_dict or pickled model) against any
labelled source the DataModule reads (official CIFAR-10, an image folder). It runs Lightning's
test loop with the same RunReport callback as the end of fit.py, so it prints the same metrics
and per-class table and writes the same report.json, report.md and confusion matrix, with the
checkpoint's test-time augmentation unless ``--tta`` says otherwise. ``val`` is the seeded
hold-out of train that fit.py validated on: ``--data.val_size`` and ``--data.split_seed`` default
to the values the checkpoint recorded.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer

from datamodules import CIFAR10DataModule
from datamodules.cifar10 import SPLITS
from lightning_modules.callbacks import RunReport
from lightning_modules.callbacks.progress import LineProgress
from lightning_modules.classifier import ImageClassifier
from lightning_modules.cli.frame import (
    UsageError,
    add_model_options,
    config_parser,
    one_line_errors,
    pick_device,
    reuse_freed_memory,
)
from lightning_modules.inference.model import use_channels_last

# Options of the DataModule that only shape training; the image size comes from the checkpoint.
HOLD_OUT = ("val_size", "split_seed")
HOLD_OUT_HELP = "default: the checkpoint's own (so --split val is the hold-out fit.py validated on), else 5000 / 0"
TRAINING_ONLY = {
    "image_size", "batch_size", "crop_padding", "flip", "alternate_flip", "progressive_sizes", "num_workers",
}  # fmt: skip


def build_parser():
    parser = config_parser(prog="evaluate.py", description="Score a checkpoint on a labelled split.")
    add_model_options(parser)
    parser.add_argument("--split", type=str, default="test", choices=SPLITS, help="which split to score")
    parser.add_argument("--output_dir", type=str | None, default=None, help="default: runs/evaluate/<ckpt>_<split>")
    parser.add_class_arguments(CIFAR10DataModule, "data", skip=TRAINING_ONLY | set(HOLD_OUT))
    for name in HOLD_OUT:
        parser.add_argument(f"--data.{name}", type=int | None, default=None, help=HOLD_OUT_HELP)
    return parser


def hold_out_of(ckpt_path: str) -> dict:
    """The validation hold-out (val_size, split_seed) a checkpoint of fit.py was trained with, if it says."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the tutorial's pickled models: load_classifier has already vetted the file
        return {}
    saved = checkpoint.get("datamodule_hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict):
        return {}
    return {k: saved[k] for k in HOLD_OUT if isinstance(saved.get(k), int) and not isinstance(saved[k], bool)}


@one_line_errors(also=(MisconfigurationException,))
def evaluate_main(args: list[str] | None = None) -> int:
    from lightning_modules.inference.checkpoints import load_classifier

    parser = build_parser()
    config = parser.parse_args(args)
    device = pick_device(config.accelerator)
    reuse_freed_memory()
    loaded = load_classifier(config.ckpt_path, tta=config.tta)
    data_args = {k: v for k, v in vars(config.data).items() if v is not None or k not in HOLD_OUT}
    data = CIFAR10DataModule(**{**hold_out_of(config.ckpt_path), **data_args}, image_size=loaded.image_size)
    if data.classes != loaded.class_names:
        raise UsageError(
            f"{config.ckpt_path} classifies {loaded.class_names}, but {config.data.data_dir} has the classes "
            f"{data.classes}; evaluate on data with the checkpoint's class folders"
        )
    model = ImageClassifier(
        loaded.net,
        class_names=loaded.class_names,
        image_size=loaded.image_size,
        mean=tuple(loaded.mean.flatten().tolist()),
        std=tuple(loaded.std.flatten().tolist()),
        tta=loaded.tta,
        channels_last=use_channels_last(device),  # the layout predict.py uses there, for the same logits
    )
    # Only test can be missing: val is at least the hold-out of train.
    if config.split == "test" and not data.has_test_split:
        present = [s for s in SPLITS if s != "test"]
        raise UsageError(
            f"--split {config.split}: {config.data.data_dir} has no {config.split} split (it has "
            f"{', '.join(present)}); add {config.split}/<class>/ images there or pick another --split"
        )
    loader = data.eval_dataloader(config.split)
    out = Path(config.output_dir or Path("runs", "evaluate", f"{Path(config.ckpt_path).stem}_{config.split}"))
    out.mkdir(parents=True, exist_ok=True)
    # RunReport records the configuration it finds beside its report, as for a training run.
    (out / "config.yaml").write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))
    trainer = Trainer(
        accelerator=device.type,
        devices=1,
        logger=False,
        default_root_dir=str(out),
        callbacks=[RunReport(checkpoint=str(config.ckpt_path)), LineProgress(every_n_steps=0)],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.test(model, dataloaders=loader, verbose=True)
    seconds = time.perf_counter() - start
    print(
        f"Scored {len(loader.dataset):,} {config.split} images in {seconds:.1f} s (tta {loaded.tta}): {out}/report.md"
    )
    return 0
