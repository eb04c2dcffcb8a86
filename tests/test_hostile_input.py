"""What a hostile user feeds in: each case gets one clear line, never a crash, a hang, an
overwrite or a silent wrong answer."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import exit_status, make_image_folder, png_with_header_only, save_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from datamodules import sources
from datamodules.image_reader import ImageFileError, expand_inputs, read_image
from datamodules.sources import DataError
from lightning_modules.cli.export import export_main
from lightning_modules.cli.fit import fit_main
from lightning_modules.cli.predict import predict_main
from lightning_modules.inference.checkpoints import CheckpointError, load_classifier

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def quiet(message: str) -> None:
    pass


def damaged_png_stream(path: Path) -> None:
    """A PNG whose zlib stream is intact but whose first row filter byte is invalid (libpng: "bad
    adaptive filter value"), the file that made torchvision's decoder take the process down."""
    raw = b"".join(b"\x09" + bytes(32 * 3) for _ in range(32))  # filter type 9 does not exist

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


# --- training folders -------------------------------------------------------------------------


# Each kind of bad file, and the reason the one-line error gives for it.
BAD_TRAINING_FILES = {
    "damaged.png": (damaged_png_stream, "damaged or truncated image"),
    "broken.jpg": (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg"), "damaged or truncated"),
    "empty.png": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "dangling.png": (lambda p: p.symlink_to(p.parent / "nowhere.png"), "no such file"),
    "loop.png": (lambda p: p.symlink_to(p), "cannot open (Too many levels of symbolic links)"),
    # 74 bytes claiming 30 GB of pixels; then 48 MP, over our limit but under Pillow's.
    "bomb.png": (
        lambda p: png_with_header_only(p, 100_000, 100_000),
        "image too large, over the 40,000,000-pixel limit",
    ),
    "big.png": (lambda p: png_with_header_only(p, 8_000, 6_000), "8000x6000 pixels is over the 40,000,000-pixel"),
}


@pytest.mark.parametrize("name", BAD_TRAINING_FILES)
def test_a_bad_file_in_a_training_folder_is_named_with_its_reason(tmp_path, name):
    root = make_image_folder(tmp_path / "data", {"train": 2})
    make, reason = BAD_TRAINING_FILES[name]
    make(root / "train" / "dog" / name)
    with pytest.raises(DataError) as err:
        sources.load(root, cache_dir=tmp_path / "c", log=quiet)
    message = str(err.value)
    assert "\n" not in message and f"{root / 'train' / 'dog' / name}: {reason}" in message
    assert "fix or remove it, or pass --data.skip_bad_images true" in message


def test_bad_files_in_a_training_folder_are_skipped_when_asked(tmp_path):
    root = make_image_folder(tmp_path / "data", {"train": 3})
    for name, (make, _) in BAD_TRAINING_FILES.items():
        make(root / "train" / "dog" / name)
    data = sources.load(root, cache_dir=tmp_path / "c", skip_bad_images=True, log=quiet)
    assert len(data.train) == 9  # the seven bad files left out, the nine good ones kept


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image = read_image(path, 32)
    assert image[0].float().mean() > 200 and image[2].float().mean() < 50


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"cat": 2, "dog": 0}, "holds no images"),
        ({"cat": 2}, "only cat/"),
        ({"cat": 2, b"d\xffg".decode("utf-8", "surrogateescape"): 2}, "not valid UTF-8"),
    ],
)
def test_class_folders_that_cannot_be_classes_are_one_line_errors(tmp_path, layout, message):
    train = tmp_path / "data" / "train"
    for name, count in layout.items():
        (train / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8)).save(train / name / f"{i}.png")
    with pytest.raises(DataError, match=message):
        sources.load(tmp_path / "data", cache_dir=tmp_path / "c", log=quiet)


def test_validation_and_test_are_stored_shuffled_so_any_prefix_is_fair(tmp_path):
    root = make_image_folder(tmp_path / "data", {"train": 20, "test": 20})
    data = sources.load(root, cache_dir=tmp_path / "c", log=quiet)
    assert len(set(data.test.labels[:12].tolist())) == 3  # class order would give 12 cats
    _, val = sources.split_indices(len(data.train), 12, seed=0)
    assert len(set(data.train.labels[val].tolist())) > 1
    assert sorted(data.test.labels.tolist()) == [0] * 20 + [1] * 20 + [2] * 20


