"""One rule for which files are images (``datamodules.image_reader.is_image_file``), shared by the
training and evaluation folders (``sources.scan_folder``) and predict's folders and patterns
(``expand_inputs``): a supported suffix and a name not starting with "."; hidden folders are not
entered. A file named explicitly on predict's command line is read whatever its name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import exit_status, make_image_folder
from PIL import Image

from datamodules import sources
from datamodules.image_reader import expand_inputs, is_image_file
from lightning_modules.cli.predict import predict_main


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cat.jpg", True), ("CAT.JPEG", True), ("x.png", True), ("a.b.webp", True),
        (".hidden.jpg", False), ("._x.jpg", False), (".DS_Store", False), (".jpg", False),
        ("notes.txt", False), ("x.jpg.tmp", False), ("noext", False),
    ],
)  # fmt: skip
def test_is_image_file(name, expected, tmp_path):
    assert is_image_file(name) is expected
    assert is_image_file(tmp_path / "sub" / name) is expected


def hidden_files(folder):
    """A visible image, a hidden image, and a macOS resource fork (not an image at all)."""
    Image.new("RGB", (32, 32), (200, 40, 40)).save(folder / "visible.png")
    Image.new("RGB", (32, 32), (40, 40, 200)).save(folder / ".hidden.jpg")
    (folder / "._visible.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")


def test_training_evaluation_and_predict_list_the_same_files(tmp_path, checkpoint, capsys):
    root = make_image_folder(tmp_path / "data", {"train": 2, "test": 2})
    hidden_files(root / "test" / "cat")
    hidden_dir = root / "test" / "cat" / ".thumbnails"
    hidden_dir.mkdir()
    Image.new("RGB", (32, 32)).save(hidden_dir / "t.png")
    _, files = sources.scan_folder(root)
    scored = {root / rel for rel, *_ in files["test"]}  # what evaluate.py scores (and fit.py tests)
    listed = {Path(path) for _, path, error in expand_inputs([str(root / "test")]) if error is None}
    assert listed == scored
    assert root / "test" / "cat" / "visible.png" in listed
    assert not any(p.name.startswith(".") or ".thumbnails" in p.parts for p in listed)
    # The resource fork made predict exit 1 ("done in part") while training ignored it.
    output = tmp_path / "preds.json"
    assert predict_main(["--ckpt_path", str(checkpoint), str(root / "test"), "--output", str(output)]) == 0
    assert len(json.loads(output.read_text())) == len(scored) == 7


def test_patterns_skip_hidden_files_as_a_shell_does(tmp_path):
    hidden_files(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    for pattern in ("*", "*.png", "*.jpg", "**/*"):
        found = [row for row in expand_inputs([str(tmp_path / pattern)])]
        if pattern == "*.jpg":  # only the hidden one matches: nothing is listed, and that is said
            assert found[0][1] is None and "matches no image files" in found[0][2]
        else:
            assert [Path(path).name for _, path, _ in found] == ["visible.png"], pattern


def test_a_dotfile_named_explicitly_is_read(tmp_path, checkpoint, capsys):
    hidden_files(tmp_path)
    assert predict_main(["--ckpt_path", str(checkpoint), str(tmp_path / ".hidden.jpg")]) == 0
    assert ".hidden.jpg" in capsys.readouterr().out
    # A resource fork named explicitly is read too, and is named as not an image (done in part).
    assert exit_status(predict_main, ["--ckpt_path", str(checkpoint), str(tmp_path / "._visible.png")]) == 1


def test_a_folder_nested_past_the_path_limit_says_why_it_found_nothing(tmp_path):
    # 2,100 levels: the image at the bottom is past the system's path length limit (4,096 bytes).
    import os

    from PIL import Image

    from datamodules.image_reader import expand_inputs

    here = os.open(tmp_path, os.O_RDONLY)
    for _ in range(2100):
        os.mkdir("d", dir_fd=here)
        below = os.open("d", os.O_RDONLY, dir_fd=here)
        os.close(here)
        here = below
    fd = os.open("x.png", os.O_WRONLY | os.O_CREAT, dir_fd=here)
    with os.fdopen(fd, "wb") as f:
        Image.new("RGB", (4, 4)).save(f, "PNG")
    os.close(here)
    try:
        (row,) = expand_inputs([str(tmp_path / "d")])
        assert row[1] is None and "could not be read" in row[2] and "File name too long" in row[2]
    finally:  # bottom-up, by folder handles: pytest's clean-up (shutil.rmtree) recurses and fails at this depth
        here = os.open(tmp_path, os.O_RDONLY)
        for _ in range(2100):
            below = os.open("d", os.O_RDONLY, dir_fd=here)
            os.close(here)
            here = below
        os.unlink("x.png", dir_fd=here)
        for _ in range(2100):
            above = os.open("..", os.O_RDONLY, dir_fd=here)
            os.close(here)
            os.rmdir("d", dir_fd=above)
            here = above
        os.close(here)
