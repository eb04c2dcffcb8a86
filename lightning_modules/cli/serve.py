"""The command line of scripts/serve.py: an HTTP prediction server on LitServe.

    python scripts/serve.py --ckpt_path CKPT [--port 8000] [--host 127.0.0.1]

``POST /predict`` takes one image, as the raw request body (any content type but JSON) or as a
multipart form upload (the first file field), and answers ``{label, probability, top_k}``.
Requests arriving together are batched into one forward pass (``--max_batch_size``,
``--batch_timeout``). Bad input gets a 4xx with a one-line ``detail``; the server keeps serving.
``GET /health`` answers ``ok`` once the model is loaded. Images go through the same reader
and the same test-time augmentation (the checkpoint's, or ``--tta``) as scripts/predict.py, so
a file gets the same answer from both.
"""

from __future__ import annotations

import base64
import contextlib
import json
import multiprocessing
import os
import signal

import litserve as ls
import torch
from fastapi import HTTPException

from datamodules.image_reader import MAX_PIXELS, ImageFileError, read_image
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
from lightning_modules.inference.predictor import rank

IMAGE_FIELD = "image_b64"


# LitServer's request timeout (its default): a request answers 504 after it; a batch must fill sooner.
REQUEST_TIMEOUT_S = 30
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
MAX_FORM_FIELDS = 16
# 12 megapixels: a phone photo. Reading a 12-megapixel PNG takes 0.26 s on 2 cores, a 40-megapixel
# one 0.89 s, so this bounds how long one request can hold the worker.
SERVE_MAX_PIXELS = 12_000_000  # a form upload needs one file field; more is not an image upload


