"""Batched prediction: image files in, ranked labels out, the same for predict.py and serve.py.

Images come through the one image reader (``datamodules.image_reader``), the model runs with its
test-time augmentation, and ``rank`` turns logits into ``{label, probability, top_k}``.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from datamodules.image_reader import ImageFileError, quiet_pillow, read_image
from lightning_modules.inference.model import InferenceClassifier

Row = tuple[str, Path | None, str | None]  # (label shown to the user, file, error instead of a file)


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


def reading_threads() -> int:
    """Threads that decode ahead of the forward pass: one per core, at most 4 (past that the GIL-held
    part of decoding, Pillow's Python header parsing, is the limit)."""
    return max(1, min(4, os.cpu_count() or 1))


def read_rows(
    rows: Iterable[Row], size: int, threads: int | None = None, in_flight: int = 512
) -> Iterator[tuple[str, torch.Tensor | None, str | None]]:
    """(label, image or None, error or None) per row, in input order.

    ``threads`` decode in parallel (Pillow's decoder and torch's resize release the GIL) and ahead of
    the caller, so reading overlaps the forward pass; at most ``in_flight`` rows are read ahead, so a
    folder of a million photos holds ``in_flight`` small images in memory, not a million."""

    def read(row: Row) -> tuple[str, torch.Tensor | None, str | None]:
        label, path, error = row
        if error is not None:
            return label, None, error
        try:
            return label, read_image(path, size, name=label), None
        except ImageFileError as err:
            return label, None, str(err)

    pending: deque[Future] = deque()
    rows = iter(rows)
    # Pillow's warning filters entered once for the whole folder, not once per image (~25 us each).
    with quiet_pillow(), ThreadPoolExecutor(max_workers=threads or reading_threads()) as pool:
        try:
            for row in itertools.islice(rows, in_flight):
                pending.append(pool.submit(read, row))
            while pending:
                item = pending.popleft().result()
                for row in itertools.islice(rows, 1):
                    pending.append(pool.submit(read, row))
                yield item
        finally:  # the caller stopped early (Ctrl-C, an error): drop what was queued, do not read it
            for future in pending:
                future.cancel()


def classify(
    model: InferenceClassifier, rows: Iterable[Row], top_k: int, batch_size: int, device: torch.device
) -> Iterator[dict]:
    """One record per input row, in input order; images run through the model in batches while the
    next batch is being read."""
    chunk: list[tuple[str, torch.Tensor | None, str | None]] = []
    images = 0
    for item in read_rows(rows, model.image_size, in_flight=max(2 * batch_size, 64)):
        chunk.append(item)
        images += item[1] is not None
        if images >= batch_size:
            yield from _classify_chunk(model, chunk, top_k, device)
            chunk, images = [], 0
    yield from _classify_chunk(model, chunk, top_k, device)


def _classify_chunk(model, chunk, top_k: int, device: torch.device) -> Iterator[dict]:
    images = [image for _, image, _ in chunk if image is not None]
    ranked = iter(rank(model, torch.stack(images).to(device), top_k) if images else [])
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
