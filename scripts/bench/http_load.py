"""A small HTTP load generator: N keep-alive connections posting image files, as one process.

    python scripts/bench/http_load.py URL --bodies FOLDER [--clients 32] [--requests 2000] [--seconds 30]
                                      [--cpu 0]

Each client is one HTTP/1.1 connection (asyncio streams, no HTTP library: the generator must cost
far less per request than the server it measures) that posts the files of FOLDER in turn as raw
bodies, one request at a time. Prints one JSON line: requests, errors, wall seconds, requests/s,
p50 and p99 latency in ms. ``--cpu`` pins the process to one core (Linux), so a benchmark can say
which core the clients had and keep them off the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


async def client(host: str, port: int, path: str, bodies: list[bytes], jobs: asyncio.Queue, deadline: float,
                 latencies: list[float], errors: list[str]) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < deadline:
            try:
                i = jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = bodies[i % len(bodies)]
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            start = time.perf_counter()
            writer.write(head + body)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not status.startswith(b"HTTP/1.1 200"):
                errors.append(status.decode("latin-1").strip())
    finally:
        writer.close()


async def run(url: str, bodies: list[bytes], clients: int, requests: int, seconds: float) -> dict:
    parts = urlsplit(url)
    jobs: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        jobs.put_nowait(i)
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    start = time.perf_counter()
    await asyncio.gather(
        *(client(parts.hostname, parts.port, parts.path, bodies, jobs, deadline, latencies, errors)
          for _ in range(clients))
    )  # fmt: skip
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. http://127.0.0.1:8000/predict")
    parser.add_argument("--bodies", required=True, help="a folder of files to post, in turn")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0, help="stop sending after this long")
    parser.add_argument("--cpu", type=int, help="pin this process to this core (Linux)")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    bodies = [p.read_bytes() for p in sorted(Path(args.bodies).iterdir()) if p.is_file()]
    if not bodies:
        sys.exit(f"error: no files in {args.bodies}")
    print(json.dumps(asyncio.run(run(args.url, bodies, args.clients, args.requests, args.seconds))))


if __name__ == "__main__":
    main()