class ImageBodyMiddleware:
    """Turns a raw-bytes or multipart image upload into the JSON body LitServe expects, and answers
    malformed requests with a 400 before they reach LitServe.

    LitServe hands ``decode_request`` the parsed JSON (or form) body, and sends it to the
    inference worker through a process queue, which cannot carry an open upload. This ASGI
    middleware reads the image bytes first and forwards ``{"image_b64": ...}`` instead. On a
    loopback address it also refuses ``Host`` headers that are not loopback names, so a web page
    cannot reach the server through DNS rebinding.
    """

    def __init__(
        self,
        app,
        path: str = "/predict",
        loopback_only: bool = True,
        max_bytes: int | None = None,
        max_queue: int | None = None,
    ) -> None:
        self.app = app
        self.path = path
        self.loopback_only = loopback_only
        self.max_bytes = max_bytes
        self.max_queue = max_queue
        self.in_flight = 0  # /predict requests this server process holds: reading, waiting or running

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        async def refuse(status: int, detail: str) -> None:
            await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)

        request = Request(scope, receive)
        if self.loopback_only and _host_name(request.headers.get("host", "")) not in LOOPBACK_NAMES:
            return await refuse(400, "Host header is not a loopback name; serve with --host 0.0.0.0 to accept others")
        if scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        if self.max_queue is not None and self.in_flight >= self.max_queue:
            # Answered at once: a client retries later rather than timing out behind the others.
            response = JSONResponse(
                {"detail": f"server busy: {self.in_flight} requests in progress (--max_queue {self.max_queue})"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
            return await response(scope, receive, send)
        self.in_flight += 1
        try:
            await self._predict(scope, receive, send, request, refuse)
        finally:
            self.in_flight -= 1

    async def _predict(self, scope, receive, send, request, refuse) -> None:
        content_type = request.headers.get("content-type", "")
        declared = request.headers.get("content-length", "")
        if self.max_bytes is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # Answered from the header: a client that declares more than it sends would otherwise hold
            # the connection until it gives up, waiting for bytes that never come.
            return await refuse(
                413, f"request body too large: {int(declared):,} bytes declared, over the {self.max_bytes:,}-byte limit"
            )
        try:
            if content_type.startswith("application/json"):
                body = await request.body()
                payload = json.loads(body)
                if not isinstance(payload, dict) or not isinstance(payload.get(IMAGE_FIELD), str):
                    return await refuse(
                        400, f'send {{"{IMAGE_FIELD}": "<base64>"}}, the raw image, or a multipart upload'
                    )
                data = None
            elif content_type.startswith("multipart/form-data"):
                form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
                uploads = [v for v in form.values() if hasattr(v, "read")]
                data = await uploads[0].read() if uploads else b""
                await form.close()
            else:
                data = await request.body()
        except HTTPException as err:
            # Raised while reading, e.g. LitServe's 413 for a body over --max_bytes. Out here, outside
            # FastAPI's exception handlers, it would become a 500: answer it directly.
            return await refuse(err.status_code, str(err.detail))
        except (ValueError, UnicodeDecodeError):  # broken JSON
            return await refuse(400, "the JSON body is not valid JSON")
        except RecursionError:  # [[[[...]]]] thousands deep: json's parser recurses
            return await refuse(400, "the JSON body is nested too deeply")
        except Exception as err:  # starlette's multipart errors: no boundary, too many fields, truncated parts
            return await refuse(400, f"malformed multipart upload ({str(err)[:120] or type(err).__name__})")
        if data is not None:
            body = json.dumps({IMAGE_FIELD: base64.b64encode(data).decode("ascii")}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


def _host_name(host: str) -> str:
    """The name part of a Host header: ``127.0.0.1:8000`` -> ``127.0.0.1``, ``[::1]:8000`` -> ``[::1]``."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class ClassifierAPI(ls.LitAPI):
    """Loads the checkpoint in each inference worker; batches requests into one forward pass."""

    def __init__(
        self, ckpt_path: str, top_k: int = 3, tta: str | None = None, max_pixels: int = MAX_PIXELS, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.ckpt_path = ckpt_path
        self.requested_top_k = top_k
        self.tta = tta
        self.max_pixels = max_pixels

    def setup(self, device: str) -> None:
        from lightning_modules.inference.checkpoints import load_classifier

        # Ctrl-C at a terminal reaches every process of the group: a worker process leaves stopping to
        # the main process, which ends it (a KeyboardInterrupt here printed a traceback at every Ctrl-C).
        if multiprocessing.parent_process() is not None:
            with contextlib.suppress(ValueError):  # not the main thread: nothing to change
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.torch_device = torch.device(device)
        self.model = load_classifier(self.ckpt_path, map_location=self.torch_device, tta=self.tta, onnx=True)
        self.top_k = min(self.requested_top_k, self.model.num_classes)
        print(f"Serving {self.ckpt_path} on {self.torch_device} (tta {self.model.tta})", flush=True)

    def decode_request(self, request) -> torch.Tensor:
        encoded = request.get(IMAGE_FIELD) if isinstance(request, dict) else None
        if not isinstance(encoded, str):
            raise HTTPException(400, "send the image as the request body or as a multipart file upload")
        try:
            # Line breaks and spaces are allowed: the base64 command wraps its output every 76 characters.
            data = base64.b64decode("".join(encoded.split()), validate=True)
        except ValueError:
            raise HTTPException(400, f"{IMAGE_FIELD} is not valid base64") from None
        try:
            return read_image(data, self.model.image_size, name="image", max_pixels=self.max_pixels)
        except ImageFileError as err:
            raise HTTPException(400, str(err)) from None

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, images: torch.Tensor) -> list[dict] | dict:
        single = images.ndim == 3  # LitServe without batching passes one image
        records = rank(self.model, (images[None] if single else images).to(self.torch_device), self.top_k)
        return records[0] if single else records

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict) -> dict:
        return output


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="serve.py", description="Serve a checkpoint over HTTP (LitServe).")
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
    parser.add_argument("--workers", type=positive_int, default=1, help="inference worker processes (default 1)")
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
    if args.workers > (os.cpu_count() or 1):  # each holds a model and a decoder: 8 took ~7.8 GB
        raise UsageError(f"--workers {args.workers}: this machine has {os.cpu_count()} CPU cores; use at most that")
    if args.batch_timeout >= REQUEST_TIMEOUT_S:  # LitServer refuses it with a ValueError
        raise UsageError(
            f"--batch_timeout {args.batch_timeout}: use less than {REQUEST_TIMEOUT_S} s, the time a request may take"
        )

    from lightning_modules.inference.checkpoints import load_classifier

    pick_device(args.accelerator)  # cuda without CUDA: one line here, not LitServer's traceback after start
    # Fail here, in one line, rather than inside a worker process.
    load_classifier(args.ckpt_path, map_location="cpu", tta=args.tta, onnx=True)
    accelerator = {"gpu": "cuda"}.get(args.accelerator, args.accelerator)
    server = ls.LitServer(
        ClassifierAPI(
            args.ckpt_path,
            top_k=args.top_k,
            tta=args.tta,
            max_pixels=args.max_pixels,
            max_batch_size=args.max_batch_size,
            batch_timeout=args.batch_timeout,
        ),
        accelerator=accelerator,
        timeout=REQUEST_TIMEOUT_S,
        workers_per_device=args.workers,
        max_payload_size=args.max_bytes,
        middlewares=[
            (
                ImageBodyMiddleware,
                {
                    "path": "/predict",
                    "loopback_only": args.host == "127.0.0.1",
                    "max_bytes": args.max_bytes,
                    "max_queue": args.max_queue,
                },
            )
        ],
    )
    # SIGTERM (docker stop, kill, a test's teardown) would end this process at once and orphan
    # LitServe's forked API and inference processes; as KeyboardInterrupt it takes LitServe's
    # graceful-shutdown path, which stops them. LitServe returns after it: the command still ends
    # as interrupted (exit status 130, one line).
    with interrupt_on_signals() as received:
        server.run(host=args.host, port=args.port, generate_client_file=False)
    if received:
        raise KeyboardInterrupt
    return 0
