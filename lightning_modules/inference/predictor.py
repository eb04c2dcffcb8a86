"""Batched prediction: image files in, ranked labels out, the same for predict.py and serve.py.

Images come through the one image reader (``datamodules.image_reader``), the model runs with its
test-time augmentation, and ``rank`` turns logits into ``{label, probability, top_k}``.
"""

from __future__ import annotations

import itertools
import os
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


# Images that take longer than this to read (on average) are mostly decoding and resizing, which
# release the GIL: more threads read them faster. Below it (a 32x32 JPEG takes ~0.05 ms) the GIL-held
# part dominates, and a second thread only takes CPU from the forward pass (2 cores, 10 alternated
# pairs of predict runs: 3,808 against 3,691 images/s, 502 against 521 us of CPU per image).
PARALLEL_READ_S = 0.001


def reading_threads() -> int:
    """Threads that may decode ahead of the forward pass: one per core, at most 4 (past that the
    GIL-held part of reading is the limit); ``read_rows`` uses more than one only for large images."""
    return max(1, min(4, os.cpu_count() or 1))


def read_rows(
    rows: Iterable[Row], size: int, threads: int | None = None, in_flight: int = 512, per_task: int = 16
) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(label, pixels or None, error or None) per row, in input order; pixels as ``read_pixels`` gives
    them (``batch`` makes a tensor of many).

    Reading runs ahead of the caller, in tasks of ``per_task`` rows (a task per image cost ~70-100
    us of hand-over per 32x32 JPEG, more than reading it), so it overlaps the forward pass. One
    thread reads until images prove slow to read (``PARALLEL_READ_S`` each on average over at least 4:
    photos), then up to ``threads`` (on 2 cores, 2 threads read 4032x3024 photos ~1.4x faster than 1;
    small JPEGs no faster, and the second takes CPU from the forward pass). At most ``in_flight`` rows are read
    ahead, so a folder of a million photos holds that many small images in memory, not a million; when
    the caller stops, queued tasks are dropped and running ones stop after their current image."""
    threads = threads or reading_threads()
    per_task = max(1, min(per_task, in_flight // (2 * threads)))
    stopped = threading.Event()
    readers = threading.Semaphore(1)  # tasks reading at once; opened up to ``threads`` for slow images
    widened = threading.Event()
    timing = [0, 0.0]  # images read and seconds taken, until widened

    def read_one(label: str, path) -> tuple[str, bytes | None, str | None]:
        try:
            return label, read_pixels(path, size, name=label), None
        except ImageFileError as err:
            return label, None, str(err)

    def timed(seconds: float) -> None:
        # Only one task reads until widened, so no other thread updates ``timing`` meanwhile.
        timing[0] += 1
        timing[1] += seconds
        if timing[0] >= 4 and timing[1] > PARALLEL_READ_S * timing[0]:
            widened.set()
            readers.release(threads - 1)

    def read(chunk: list[Row]) -> list[tuple[str, bytes | None, str | None]]:
        out = []
        with readers:
            for label, path, error in chunk:
                if stopped.is_set():
                    break
                if error is not None:
                    out.append((label, None, error))
                    continue
                start = time.perf_counter()
                out.append(read_one(label, path))
                if threads > 1 and not widened.is_set():
                    timed(time.perf_counter() - start)
        return out

    pending: deque[Future] = deque()
    rows = iter(rows)

    def submit() -> None:
        chunk = list(itertools.islice(rows, per_task))
        if chunk:
            pending.append(pool.submit(read, chunk))

    # Pillow's warning filters entered once for the whole folder, not once per image (~25 us each).
    with quiet_pillow(), ThreadPoolExecutor(max_workers=threads) as pool:
        try:
            for _ in range(max(1, in_flight // per_task)):
                submit()
            while pending:
                yield from pending.popleft().result()
                submit()
        finally:  # the caller stopped early (Ctrl-C, an error): drop what was queued, do not read it
            stopped.set()
            for future in pending:
                future.cancel()


def batch(pixels: list[bytes], size: int) -> torch.Tensor:
    """(n, 3, size, size) uint8 images from ``read_pixels`` output, channels-last in memory (the layout
    the model runs in on a CPU), in one copy."""
    joined = bytearray(b"".join(pixels))
    return torch.frombuffer(joined, dtype=torch.uint8).view(len(pixels), size, size, 3).permute(0, 3, 1, 2)


def classify(
    model: InferenceClassifier, rows: Iterable[Row], top_k: int, batch_size: int, device: torch.device
) -> Iterator[dict]:
    """One record per input row, in input order; images run through the model in batches while the
    next batch is being read."""
    chunk: list[tuple[str, bytes | None, str | None]] = []
    images = 0
    for item in read_rows(rows, model.image_size, in_flight=max(2 * batch_size, 64)):
        chunk.append(item)
        images += item[1] is not None
        if images >= batch_size:
            yield from _classify_chunk(model, chunk, top_k, device)
            chunk, images = [], 0
    yield from _classify_chunk(model, chunk, top_k, device)


def _classify_chunk(model, chunk, top_k: int, device: torch.device) -> Iterator[dict]:
    pixels = [image for _, image, _ in chunk if image is not None]
    ranked = iter(rank(model, batch(pixels, model.image_size).to(device), top_k) if pixels else [])
    for label, image, error in chunk:
        if image is None:
            yield {"path": label, "label": None, "probability": None, "top_k": [], "error": error}
        else:
            yield {"path": label, **next(ranked), "error": None}


def folder_accuracy(records: list[dict], class_names: list[str]) -> tuple[int, int] | None:
    """(correct, total) when every classified file sits in a folder named after a class (a labelled
    tree such as ``test/<class>/*``), else None."""
    classified = [r for r in records if r["error"] is None]
    truths = [Path(r["path"]).parent.name for r in classified]
    if not classified or not set(truths) <= set(class_names):
        return None
    return sum(r["label"] == t for r, t in zip(classified, truths, strict=True)), len(classified)
