"""Inference at the model's speed without changing its answers: predict's lanes (reading and forward
passes in parallel, bounded, in input order), thread-safe Pillow warnings, and one fast forward
whichever way the model was loaded."""

from __future__ import annotations

import threading
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.image_reader import read_image, read_pixels
from lightning_modules import ImageClassifier
from lightning_modules.inference import predictor
from lightning_modules.inference.checkpoints import load_classifier
from lightning_modules.inference.predictor import chunks, classify
from tests.helpers import make_image_folder, save_checkpoint

CPU = torch.device("cpu")


def image_rows(folder, n: int) -> list:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (8 + i % 5, 9, 3), dtype=np.uint8)).save(path)
        rows.append((str(path), path, None))
    return rows


@pytest.fixture
def forwards(monkeypatch):
    """The model's forward replaced by a recorder: each batch's images, and the record per image is its
    pixels' sum (so each answer is tied to its own image)."""
    seen: list[torch.Tensor] = []

    def rank(model, images, top_k):
        seen.append(images)
        return [{"label": int(image.sum()), "probability": 1.0, "top_k": []} for image in images]

    monkeypatch.setattr(predictor, "rank", rank)
    return seen


def test_lanes_keep_input_order_and_each_rows_error(tmp_path, forwards):
    rows = image_rows(tmp_path, 40)
    rows.insert(7, ("missing.png", tmp_path / "missing.png", None))
    rows.insert(20, ("pattern*", None, "pattern*: pattern matches no image files"))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    rows.append(("bad.jpg", tmp_path / "bad.jpg", None))

    got = list(classify(SimpleNamespace(image_size=16), rows, 1, 6, CPU, lanes=4))

    assert [r["path"] for r in got] == [label for label, _, _ in rows]
    for (label, path, error), record in zip(rows, got, strict=True):
        if error is not None or label in ("missing.png", "bad.jpg"):
            assert record["label"] is None and record["error"]
        else:
            pixels = torch.frombuffer(bytearray(read_pixels(path, 16)), dtype=torch.uint8)
            assert record["error"] is None and record["label"] == int(pixels.sum())
    assert "no such file" in got[7]["error"] and got[20]["error"] == "pattern*: pattern matches no image files"
    assert all(len(images) <= 6 for images in forwards)


def test_reading_ahead_is_bounded_and_stops_when_the_caller_does(tmp_path, monkeypatch, forwards):
    rows = image_rows(tmp_path, 100)
    started = []
    real = predictor.read_pixels

    def slow(path, size, name=None):
        started.append(name)
        time.sleep(0.01)
        return real(path, size, name=name)

    monkeypatch.setattr(predictor, "read_pixels", slow)
    model = SimpleNamespace(image_size=8)
    records = classify(model, rows, 1, 5, CPU, lanes=2)
    next(records)
    time.sleep(0.8)  # time enough for 2 lanes to read all 100, were reading not bounded
    # Two chunks of at most 5 per lane, one more queued once the first was taken.
    assert len(started) <= 25, f"{len(started)} images read for one taken: reading ahead is unbounded"

    records = classify(model, rows, 1, 5, CPU, lanes=2)
    next(records)
    at_close = len(started)
    records.close()  # the caller stops (Ctrl-C, an error): what was queued is dropped, not read
    assert len(started) <= at_close + 2, "reads queued before the caller stopped went on"


