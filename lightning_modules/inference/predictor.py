"""Batched prediction: image files in, ranked labels out, the same for predict.py and serve.py.

Images come through the one image reader (``datamodules.image_reader``), the model runs with its
test-time augmentation, and ``rank`` turns logits into ``{label, probability, top_k}``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from datamodules.image_reader import ImageFileError, quiet_pillow, read_pixels
from lightning_modules.inference.model import InferenceClassifier

Row = tuple[str, str | None, str | None]  # (label shown to the user, file, error instead of a file)


NONFINITE = "the model gave NaN or infinite scores for this image (damaged weights, or a diverged run?)"


def rank(model: InferenceClassifier, images: torch.Tensor, top_k: int) -> list[dict]:
    """``{label, probability, top_k}`` for each uint8 image of a batch, in one forward pass (per TTA view);
    ``{label: None, probability: None, top_k: [], error}`` for an image the model scores NaN or infinite
    (never an answer with a NaN probability in it)."""
    with torch.inference_mode():
        probabilities = model(images).float().softmax(dim=-1)
    finite = probabilities.isfinite().all(dim=-1).tolist()
    top_p, top_i = probabilities.topk(top_k, dim=-1)
    records = []
    for ps, ids, ok in zip(top_p.tolist(), top_i.tolist(), finite, strict=True):
        if not ok:
            records.append({"label": None, "probability": None, "top_k": [], "error": NONFINITE})
            continue
        ranked = [{"label": model.class_names[i], "probability": round(p, 6)} for p, i in zip(ps, ids, strict=True)]
        records.append({"label": ranked[0]["label"], "probability": ranked[0]["probability"], "top_k": ranked})
    return records


# Lanes: threads that each read a chunk of rows and run its forward pass, start to end, with a share
# of torch's threads. On 2 cores, 2 lanes of 1 thread classify a folder of 32x32 JPEGs faster than
# one reader feeding a 2-thread forward (scripts/bench/predict_speed.py): the reader took a core
# from the forward, every parallel region waited for that core, and in effect reading and the
# forward ran one after the other. More than 4 lanes: untested.
MAX_LANES = 4
# A chunk holds at most this many bytes of image files (and ``batch_size`` rows): decoding time grows
# with a file's size, so a chunk of phone photos (~3 MB each) holds one and every lane decodes some
# (decoding releases the GIL), while 32x32 JPEGs (~1 KB) fill a batch. Bytes, not measured reading
# time, so that the same files make the same batches, and the same answers to the last digit (a
# batch's size can move a probability's 6th decimal), in every run. The cost: files far smaller than
# their pixels (a flat 12-megapixel PNG of 41 KB) share a chunk, which one lane decodes.
CHUNK_BYTES = 1 << 20


def inference_lanes() -> int:
    """Lanes for this process: one per torch thread, at most ``MAX_LANES``."""
    return max(1, min(MAX_LANES, torch.get_num_threads()))


def thread_shares(threads: int, lanes: int) -> list[int]:
    """torch threads for each lane, largest first: ``threads`` split as evenly as it goes, at least 1 each."""
    return [max(1, threads // lanes + (i < threads % lanes)) for i in range(lanes)]


def chunks(rows: Iterable[Row], batch_size: int) -> Iterator[list[Row]]:
    """Consecutive rows, each chunk at most ``batch_size`` rows and ``CHUNK_BYTES`` of files (or one
    row, whatever its size)."""
    chunk: list[Row] = []
    held = 0
    for row in rows:
        size = _file_size(row[1]) if row[2] is None else 0
        if chunk and (len(chunk) >= batch_size or held + size > CHUNK_BYTES):
            yield chunk
            chunk, held = [], 0
        chunk.append(row)
        held += size
    if chunk:
        yield chunk


def _file_size(path) -> int:
    try:
        return os.stat(path).st_size
    except (OSError, ValueError):  # missing, unreadable, a NUL in the name: the reader says which
        return 0


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

    ``chunks`` of consecutive rows go to ``lanes`` threads (``inference_lanes()`` by default), each of
    which reads its chunk and runs its forward pass with its share of torch's threads (set in the lane:
    the caller's thread keeps its own count; threads started during a run take a lane's), so one lane
    reads while another computes. At most two chunks per lane are queued or running, so a folder of a
    million photos holds a few batches of small images in memory, not a million. When the caller
    stops, queued chunks are dropped and running ones stop after their current image, or after their
    forward pass if it has begun."""
    lanes = lanes or inference_lanes()
    size = model.image_size
    stopped = threading.Event()
    shares = thread_shares(torch.get_num_threads(), lanes)
    # MPS can crash the process on tensor work from two threads at once (pytorch/pytorch#197805).
    forward_lock = threading.Lock() if device.type == "mps" else contextlib.nullcontext()

    def run(chunk: list[Row]) -> list[dict]:
        labels, errors, pixels = [], [], []
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
        if stopped.is_set():
            return []
        with forward_lock:
            ranked = iter(rank(model, batch(pixels, size).to(device), top_k) if pixels else [])
        return [
            {"path": label, "label": None, "probability": None, "top_k": [], "error": error}
            if error is not None
            else {"path": label, **(record := next(ranked)), "error": record.get("error")}
            for label, error in zip(labels, errors, strict=True)
        ]

    def start_lane() -> None:
        # A thread's first torch call sets its count to the one last set anywhere (another lane's share):
        # made first, so that this lane's own share is the one that stays.
        torch.get_num_threads()
        torch.set_num_threads(shares.pop(0))  # the largest first: a folder of one chunk gets the most

    pending: deque[Future] = deque()
    todo = chunks(rows, batch_size)

    def submit() -> None:
        chunk = next(todo, None)
        if chunk is not None:
            pending.append(pool.submit(run, chunk))

    before = torch.get_num_threads()
    # Pillow's warning filters entered once for the whole run, not once per image (~25 us each).
    with quiet_pillow(), ThreadPoolExecutor(lanes, "predict-lane", start_lane) as pool:
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
            try:
                pool.shutdown()
            finally:  # a lane's set_num_threads also set the count threads started later take up
                torch.set_num_threads(before)


def folder_accuracy(records: list[dict], class_names: list[str]) -> tuple[int, int] | None:
    """(correct, total) when every classified file sits in a folder named after a class (a labelled
    tree such as ``test/<class>/*``), else None."""
    classified = [r for r in records if r["error"] is None]
    truths = [Path(r["path"]).parent.name for r in classified]
    if not classified or not set(truths) <= set(class_names):
        return None
    return sum(r["label"] == t for r, t in zip(classified, truths, strict=True)), len(classified)
