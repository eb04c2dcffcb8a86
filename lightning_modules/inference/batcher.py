"""Requests' images through the model in batches, in threads of their own: serve.py's inference loop.

A request hands its raw image bytes to ``Batcher.classify`` and awaits its record. Inference threads
take requests off one queue, decode them with the one image reader (``read_pixels``, as predict.py
does) and run them through the model together (``predictor.rank``), so a request gets the answer
predict.py gives for the same file. The event loop only moves bytes: decoding a large photo never
holds up other connections.

A batch starts with the first waiting request and takes up to ``max_batch_size``; it waits up to
``batch_timeout`` for more only while the server holds requests that have not reached the queue yet
(bodies still arriving), or until it has as many as the last batch had: one client alone is answered
at once (the first request after a burst may wait the timeout out), many are batched. A request
whose client stopped waiting (timed out, cancelled) is skipped, not decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from datamodules.image_reader import MAX_PIXELS, ImageFileError, quiet_pillow, read_pixels
from lightning_modules.inference.predictor import batch, rank


class RequestError(Exception):
    """This request cannot be answered; ``status`` is its HTTP status, the message a one-line reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass
class _Job:
    data: bytes
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    abandoned: bool = False  # answered, timed out or cancelled: not worth decoding any more

    def answer(self, result: dict | Exception) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for the answer any more
            self.loop.call_soon_threadsafe(_settle, self.future, result)


def _settle(future: asyncio.Future, result: dict | Exception) -> None:
    if not future.done():  # the request may have timed out or its client gone
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


_STOP = object()
STOPPING = "the server is stopping; retry on another instance or later"


class _Ticket:
    arrived = False


class Batcher:
    """Batched, threaded inference for one model (an ``InferenceClassifier`` or an ``OnnxClassifier``)."""

    def __init__(
        self,
        model,
        device: torch.device | str = "cpu",
        top_k: int = 3,
        max_batch_size: int = 32,
        batch_timeout: float = 0.005,
        max_pixels: int = MAX_PIXELS,
        threads: int = 1,
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.top_k = min(top_k, model.num_classes)
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout
        self.max_pixels = max_pixels
        self.threads = threads
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._coming = 0  # requests announced (``expecting``) that have not reached the queue
        self._last_size = 1  # requests in the last batch
        self._workers: list[threading.Thread] = []
        self._draining = False

    def start(self) -> None:
        self._workers = [
            threading.Thread(target=self._run, name=f"inference-{i}", daemon=True) for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    def drain(self) -> None:
        """Answers every queued request 503 and refuses new ones: the server is stopping. Safe to call
        from a signal handler; the batches already running finish."""
        self._draining = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is _STOP:  # not ours to drop: put back after the rest
                self._jobs.put(_STOP)
                return
            job.answer(RequestError(503, STOPPING))

    def stop(self, timeout: float = 10.0) -> None:
        """Drains the queue (``drain``), then ends the inference threads after the batches they are
        running, waiting ``timeout`` seconds in all."""
        self.drain()
        for _ in self._workers:
            self._jobs.put(_STOP)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._workers = []

    @contextlib.contextmanager
    def expecting(self) -> Iterator[_Ticket]:
        """A request is on its way (its body still arriving): a batch being gathered waits for it until
        ``classify(data, ticket)`` hands it over or the block ends."""
        ticket = _Ticket()
        with self._lock:
            self._coming += 1
        try:
            yield ticket
        finally:
            self._arrived(ticket)

    async def classify(self, data: bytes, ticket: _Ticket | None = None) -> dict:
        """``{label, probability, top_k}`` for one encoded image; RequestError (400) if it is not one."""
        if not self._workers:
            raise RuntimeError("Batcher.classify before Batcher.start")
        if self._draining:
            raise RequestError(503, STOPPING)
        loop = asyncio.get_running_loop()
        job = _Job(data, loop.create_future(), loop)
        self._jobs.put(job)
        if ticket is not None:  # after the put: a batch being gathered never sees neither
            self._arrived(ticket)
        try:
            return await job.future
        finally:  # answered, or given up (timed out, cancelled): a job still queued is skipped
            job.abandoned = True

    def _arrived(self, ticket: _Ticket) -> None:
        with self._lock:
            if not ticket.arrived:
                ticket.arrived = True
                self._coming -= 1

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The batch that starts with ``first``, and whether a stop request was taken meanwhile."""
        jobs, deadline = [first], time.monotonic() + self.batch_timeout
        while len(jobs) < self.max_batch_size:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                # Wait for requests already on their way, and for as many as the last batch had: clients
                # that were answered together tend to come back together.
                if left <= 0 or (self._coming <= 0 and len(jobs) >= self._last_size):
                    break
                try:  # short waits, so that a request announced meanwhile is noticed
                    job = self._jobs.get(timeout=min(left, 0.001))
                except queue.Empty:
                    continue
            if job is _STOP:
                return jobs, True
            if not job.abandoned:
                jobs.append(job)
        self._last_size = len(jobs)
        return jobs, False

    def _run(self) -> None:
        with quiet_pillow(), torch.inference_mode():
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    return
                jobs, stop = self._gather(first)
                try:
                    self._answer(jobs)
                except Exception as err:  # a bug or a device error: answer 500 and keep serving
                    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                    with contextlib.suppress(OSError, ValueError):  # stderr closed: the answers still go out
                        print(
                            f"error: inference failed for a batch of {len(jobs)}: {reason}", file=sys.stderr, flush=True
                        )
                    for job in jobs:
                        job.answer(RequestError(500, f"inference failed: {reason}"))
                if stop:
                    return

    def _answer(self, jobs: list[_Job]) -> None:
        images, readable = [], []
        for job in jobs:
            if job.abandoned:  # its client stopped waiting while the batch was decoded (a large photo takes ~0.1 s)
                continue
            try:
                images.append(read_pixels(job.data, self.model.image_size, name="image", max_pixels=self.max_pixels))
                readable.append(job)
            except ImageFileError as err:
                job.answer(RequestError(400, str(err)))
        if not readable:
            return
        # A failure here (a device error) is answered 500 for the whole batch by ``_run``.
        records = rank(self.model, batch(images, self.model.image_size).to(self.device), self.top_k)
        for job, record in zip(readable, records, strict=True):
            job.answer(RequestError(500, record["error"]) if "error" in record else record)