def test_an_unwritable_cache_decodes_once_and_says_so_once(tmp_path):
    root = make_image_folder(tmp_path / "data", {"train": 2})
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("a file where the cache folder should be")
    messages: list[str] = []
    sources.prepare(root, cache_dir=not_a_folder, log=messages.append)
    sources.load(root, cache_dir=not_a_folder, log=messages.append)
    assert sum(m.startswith("Decoding") for m in messages) == 1
    assert sum("Could not write the image cache" in m for m in messages) == 1


def test_a_killed_writers_temporary_file_is_cleaned_up(tmp_path):
    root = make_image_folder(tmp_path / "data", {"train": 2})
    sources.load(root, cache_dir=tmp_path / "c", log=quiet)
    (cache,) = (tmp_path / "c").glob("*.pt")
    prefix = cache.name.rsplit("-", 1)[0]
    leftover = tmp_path / "c" / f".{prefix}-old.pt.abc.tmp"
    leftover.write_bytes(b"x" * 100)
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    make_image_folder(tmp_path / "data", {"train": 3})  # a changed tree: the cache is written again
    sources.load(root, cache_dir=tmp_path / "c", log=quiet)
    assert not leftover.exists()


# --- predict inputs -----------------------------------------------------------------------------


def test_a_fifo_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    signal.alarm(10)  # a hang fails the test instead of stalling the suite
    try:
        with pytest.raises(ImageFileError, match="not a regular file"):
            read_image(fifo, 32)
        assert expand_inputs([str(tmp_path)])[0][2] is not None  # the folder holds no image files
    finally:
        signal.alarm(0)


def test_links_and_deep_folders_list_each_file_once(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "loop").symlink_to(tmp_path)
    (tmp_path / "again.png").symlink_to(tmp_path / "a.png")
    deep = tmp_path
    for _ in range(1100):  # deeper than Python's recursion limit (made one level at a time for the same reason)
        deep = deep / "d"
        os.mkdir(deep)
    Image.new("RGB", (8, 8)).save(deep / "deep.png")
    try:
        for arg in (str(tmp_path), str(tmp_path / "**" / "*.png")):
            found = [row[1] for row in expand_inputs([arg])]
            assert len(found) == 2 and os.path.basename(found[-1]) == "deep.png", arg
    finally:  # bottom-up: shutil.rmtree (pytest's clean-up) recurses and would fail at this depth
        (deep / "deep.png").unlink()
        while deep != tmp_path:
            deep.rmdir()
            deep = deep.parent


