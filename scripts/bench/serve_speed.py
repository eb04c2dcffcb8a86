"""Benchmark scripts/serve.py on loopback against the model's own rate: requests/s and p50/p99 latency.

    python scripts/bench/serve_speed.py [--ckpt_path CKPT] [--images_dir DATA_DIR] [--requests 2000]
                                        [--concurrency 1 8 32 128] [--settings 32,0.005,1 ...]

Starts the server on a free 127.0.0.1 port (the tutorial network, untrained, unless --ckpt_path is
given) once per setting (max_batch_size, batch_timeout in s, inference threads) and posts 32x32
images (CIFAR-10 images from --images_dir/train, default $DATA_DIR; PNGs of plain colours when
neither is given) from scripts/bench/http_load.py, a load generator in its own process with one
keep-alive connection per client. Where the machine has 2 or more cores the clients are pinned to
the last core and the server to the others, and the model's own rate (its forward on a uint8 batch
of 256 in memory, torch threads = the server's cores) is measured on the server's cores too, so
"share" compares like with like. Each level is bounded in requests and seconds. Writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lightning_modules.reporting.tables import text_table  # noqa: E402
from scripts.bench.common import (  # noqa: E402
    ServerError,
    add_images_dir,
    add_json_option,
    forward_rate,
    machine,
    machine_line,
    sample_images,
    serving,
    untrained_checkpoint,
    write_json,
)


def write_bodies(folder: Path, images_dir: str | None, n: int = 64) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    if images_dir:
        for i, path in enumerate(sample_images(images_dir, n)):
            (folder / f"{i:03d}{path.suffix}").write_bytes(path.read_bytes())
        return
    for i in range(n):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (i * 4 % 256, 80, 160)).save(buffer, format="PNG")
        (folder / f"{i:03d}.png").write_bytes(buffer.getvalue())


def cores() -> tuple[set[int] | None, int | None]:
    """(the server's cores, the clients' core), or (None, None) where a process cannot be pinned."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        return None, None
    mine = sorted(os.sched_getaffinity(0))
    return set(mine[:-1]), mine[-1]


def model_rate(ckpt: Path, server_cores: set[int] | None, seconds: float = 2.0) -> float:
    """Images/s of the checkpoint's inference model on a uint8 batch of 256, on the server's cores."""
    from lightning_modules.inference.checkpoints import load_classifier

    before, threads = (os.sched_getaffinity(0) if server_cores else None), torch.get_num_threads()
    if server_cores:
        os.sched_setaffinity(0, server_cores)
        torch.set_num_threads(len(server_cores))
    try:
        model = load_classifier(ckpt, map_location="cpu")
        batch = torch.randint(0, 256, (256, 3, model.image_size, model.image_size), dtype=torch.uint8)
        return forward_rate(model, batch, seconds)
    finally:
        if before:
            os.sched_setaffinity(0, before)
            torch.set_num_threads(threads)


def load(url: str, bodies: Path, clients: int, requests: int, seconds: float, cpu: int | None) -> dict:
    command = [sys.executable, str(REPO / "scripts" / "bench" / "http_load.py"), url, "--bodies", str(bodies),
               "--clients", str(clients), "--requests", str(requests), "--seconds", str(seconds)]  # fmt: skip
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise SystemExit(f"load generator failed: {result.stderr[-2000:]}")
    figures = json.loads(result.stdout)
    if figures["errors"]:
        raise SystemExit(f"{figures['errors']} requests failed at {clients} clients: {figures['first_error']}")
    return figures


def setting(text: str) -> tuple[int, float, int]:
    try:
        size, timeout, workers = text.split(",")
        return int(size), float(timeout), int(workers)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write max_batch_size,batch_timeout,workers (e.g. 32,0.005,1)"
        ) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path")
    add_images_dir(parser, "real images to post (optional)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level (at most)")
    parser.add_argument("--seconds", type=float, default=15, help="seconds per concurrency level (at most)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--settings", type=setting, nargs="+", default=[(32, 0.005, 1)],
                        help="server settings to compare: max_batch_size,batch_timeout,workers")  # fmt: skip
    add_json_option(parser, REPO / "bench" / "serve.json")
    args = parser.parse_args()

    server_cores, client_core = cores()
    pinned = (f"server on cores {sorted(server_cores)}, clients on core {client_core}" if server_cores
              else "nothing pinned (one core, or no affinity control)")  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies"
        write_bodies(bodies, args.images_dir)
        ckpt = args.ckpt_path or untrained_checkpoint(Path(tmp) / "tudui.ckpt", [f"c{i}" for i in range(10)])
        rate = model_rate(Path(ckpt), server_cores)
        for size, timeout, workers in args.settings:
            queue = str(max(256, 2 * max(args.concurrency)))
            options = ("--max_batch_size", str(size), "--batch_timeout", str(timeout), "--workers", str(workers),
                       "--trainer.accelerator", "cpu", "--max_queue", queue)  # fmt: skip
            with serving(ckpt, *options, log=Path(tmp) / "server.log", cpus=server_cores) as server:
                url = f"{server.url}/predict"
                load(url, bodies, 4, 100, 20, client_core)  # warm-up
                for clients in args.concurrency:
                    figures = load(url, bodies, clients, args.requests, args.seconds, client_core)
                    results.append({"max_batch_size": size, "batch_timeout": timeout, "workers": workers,
                                    **figures, "share_of_model": figures["requests_per_s"] / rate})  # fmt: skip

    info = machine()
    print(f"{machine_line(info)}; {pinned}; the model alone: {rate:.0f} images/s on the server's cores")
    rows = [
        (r["max_batch_size"], r["batch_timeout"], r["workers"], r["clients"], r["requests"],
         f"{r['requests_per_s']:.0f}", f"{r['share_of_model']:.2f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
        for r in results
    ]  # fmt: skip
    headers = ("batch", "timeout s", "workers", "clients", "requests", "req/s", "share", "p50 ms", "p99 ms")
    print(text_table(headers, rows, right=tuple(range(9))))
    write_json(args.json, {"machine": machine_line(info), "pinned": pinned, "model_images_per_s": rate,
                           "results": results})  # fmt: skip


if __name__ == "__main__":
    try:
        main()
    except ServerError as err:
        sys.exit(f"error: {err}")
