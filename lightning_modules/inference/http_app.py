"""serve.py's HTTP side: an ASGI app that reads image uploads, guards the server, and answers in JSON.

``POST /predict`` takes one image as the raw request body (any content type but JSON and forms), as
a multipart form upload (the first file field), or as JSON ``{"image_b64": "<base64>"}``, and
answers ``{label, probability, top_k}``; ``GET /health`` answers ``ok``. The model runs in a
``Batcher`` (inference threads of this process): one process, no queue between processes, since
each hop between processes cost more than the forward pass of a small image.

Guards, each answered at once with a one-line ``{"detail": ...}``:
- 400: not an image, malformed JSON or multipart, or (on a loopback address) a ``Host`` header that
  is not a loopback name, so a web page cannot reach the server through DNS rebinding;
- 413: a body over ``max_bytes`` (declared or sent);
- 408: the body did not arrive within ``request_timeout`` seconds (a stalled upload would hold its
  place in ``max_queue`` for good);
- 503 with ``Retry-After``: ``max_queue`` requests already in progress, or the server is stopping;
- 504: no answer within ``request_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time

from lightning_modules.inference.batcher import STOPPING, Batcher, RequestError

IMAGE_FIELD = "image_b64"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
MAX_FORM_FIELDS = 16  # a form upload needs one file field; more is not an image upload
JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictionApp:
    """The ASGI app; starts and stops the batcher's inference threads with the server (lifespan)."""

    def __init__(
        self,
        batcher: Batcher,
        loopback_only: bool = True,
        max_bytes: int = 10_000_000,
        max_queue: int = 256,
        request_timeout: float = 30.0,
    ) -> None:
        self.batcher = batcher
        self.loopback_only = loopback_only
        self.max_bytes = max_bytes
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self.in_flight = 0  # /predict requests in progress: reading, waiting or running
        self.stopping = False

    def stop_taking(self) -> None:
        """The server is stopping: queued and new requests are answered 503 at once, so open connections
        end within uvicorn's grace period. Safe to call from a signal handler."""
        self.stopping = True
        self.batcher.drain()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return  # uvicorn runs with websockets off: nothing else comes
        try:
            status, body, headers = await self._answer(scope, receive)
        except RequestError as err:
            status, body, headers = err.status, _detail(str(err)), JSON_HEADERS
        except asyncio.CancelledError:  # uvicorn's grace period is over: the server is stopping
            status, body, headers = 503, _detail(STOPPING), JSON_HEADERS
        if status:
            await _respond(send, status, body, headers)

    async def _answer(self, scope, receive) -> tuple[int, bytes, list]:
        """(status, body, headers) to send; status 0 sends nothing (the client has gone)."""
        if self.loopback_only and _host_name(_header(scope, b"host")).lower() not in LOOPBACK_NAMES:
            raise RequestError(400, "Host header is not a loopback name; serve with --host 0.0.0.0 to accept it")
        if scope["path"] == "/health":
            return 200, b"ok", [(b"content-type", b"text/plain")]
        if scope["path"] != "/predict":
            raise RequestError(404, "not found: POST an image to /predict, or GET /health")
        if scope["method"] != "POST":
            raise RequestError(405, "POST the image to /predict")
        if self.stopping:
            raise RequestError(503, STOPPING)
        if self.in_flight >= self.max_queue:
            # Answered at once: a client retries later rather than timing out behind the others.
            detail = f"server busy: {self.in_flight} requests in progress (--max_queue {self.max_queue})"
            return 503, _detail(detail), [*JSON_HEADERS, (b"retry-after", b"1")]
        self.in_flight += 1
        try:
            record = await self._predict(scope, receive)
        finally:
            self.in_flight -= 1
        return (200, json.dumps(record).encode(), JSON_HEADERS) if record is not None else (0, b"", [])

    async def _predict(self, scope, receive) -> dict | None:
        """The record for the request's image, or None if the client went away."""
        declared = _header(scope, b"content-length").lstrip("0") or "0"
        if declared.isascii() and declared.isdigit():
            # Answered from the header: a client that declares more than it sends would otherwise hold
            # the connection until it gives up, waiting for bytes that never come. More digits than any
            # body has are not converted (int() refuses past 4,300 digits).
            if len(declared) > 20:
                raise RequestError(413, _too_large(f"a {len(declared)}-digit length declared", self.max_bytes))
            if int(declared) > self.max_bytes:
                raise RequestError(413, _too_large(f"{int(declared):,} bytes declared", self.max_bytes))
        start = time.monotonic()
        with self.batcher.expecting() as ticket:
            try:
                body = await _within(_read_body(receive, self.max_bytes), self.request_timeout)
            except TimeoutError:
                raise RequestError(408, f"the request body did not arrive within {self.request_timeout:g} s") from None
            if body is None:
                return None
            data = await _image_bytes(scope, body)
            try:
                left = self.request_timeout - (time.monotonic() - start)
                return await _within(self.batcher.classify(data, ticket), max(left, 0.001))
            except TimeoutError:
                detail = f"no answer within {self.request_timeout:g} s; the server is overloaded"
                raise RequestError(504, detail) from None

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.batcher.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.batcher.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _within(awaitable, seconds: float):
    """``awaitable``'s result, TimeoutError after ``seconds``; ``asyncio.timeout`` where Python has it
    (3.11+), which costs no task per request as ``wait_for`` does there."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


async def _read_body(receive, max_bytes: int) -> bytes | None:
    """The whole request body, RequestError 413 past ``max_bytes``; None if the client disconnected."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, _too_large(f"over {size:,} bytes sent", max_bytes))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _image_bytes(scope, body: bytes) -> bytes:
    """The encoded image a request carries: the raw body, a form's first file, or JSON's base64 field."""
    content_type = _header(scope, b"content-type").lower()
    if content_type.startswith("application/json"):
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "the JSON body is not valid JSON") from None
        except RecursionError:  # [[[[...]]]] thousands deep: json's parser recurses
            raise RequestError(400, "the JSON body is nested too deeply") from None
        encoded = payload.get(IMAGE_FIELD) if isinstance(payload, dict) else None
        if not isinstance(encoded, str):
            raise RequestError(400, f'send {{"{IMAGE_FIELD}": "<base64>"}}, the raw image, or a multipart upload')
        try:
            # Line breaks and spaces are allowed: the base64 command wraps its output every 76 characters.
            return base64.b64decode("".join(encoded.split()), validate=True)
        except (ValueError, binascii.Error):
            raise RequestError(400, f"{IMAGE_FIELD} is not valid base64") from None
    if content_type.startswith("multipart/form-data"):
        return await _form_file(scope, body)
    return body


async def _form_file(scope, body: bytes) -> bytes:
    from starlette.requests import Request

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except Exception as err:  # starlette's multipart errors: no boundary, too many fields, truncated parts
        raise RequestError(400, f"malformed multipart upload ({str(err)[:120] or type(err).__name__})") from None
    try:
        uploads = [value for value in form.values() if hasattr(value, "read")]
        if not uploads:
            raise RequestError(
                400, "the multipart upload holds no file; send the image as a file (curl -F file=@cat.png)"
            )
        return await uploads[0].read()
    finally:
        await form.close()


def _header(scope, name: bytes) -> str:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), "")


def _host_name(host: str) -> str:
    """The name part of a Host header: ``127.0.0.1:8000`` -> ``127.0.0.1``, ``[::1]:8000`` -> ``[::1]``."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _too_large(what: str, max_bytes: int) -> str:
    return f"request body too large: {what}, over the {max_bytes:,}-byte limit (--max_bytes)"


def _detail(text: str) -> bytes:
    return json.dumps({"detail": text}).encode()


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
