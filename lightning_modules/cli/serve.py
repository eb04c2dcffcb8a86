"""The command line of scripts/serve.py: an HTTP prediction server.

    python scripts/serve.py --ckpt_path CKPT [--port 8000] [--host 127.0.0.1]

``POST /predict`` takes one image, as the raw request body (any content type but JSON), as a
multipart form upload (the first file field) or as JSON ``{"image_b64": ...}``, and answers
``{label, probability, top_k}``. Requests arriving together are batched into one forward pass
(``--max_batch_size``, ``--batch_timeout``). Bad input gets a 4xx with a one-line ``detail``; the
server keeps serving. ``GET /health`` answers ``ok``. Images go through the same reader and the
same test-time augmentation (the checkpoint's, or ``--tta``) as scripts/predict.py, so a file gets
the same answer from both.

One process: uvicorn's event loop reads requests (``inference/http_app.py``) and inference threads
run the batches (``inference/batcher.py``). LitServe, used before, passed every request through two
process queues; at 32 clients on one core it answered ~0.18 of the model's rate, this 0.65-0.72
(docs/deploy.md).
"""

from __future__ import annotations

import os
import socket

from lightning_modules.cli.frame import (
    CKPT_OR_ONNX,
    OneLineArgumentParser,
    UsageError,
    add_model_options,
    interrupt_on_signals,
    non_negative_float,
    one_line_errors,
    pick_device,
    port_number,
    positive_int,
)

# A request answers 504 after it; a batch must fill sooner.
REQUEST_TIMEOUT_S = 30
# 12 megapixels: a phone photo. Reading a 12-megapixel PNG takes 0.26 s on 2 cores, a 40-megapixel
# one 0.89 s, so this bounds how long one request can hold an inference thread.
SERVE_MAX_PIXELS = 12_000_000
# Seconds that open requests get to finish once the server is told to stop.
GRACEFUL_STOP_S = 5


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="serve.py", description="Serve a checkpoint over HTTP.")
    add_model_options(parser, ckpt_help=CKPT_OR_ONNX)
    parser.add_argument(
        "--host", default="127.0.0.1", choices=("127.0.0.1", "0.0.0.0", "::"), help="address to bind (loopback only)"
    )
    parser.add_argument("--port", type=port_number, default=8000)
    parser.add_argument("--top_k", type=positive_int, default=3, help="classes listed in top_k (default 3)")
    parser.add_argument("--max_batch_size", type=positive_int, default=32, help="requests run together (default 32)")
    parser.add_argument(
        "--batch_timeout",
        type=non_negative_float,
        default=0.005,
        help=f"seconds to wait to fill a batch (default 0.005; less than the {REQUEST_TIMEOUT_S} s request timeout)",
    )
    parser.add_argument(
        "--max_bytes", type=positive_int, default=10_000_000, help="largest request body (default 10 MB)"
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="inference threads, each running its own batches (default 1)"
    )
    parser.add_argument(
        "--max_queue",
        type=positive_int,
        default=256,
        help="requests in progress at once; more are answered 503 at once (default 256)",
    )
    parser.add_argument(
        "--max_pixels",
        type=positive_int,
        default=SERVE_MAX_PIXELS,
        help=f"largest image a request may send, in pixels (default {SERVE_MAX_PIXELS:,}; bounds decode work)",
    )
    return parser


@one_line_errors(interrupted="the server has stopped")
def serve_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers > (os.cpu_count() or 1):
        raise UsageError(f"--workers {args.workers}: this machine has {os.cpu_count()} CPU cores; use at most that")
    if args.batch_timeout >= REQUEST_TIMEOUT_S:
        raise UsageError(
            f"--batch_timeout {args.batch_timeout}: use less than {REQUEST_TIMEOUT_S} s, the time a request may take"
        )

    from lightning_modules.inference.batcher import Batcher
    from lightning_modules.inference.checkpoints import load_classifier
    from lightning_modules.inference.http_app import PredictionApp

    device = pick_device(args.accelerator)
    model = load_classifier(args.ckpt_path, map_location=device, tta=args.tta, onnx=True)
    listening = bind(args.host, args.port)  # a port in use is one line here, not uvicorn's exit
    batcher = Batcher(
        model,
        device=device,
        top_k=args.top_k,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        max_pixels=args.max_pixels,
        threads=args.workers,
    )
    app = PredictionApp(
        batcher,
        loopback_only=args.host == "127.0.0.1",
        max_bytes=args.max_bytes,
        max_queue=args.max_queue,
        request_timeout=REQUEST_TIMEOUT_S,
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = listening.getsockname()[1]  # the one the system chose for --port 0
    print(f"Serving {args.ckpt_path} on {device} (tta {model.tta}) at http://{host}:{port}", flush=True)
    # SIGTERM (docker stop, kill, a test's teardown) and Ctrl-C: uvicorn finishes open requests, stops
    # the inference threads (lifespan), then raises the signal again, which ends the command as
    # interrupted (exit status 130, one line).
    with interrupt_on_signals():
        run(app, listening)
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; UsageError in one line if the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port") from None
    return sock


def run(app, listening: socket.socket) -> None:
    """Serve ``app`` on the socket until a signal stops uvicorn."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # Queued and new requests are answered 503 at once, so open connections close within the
            # grace period instead of being cancelled at its end.
            app.stop_taking()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=GRACEFUL_STOP_S, lifespan="on", ws="none"
    )
    Server(config).run(sockets=[listening])
