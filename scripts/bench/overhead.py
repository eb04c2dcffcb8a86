"""What does the framework cost? scripts/fit.py against a plain PyTorch loop, per step and at start-up.

python scripts/bench/overhead.py --images_dir DATA_DIR                 # both parts
python scripts/bench/overhead.py --images_dir DATA_DIR --only step --steps 400
python scripts/bench/overhead.py --images_dir DATA_DIR --only startup --recipe configs/fast.yaml

  step     A network so small (two narrow convolutions, batch 64, 32x32) that a training step is
           mostly the framework's own work, trained through fit.py's real path (fit() with the
           recipe's callbacks, metrics, logger, progress and checkpoints), and after each of its
           steps one step of a minimal plain loop on the same batch (scale, forward, loss,
           backward, optimizer step; nothing else) with its own copy of the network. Only steps
           are timed (after --warmup), so start-up cancels out; interleaving step by step makes
           both see the same load on a shared machine. Medians of the per-step times; the ratio
           is the median over --repeats runs. Target: fit.py's step <= 1.10x the plain loop's.
  startup  fit.py with --recipe and a few training steps, launched as a process, against a plain
           script (imports torch, loads the same decoded-image cache, trains the recipe's network
           for the same steps in bf16 autocast, exits). Each child stamps its first step's start and last
           step's end, so the table splits launch -> first step and last step -> exit. Fixed cost =
           wall time minus the steps. Target: fit.py's fixed cost <= 1.5x the plain script's.

--images_dir defaults to $DATA_DIR. Start-up runs alternate (A, B, A, B, ...) and medians are
reported, because a shared machine drifts. Prints a table and writes the figures as JSON (--json).
"""

from __future__ import annotations

import argparse
import atexit
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.bench.common import (  # noqa: E402
    add_images_dir,
    add_json_option,
    alternate,
    chosen_parts,
    machine,
    machine_line,
    need_images_dir,
    now,
    quiet_lightning,
    write_json,
)


