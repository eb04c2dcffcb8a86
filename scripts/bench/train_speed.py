"""How fast is training here, and what does Lightning cost? Side by side, in one run, on the same data.

python scripts/bench/train_speed.py --data_dir data                             # all three parts
python scripts/bench/train_speed.py --data_dir data --only throughput,overhead
python scripts/bench/train_speed.py --data_dir data --only seeds --seeds 3 --recipe configs/fast_cpu.yaml

  throughput        training images/s with the tutorial network (Tudui, batch 64, plain SGD):
                    a loop written the way the tutorial writes it (torchvision-style dataset that
                    builds a PIL image and runs ToTensor per image, DataLoader, batch 64) against
                    scripts/fit.py's path (uint8 batches, normalisation in the model), plain and
                    with --model.channels_last true; and the network's step alone on one batch in
                    memory, the ceiling that no data path can beat.
  overhead          Lightning's per-step cost: the fit path against a plain loop over the same
                    DataModule batches and augmentation, the same ImageClassifier, its metric
                    updates, optimiser and mixed precision. The recipe is --overhead_recipe
                    (default: the tutorial's, with channels-last); e.g. configs/fast.yaml on a GPU.
  time_to_accuracy  wall time from launching scripts/fit.py with a recipe to its first validation
                    at or above --target (the data cache already built).
  seeds             the recipe (--recipe, comma-separated files are passed as repeated --config)
                    launched as a user would, once per seed (--seeds N: 0..N-1), each timed from
                    launch to exit, in tutorial epochs (TE) too: the time the tutorial's own loop
                    takes for 50,000 images, measured before and after the runs. Prints mean ± sd of
                    val and test accuracy; with --predict_dir, predict.py's accuracy on that
                    labelled folder with each run's best checkpoint as well. With --test_pass, data
                    without a test split gets one of 10,000 images (the validation images twice,
                    as symlinks), so the time includes a test pass of CIFAR-10's size and the test
                    accuracy must equal the validation accuracy.

Runs alternate (A, B, A, B, ...) and medians are reported, because a shared machine drifts. Prints a
table and writes the figures as JSON (--json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lightning_modules.cli.fit import ClassifierCLI  # noqa: E402
from lightning_modules.cli.sweep import mean_sd  # noqa: E402
from lightning_modules.nets import Tudui  # noqa: E402


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


def now() -> float:
    """perf_counter once the GPU's queued work is done: CUDA calls return before the work is."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


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


def resolve_device(accelerator: str) -> torch.device:
    wants_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if wants_gpu else "cpu")


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


TUTORIAL = str(ROOT / "configs" / "tutorial.yaml")


def build_cli(data_dir: str, extra: list[str], tmp: Path, warmup: int, steps: int, accelerator: str, recipe=TUTORIAL):
    args = [
        "--config", recipe, "--data.data_dir", data_dir, "--trainer.check_val_every_n_epoch", "1",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(warmup + steps),
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp), "--trainer.accelerator", accelerator,
        "--checkpoint.save_last", "false", "--checkpoint.save_top_k", "0", "--test", "false", *extra,
    ]  # fmt: skip
    return ClassifierCLI(args=args)


def fit_path(data_dir: str, extra: list[str], tmp: Path, warmup: int, steps: int, accelerator: str, recipe=TUTORIAL):
    """scripts/fit.py's trainer, model and data for a recipe, timed over the same number of steps."""
    cli = build_cli(data_dir, extra, tmp, warmup, steps, accelerator, recipe)
    clock = StepClock(warmup, steps, cli.datamodule.hparams.batch_size)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return clock.rate


def plain_loop_same_path(
    data_dir: str, extra: list[str], tmp: Path, warmup: int, steps: int, accelerator: str, recipe=TUTORIAL
):
    """No Trainer: the same DataModule batches and augmentation, model, metric updates, optimiser and
    precision as the recipe's fit path, in a for loop.

    Left out, each a one-off or microseconds per step: the network's data-dependent initialisation
    (AirbenchNet's whitening), the learning-rate schedule's step, logging.
    """
    cli = build_cli(data_dir, extra, tmp, warmup, steps, accelerator, recipe)
    model, data = cli.model, cli.datamodule
    precision = str(cli.trainer.precision)
    device = resolve_device(accelerator)
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    data.trainer = SimpleNamespace(training=True, current_epoch=0)  # what on_after_batch_transfer reads
    model.to(device).train()
    model.setup("fit")
    model.hparams.lr_scheduler = None  # configure_optimizers would ask the (absent) Trainer for the run length
    optimizer = model.configure_optimizers()
    half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if half is None and precision != "32-true":
        raise SystemExit(f"error: the plain loop knows precision 32-true, bf16-mixed and 16-mixed, not {precision}")
    scaler = torch.amp.GradScaler(device.type, enabled=half is torch.float16)
    before_step = getattr(model.net, "before_optimizer_step", None)

    def step(batch) -> None:
        batch = data.on_after_batch_transfer(tuple(t.to(device, non_blocking=True) for t in batch), 0)
        with torch.autocast(device.type, dtype=half or torch.float32, enabled=half is not None):
            loss, preds, targets = model.shared_step(batch)
        model.train_metrics.update(preds, targets, loss)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        if before_step is not None:
            before_step(0)
        scaler.step(optimizer)
        scaler.update()

    return timed_steps(loader, step, warmup, steps, data.hparams.batch_size)


