"""scripts/bench/http_load.py, the serve benchmark's load generator: counts what it sent, over keep-alive
connections, and counts a server's failures instead of timing them as answers."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import load_bench_script


def load_generator():
    return load_bench_script("http_load")


@pytest.fixture
def server():
    seen = {"connections": set(), "bodies": []}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_POST(self):  # noqa: N802 - the name http.server dispatches to
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen["connections"].add(self.client_address)
            seen["bodies"].append(body)
            answer = b'{"ok": true}'
            self.send_response(500 if body == b"fail" else 200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/predict", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_each_client_keeps_one_connection_and_every_request_is_counted(server):
    url, seen = server
    figures = asyncio.run(load_generator().run(url, [b"a", b"bb", b"ccc"], clients=4, requests=30, seconds=30))
    assert figures["requests"] == 30 and figures["errors"] == 0 and figures["requests_per_s"] > 0
    assert len(seen["connections"]) == 4  # keep-alive: one connection per client, not one per request
    assert sorted(seen["bodies"]) == sorted([b"a", b"bb", b"ccc"][i % 3] for i in range(30))
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]


def test_failed_answers_are_counted_as_errors(server):
    url, _ = server
    figures = asyncio.run(load_generator().run(url, [b"ok", b"fail"], clients=2, requests=10, seconds=30))
    assert figures["errors"] == 5 and figures["first_error"].startswith("HTTP/1.1 500")