class TwoConvNet(nn.Module):
    """conv 3x3 (8) -> ReLU -> max-pool -> conv 3x3 (16) -> ReLU -> global max -> linear: a step is
    ~1 ms of arithmetic, so what a framework adds per step shows."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.num_classes, self.width = num_classes, width
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


TINY_NET = f"{TwoConvNet.__module__}.{TwoConvNet.__qualname__}"


class PlainStep:
    """The smallest honest training step of its own TwoConvNet over in-memory uint8 images: index a
    shuffled batch, scale, forward, loss, backward, optimizer step; nothing else."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64, lr: float = 0.01) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.order = torch.randperm(len(labels), generator=generator).to(images.device)
        self.at = 0
        self.model = TwoConvNet().to(images.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.loss_fn = nn.CrossEntropyLoss()

    def __call__(self) -> None:
        if self.at + self.batch_size > len(self.order):
            self.at = 0
        idx = self.order[self.at : self.at + self.batch_size]
        self.at += self.batch_size
        with torch.enable_grad():
            loss = self.loss_fn(self.model(self.images[idx].float().div_(255)), self.labels[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def interleaved_clock(warmup: int, steps: int):
    """A callback that runs one plain step on the same images after each of fit.py's steps and times
    both, step by step: on a shared machine the two then see the same load, which separate runs
    (minutes apart) do not. ``.fit_ms`` is the interval between two of fit.py's steps less the
    plain step inside it; ``.plain_ms`` the plain step's; medians over the timed steps."""
    import lightning as L

    class InterleavedClock(L.Callback):
        def __init__(self) -> None:
            self.plain = None
            self.fit, self.plain_times = [], []
            self.last_start, self.plain_s = None, 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            t = now()
            if self.last_start is not None and trainer.global_step > warmup:
                self.fit.append(t - self.last_start - self.plain_s)
            self.last_start = t

        def on_train_start(self, trainer, pl_module) -> None:
            data = trainer.datamodule  # the same images and batch size, on the same device as fit.py's
            images, labels = data.train_split.images.to(pl_module.device), data.train_split.labels.to(pl_module.device)
            self.plain = PlainStep(images, labels, data.hparams.batch_size)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            start = now()
            self.plain()
            self.plain_s = now() - start
            if warmup < trainer.global_step <= warmup + steps:  # as many as fit.py's timed intervals
                self.plain_times.append(self.plain_s)

        @property
        def fit_ms(self) -> float:
            return statistics.median(self.fit) * 1000

        @property
        def plain_ms(self) -> float:
            return statistics.median(self.plain_times) * 1000

    return InterleavedClock()


def step_ms(
    data_dir: str, recipe: str | None, warmup: int, steps: int, runs_dir: Path, extra=(), batch_size: int = 64
) -> dict:
    """ms per training step of scripts/fit.py's path (fit() itself, with the recipe's defaults) and
    of the plain step interleaved with it."""
    from lightning_modules.cli.fit import fit

    clock = interleaved_clock(warmup, steps)
    args = [
        *(["--config", recipe] if recipe else []), "--data.data_dir", data_dir, "--data.download", "false",
        "--model.net", json.dumps({"class_path": TINY_NET}), "--data.batch_size", str(batch_size),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(warmup + steps + 1),
        "--trainer.limit_val_batches", "2", "--trainer.check_val_every_n_epoch", "1", "--test", "false",
        "--trainer.logger.init_args.save_dir", str(runs_dir), *extra,
    ]  # fmt: skip
    fit(args, callbacks=[clock])
    return {"fit": clock.fit_ms, "plain": clock.plain_ms, "steps_timed": [len(clock.fit), len(clock.plain_times)]}


def step_part(args, tmp: Path) -> dict:
    recipe = args.step_recipe or None
    extra = ["--data.val_size", str(args.val_size), *(["--data.cache_dir", args.cache_dir] if args.cache_dir else [])]
    runs = [
        step_ms(args.images_dir, recipe, args.warmup, args.steps, tmp / "runs", extra, args.batch_size)
        for _ in range(args.repeats)
    ]
    plain = statistics.median(r["plain"] for r in runs)
    fit = statistics.median(r["fit"] for r in runs)
    ratios = [r["fit"] / r["plain"] for r in runs]
    return {"recipe": recipe or "default (tutorial)", "batch_size": args.batch_size, "runs_ms": runs,
            "plain_ms": plain, "fit_ms": fit, "ratio": statistics.median(ratios), "ratios": ratios}  # fmt: skip


# -- start-up ------------------------------------------------------------------------------------


class Stamps:
    """Wall-clock stamps of the first step's start and the last step's end, written to a file at exit
    (time.time(): the parent compares them with its own launch and exit times)."""

    def __init__(self, path: str) -> None:
        self.path, self.first, self.last, self.steps = path, None, None, 0
        atexit.register(self.write)

    def step_started(self) -> None:
        if self.first is None:
            self.first = time.time()

    def step_ended(self) -> None:
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.last, self.steps = time.time(), self.steps + 1

    def write(self) -> None:
        Path(self.path).write_text(json.dumps({"first": self.first, "last": self.last, "steps": self.steps}))


def child_fit(stamp_path: str, fit_args: list[str]) -> int:
    """fit.py's main with a stamping callback: the same code path as ``python scripts/fit.py ARGS``."""
    from lightning.pytorch import Callback

    from lightning_modules.cli.fit import fit

    stamps = Stamps(stamp_path)

    class Stamping(Callback):
        def on_train_batch_start(self, *args) -> None:
            stamps.step_started()

        def on_train_batch_end(self, *args) -> None:
            stamps.step_ended()

    fit(fit_args, callbacks=[Stamping()])
    return 0


def child_plain(stamp_path: str, cache_file: str, steps: int, batch_size: int, widths: list[int]) -> int:
    """A plain script: torch, the decoded images from the cache, the recipe's network (plain torch)."""
    from lightning_modules.nets.airbench import AirbenchNet

    stamps = Stamps(stamp_path)
    blob = torch.load(cache_file, weights_only=True, mmap=True)
    images, labels = blob["train_images"], blob["train_labels"]
    model = AirbenchNet(widths=tuple(widths)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    for _ in range(steps):
        stamps.step_started()
        idx = torch.randint(0, len(labels), (batch_size,))
        x = images[idx].float().div_(255).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.step_ended()
    return 0


def cache_file_of(data: str, cache_dir: str | None) -> str:
    """The decoded training images fit.py reads for ``data`` (its per-split cache, built now if missing)."""
    from datamodules import CIFAR10DataModule, sources

    dm = CIFAR10DataModule(data_dir=data, download=False, cache_dir=cache_dir)
    dm.prepare_data()
    folder = Path(cache_dir) if cache_dir else sources.default_cache_dir()
    files = sorted(folder.glob(f"{Path(data).resolve().name}-32px-*-train-*.pt"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"error: no decoded cache of {data} in {folder}; the startup part needs an image folder")
    return str(files[-1])


def timed_child(argv: list[str], stamp: Path) -> dict:
    launch = time.time()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    exit_t = time.time()
    if result.returncode:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
        raise SystemExit(f"error: {' '.join(argv[:4])} ... failed: {tail[0]}")
    s = json.loads(stamp.read_text())
    return {"wall_s": exit_t - launch, "to_first_step_s": s["first"] - launch, "steps_s": s["last"] - s["first"],
            "after_last_step_s": exit_t - s["last"], "steps": s["steps"]}  # fmt: skip


def startup_part(args, tmp: Path) -> dict:
    import yaml

    recipe = yaml.safe_load(Path(args.recipe).read_text())
    widths = recipe["model"]["net"]["init_args"].get("widths", [64, 256, 256])
    batch = recipe["data"].get("batch_size", 64)
    cache = cache_file_of(args.images_dir, args.cache_dir)
    me = [sys.executable, str(Path(__file__).resolve())]
    fit_args = [
        "--config", args.recipe, "--data.data_dir", args.images_dir, "--data.download", "false",
        "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.limit_train_batches", str(args.startup_steps), "--trainer.limit_val_batches", "1",
        "--data.eval_batch_size", "50",  # a token validation: its images are work, not start-up
        "--data.progressive_sizes", "null", "--trainer.accelerator", "cpu", "--data.val_size", str(args.val_size),
        "--trainer.logger.init_args.save_dir", str(tmp / "startup_runs"),
        *(["--data.cache_dir", args.cache_dir] if args.cache_dir else []),
    ]  # fmt: skip
    stamp = tmp / "stamp.json"
    fit_cmd = [*me, "--child", "fit", "--stamp", str(stamp), "--", *fit_args]
    plain_cmd = [*me, "--child", "plain", "--stamp", str(stamp), "--cache_file", cache,
                 "--child_steps", str(args.startup_steps), "--child_batch", str(batch),
                 "--child_widths", *map(str, widths)]  # fmt: skip
    runs = alternate(
        {"plain": lambda: timed_child(plain_cmd, stamp), "fit": lambda: timed_child(fit_cmd, stamp)}, args.repeats
    )
    summary = {}
    for name, rows in runs.items():
        summary[name] = {key: statistics.median(r[key] for r in rows) for key in rows[0] if key != "steps"}
        summary[name]["fixed_s"] = statistics.median(r["wall_s"] - r["steps_s"] for r in rows)
    ratio = summary["fit"]["fixed_s"] / summary["plain"]["fixed_s"]
    return {"recipe": args.recipe, "runs": runs, "median": summary, "fixed_ratio": ratio}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_images_dir(parser)
    parser.add_argument("--cache_dir", help="decoded-image cache (default: fit.py's)")
    parser.add_argument("--only", default="step,startup", help="comma-separated parts: step, startup")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run (step part)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps before them")
    parser.add_argument("--batch_size", type=int, default=64, help="images per step (step part)")
    parser.add_argument("--val_size", type=int, default=5000, help="training images held out, as in the recipes")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side; medians reported")
    parser.add_argument("--step_recipe", default="", help="config whose callbacks/logger the step part uses")
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "fast.yaml"), help="startup part's recipe")
    parser.add_argument("--startup_steps", type=int, default=2, help="training steps in each startup run")
    add_json_option(parser, "overhead.json")
    parser.add_argument("--child", choices=("fit", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--stamp", help=argparse.SUPPRESS)
    parser.add_argument("--cache_file", help=argparse.SUPPRESS)
    parser.add_argument("--child_steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child_batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child_widths", type=int, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "fit":
        sys.exit(child_fit(args.stamp, [a for a in args.rest if a != "--"]))
    if args.child == "plain":
        sys.exit(child_plain(args.stamp, args.cache_file, args.child_steps, args.child_batch, args.child_widths))
    need_images_dir(parser, args)
    parts = chosen_parts(parser, args.only, ("step", "startup"))
    results: dict = {"machine": machine_line(machine())}
    with tempfile.TemporaryDirectory() as name, quiet_lightning():
        tmp = Path(name)
        if "step" in parts:
            results["step"] = step_part(args, tmp)
        if "startup" in parts:
            results["startup"] = startup_part(args, tmp)
    print_table(results)
    write_json(args.json, results)
    return results


def print_table(results: dict) -> None:
    print(f"\nMachine: {results['machine']}")
    if "step" in results:
        s = results["step"]
        print(f"step ({s['recipe']}, two-conv net, batch {s['batch_size']}):  plain loop {s['plain_ms']:.2f} ms | "
              f"fit.py {s['fit_ms']:.2f} ms | ratio {s['ratio']:.3f}x (runs: "
              f"{', '.join(f'{r:.3f}' for r in s['ratios'])}; target <= 1.10x)")  # fmt: skip
    if "startup" in results:
        u = results["startup"]
        for name, m in u["median"].items():
            print(f"startup {name:<5} ({Path(u['recipe']).name}): launch->first step {m['to_first_step_s']:.2f} s | "
                  f"steps {m['steps_s']:.2f} s | last step->exit {m['after_last_step_s']:.2f} s | "
                  f"fixed {m['fixed_s']:.2f} s")  # fmt: skip
        print(f"startup fixed-cost ratio fit.py / plain script: {u['fixed_ratio']:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
