"""serve.py's ASGI app (inference/http_app.py) called in this process, for what a real client cannot
easily do: a body streamed past the limit without a declared length, a client that leaves halfway,
a model that does not answer in time. tests/test_serve.py runs the real server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import pytest
from helpers import asgi_request, save_checkpoint
from PIL import Image

from lightning_modules.inference.batcher import Batcher
from lightning_modules.inference.checkpoints import load_classifier
from lightning_modules.inference.http_app import PredictionApp


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_classifier(save_checkpoint(tmp_path_factory.mktemp("app") / "m.ckpt"), map_location="cpu")


@pytest.fixture
def image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class Slow:
    """The model, its first forward pass taking ``delay`` seconds."""

    def __init__(self, model, delay: float) -> None:
        self.model, self.delay = model, delay

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, images):
        time.sleep(self.delay)
        self.delay = 0
        return self.model(images)


def started(app: PredictionApp):
    app.batcher.start()
    return app


def test_a_body_streamed_past_the_limit_is_413_though_no_length_was_declared(model, image):
    app = started(PredictionApp(Batcher(model), max_bytes=1_000))
    try:
        status, body = asgi_request(app, "POST", "/predict", [b"x" * 600, b"x" * 600, b"never read"])
        assert status == 413 and "1,000-byte limit" in json.loads(body)["detail"]
        assert asgi_request(app, "POST", "/predict", [image[:100], image[100:]])[0] == 200  # in parts, under it
    finally:
        app.batcher.stop()
    assert app.in_flight == 0 and app.batcher._coming == 0


def test_a_client_that_leaves_mid_body_gets_nothing_and_frees_its_place(model, image):
    app = started(PredictionApp(Batcher(model, batch_timeout=5.0), max_queue=1))
    try:
        assert asgi_request(app, "POST", "/predict", [image[:50]], disconnect=True) is None
        assert app.in_flight == 0 and app.batcher._coming == 0  # a batch would otherwise wait for it
        start = time.perf_counter()
        assert asgi_request(app, "POST", "/predict", image)[0] == 200
        assert time.perf_counter() - start < 2.5
    finally:
        app.batcher.stop()


def test_a_model_that_does_not_answer_in_time_is_a_504_in_one_line(model, image):
    app = started(PredictionApp(Batcher(Slow(model, 1.0)), request_timeout=0.2))
    try:
        status, body = asgi_request(app, "POST", "/predict", image)
        time.sleep(1.0)  # the late answer finds the request's event loop closed: the thread goes on
        later = asgi_request(app, "POST", "/predict", image)
    finally:
        app.batcher.stop()
    assert status == 504 and "no answer within 0.2 s" in json.loads(body)["detail"]
    assert later[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "says"),
    [
        ("GET", "/predict", (), b"", 405, "POST the image"),
        ("POST", "/classify", (), b"", 404, "POST an image to /predict"),
        ("POST", "/predict", (("content-type", "application/json"),), b'{"image_b64": "**"}', 400, "not valid base64"),
        ("POST", "/predict", (("content-type", "application/json"),), b'["image_b64"]', 400, '{"image_b64"'),
    ],
    ids=["get-predict", "unknown-path", "bad-base64", "json-not-an-object"],
)
def test_wrong_requests_name_the_right_one(model, method, path, headers, body, status, says):
    app = started(PredictionApp(Batcher(model)))
    try:
        answer = asgi_request(app, method, path, body, headers=headers)
    finally:
        app.batcher.stop()
    assert answer[0] == status and says in json.loads(answer[1])["detail"]


def test_json_base64_and_raw_uploads_get_the_same_answer(model, image):
    app = started(PredictionApp(Batcher(model)))
    try:
        raw = asgi_request(app, "POST", "/predict", image)
        encoded = json.dumps({"image_b64": base64.b64encode(image).decode()}).encode()
        as_json = asgi_request(app, "POST", "/predict", encoded, headers=(("content-type", "application/json"),))
    finally:
        app.batcher.stop()
    assert raw[0] == as_json[0] == 200 and json.loads(raw[1]) == json.loads(as_json[1])


def test_a_stalled_upload_is_a_408_and_frees_its_place(model, image):
    app = started(PredictionApp(Batcher(model), max_queue=1, request_timeout=0.3))
    try:
        status, body = asgi_request(app, "POST", "/predict", [image[:40]], stall=True)
        assert status == 408 and "did not arrive within 0.3 s" in json.loads(body)["detail"]
        assert app.in_flight == 0 and app.batcher._coming == 0
        assert asgi_request(app, "POST", "/predict", image)[0] == 200
    finally:
        app.batcher.stop()


@pytest.mark.parametrize(
    ("length", "status"), [("0" * 5_000 + "{n}", 200), ("9" * 5_000, 413), ("{n}0000", 413)],
    ids=["leading-zeros", "5000-digits", "over-the-limit"],
)  # fmt: skip
def test_any_content_length_is_judged_in_one_line(model, image, length, status):
    app = started(PredictionApp(Batcher(model), max_bytes=len(image) * 10))
    try:
        answer = asgi_request(
            app, "POST", "/predict", image, headers=(("content-length", length.format(n=len(image))),)
        )
    finally:
        app.batcher.stop()
    assert answer[0] == status
    if status == 413:
        assert "byte limit" in json.loads(answer[1])["detail"]


def test_header_names_and_values_are_read_as_http_says_regardless_of_case(model, image):
    app = started(PredictionApp(Batcher(model)))
    encoded = json.dumps({"image_b64": base64.b64encode(image).decode()}).encode()
    try:
        as_json = asgi_request(app, "POST", "/predict", encoded, headers=(("Content-Type", "Application/JSON"),))
        loud_host = asgi_request(app, "GET", "/health", host="LOCALHOST:8000")
    finally:
        app.batcher.stop()
    assert as_json[0] == 200 and loud_host == (200, b"ok")


def test_a_form_without_a_file_says_to_send_one(model):
    app = started(PredictionApp(Batcher(model)))
    form = b'--x\r\nContent-Disposition: form-data; name="image"\r\n\r\nnot a file\r\n--x--\r\n'
    try:
        status, body = asgi_request(
            app, "POST", "/predict", form, headers=(("content-type", "multipart/form-data; boundary=x"),)
        )
    finally:
        app.batcher.stop()
    assert status == 400 and "holds no file" in json.loads(body)["detail"]


def test_stopping_answers_waiting_and_new_requests_503_at_once(model, image):
    # One request runs (0.5 s), two wait behind it; the server is told to stop: the two waiting are
    # answered 503 at once, the running one is answered, a new one is refused.
    app = started(PredictionApp(Batcher(Slow(model, 0.5), max_batch_size=1)))

    async def scenario():
        asks = [asyncio.ensure_future(asgi_call(app, image)) for _ in range(3)]
        await asyncio.sleep(0.2)
        app.stop_taking()
        return await asyncio.gather(*asks), await asgi_call(app, image)

    try:
        answers, after = asyncio.run(scenario())
    finally:
        app.batcher.stop()
    assert sorted(status for status, _ in answers) == [200, 503, 503] and after[0] == 503
    assert all("stopping" in json.loads(body)["detail"] for status, body in [*answers, after] if status == 503)


def test_a_request_cancelled_at_the_end_of_the_grace_period_is_a_503_not_a_traceback(model, image):
    app = started(PredictionApp(Batcher(Slow(model, 0.5))))

    async def scenario():
        ask = asyncio.ensure_future(asgi_call(app, image))
        await asyncio.sleep(0.1)
        ask.cancel()  # what uvicorn does to the requests still open when its grace period ends
        return await ask

    try:
        status, body = asyncio.run(scenario())
    finally:
        app.batcher.stop()
    assert status == 503 and "stopping" in json.loads(body)["detail"]
    assert app.in_flight == 0


async def asgi_call(app, body: bytes) -> tuple[int, bytes]:
    """One raw-body POST /predict through the app, in the running event loop."""
    sent = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"host", b"127.0.0.1")]}
    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]
