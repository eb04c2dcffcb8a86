"""serve.py's inference threads (inference/batcher.py), in this process: how requests become batches,
and how a bad image or a failing forward pass is answered without stopping the others."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time

import numpy as np
import pytest
import torch
from helpers import batcher_answers, class_image, save_checkpoint
from PIL import Image

from datamodules.image_reader import read_pixels
from lightning_modules.inference.batcher import Batcher, RequestError
from lightning_modules.inference.checkpoints import load_classifier
from lightning_modules.inference.predictor import batch as to_batch
from lightning_modules.inference.predictor import rank


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_classifier(save_checkpoint(tmp_path_factory.mktemp("batcher") / "m.ckpt"), map_location="cpu")


class Recorder:
    """The model, recording the batch size of each forward pass; ``fail`` forward passes raise first,
    ``delay`` seconds each pass."""

    def __init__(self, model, fail: int = 0, delay: float = 0.0) -> None:
        self.model, self.fail, self.delay, self.sizes = model, fail, delay, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(images))
        time.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")
        return self.model(images)


def png(label: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(class_image(np.random.default_rng(seed), label)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_request_alone_is_answered_without_waiting_for_the_batch_timeout(model):
    batcher = Batcher(model, batch_timeout=5.0)
    start = time.perf_counter()
    (answer,) = batcher_answers(batcher, [png(0)])
    assert time.perf_counter() - start < 2.5 and answer["label"] in model.class_names


def test_requests_on_their_way_are_waited_for_and_run_as_one_batch(model):
    # Eight requests announced (bodies still arriving), then handed over one by one with pauses: the
    # batch waits for all eight instead of running the first alone.
    recorder = Recorder(model)
    batcher = Batcher(recorder, batch_timeout=5.0, max_batch_size=32)
    images = [png(i % 3, seed=i) for i in range(8)]

    async def arrive_slowly():
        with contextlib.ExitStack() as stack:
            tickets = [stack.enter_context(batcher.expecting()) for _ in images]
            tasks = []
            for data, ticket in zip(images, tickets, strict=True):
                tasks.append(asyncio.ensure_future(batcher.classify(data, ticket)))
                await asyncio.sleep(0.02)
            return await asyncio.gather(*tasks)

    batcher.start()
    try:
        answers = asyncio.run(arrive_slowly())
    finally:
        batcher.stop()
    assert recorder.sizes == [8]
    # The same records as predict's rank gives for the same images in one batch.
    expected = rank(model, to_batch([read_pixels(d, model.image_size) for d in images], model.image_size), 3)
    assert answers == expected


def test_a_batch_is_at_most_max_batch_size(model):
    recorder = Recorder(model, delay=0.05)  # requests pile up while a batch runs
    answers = batcher_answers(Batcher(recorder, max_batch_size=4, batch_timeout=0.5), [png(1)] * 10)
    assert all(isinstance(a, dict) for a in answers)
    assert sum(recorder.sizes) == 10 and max(recorder.sizes) <= 4


def test_a_bad_image_is_refused_alone_and_the_rest_of_its_batch_is_answered(model):
    answers = batcher_answers(Batcher(model), [png(0), b"not an image", png(2)[:60], png(1)])
    assert isinstance(answers[0], dict) and isinstance(answers[3], dict)
    for refused, says in ((answers[1], "not an image"), (answers[2], "truncated")):
        assert isinstance(refused, RequestError) and refused.status == 400
        assert says in str(refused) and "\n" not in str(refused)


def test_a_failing_forward_pass_is_a_500_and_the_threads_keep_serving(model, capsys):
    recorder = Recorder(model, fail=1)
    batcher = Batcher(recorder)

    async def one_after_the_other():
        failed = await asyncio.gather(batcher.classify(png(0)), return_exceptions=True)
        return failed[0], await batcher.classify(png(0))

    batcher.start()
    try:
        failed, answered = asyncio.run(one_after_the_other())
    finally:
        batcher.stop()
    assert isinstance(failed, RequestError) and failed.status == 500 and "illegal memory access" in str(failed)
    assert "\n" not in str(failed) and isinstance(answered, dict)
    assert capsys.readouterr().err.count("\n") == 1  # one line on the server's log


def test_stop_ends_every_inference_thread(model):
    batcher = Batcher(model, threads=3)
    batcher.start()
    threads = list(batcher._workers)
    batcher.stop()
    assert threads and not any(t.is_alive() for t in threads)


def test_a_request_given_up_while_queued_is_never_decoded_or_run(model):
    # One request runs (0.5 s); a second, queued behind it, gives up after 0.1 s: it is skipped, so a
    # backlog of abandoned requests cannot keep the server busy after its clients have gone.
    recorder = Recorder(model, delay=0.5)
    batcher = Batcher(recorder, max_batch_size=1)

    async def scenario():
        running = asyncio.ensure_future(batcher.classify(png(0)))
        await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batcher.classify(png(1)), 0.1)
        return await running

    batcher.start()
    try:
        answered = asyncio.run(scenario())
        time.sleep(0.1)  # the thread has taken the abandoned request by now
    finally:
        batcher.stop()
    assert isinstance(answered, dict) and recorder.sizes == [1]
