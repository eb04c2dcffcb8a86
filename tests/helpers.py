"""Helpers shared by the tests (fixtures live in conftest.py): small data the tests make themselves
(image-folder trees, fake official CIFAR-10 batches, checkpoints), running the scripts, and callbacks."""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import Callback
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "ship")
# One dominant colour per class, so that even a tiny run can learn something.
CLASS_COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


def class_image(rng: np.random.Generator, label: int, size: int = 32) -> np.ndarray:
    base = np.array(CLASS_COLOURS[label % len(CLASS_COLOURS)], dtype=np.int16)
    noise = rng.integers(-40, 40, (size, size, 3), dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path,
    counts: dict[str, int] | None = None,
    classes: tuple[str, ...] = CLASSES,
    size: int = 32,
    suffix: str = ".png",
    seed: int = 0,
) -> Path:
    """root/{split}/{class}/{i}{suffix} with ``counts[split]`` images per class."""
    rng = np.random.default_rng(seed)
    for split, n in (counts or {"train": 20}).items():
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(class_image(rng, label, size)).save(folder / f"{i:04d}{suffix}")
    return root


def make_official_batches(root: Path, per_batch: int = 6, test: int = 8, seed: int = 0) -> Path:
    """root/cifar-10-batches-py in the official pickle format (5 train batches + test batch)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def write(name: str, n: int) -> None:
        labels = [int(x) for x in rng.integers(0, 10, n)]
        images = np.stack([class_image(rng, lab).transpose(2, 0, 1).reshape(-1) for lab in labels])
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images, "labels": labels}, f)

    for i in range(1, 6):
        write(f"data_batch_{i}", per_batch)
    write("test_batch", test)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return root


def run_script(script: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run one of scripts/*.py in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(cwd / "xdg-cache")}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def save_checkpoint(path: Path, class_names=("cat", "dog", "ship")) -> Path:
    """A Lightning checkpoint of an untrained tutorial network with the given classes."""
    import lightning as L
    import torch

    from lightning_modules import ImageClassifier
    from lightning_modules.nets import Tudui

    torch.manual_seed(0)
    model = ImageClassifier(Tudui(num_classes=len(class_names)), class_names=list(class_names))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path, weights_only=False)  # the whole checkpoint, as fit.py writes it
    return path


def png_with_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature + IHDR claiming width x height, then IEND: a decompression-bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def asgi_request(
    app, method: str, path: str, body: bytes | list[bytes] = b"", host: str = "127.0.0.1",
    headers: tuple[tuple[str, str], ...] = (), disconnect: bool = False, stall: bool = False,
) -> tuple[int, bytes] | None:  # fmt: skip
    """(status, body) of one request to an ASGI app, in this process (no server, no socket): ``body`` a
    list sends it in parts; ``disconnect`` makes the client leave after them (then None if unanswered),
    ``stall`` makes it send nothing more, holding the connection open."""
    import asyncio

    parts = [body] if isinstance(body, bytes) else list(body)
    messages = [{"type": "http.request", "body": b, "more_body": i < len(parts) - 1} for i, b in enumerate(parts)]
    if disconnect or stall:
        messages[-1]["more_body"] = True
    if disconnect:
        messages.append({"type": "http.disconnect"})
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        if stall:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"host", host.encode()), *((k.lower().encode(), v.encode()) for k, v in headers)],
        "scheme": "http", "http_version": "1.1", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
        "root_path": "",
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:
        return None
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def batcher_answers(batcher, images: list[bytes]) -> list:
    """The batcher's answer (a record, or the exception raised) to each encoded image, all sent at once."""
    import asyncio

    async def ask_all():
        return await asyncio.gather(*(batcher.classify(data) for data in images), return_exceptions=True)

    batcher.start()
    try:
        return asyncio.run(ask_all())
    finally:
        batcher.stop()


# --- one fit shared by the tests that only read a run (the tta_run fixture) -------------------


def tta_run_args(work: Path) -> list[str]:
    """The options of the shared run, so a test can resume it with the same configuration."""
    return [
        "--data.data_dir", str(work / "data"), "--data.cache_dir", str(work / "cache"),
        "--data.val_size", "30", "--data.batch_size", "16", "--data.eval_batch_size", "7",
        "--model.tta", "mirror_translate", "--optimizer.momentum", "0.9",
        "--trainer.logger.init_args.save_dir", str(work / "runs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


def noisy_folder(root, per_class: dict[str, int]) -> None:
    """Images whose class shows only as a weak tint in strong noise: a tiny run gets some right, not all."""
    rng = np.random.default_rng(1)
    for split, n in per_class.items():
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3)).astype(np.int16)
                pixels[..., label] += 40
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / split / name / f"{i}.png")


# --- commands and callbacks -------------------------------------------------------------------


def exit_status(main: Callable[[list[str]], int | None], args: list[str]) -> int:
    """A command's exit status, called in-process: its return value, or the code of a SystemExit
    (argument parsers exit on their own)."""
    try:
        return main(args) or 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1


class SigtermDuringTest(Callback):
    """Sends this process SIGTERM when the first test batch starts, as a scheduler's kill would."""

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


class InterruptValidationOfEpoch1(Callback):
    """Ctrl-C in the middle of epoch 1's validation (the last epoch of a 2-epoch run)."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.current_epoch == 1 and not trainer.sanity_checking:
            raise KeyboardInterrupt


def load_bench_script(name: str):
    """scripts/bench/<name>.py imported as a module, so a test calls its functions in-process."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