def checkout_env() -> dict[str, str]:
    """The environment for fit.py processes: they find the project from a plain checkout too (a GPU
    machine where it is not installed)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def time_to_accuracy(data_dir: str, recipe: str, target: float, extra: list[str], tmp: Path) -> dict:
    """Launch scripts/fit.py with the recipe; read its per-epoch lines as they come."""
    command = [
        sys.executable, str(ROOT / "scripts" / "fit.py"), "--config", recipe, "--data.data_dir", data_dir,
        "--trainer.logger.init_args.save_dir", str(tmp), "--test", "false", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp, env=checkout_env()
    )
    history, reached = [], None
    for line in process.stdout:
        match = re.search(r"^epoch (\d+)/\d+ .*val/acc (\d\.\d+)", line)
        if match:
            seconds = time.perf_counter() - start
            history.append({"epoch": int(match.group(1)), "val_acc": float(match.group(2)), "s": round(seconds, 1)})
            print(f"  {seconds:6.1f} s  {line.strip()}", flush=True)
            if reached is None and float(match.group(2)) >= target:
                reached = seconds
    returncode = process.wait()
    if returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} exited with {returncode}")
    return {
        "recipe": recipe,
        "target": target,
        "seconds_to_target": round(reached, 1) if reached is not None else None,
        "total_s": round(time.perf_counter() - start, 1),
        "final_val_acc": history[-1]["val_acc"] if history else None,
        "history": history,
    }


def tutorial_epoch_s(split, device: torch.device, steps: int) -> float:
    """Seconds the tutorial's loop takes for 50,000 images here and now, from its rate over ``steps`` batches."""
    return 50_000 / tutorial_loop(split, device, warmup=min(10, steps), steps=steps)


def val_as_test(data_dir: str, val_size: int, tmp: Path) -> str:
    """A copy of an image-folder dataset (symlinks) whose test split is its validation images twice.

    The runs then pay for a 10,000-image test pass, like a user's run on CIFAR-10, while the test
    split stays held back; the test accuracy must come out equal to the validation accuracy, which
    checks that fit's test path scores the same way as its validation."""
    from datamodules.sources import scan_folder, split_indices

    root = Path(data_dir).resolve()
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


def seed_runs(
    data_dir: str, recipes: list[str], seeds: int, extra: list[str], tmp: Path, predict_dir, runs_dir=None
) -> list[dict]:
    """Each seed as a user runs it: scripts/fit.py in its own process, timed from launch to exit."""
    # The processes run in ``tmp``, so every path they get is absolute.
    data_dir, recipes = str(Path(data_dir).resolve()), [str(Path(r).resolve()) for r in recipes]
    predict_dir = str(Path(predict_dir).resolve()) if predict_dir else None
    tmp.mkdir(parents=True, exist_ok=True)
    env = checkout_env()
    save_dirs = [(Path(runs_dir).resolve() if runs_dir else tmp) / f"seed_{seed}" for seed in range(seeds)]
    for save_dir in save_dirs:  # each seed's report is found by its folder, so it must start empty
        if save_dir.exists() and any(save_dir.iterdir()):
            raise SystemExit(f"error: {save_dir} holds an earlier run; give --runs_dir an empty or new folder")
    runs = []
    for seed, save_dir in enumerate(save_dirs):
        command = [
            sys.executable, str(ROOT / "scripts" / "fit.py"), *[a for r in recipes for a in ("--config", r)],
            "--data.data_dir", data_dir, "--seed_everything", str(seed),
            "--trainer.logger.init_args.save_dir", str(save_dir), *extra,
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp, env=env)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"error: seed {seed} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
        (report_file,) = save_dir.glob("*/version_*/report.json")
        report = json.loads(report_file.read_text())
        run = {
            "seed": seed,
            "wall_s": round(seconds, 1),
            "val_acc": report["best_val_acc"],
            "last_val_acc": report["epochs"][-1]["val/acc"],
            "train_s": report["train_seconds"],
            "test_acc": (report.get("test") or {}).get("test/acc"),
        }
        if predict_dir:
            predicted = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "predict.py"), "--ckpt_path", report["best_checkpoint"],
                 str(predict_dir)], capture_output=True, text=True, cwd=tmp, env=env,
            )  # fmt: skip
            match = re.search(r"accuracy [\d.]+% \((\d+)/(\d+),", predicted.stderr)
            run["predict_acc"] = int(match.group(1)) / int(match.group(2)) if match else None
        print(f"  seed {seed}: {run}", flush=True)
        runs.append(run)
    return runs


