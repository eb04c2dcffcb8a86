"""How fast is training here, and what does Lightning cost? Side by side, in one run, on the same data.

python scripts/benchmark.py --data_dir ../shared/data/cifar10-jpeg            # all three parts
python scripts/benchmark.py --data_dir ../shared/data/cifar10-jpeg --only throughput,overhead

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

Runs alternate (A, B, A, B, ...) and medians are reported, because a shared machine drifts. Prints a
table and writes the figures as JSON (--json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
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
    """Images/s of ``step`` over ``steps`` batches after ``warmup`` (data loading included)."""
    iterator = iter(batches)
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
        model.train_metrics.update(preds, targets)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        if before_step is not None:
            before_step(0)
        scaler.step(optimizer)
        scaler.update()

    return timed_steps(loader, step, warmup, steps, data.hparams.batch_size)


def time_to_accuracy(data_dir: str, recipe: str, target: float, extra: list[str], tmp: Path) -> dict:
    """Launch scripts/fit.py with the recipe; read its per-epoch lines as they come."""
    command = [
        sys.executable, str(ROOT / "scripts" / "fit.py"), "--config", recipe, "--data.data_dir", data_dir,
        "--trainer.logger.init_args.save_dir", str(tmp), "--test", "false", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
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
    args = parser.parse_args()
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"throughput", "overhead", "time_to_accuracy"}
    if unknown:
        parser.error(f"--only: unknown parts {sorted(unknown)}; choose from throughput, overhead, time_to_accuracy")
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
        if parts & {"throughput", "overhead"}:
            from datamodules import CIFAR10DataModule

            data = CIFAR10DataModule(data_dir=args.data_dir, download=False, val_size=args.val_size)
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
