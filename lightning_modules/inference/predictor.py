"""Batched prediction: image files in, ranked labels out, the same for predict.py and serve.py.

Images come through the one image reader (``datamodules.image_reader``), the model runs with its
test-time augmentation, and ``rank`` turns logits into ``{label, probability, top_k}``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from datamodules.image_reader import ImageFileError, quiet_pillow, read_pixels
from lightning_modules.inference.model import InferenceClassifier

Row = tuple[str, str | None, str | None]  # (label shown to the user, file, error instead of a file)


def rank(model: InferenceClassifier, images: torch.Tensor, top_k: int) -> list[dict]:
    """``{label, probability, top_k}`` for each uint8 image of a batch, in one forward pass (per TTA view)."""
    with torch.inference_mode():
        probabilities = model(images).float().softmax(dim=-1)
    if not probabilities.isfinite().all():  # never an answer with a NaN probability in it
        raise FloatingPointError("the model gave NaN or infinite scores for these images")
    top_p, top_i = probabilities.topk(top_k, dim=-1)
    records = []
    for ps, ids in zip(top_p.tolist(), top_i.tolist(), strict=True):
        ranked = [{"label": model.class_names[i], "probability": round(p, 6)} for p, i in zip(ps, ids, strict=True)]
        records.append({"label": ranked[0]["label"], "probability": ranked[0]["probability"], "top_k": ranked})
    return records


# Lanes: threads that each read a chunk of rows and run its forward pass, start to end, with an
# equal share of torch's threads. On 2 cores, 2 lanes of 1 thread classify a folder of 32x32 JPEGs
# faster than one reader feeding a 2-thread forward (scripts/bench/predict_speed.py): the reader
# took a core from the forward, every parallel region waited for that core, and in effect reading and
# the forward ran one after the other. More than 4 lanes: untested.
MAX_LANES = 4
# Seconds of reading a chunk aims at: chunks of slow images (photos, ~0.07 s each) hold a few, so every
# lane reads some (decoding releases the GIL); fast ones (a 32x32 JPEG, ~50 us) fill a batch.
CHUNK_S = 0.2
# Rows in each lane's first chunk, before reading has been timed.
FIRST_CHUNK = 8


def inference_lanes() -> int:
    """Lanes for this process: one per torch thread, at most ``MAX_LANES``."""
    return max(1, min(MAX_LANES, torch.get_num_threads()))


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` (threads started meanwhile take it too), then restored."""
    before = torch.get_num_threads()
    if count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count != before:
            torch.set_num_threads(before)


def batch(pixels: list[bytes], size: int) -> torch.Tensor:
    """(n, 3, size, size) uint8 images from ``read_pixels`` output, channels-last in memory (the layout
    the model runs in on a CPU), in one copy."""
    joined = bytearray(b"".join(pixels))
    return torch.frombuffer(joined, dtype=torch.uint8).view(len(pixels), size, size, 3).permute(0, 3, 1, 2)


def classify(
    model: InferenceClassifier,
    rows: Iterable[Row],
    top_k: int,
    batch_size: int,
    device: torch.device,
    lanes: int | None = None,
) -> Iterator[dict]:
    """One record per input row, in input order.

    Chunks of consecutive rows (at most ``batch_size``; fewer of images slow to read, see ``CHUNK_S``)
    go to ``lanes`` threads (``inference_lanes()`` by default), each of which reads its chunk and runs
    its forward pass, so one lane reads while another computes. At most two chunks per lane are queued
    or running, so a folder of a million photos holds a few batches of small images in memory, not a
    million; when the caller stops, queued chunks are dropped and running ones stop after their
    current image."""
    lanes = lanes or inference_lanes()
    size = model.image_size
    stopped = threading.Event()
    lock = threading.Lock()
    timing = [0, 0.0]  # rows read and seconds taken, over the chunks read so far

    def run(chunk: list[Row]) -> list[dict]:
        labels, errors, pixels = [], [], []
        start = time.perf_counter()
        for label, path, error in chunk:
            if stopped.is_set():
                return []
            if error is None:
                try:
                    pixels.append(read_pixels(path, size, name=label))
                except ImageFileError as err:
                    error = str(err)
            labels.append(label)
            errors.append(error)
        with lock:
            timing[0] += len(chunk)
            timing[1] += time.perf_counter() - start
        ranked = iter(rank(model, batch(pixels, size).to(device), top_k) if pixels else [])
        return [
            {"path": label, "label": None, "probability": None, "top_k": [], "error": error}
            if error is not None
            else {"path": label, **next(ranked), "error": None}
            for label, error in zip(labels, errors, strict=True)
        ]

    def chunk_rows() -> int:
        with lock:
            read, seconds = timing
        if not read:
            return min(batch_size, FIRST_CHUNK)
        return max(1, min(batch_size, int(CHUNK_S * read / max(seconds, 1e-9))))

    pending: deque[Future] = deque()
    rows = iter(rows)

    def submit() -> None:
        chunk = list(itertools.islice(rows, chunk_rows()))
        if chunk:
            pending.append(pool.submit(run, chunk))

    # Pillow's warning filters entered once for the whole run, not once per image (~25 us each).
    with quiet_pillow(), torch_threads(max(1, torch.get_num_threads() // lanes)):
        with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="predict-lane") as pool:
            try:
                for _ in range(2 * lanes):
                    submit()
                while pending:
                    yield from pending.popleft().result()
                    submit()
            finally:  # the caller stopped early (Ctrl-C, an error): drop what was queued, do not read it
                stopped.set()
                for future in pending:
                    future.cancel()


def folder_accuracy(records: list[dict], class_names: list[str]) -> tuple[int, int] | None:
    """(correct, total) when every classified file sits in a folder named after a class (a labelled
    tree such as ``test/<class>/*``), else None."""
    classified = [r for r in records if r["error"] is None]
    truths = [Path(r["path"]).parent.name for r in classified]
    if not classified or not set(truths) <= set(class_names):
        return None
    return sum(r["label"] == t for r, t in zip(classified, truths, strict=True)), len(classified)
