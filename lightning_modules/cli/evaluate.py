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

Where it writes (``output_folder``): ``--output_dir``, else ``runs/evaluate/<run>_<ckpt>_<split>``
(``<run>`` is ``<name>_<version>`` for a checkpoint in a run's ``checkpoints/`` folder, so two
runs' ``last.ckpt`` get two folders). Nothing the user has is written over: a training run's
directory, a folder inside the data being scored, and a folder holding a config.yaml, report or
confusion matrix that evaluate.py did not write are refused in one line; so is the default folder
when it holds another checkpoint's evaluation. A folder of an earlier evaluate.py is rewritten.
"""

from __future__ import annotations

import sys
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
    check_config_files,
    config_parser,
    one_line_errors,
    pick_device,
    reuse_freed_memory,
)
from lightning_modules.cli.outputs import check_output, is_run_dir, read_config, same_file
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
    parser.add_argument(
        "--output_dir", type=str | None, default=None, help="default: runs/evaluate/<run>_<ckpt>_<split>"
    )
    parser.add_class_arguments(CIFAR10DataModule, "data", skip=TRAINING_ONLY | set(HOLD_OUT))
    for name in HOLD_OUT:
        parser.add_argument(f"--data.{name}", type=int | None, default=None, help=HOLD_OUT_HELP)
    return parser


def saved_settings(ckpt_path: str) -> tuple[dict, float]:
    """What a checkpoint of fit.py says about how it was trained, range-checked: the validation
    hold-out (val_size, split_seed), so --split val scores the images fit.py validated on, and the
    label smoothing, so the loss is the one fit.py reported. ({}, 0.0) for the tutorial's files."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the tutorial's pickled models: load_classifier has already vetted the file
        return {}, 0.0
    if not isinstance(checkpoint, dict):
        return {}, 0.0
    data = checkpoint.get("datamodule_hyper_parameters")
    data = data if isinstance(data, dict) else {}
    hold_out = {k: data[k] for k in HOLD_OUT if isinstance(data.get(k), int) and not isinstance(data[k], bool)}
    model = checkpoint.get("hyper_parameters")
    smoothing = model.get("label_smoothing", 0.0) if isinstance(model, dict) else 0.0
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing <= 1.0:
        smoothing = 0.0
    return hold_out, float(smoothing)


# The files evaluate.py writes into its output folder (RunReport's, and the configuration).
WRITES = ("config.yaml", "report.json", "report.md", "confusion_matrix.png")


def default_output_dir(ckpt_path: str, split: str) -> Path:
    """runs/evaluate/<name>_<version>_<ckpt stem>_<split> for a checkpoint in a run's checkpoints/
    folder (runs/<name>/<version>/checkpoints/last.ckpt), else runs/evaluate/<ckpt stem>_<split>."""
    ckpt = Path(ckpt_path).absolute()
    parts = [ckpt.stem, split]
    if ckpt.parent.name == "checkpoints" and len(ckpt.parents) > 2:
        run = ckpt.parent.parent
        parts[:0] = [run.parent.name, run.name] if run.parent.name else [run.name]
    return Path("runs", "evaluate", "_".join(parts))


def evaluated_checkpoint(folder: Path) -> str | None:
    """The checkpoint an earlier evaluate.py scored into ``folder`` (its config.yaml says), or None
    where the folder holds no evaluation of evaluate.py."""
    config = read_config(folder / "config.yaml")
    if config is None or "trainer" in config or not isinstance(config.get("ckpt_path"), str) or "split" not in config:
        return None
    return config["ckpt_path"]


def output_folder(config) -> Path:
    """The folder to write into, after refusing (one line) anything that would write over what the
    user has: see the module docstring."""
    named = bool(config.output_dir)
    out = Path(config.output_dir) if named else default_output_dir(config.ckpt_path, config.split)
    data_dir = Path(config.data.data_dir)
    check_output(
        out,
        option="--output_dir",
        named=True,  # a folder that exists is looked into below
        inputs=[config.ckpt_path],
        read_dirs=[data_dir] if data_dir.is_dir() else [],
        ours=lambda p: p.is_dir(),
        what="folder",
    )
    if not out.is_dir():
        return out
    if is_run_dir(out):
        raise UsageError(
            f"--output_dir {out} is a training run's directory (it holds checkpoints/ or the run's config.yaml); "
            "its config and reports are the run's own: pass another --output_dir"
        )
    earlier = evaluated_checkpoint(out)
    if earlier is None:
        found = next((name for name in WRITES if (out / name).exists() or (out / name).is_symlink()), None)
        if found:
            raise UsageError(
                f"--output_dir {out} holds a {found} that evaluate.py did not write; pass another --output_dir"
            )
    elif not named and not same_file(earlier, config.ckpt_path):
        raise UsageError(
            f"{out} holds the evaluation of another checkpoint ({earlier}); pass --output_dir to choose a folder"
        )
    return out


@one_line_errors(also=(MisconfigurationException,))
def evaluate_main(args: list[str] | None = None) -> int:
    from lightning_modules.inference.checkpoints import CheckpointError, load_classifier

    check_config_files(sys.argv[1:] if args is None else args)  # --data FILE: not a FIFO, no "billion laughs"
    parser = build_parser()
    config = parser.parse_args(args)
    device = pick_device(config.accelerator)
    out = output_folder(config)  # before anything is read or written
    reuse_freed_memory()
    loaded = load_classifier(config.ckpt_path, tta=config.tta)
    data_args = {k: v for k, v in vars(config.data).items() if v is not None or k not in HOLD_OUT}
    hold_out, label_smoothing = saved_settings(config.ckpt_path)
    data = CIFAR10DataModule(**{**hold_out, **data_args}, image_size=loaded.image_size)
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
        label_smoothing=label_smoothing,  # the loss as training defined it
        channels_last=use_channels_last(device),  # the layout predict.py uses there, for the same logits
    )
    model.test_name = config.split  # metrics named by the split scored: val/acc for --split val
    # Only test can be missing: val is at least the hold-out of train.
    if config.split == "test" and not data.has_test_split:
        present = [s for s in SPLITS if s != "test"]
        raise UsageError(
            f"--split {config.split}: {config.data.data_dir} has no {config.split} split (it has "
            f"{', '.join(present)}); add {config.split}/<class>/ images there or pick another --split"
        )
    loader = data.eval_dataloader(config.split)
    out.mkdir(parents=True, exist_ok=True)
    # RunReport records the configuration it finds beside its report, as for a training run.
    (out / "config.yaml").write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))
    trainer = Trainer(
        accelerator=device.type,
        devices=1,
        logger=False,
        default_root_dir=str(out),
        callbacks=[RunReport(checkpoint=str(config.ckpt_path), split=config.split), LineProgress(every_n_steps=0)],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.test(model, dataloaders=loader, verbose=True)
    seconds = time.perf_counter() - start
    loss = trainer.callback_metrics.get(f"{config.split}/loss")
    if loss is not None and not torch.isfinite(loss).all():
        # Never a result with NaN in it: argmax of NaN scores is a class, so the accuracy is wrong too.
        raise CheckpointError(
            f"{config.ckpt_path} scores some {config.split} images NaN or infinite (its {config.split}/loss is "
            f"{float(loss)}): damaged weights or a diverged run; {out}/report.md holds numbers not to trust"
        )
    print(
        f"Scored {len(loader.dataset):,} {config.split} images in {seconds:.1f} s (tta {loaded.tta}): {out}/report.md"
    )
    return 0
