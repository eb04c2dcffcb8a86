"""Benchmark scripts/serve.py on loopback: requests/s and latency at 1, 8 and 32 concurrent clients.

    python scripts/benchmark_serve.py [--ckpt_path CKPT] [--requests 300] [--concurrency 1 8 32]

Starts the server on a free 127.0.0.1 port (the tutorial network, untrained, unless --ckpt_path
is given), posts 32x32 PNGs (CIFAR-10 images from $DATA_DIR/train when DATA_DIR is set)
from a pool of client threads with keep-alive sessions, and prints requests/s with p50 and p99
latency per concurrency level. Each level is bounded in request count and time. Writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

REPO = Path(__file__).resolve().parents[2]
# Real CIFAR-10 JPEGs when the environment names a copy (DATA_DIR/train/<class>/*.jpg), else synthetic images.
TRAIN_IMAGES = Path(os.environ["DATA_DIR"]) / "train" if os.environ.get("DATA_DIR") else None


def payloads(n: int = 64) -> list[bytes]:
    from PIL import Image

    if TRAIN_IMAGES is not None and TRAIN_IMAGES.is_dir():
        return [p.read_bytes() for p in sorted(TRAIN_IMAGES.rglob("*.jpg"))[:: 50000 // n][:n]]
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
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "serve.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt_path
        if ckpt is None:
            sys.path.insert(0, str(REPO / "tests"))
            from conftest import save_checkpoint

            ckpt = str(save_checkpoint(Path(tmp) / "tudui.ckpt", class_names=[f"c{i}" for i in range(10)]))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "serve.py"), "--ckpt_path", ckpt, "--port", str(port),
             "--max_batch_size", str(args.max_batch_size), "--trainer.accelerator", "cpu"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if requests.get(f"{base}/health", timeout=2).text == "ok":
                        break
                except requests.ConnectionError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.5)
            bodies = payloads()
            level(f"{base}/predict", bodies, 4, 40, 30)  # warm-up
            results = [level(f"{base}/predict", bodies, c, args.requests, 60) for c in args.concurrency]
        finally:
            server.terminate()
            server.wait(timeout=30)

    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}"
    print(f"{machine}; tutorial network; max_batch_size {args.max_batch_size}; loopback")
    print(f"{'clients':>8} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(
            f"{r['clients']:>8} {r['requests']:>9} {r['requests_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
