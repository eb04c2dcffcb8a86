"""How fast is training here? Side by side, in one run, on the same data.

python scripts/bench/train_speed.py --images_dir DATA_DIR                      # throughput, time_to_accuracy
python scripts/bench/train_speed.py --images_dir DATA_DIR --only throughput --repeats 5
python scripts/bench/train_speed.py --images_dir DATA_DIR --only seeds --seeds 3 --recipe configs/fast_cpu.yaml

  throughput        training images/s with the tutorial network (Tudui, batch 64, plain SGD):
                    a loop written the way the tutorial writes it (torchvision-style dataset that
                    builds a PIL image and runs ToTensor per image, DataLoader, batch 64) against
                    scripts/fit.py's path (uint8 batches, normalisation in the model), plain and
                    with --model.channels_last true; and the network's step alone on one batch in
                    memory, the ceiling that no data path can beat.
  time_to_accuracy  wall time from the start of fit.py's run with --recipe (fit() in this process)
                    to its first validation at or above --target (the data cache already built).
  seeds             the recipe (--recipe, comma-separated files are passed as repeated --config)
                    once per seed (--seeds N: 0..N-1) by sweep.py's seed runner (sweep --seeds N),
                    each fit timed from its start to its end, in tutorial epochs (TE) too: the time
                    the tutorial's own loop takes for 50,000 images, measured before and after the
                    runs. Prints mean ± sd of val and test accuracy; with --predict_dir, predict's
                    accuracy on that labelled folder with each run's best checkpoint as well. With
                    --test_pass, data without a test split gets one of 10,000 images (the validation
                    images twice, as symlinks), so the time includes a test pass of CIFAR-10's size
                    and the test accuracy must equal the validation accuracy.

Lightning's own cost per step and at start-up: scripts/bench/overhead.py. --images_dir defaults to
$DATA_DIR. Runs alternate (A, B, A, B, ...) and medians are reported, because a shared machine
drifts. Prints a table and writes the figures as JSON (--json).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lightning_modules.cli.frame import pick_device, positive_int, reuse_freed_memory  # noqa: E402
from lightning_modules.nets import Tudui  # noqa: E402
from lightning_modules.reporting.tables import mean_sd, pct, text_table  # noqa: E402
from scripts.bench.common import (  # noqa: E402
    add_images_dir,
    add_json_option,
    alternate,
    chosen_parts,
    machine,
    machine_line,
    medians,
    need_images_dir,
    now,
    quiet_lightning,
    recipe_files,
    seed_runs,
    write_json,
)

TUTORIAL = str(ROOT / "configs" / "tutorial.yaml")


class TutorialStyleCIFAR10(Dataset):
    """What ``torchvision.datasets.CIFAR10(transform=ToTensor())`` does per item: an HWC uint8 array
    turned into a PIL image, then ``ToTensor`` (to float, scaled, CHW). Same images as the fit path."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        from torchvision.transforms import ToTensor

        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = ToTensor()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def timed_steps(batches, step, warmup: int, steps: int, batch_size: int) -> float:
    """Images/s of ``step`` over ``steps`` batches after ``warmup`` (data loading included); the
    batches start over when they run out (a small data set)."""
    iterator = (batch for _ in itertools.count() for batch in batches)
    for _ in range(warmup):
        step(next(iterator))
    start = now()
    for _ in range(steps):
        step(next(iterator))
    return steps * batch_size / (now() - start)