def test_file_names_that_are_not_utf8_are_classified_and_written(checkpoint, tmp_path, capsys):
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    Image.new("RGB", (32, 32)).save(tmp_path / name)
    for output in ("p.json", "p.csv"):
        assert (
            predict_main(["--ckpt_path", str(checkpoint), str(tmp_path / name), "--output", str(tmp_path / output)])
            == 0
        )
    assert json.loads((tmp_path / "p.json").read_bytes())[0]["path"] == str(tmp_path / name)
    assert b"caf\xe9.png" in (tmp_path / "p.csv").read_bytes()
    assert "caf\\xe9.png" in capsys.readouterr().out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_reader_returns_an_image_or_its_own_error(data):
    """Random bytes, truncations and bit flips of valid files: an image of the asked size, or
    ImageFileError with one line; never another exception."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=data.draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP"])))
    valid = bytearray(buffer.getvalue())
    how = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if how == "truncate":
        blob = bytes(valid[: data.draw(st.integers(0, len(valid)))])
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(valid) - 1))
            valid[i] ^= 1 << data.draw(st.integers(0, 7))
        blob = bytes(valid)
    else:
        blob = data.draw(st.binary(max_size=2048))
    try:
        image = read_image(blob, 16)
    except ImageFileError as err:
        assert "\n" not in str(err)
    else:
        assert image.shape == (3, 16, 16) and image.dtype == torch.uint8


# --- checkpoints --------------------------------------------------------------------------------


def crafted(path: Path, tmp_path: Path, **changes) -> Path:
    checkpoint = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if key == "nan_weights":
            checkpoint["state_dict"]["net.model.0.weight"].fill_(float("nan"))
        else:
            checkpoint["hyper_parameters"][key] = value
    out = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, out)
    return out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": 100_000}, "image_size 100000"),
        ({"image_size": 0}, "image_size 0"),
        ({"class_names": ["a", "b", "c"]}, "10 outputs but the file names 3 classes"),
        ({"class_names": [str(i) for i in range(12)]}, "10 outputs but the file names 12 classes"),
        ({"std": [1.0, 0.0, 1.0]}, "std"),
        ({"mean": [float("nan"), 0.0, 0.0]}, "non-finite"),
        ({"tta": "spin"}, "tta"),
        ({"nan_weights": True}, "NaN"),
    ],
)
def test_crafted_checkpoints_are_refused_before_use(tmp_path, changes, message):
    base = save_checkpoint(tmp_path / "model.ckpt", class_names=[str(i) for i in range(10)])
    with pytest.raises(CheckpointError, match=message):
        load_classifier(crafted(base, tmp_path, **changes))


def test_export_never_writes_over_its_checkpoint(checkpoint, tmp_path):
    model_pt = tmp_path / "model.pt"
    model_pt.write_bytes(checkpoint.read_bytes())
    before = model_pt.read_bytes()
    assert export_main(["--ckpt_path", str(model_pt), "--format", "torchscript"]) == 0
    assert model_pt.read_bytes() == before and (tmp_path / "model.torchscript.pt").is_file()
    args = ["--ckpt_path", str(model_pt), "--format", "torchscript", "--output", str(model_pt)]
    assert export_main(args) == 2 and model_pt.read_bytes() == before


def test_export_tolerance_follows_the_logits_scale(tmp_path):
    big = save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(big, weights_only=True)
    checkpoint["state_dict"]["net.model.8.weight"].mul_(1e4)  # logits around 1e3
    torch.save(checkpoint, big)
    assert export_main(["--ckpt_path", str(big), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 0


# --- resuming -----------------------------------------------------------------------------------


def test_resuming_with_another_network_or_a_tutorial_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 4})
    base = ["--data.data_dir", "data", "--data.val_size", "3", "--trainer.max_epochs", "1", "--test", "false", *QUIET]
    assert fit_main(base) == 0
    last = tmp_path / "runs" / "tutorial" / "version_0" / "checkpoints" / "last.ckpt"
    torch.save(torch.load(last, weights_only=True)["state_dict"], tmp_path / "tudui_0.pth")
    written = sorted(tmp_path.rglob("*.ckpt"))
    capsys.readouterr()
    cases = [
        (["--model.net", "AirbenchNet", "--ckpt_path", str(last)], "trained with the network Tudui"),
        (["--optimizer", "AdamW", "--ckpt_path", str(last)], "optimiser torch.optim.SGD"),
        (["--ckpt_path", "tudui_0.pth"], "weights only"),
    ]
    for extra, message in cases:
        assert exit_status(fit_main, [*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "\n".join(err)
    assert sorted(tmp_path.rglob("*.ckpt")) == written  # nothing new written


def test_resuming_on_data_whose_class_names_differ_is_refused(tmp_path, monkeypatch, capsys):
    # Same number of classes, other names: the network would resume and silently call a frog a ship.
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 4})
    make_image_folder(tmp_path / "other", {"train": 4}, classes=("cat", "dog", "frog"))
    base = ["--data.val_size", "3", "--trainer.max_epochs", "1", "--test", "false", *QUIET]
    assert fit_main([*base, "--data.data_dir", "data"]) == 0
    capsys.readouterr()
    status = exit_status(
        fit_main, [*base, "--data.data_dir", "other", "--trainer.max_epochs", "2", "--ckpt_path", "last"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith("error: ") and "2: ship -> frog" in err[-1]


def test_a_needle_shaped_image_is_refused_before_the_slow_resize():
    # 1 x 12,000,000 pixels took 25 s to resize on 2 cores; anything past 64:1 is refused at once.
    import io
    import time

    from PIL import Image

    from datamodules.image_reader import MAX_ASPECT, ImageFileError, read_image

    def png(width, height):
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "PNG")
        return buffer.getvalue()

    start = time.perf_counter()
    with pytest.raises(ImageFileError, match="64:1 aspect-ratio limit"):
        read_image(png(1, 200_000), 32)
    assert time.perf_counter() - start < 2
    assert read_image(png(MAX_ASPECT, 1), 32).shape == (3, 32, 32)  # at the limit: read
