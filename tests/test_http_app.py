"""serve.py's ASGI app (inference/http_app.py) called in this process, for what a real client cannot
easily do: a body streamed past the limit without a declared length, a client that leaves halfway,
a model that does not answer in time. tests/test_serve.py runs the real server."""

from __future__ import annotations

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