def test_chunks_fill_a_batch_of_small_files_and_hold_few_large_ones(tmp_path, monkeypatch):
    # Decoding time grows with a file's size: a chunk of phone photos holds one or two, so that every
    # lane decodes some, and small images fill a batch. By bytes on disk, so the same files make the
    # same batches in every run (a batch's size can move a probability's 6th decimal).
    monkeypatch.setattr(predictor, "CHUNK_BYTES", 10_000)
    rows = []
    for i, size in enumerate([100] * 70 + [6_000] * 3 + [100] * 5 + [50_000] + [100] * 2):
        (tmp_path / f"{i:03d}.jpg").write_bytes(bytes(size))
        rows.append((f"{i:03d}.jpg", str(tmp_path / f"{i:03d}.jpg"), None))
    rows.insert(3, ("missing.jpg", str(tmp_path / "missing.jpg"), None))
    rows.insert(5, ("pattern*", None, "pattern*: pattern matches no image files"))
    got = list(chunks(rows, 32))
    assert [row for chunk in got for row in chunk] == rows
    # 8 small + a large; a large alone; a large + 5 small; the largest alone; the last 2 small.
    assert [len(c) for c in got] == [32, 32, 9, 1, 6, 1, 2]


def test_lanes_read_slow_images_at_once(tmp_path, monkeypatch, forwards):
    lock, now, most = threading.Lock(), [0], [0]

    def slow_read(path, size, name=None):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1
        return bytes(size * size * 3)

    monkeypatch.setattr(predictor, "read_pixels", slow_read)
    monkeypatch.setattr(predictor, "CHUNK_BYTES", 1_000)
    rows = []
    for i in range(12):
        (tmp_path / f"{i}.jpg").write_bytes(bytes(800))  # a chunk each, as phone photos are
        rows.append((f"{i}.jpg", str(tmp_path / f"{i}.jpg"), None))
    assert len(list(classify(SimpleNamespace(image_size=4), rows, 1, 64, CPU, lanes=2))) == len(rows)
    assert most[0] == 2 and [len(images) for images in forwards] == [1] * len(rows)


@pytest.mark.parametrize(("threads", "lanes", "shares"), [(4, 2, [2, 2]), (6, 4, [2, 2, 1, 1]), (2, 3, [1, 1, 1])])
def test_lanes_share_torchs_threads_and_give_them_back(tmp_path, monkeypatch, threads, lanes, shares):
    seen = {}

    def rank(model, images, top_k):
        seen[threading.get_ident()] = torch.get_num_threads()
        time.sleep(0.01)  # every lane gets a chunk
        return [{"label": "x", "probability": 1.0, "top_k": []}] * len(images)

    monkeypatch.setattr(predictor, "rank", rank)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = image_rows(tmp_path, 24)
        records = classify(SimpleNamespace(image_size=8), rows, 1, 2, CPU, lanes=lanes)
        next(records)
        assert torch.get_num_threads() == threads  # the caller's thread keeps its own count meanwhile
        assert len(list(records)) == 23
        assert sorted(seen.values(), reverse=True) == shares and torch.get_num_threads() == threads
        # Threads started after a run take the count the caller had, not a lane's.
        later = []
        worker = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert later == [threads]
    finally:
        torch.set_num_threads(before)


def test_a_run_of_one_chunk_gets_the_largest_share(tmp_path, monkeypatch):
    seen = []

    def rank(model, images, top_k):
        seen.append(torch.get_num_threads())
        return [{}] * len(images)

    monkeypatch.setattr(predictor, "rank", rank)
    before = torch.get_num_threads()
    torch.set_num_threads(6)
    try:
        assert len(list(classify(SimpleNamespace(image_size=8), image_rows(tmp_path, 5), 1, 8, CPU, lanes=4))) == 5
    finally:
        torch.set_num_threads(before)
    assert seen == [2]  # of shares 2, 2, 1, 1