def median_rates(runs: dict, repeats: int) -> dict[str, float]:
    """Each named runner ``repeats`` times, interleaved; the median images/s of each."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(repeats):
        for name, run in runs.items():
            rates[name].append(run())
            print(f"  repeat {r + 1}/{repeats} {name}: {rates[name][-1]:,.0f} images/s", flush=True)
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="CIFAR-10 (official files or an image-folder tree)")
    parser.add_argument("--only", default="throughput,overhead,time_to_accuracy", help="comma-separated parts")
    parser.add_argument("--steps", type=int, default=150, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per variant; medians reported")
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "fast_cpu.yaml"), help="for time_to_accuracy")
    parser.add_argument("--overhead_recipe", default=TUTORIAL, help="recipe for the overhead part")
    parser.add_argument("--target", type=float, default=0.85, help="validation accuracy for time_to_accuracy")
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto (all parts run on the same one)")
    parser.add_argument("--json", default="benchmark.json", help="where the figures go")
    parser.add_argument("--val_size", type=int, default=5000, help="images of train held out, as in the recipes")
    parser.add_argument("--seeds", type=int, default=3, help="runs of the recipe for the seeds part (seeds 0..N-1)")
    parser.add_argument("--predict_dir", help="seeds part: a labelled folder (<class>/*) for predict.py's accuracy")
    parser.add_argument("--runs_dir", help="seeds part: keep each run's directory (checkpoints, report) here")
    parser.add_argument(
        "--test_pass", action="store_true", help="seeds part: add a 10,000-image test split (validation twice)"
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    known = ("throughput", "overhead", "time_to_accuracy", "seeds")
    unknown = parts - set(known)
    if unknown:
        parser.error(f"--only: unknown parts {sorted(unknown)}; choose from {', '.join(known)}")
    if args.seeds < 1:
        parser.error("--seeds must be a positive integer")
    from lightning.pytorch.utilities import disable_possible_user_warnings

    disable_possible_user_warnings()
    # The fit path is built from an argument list on purpose; Lightning warns whenever sys.argv is not empty.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = resolve_device(args.accelerator)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
    }
    try:
        machine["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    results: dict = {"machine": machine, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        common = (tmp, args.warmup, args.steps, args.accelerator)
        same_split = ["--data.val_size", str(args.val_size)]
        cache_dir = None
        if "seeds" in parts and args.test_pass:
            args.data_dir = val_as_test(args.data_dir, args.val_size, tmp)
            # Its decoded cache is keyed by this temporary path, so it goes when the folder goes.
            cache_dir = str(tmp / "cache")
            same_split += ["--data.cache_dir", cache_dir]
        if parts & {"throughput", "overhead", "seeds"}:
            from datamodules import CIFAR10DataModule

            data = CIFAR10DataModule(
                data_dir=args.data_dir, download=False, val_size=args.val_size, cache_dir=cache_dir
            )
            data.prepare_data()
            data.setup("fit")
            split = data.train_split
        if "throughput" in parts:
            print("throughput: tutorial network, batch 64", flush=True)
            rates = median_rates(
                {
                    "tutorial_loop": lambda: tutorial_loop(split, device, args.warmup, args.steps),
                    "fit_path": lambda: fit_path(args.data_dir, same_split, *common),
                    "fit_path_channels_last": lambda: fit_path(
                        args.data_dir, [*same_split, "--model.channels_last", "true"], *common
                    ),
                    "network_alone": lambda: network_alone(device, args.warmup, args.steps),
                },
                args.repeats,
            )
            base = rates["tutorial_loop"]
            results["throughput"] = {
                name: {"images_per_s": round(r, 1), "vs_tutorial": round(r / base, 3)} for name, r in rates.items()
            }
            rows += [
                (
                    f"throughput: {name}",
                    f"{r:,.0f} images/s",
                    f"{r / base:.2f}x tutorial loop" + (" (ceiling: no data path)" if name == "network_alone" else ""),
                )
                for name, r in rates.items()
            ]
        if "overhead" in parts:
            recipe = args.overhead_recipe
            print(f"overhead: {Path(recipe).name}, same data path and model, with and without the Trainer", flush=True)
            # The tutorial recipe as the fast path runs it; other recipes exactly as written.
            extra = [*same_split, *(["--model.channels_last", "true"] if recipe == TUTORIAL else [])]
            rates = median_rates(
                {
                    "plain_loop": lambda: plain_loop_same_path(args.data_dir, extra, *common, recipe),
                    "fit_path": lambda: fit_path(args.data_dir, extra, *common, recipe),
                },
                args.repeats,
            )
            ratio = rates["plain_loop"] / rates["fit_path"]
            results["overhead"] = {
                "recipe": recipe,
                "plain_loop_images_per_s": round(rates["plain_loop"], 1),
                "fit_path_images_per_s": round(rates["fit_path"], 1),
                "time_ratio_fit_vs_plain": round(ratio, 3),
            }
            rows.append(("overhead: fit path / plain loop", f"{ratio:.3f}x time per step", "target <= 1.10x"))
        if "time_to_accuracy" in parts:
            print(f"time_to_accuracy: {args.recipe}, target {args.target:.2%}", flush=True)
            extra = [*same_split, "--trainer.accelerator", args.accelerator]
            found = time_to_accuracy(args.data_dir, args.recipe, args.target, extra, tmp)
            results["time_to_accuracy"] = found
            reached = f"{found['seconds_to_target']:.0f} s" if found["seconds_to_target"] is not None else "not reached"
            rows.append(
                (
                    f"time to {args.target:.0%}: {Path(args.recipe).name}",
                    reached,
                    f"final val/acc {found['final_val_acc']:.4f} after {found['total_s']:.0f} s",
                )
            )
        if "seeds" in parts:
            recipes = [r for r in args.recipe.split(",") if r]
            print(f"seeds: {' + '.join(Path(r).name for r in recipes)}, {args.seeds} runs", flush=True)
            te_before = tutorial_epoch_s(split, device, args.steps)
            runs = seed_runs(args.data_dir, recipes, args.seeds, [*same_split, "--trainer.accelerator",
                             args.accelerator], tmp, args.predict_dir, args.runs_dir)  # fmt: skip
            te_after = tutorial_epoch_s(split, device, args.steps)
            te = (te_before + te_after) / 2
            for run in runs:
                run["te"] = round(run["wall_s"] / te, 2)
            results["seeds"] = {"recipes": recipes, "tutorial_epoch_s": [round(te_before, 1), round(te_after, 1)],
                                "runs": runs}  # fmt: skip
            name = " + ".join(Path(r).name for r in recipes)
            rows.append((f"seeds: {name}", f"{len(runs)} runs", f"1 TE = {te:.1f} s ({te_before:.1f} s before, "
                         f"{te_after:.1f} s after)"))  # fmt: skip
            rows.append(("  val/acc (%)", mean_sd([r["val_acc"] for r in runs], 100), "mean ± sd"))
            if any(r["test_acc"] is not None for r in runs):
                rows.append(("  test/acc (%)", mean_sd([r["test_acc"] for r in runs], 100), "mean ± sd"))
            if args.predict_dir:
                rows.append(("  predict.py acc (%)", mean_sd([r.get("predict_acc") for r in runs], 100),
                             f"on {args.predict_dir}"))  # fmt: skip
            wall = mean_sd([r["wall_s"] for r in runs], digits=0)
            tes = mean_sd([r["te"] for r in runs])
            rows.append(("  wall, launch to exit", f"{wall} s", f"{tes} TE; max {max(r['te'] for r in runs):.2f} TE"))
    print(
        f"\nMachine: {machine['cpu']}, {machine['cpu_threads']} threads, device {machine['device']}, "
        f"torch {machine['torch']}, lightning {machine['lightning']}"
    )
    width = max(len(r[0]) for r in rows) if rows else 0
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>22}  {note}")
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"Figures: {args.json}")


if __name__ == "__main__":
    from datamodules import DataError

    try:
        main()
    except DataError as err:
        sys.exit(f"error: {err}")
