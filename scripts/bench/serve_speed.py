"""Benchmark scripts/serve.py on loopback: requests/s and latency at 1, 8 and 32 concurrent clients.

    python scripts/bench/serve_speed.py [--ckpt_path CKPT] [--images_dir DATA_DIR] [--requests 300]
                                        [--concurrency 1 8 32]

Starts the server on a free 127.0.0.1 port (the tutorial network, untrained, unless --ckpt_path
is given), posts 32x32 images (CIFAR-10 images from --images_dir/train, default $DATA_DIR; PNGs
of plain colours when neither is given) from a pool of client threads with keep-alive sessions,
and prints requests/s with p50 and p99 latency per concurrency level. Each level is bounded in
request count and time. Writes JSON.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lightning_modules.reporting.tables import text_table  # noqa: E402
from scripts.bench.common import (  # noqa: E402
    ServerError,
    add_images_dir,
    add_json_option,
    machine,
    machine_line,
    sample_images,
    serving,
    untrained_checkpoint,
    write_json,
)


def payloads(images_dir: str | None, n: int = 64) -> list[bytes]:
    from PIL import Image

    if images_dir:
        return [p.read_bytes() for p in sample_images(images_dir, n)]
    out = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (i * 4 % 256, 80, 160)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def level(url: str, bodies: list[bytes], clients: int, count: int, limit_s: float) -> dict:
    local = threading.local()
    deadline = time.monotonic() + limit_s

    def one(i: int) -> float | None:
        if time.monotonic() > deadline:
            return None
        session = getattr(local, "session", None) or setattr(local, "session", requests.Session()) or local.session
        start = time.perf_counter()
        response = session.post(url, data=bodies[i % len(bodies)], timeout=30)
        if response.status_code != 200:
            raise SystemExit(f"request failed: {response.status_code} {response.text[:200]}")
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = [t for t in pool.map(one, range(count)) if t is not None]
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path")
    add_images_dir(parser, "real images to post (optional)")
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max_batch_size", type=int, default=32)
    add_json_option(parser, REPO / "bench" / "serve.json")
    args = parser.parse_args()

    bodies = payloads(args.images_dir)
    with tempfile.TemporaryDirectory() as tmp:
        classes = [f"c{i}" for i in range(10)]
        ckpt = args.ckpt_path or untrained_checkpoint(Path(tmp) / "tudui.ckpt", classes)
        options = ("--max_batch_size", str(args.max_batch_size), "--trainer.accelerator", "cpu")
        with serving(ckpt, *options, log=Path(tmp) / "server.log") as server:
            url = f"{server.url}/predict"
            level(url, bodies, 4, 40, 30)  # warm-up
            results = [level(url, bodies, c, args.requests, 60) for c in args.concurrency]

    info = machine()
    print(f"{machine_line(info)}; tutorial network; max_batch_size {args.max_batch_size}; loopback")
    rows = [
        (r["clients"], r["requests"], f"{r['requests_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
        for r in results
    ]
    print(text_table(("clients", "requests", "req/s", "p50 ms", "p99 ms"), rows, right=(0, 1, 2, 3, 4)))
    write_json(args.json, {"machine": machine_line(info), "results": results})


if __name__ == "__main__":
    try:
        main()
    except ServerError as err:
        sys.exit(f"error: {err}")
