"""What the benchmark scripts share: options, timing, the machine, JSON figures, a running server, seed runs.

Import it as ``scripts.bench.common`` (each script puts the repository root on ``sys.path`` first).
Numbers as text (percentages, mean ± sd, tables) come from ``lightning_modules.reporting.tables``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# -- options -----------------------------------------------------------------------------------


def add_images_dir(parser: argparse.ArgumentParser, what: str = "CIFAR-10 images") -> None:
    """``--images_dir`` (``--data_dir`` still works), defaulting to the environment's ``DATA_DIR``."""
    parser.add_argument(
        "--images_dir", "--data_dir", dest="images_dir", default=os.environ.get("DATA_DIR") or None,
        help=f"{what}: an image folder (train/<class>/*) or the official CIFAR-10 files; default: $DATA_DIR",
    )  # fmt: skip


def need_images_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The images folder a script cannot run without; one line and exit status 2 when there is none."""
    if not args.images_dir:
        parser.exit(2, f"{parser.prog}: error: no images: give --images_dir DIR or set DATA_DIR\n")
    return args.images_dir


def add_json_option(parser: argparse.ArgumentParser, default: str | Path) -> None:
    parser.add_argument(
        "--json", type=Path, default=Path(default), help=f"write the figures here too (default {default})"
    )


def chosen_parts(parser: argparse.ArgumentParser, only: str, known: tuple[str, ...]) -> list[str]:
    """``--only a,b`` as a list of parts, in ``known``'s order; a usage error for any other name."""
    parts = {p.strip() for p in only.split(",") if p.strip()}
    if not parts or parts - set(known):
        parser.error(f"--only: unknown parts {sorted(parts - set(known))}; choose from {', '.join(known)}")
    return [p for p in known if p in parts]


def recipe_files(recipes: str) -> list[str]:
    """``a.yaml,b.yaml`` as absolute paths, in order (later files override earlier ones in fit.py)."""
    return [str(Path(r).resolve()) for r in recipes.split(",") if r]


def checkout_env() -> dict[str, str]:
    """The environment for child processes: they find the project from a plain checkout too (a GPU
    machine where it is not installed)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


# -- timing and the machine --------------------------------------------------------------------


def now() -> float:
    """perf_counter once the GPU's queued work is done: CUDA calls return before the work is."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def alternate(variants: dict[str, Callable[[], float]], repeats: int, show=None) -> dict[str, list[float]]:
    """Each variant ``repeats`` times, interleaved (A, B, A, B, ...), so drift of a shared machine hits
    them alike; ``show(name, repeat, value)`` after each run, if given."""
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for name, run in variants.items():
            runs[name].append(run())
            if show is not None:
                show(name, repeat, runs[name][-1])
    return runs


def forward_rate(forward, batch: torch.Tensor, seconds: float = 1.0) -> float:
    """Images/s of ``forward`` on one in-memory batch, repeated for about ``seconds`` after a warm-up."""
    with torch.inference_mode():
        forward(batch)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            forward(batch)
            count += len(batch)
    return count / (time.perf_counter() - start)


def medians(runs: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in runs.items()}


def machine(device: torch.device | None = None) -> dict[str, str | int]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    import lightning

    return {
        "cpu": cpu,
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }


def machine_line(info: dict) -> str:
    return (
        f"{info['cpu']}, {info['cpu_threads']} threads, device {info['device']}, torch {info['torch']}, "
        f"lightning {info['lightning']}, Python {info['python']}"
    )


@contextlib.contextmanager
def quiet_lightning():
    """Lightning's info lines and advice off while a benchmark runs fit.py's path in-process, and back
    as they were afterwards (a caller such as a test keeps its own logging)."""
    import logging
    import warnings

    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def write_json(path: str | Path, figures: dict, say: bool = True) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    if say:
        print(f"Figures: {path}")


# -- images and checkpoints --------------------------------------------------------------------