def test_reading_in_threads_leaves_the_warning_filters_as_they_were(tmp_path, forwards):
    rows = image_rows(tmp_path, 30)
    before = list(warnings.filters)
    for _ in range(5):
        list(classify(SimpleNamespace(image_size=8), rows, 1, 4, CPU, lanes=4))
    assert warnings.filters == before
    errors = []

    def read_many() -> None:
        try:
            for _, path, _ in rows:
                read_image(path, 8)
        except Exception as err:  # noqa: BLE001 - any failure in a thread fails the test below
            errors.append(err)

    threads = [threading.Thread(target=read_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and warnings.filters == before


def test_a_decompression_bomb_warning_is_still_an_error_when_reading_in_threads(tmp_path, monkeypatch, forwards):
    rows = image_rows(tmp_path, 12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # every image above 50 pixels warns in Pillow
    got = list(classify(SimpleNamespace(image_size=8), rows, 1, 4, CPU, lanes=4))
    assert all(r["label"] is None and "too large" in r["error"] for r in got) and not forwards


@pytest.fixture
def lightning_and_inference(tmp_path):
    ckpt = save_checkpoint(tmp_path / "model.ckpt", class_names=("a", "b", "c"))
    lightning = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    inference = load_classifier(ckpt, map_location="cpu", tta="none")
    return lightning, inference


def test_a_model_built_in_python_loads_back_with_load_from_checkpoint(lightning_and_inference):
    lightning, inference = lightning_and_inference
    assert type(lightning.net).__name__ == "Tudui" and lightning.class_names == ["a", "b", "c"]
    for ours, theirs in zip(lightning.net.state_dict().values(), inference.net.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


def test_load_from_checkpoint_builds_only_this_projects_networks(tmp_path):
    with pytest.raises(ValueError, match="not one of this project's: AirbenchNet, ResNet18, Tudui"):
        ImageClassifier(net={"class_path": "os.system", "init_args": {"command": "true"}})


def first_conv_input_layouts(model, images) -> list[bool]:
    conv = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    handle = conv.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    try:
        model(images)
    finally:
        handle.remove()
    return seen


def test_the_lightning_forward_runs_in_the_inference_models_layout_and_gives_its_logits(lightning_and_inference):
    lightning, inference = lightning_and_inference
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert first_conv_input_layouts(lightning, images) == [True]  # as fast as predict's model
        assert first_conv_input_layouts(inference, images) == [True]
        torch.testing.assert_close(lightning(images), inference(images), rtol=1e-5, atol=1e-5)
    # Training keeps the recipe's layout (channels_last False here): gradients flow as configured.
    assert first_conv_input_layouts(lightning.train(), images) == [False]


def test_predict_in_lanes_answers_as_one_lane_does(tmp_path):
    make_image_folder(tmp_path / "data", {"test": 12}, suffix=".jpg")
    ckpt = save_checkpoint(tmp_path / "model.ckpt")
    model = load_classifier(ckpt)
    rows = [(str(p), p, None) for p in sorted((tmp_path / "data").rglob("*.jpg"))]
    parallel = list(classify(model, rows, 2, 5, CPU, lanes=3))
    serial = list(classify(model, rows, 2, 5, CPU, lanes=1))
    assert parallel == serial and [r["path"] for r in parallel] == [r[0] for r in rows]


def test_a_large_jpeg_decodes_at_reduced_scale_within_one_grey_level_of_the_whole_decode(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    from datamodules.augment import resize

    h, w = 1536, 2048
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    smooth = 127 + 60 * np.sin(xx / 97)[..., None] * np.array([1, 0.5, 0.2]) + 50 * np.cos(yy / 53)[..., None]
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    with Image.open(path) as im:
        whole = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    expected = resize(whole[None], 32)[0]

    decoded_sizes = []
    real_load = JpegImagePlugin.JpegImageFile.load

    def load(self):
        decoded_sizes.append(self.size)
        return real_load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    got = read_image(path, 32)
    assert decoded_sizes and decoded_sizes[0][0] <= w // 4, f"decoded at {decoded_sizes[0]}: not reduced"
    assert (got.int() - expected.int()).abs().max() <= 1
    # Small images decode whole: a 100x100 JPEG for a 32x32 input is not reduced.
    noise = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "small.jpg")
    with Image.open(tmp_path / "small.jpg") as im:
        small = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    assert torch.equal(read_image(tmp_path / "small.jpg", 32), resize(small[None], 32)[0])