def tutorial_loop(split, device: torch.device, warmup: int, steps: int) -> float:
    """The tutorial's training loop, as a beginner writes it."""
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    loader = DataLoader(TutorialStyleCIFAR10(split.images, split.labels), batch_size=64, shuffle=True)
    model = Tudui().to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    with tempfile.TemporaryDirectory() as logs:
        writer = SummaryWriter(logs)
        count = [0]

        def step(batch) -> None:
            imgs, targets = batch
            imgs, targets = imgs.to(device), targets.to(device)
            loss = loss_fn(model(imgs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            count[0] += 1
            if count[0] % 100 == 0:
                writer.add_scalar("train_loss", loss.item(), count[0])

        rate = timed_steps(loader, step, warmup, steps, 64)
        writer.close()
    return rate


def network_alone(device: torch.device, warmup: int, steps: int) -> float:
    """The ceiling for any data path: the tutorial network's training step alone, channels-last
    (the faster layout here), repeated on one batch already in memory, as float: no loading, no
    conversion, no metrics. If this is under 2x the tutorial loop, no data path can reach 2x."""
    torch.manual_seed(0)
    model = Tudui().to(device, memory_format=torch.channels_last).train()
    images = torch.rand(64, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (64,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(_) -> None:
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed_steps(itertools.repeat(None), step, warmup, steps, 64)


class StepClock(L.Callback):
    """Times training batches warmup+1 .. warmup+steps of a Trainer run; ``rate`` is images/s."""

    def __init__(self, warmup: int, steps: int, batch_size: int) -> None:
        self.warmup, self.steps, self.batch_size = warmup, steps, batch_size
        self.start = 0.0
        self.rate = float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup + self.steps - 1:
            self.rate = self.steps * self.batch_size / (now() - self.start)


def fit_path(images_dir: str, extra: list[str], tmp: Path, warmup: int, steps: int, accelerator: str) -> float:
    """scripts/fit.py's trainer, model and data for the tutorial recipe, timed over the same number of steps."""
    from lightning_modules.cli.fit import ClassifierCLI

    cli = ClassifierCLI(args=[
        "--config", TUTORIAL, "--data.data_dir", images_dir, "--trainer.check_val_every_n_epoch", "1",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(warmup + steps),
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp), "--trainer.accelerator", accelerator,
        "--checkpoint.save_last", "false", "--checkpoint.save_top_k", "0", "--test", "false", *extra,
    ])  # fmt: skip
    clock = StepClock(warmup, steps, cli.datamodule.hparams.batch_size)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return clock.rate


class FitStart(L.Callback):
    """When fitting starts: the run's per-epoch wall times (report.json's) count from here."""

    at = float("nan")

    def on_fit_start(self, trainer, pl_module) -> None:
        self.at = time.perf_counter()


def time_to_accuracy(images_dir: str, recipes: list[str], target: float, extra: list[str], tmp: Path) -> dict:
    """fit() with the recipe, as scripts/fit.py runs it; the seconds from its start to each validation."""
    from lightning_modules.cli.fit import fit

    clock = FitStart()
    start = time.perf_counter()
    result = fit([
        *[a for r in recipes for a in ("--config", r)], "--data.data_dir", images_dir,
        "--trainer.logger.init_args.save_dir", str(tmp / "time_to_accuracy"), "--test", "false", *extra,
    ], callbacks=[clock])  # fmt: skip
    total = time.perf_counter() - start
    history = [
        {"epoch": e["epoch"], "val_acc": e["val/acc"], "s": round(clock.at - start + e["wall_s"], 1)}
        for e in result["epochs"]
        if "val/acc" in e
    ]
    for row in history:
        print(f"  {row['s']:6.1f} s  epoch {row['epoch']}  val/acc {row['val_acc']:.4f}", flush=True)
    reached = next((row["s"] for row in history if row["val_acc"] >= target), None)
    return {
        "recipe": ",".join(recipes),
        "target": target,
        "seconds_to_target": reached,
        "total_s": round(total, 1),
        "final_val_acc": history[-1]["val_acc"] if history else None,
        "history": history,
    }


def tutorial_epoch_s(split, device: torch.device, steps: int) -> float:
    """Seconds the tutorial's loop takes for 50,000 images here and now, from its rate over ``steps`` batches."""
    return 50_000 / tutorial_loop(split, device, warmup=min(10, steps), steps=steps)


def val_as_test(images_dir: str, val_size: int, tmp: Path) -> str:
    """A copy of an image-folder dataset (symlinks) whose test split is its validation images twice.

    The runs then pay for a 10,000-image test pass, like a user's run on CIFAR-10, while the test
    split stays held back; the test accuracy must come out equal to the validation accuracy, which
    checks that fit's test path scores the same way as its validation."""
    from datamodules.sources import scan_folder, split_indices

    root = Path(images_dir).resolve()
    classes, files = scan_folder(root)  # the DataModule's own listing, in its order
    if set(files) != {"train"}:
        raise SystemExit(
            f"error: --test_pass makes a test split for an image folder that has only train/; {root} is not "
            "one (drop --test_pass: data with its own test/ split is timed with it as it is)"
        )
    train = [Path(rel) for rel, *_ in files["train"]]  # train/<class>/<file>
    # The runs' default split_seed 0, so these are the images they validate on.
    _, val = split_indices(len(train), val_size, seed=0)
    picked = [train[i] for i in val.tolist()]
    missing = set(classes) - {rel.parent.name for rel in picked}
    if missing:  # fit would refuse a test split without every class folder
        raise SystemExit(f"error: --test_pass: no validation image of {', '.join(sorted(missing))}; raise --val_size")
    data = tmp / "data_with_test"
    data.mkdir(parents=True)
    (data / "train").symlink_to(root / "train")
    for rel in picked:
        folder = data / "test" / rel.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        for copy in ("a", "b"):
            (folder / f"{copy}_{rel.name}").symlink_to(root / rel)
    return str(data)


def median_rates(runs: dict, repeats: int) -> dict[str, float]:
    """Each named runner ``repeats`` times, interleaved; the median images/s of each."""

    def show(name: str, repeat: int, rate: float) -> None:
        print(f"  repeat {repeat + 1}/{repeats} {name}: {rate:,.0f} images/s", flush=True)

    return medians(alternate(runs, repeats, show))


# -- the parts: each takes the bench and returns its figures and its rows of the table ---------------


class Bench:
    """What every part gets: the options, a temporary folder, the device, and the data."""

    def __init__(self, args: argparse.Namespace, tmp: Path, device: torch.device, images_dir: str) -> None:
        self.args, self.tmp, self.device = args, tmp, device
        self.images_dir = images_dir  # the data every part trains on (with --test_pass: the copy with a test split)
        self.extra = ["--data.val_size", str(args.val_size)]  # fit.py options of every part: the same split
        self.split = None  # the training split, for the tutorial's loop


def throughput_part(b: Bench):
    a = b.args
    print("throughput: tutorial network, batch 64", flush=True)
    timing = (b.tmp, a.warmup, a.steps, a.accelerator)
    channels_last = [*b.extra, "--model.channels_last", "true"]
    rates = median_rates(
        {
            "tutorial_loop": lambda: tutorial_loop(b.split, b.device, a.warmup, a.steps),
            "fit_path": lambda: fit_path(b.images_dir, b.extra, *timing),
            "fit_path_channels_last": lambda: fit_path(b.images_dir, channels_last, *timing),
            "network_alone": lambda: network_alone(b.device, a.warmup, a.steps),
        },
        a.repeats,
    )
    base = rates["tutorial_loop"]
    figures = {name: {"images_per_s": round(r, 1), "vs_tutorial": round(r / base, 3)} for name, r in rates.items()}
    ceiling = {"network_alone": " (ceiling: no data path)"}
    rows = [
        (f"throughput: {name}", f"{r:,.0f} images/s", f"{r / base:.2f}x tutorial loop{ceiling.get(name, '')}")
        for name, r in rates.items()
    ]
    return figures, rows


def time_to_accuracy_part(b: Bench):
    a = b.args
    recipes = recipe_files(a.recipe)
    print(f"time_to_accuracy: {a.recipe}, target {pct(a.target)}", flush=True)
    found = time_to_accuracy(b.images_dir, recipes, a.target, [*b.extra, "--trainer.accelerator", a.accelerator],
                             b.tmp)  # fmt: skip
    reached = f"{found['seconds_to_target']:.0f} s" if found["seconds_to_target"] is not None else "not reached"
    note = f"final val/acc {pct(found['final_val_acc'])} after {found['total_s']:.0f} s"
    return found, [(f"time to {a.target:.0%}: {' + '.join(Path(r).name for r in recipes)}", reached, note)]


def seeds_part(b: Bench):
    a = b.args
    recipes = recipe_files(a.recipe)
    name = " + ".join(Path(r).name for r in recipes)
    print(f"seeds: {name}, {a.seeds} runs", flush=True)
    # Every fit() sets fit.py's allocator for this process; the tutorial's epochs are timed under it too.
    reuse_freed_memory()
    te_before = tutorial_epoch_s(b.split, b.device, a.steps)
    out_dir = Path(a.runs_dir) if a.runs_dir else b.tmp / "seeds"
    fit_options = [*b.extra, "--trainer.accelerator", a.accelerator]
    runs = seed_runs(b.images_dir, recipes, a.seeds, fit_options, out_dir, a.predict_dir, a.accelerator)
    te_after = tutorial_epoch_s(b.split, b.device, a.steps)
    te = (te_before + te_after) / 2
    for run in runs:
        run["te"] = round(run["wall_s"] / te, 2)
    figures = {"recipes": recipes, "tutorial_epoch_s": [round(te_before, 1), round(te_after, 1)], "runs": runs}
    rows = [
        (
            f"seeds: {name}",
            f"{len(runs)} runs",
            f"1 TE = {te:.1f} s ({te_before:.1f} s before, {te_after:.1f} s after)",
        ),
        ("  val/acc (%)", mean_sd([r["val_acc"] for r in runs], 100), "mean ± sd"),
    ]
    if any(r["test_acc"] is not None for r in runs):
        rows.append(("  test/acc (%)", mean_sd([r["test_acc"] for r in runs], 100), "mean ± sd"))
    if a.predict_dir:
        rows.append(("  predict acc (%)", mean_sd([r.get("predict_acc") for r in runs], 100), f"on {a.predict_dir}"))
    tes = f"{mean_sd([r['te'] for r in runs])} TE; max {max(r['te'] for r in runs):.2f} TE"
    rows.append(("  wall per fit", f"{mean_sd([r['wall_s'] for r in runs], digits=0)} s", tes))
    return figures, rows


PARTS = {"throughput": throughput_part, "time_to_accuracy": time_to_accuracy_part, "seeds": seeds_part}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_images_dir(parser)
    parser.add_argument(
        "--only", default="throughput,time_to_accuracy", help=f"comma-separated, from {', '.join(PARTS)}"
    )
    parser.add_argument("--steps", type=positive_int, default=150, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="alternating runs per variant; medians reported"
    )
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "fast_cpu.yaml"), help="time_to_accuracy, seeds")
    parser.add_argument("--target", type=float, default=0.85, help="validation accuracy for time_to_accuracy")
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto (all parts run on the same one)")
    add_json_option(parser, "benchmark.json")
    parser.add_argument("--val_size", type=int, default=5000, help="images of train held out, as in the recipes")
    parser.add_argument("--seeds", type=positive_int, default=3, help="runs of the recipe for the seeds part (0..N-1)")
    parser.add_argument("--predict_dir", help="seeds part: a labelled folder (<class>/*) for predict's accuracy")
    parser.add_argument("--runs_dir", help="seeds part: keep each run's directory (checkpoints, report) here")
    parser.add_argument(
        "--test_pass", action="store_true", help="seeds part: add a 10,000-image test split (validation twice)"
    )
    args = parser.parse_args(argv)
    need_images_dir(parser, args)
    if "overhead" in args.only.split(","):
        parser.error("--only overhead: Lightning's overhead is measured by scripts/bench/overhead.py now")
    args.only = chosen_parts(parser, args.only, tuple(PARTS))
    return args


def prepare(args: argparse.Namespace, tmp: Path) -> Bench:
    """The data every part uses, loaded once (a bad --val_size stops here, before any timing)."""
    b = Bench(args, tmp, pick_device(args.accelerator), args.images_dir)
    cache_dir = None
    if "seeds" in args.only and args.test_pass:
        b.images_dir = val_as_test(args.images_dir, args.val_size, tmp)
        cache_dir = str(tmp / "cache")  # its decoded cache is keyed by this temporary path: it goes with it
        b.extra += ["--data.cache_dir", cache_dir]
    if {"throughput", "seeds"} & set(args.only):
        from datamodules import CIFAR10DataModule

        data = CIFAR10DataModule(data_dir=b.images_dir, download=False, val_size=args.val_size, cache_dir=cache_dir)
        data.prepare_data()
        data.setup("fit")
        b.split = data.train_split
    return b


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rows, results = [], {"machine": {}, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as name, quiet_lightning():
        b = prepare(args, Path(name))
        results["machine"] = machine(b.device)
        for part in args.only:
            results[part], part_rows = PARTS[part](b)
            rows += part_rows
    print(f"\nMachine: {machine_line(results['machine'])}")
    print(text_table(("part", "measured", "note"), rows, right=(1,)))
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    from lightning_modules.cli.frame import expected_errors

    try:
        main()
    except expected_errors() as err:
        sys.exit(f"error: {err}")