def sample_images(images_dir: str | Path, n: int) -> list[Path]:
    """``n`` image files spread evenly over ``images_dir/train`` (or ``images_dir`` if it has no train/)."""
    root = Path(images_dir)
    folder = root / "train" if (root / "train").is_dir() else root
    if not folder.is_dir():
        raise SystemExit(f"error: --images_dir {images_dir} (or DATA_DIR): no such folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"error: no {'/'.join(IMAGE_SUFFIXES)} files under {folder}")
    return files[:: max(1, len(files) // n)][:n]


def untrained_checkpoint(path: Path, class_names: list[str]) -> Path:
    """A checkpoint as fit.py writes it, of the tutorial network, untrained (seed 0)."""
    import lightning as L

    from lightning_modules import ImageClassifier
    from lightning_modules.nets import Tudui

    torch.manual_seed(0)
    model = ImageClassifier(Tudui(num_classes=len(class_names)), class_names=list(class_names))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path, weights_only=False)
    return path


# -- a running server --------------------------------------------------------------------------


class ServerError(RuntimeError):
    """scripts/serve.py exited, or did not answer /health in time; the message ends with its log."""


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    own_group: bool  # started in a session of its own: stopping it stops the whole group
    log: Path | None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    ckpt: str | Path, *options: str, cwd=None, log: Path | None = None, timeout_s: float = 120.0,
    own_group: bool = False, cpus: set[int] | None = None,
) -> Server:  # fmt: skip
    """scripts/serve.py on a free loopback port; returns once ``GET /health`` answers ok. If the process
    exits first or ``timeout_s`` passes, stops it and raises ServerError with the end of ``log``.
    ``cpus``: the cores it (and every process it starts) may run on (Linux)."""
    import requests

    port = free_port()
    command = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--ckpt_path", str(ckpt), "--port", str(port),
               *options]  # fmt: skip
    with open(log, "w") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=checkout_env(),
            start_new_session=own_group,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    server = Server(process, f"http://127.0.0.1:{port}", own_group, Path(log) if log else None)
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.url}/health", timeout=2).text == "ok":
                return server
        if process.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {process.returncode}" if process.poll() is not None else f"no answer in {timeout_s:g} s"
            stop_server(server)
            tail = log.read_text()[-3000:] if log else "(no log kept)"
            raise ServerError(f"scripts/serve.py did not start ({why}): {tail}")
        time.sleep(0.5)


def stop_server(server: Server, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; with ``own_group``, nothing of its group is left."""
    server.process.terminate()
    try:
        server.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    if server.own_group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def serving(ckpt: str | Path, *options: str, **kwargs) -> Iterator[Server]:
    """``start_server`` as a context manager: the server stops when the block ends, however it ends."""
    server = start_server(ckpt, *options, **kwargs)
    try:
        yield server
    finally:
        stop_server(server)


# -- seed runs ---------------------------------------------------------------------------------


def seed_runs(
    images_dir: str, recipes: list[str], seeds: int, fit_options: list[str], out_dir: Path,
    predict_dir: str | None = None, accelerator: str = "auto",
) -> list[dict]:  # fmt: skip
    """The recipe with seeds 0..N-1, through scripts/sweep.py's runner (``sweep --seeds N``: each seed an
    ordinary fit in this process, in ``out_dir/trials/trial_NNN``). One dict per seed, by seed: the
    best and last val/acc, test/acc, seconds of the fit (wall) and of its training steps, the run
    directory, and with ``predict_dir`` (a labelled folder) predict's accuracy there with the best
    checkpoint. Raises SystemExit with one line if a run fails; 130 on Ctrl-C."""
    from lightning_modules.cli.frame import UsageError
    from lightning_modules.cli.sweep import sweep

    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):  # sweep would go on with the study found there
        raise SystemExit(f"error: {out_dir} holds an earlier run; give an empty or new folder")
    argv = ["--seeds", str(seeds), *[a for r in recipes for a in ("--config", r)], "--output_dir", str(out_dir),
            "--data.data_dir", str(Path(images_dir).resolve()), *fit_options]  # fmt: skip
    try:
        trials, interrupted = sweep(argv)
    except (UsageError, RuntimeError) as err:  # a refused option, a failed run
        raise SystemExit(f"error: seed runs: {err}") from None
    if interrupted:
        raise SystemExit(130)
    runs = []
    for trial in sorted(trials, key=lambda t: t["params"]["seed_everything"]):
        report = json.loads((Path(trial["run_dir"]) / "report.json").read_text())
        run = {
            "seed": trial["params"]["seed_everything"],
            "wall_s": trial["wall_s"],
            "val_acc": trial["value"],
            "last_val_acc": report["epochs"][-1]["val/acc"],
            "train_s": report["train_seconds"],
            "test_acc": trial.get("test_acc"),
            "run_dir": trial["run_dir"],
        }
        if predict_dir:
            run["predict_acc"] = predict_accuracy(report["best_checkpoint"], predict_dir, accelerator)
        print(f"  seed {run['seed']}: {run}", flush=True)
        runs.append(run)
    return runs


def predict_accuracy(ckpt: str, folder: str, accelerator: str = "auto") -> float | None:
    """predict.py's accuracy on a labelled folder (``<class>/*``), by its own machinery in this process."""
    from datamodules.image_reader import expand_inputs
    from lightning_modules.cli.frame import pick_device
    from lightning_modules.inference.checkpoints import load_classifier
    from lightning_modules.inference.predictor import classify, folder_accuracy

    device = pick_device(accelerator)
    model = load_classifier(ckpt, map_location=device)
    records = list(classify(model, expand_inputs([str(folder)]), 1, 256, device))
    scored = folder_accuracy(records, model.class_names)
    return scored[0] / scored[1] if scored else None
