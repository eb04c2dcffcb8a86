"""Reading untrusted image files: a hostile-input corpus the test makes itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import png_with_header_only
from PIL import Image

from datamodules.image_reader import ImageFileError, expand_inputs, read_image


def error_of(path, size=32) -> str:
    with pytest.raises(ImageFileError) as err:
        read_image(path, size)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_plain_rgb_is_unchanged(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png", 32)
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))


def test_resized_to_the_model_size(tmp_path):
    Image.new("RGB", (100, 60), (10, 20, 30)).save(tmp_path / "big.jpg", quality=100)
    image = read_image(tmp_path / "big.jpg", 32)
    assert image.shape == (3, 32, 32)
    assert image.float().mean(dim=(1, 2)).tolist() == pytest.approx([10, 20, 30], abs=3)


def test_truncated_jpeg(tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    assert "truncated" in error_of(tmp_path / "t.jpg")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty file" in error_of(tmp_path / "empty.png")


def test_text_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("definitely not an image")
    assert "not an image" in error_of(tmp_path / "notes.png")


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    png_with_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    assert "too large" in error_of(tmp_path / "bomb.png")
    png_with_header_only(tmp_path / "big.png", 8_000, 6_000)  # 48 MP: over our limit, under Pillow's
    assert "pixel limit" in error_of(tmp_path / "big.png")


def test_palette_with_transparency_goes_on_white(tmp_path):
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 16, 32))  # left half: palette index 1 (red, opaque); right half: index 0
    im.save(tmp_path / "p.png", transparency=0)  # index 0 is transparent
    image = read_image(tmp_path / "p.png", 32)
    assert image[:, :, :16].flatten(1).float().mean(1).tolist() == [255, 0, 0]
    assert (image[:, :, 16:] == 255).all()  # transparent -> white background, not black


def test_la_and_rgba(tmp_path):
    la = Image.new("LA", (32, 32), (100, 0))
    la.paste((100, 255), (0, 0, 32, 16))
    la.save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png", 32)
    assert (image[:, :16] == 100).all() and (image[:, 16:] == 255).all()
    Image.new("RGBA", (32, 32), (255, 0, 0, 128)).save(tmp_path / "rgba.png")
    half_red = read_image(tmp_path / "rgba.png", 32)[:, 0, 0].tolist()
    assert half_red[0] == 255 and 125 <= half_red[1] <= 129 and half_red[1] == half_red[2]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)  # pure red ink
    r, g, b = read_image(tmp_path / "cmyk.jpg", 32).float().mean(dim=(1, 2)).tolist()
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.full((32, 32), 128 * 257, dtype=np.uint16)  # mid-grey in 16 bits
    values[:16] = 65535
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = read_image(tmp_path / "deep.png", 32)
    assert (image[:, :16] == 255).all()
    assert (image[:, 16:] == 128).all()  # clipping would give 255 here


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (32, 16), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 16, 16))  # stored: left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    for source in (tmp_path / "phone.jpg", (tmp_path / "phone.jpg").read_bytes()):  # a path, and raw bytes
        image = read_image(source, 32).float()
        top, bottom = image[:, :12].mean(dim=(1, 2)), image[:, 20:].mean(dim=(1, 2))
        assert top[0] > 200 and top[2] < 60  # displayed: red on top
        assert bottom[2] > 200 and bottom[0] < 60


def test_non_ascii_name(tmp_path):
    path = tmp_path / "chat_été_猫.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(path)
    assert read_image(path, 32)[:, 0, 0].tolist() == [1, 2, 3]


def test_bytes_input(tmp_path):
    Image.new("RGB", (8, 8), (5, 6, 7)).save(tmp_path / "x.png")
    assert read_image((tmp_path / "x.png").read_bytes(), 32)[:, 0, 0].tolist() == [5, 6, 7]
    with pytest.raises(ImageFileError, match="empty input"):
        read_image(b"", 32)


def test_folder_and_missing_path(tmp_path):
    (tmp_path / "dir").mkdir()
    assert "is a folder" in error_of(tmp_path / "dir")
    assert "no such file" in error_of(tmp_path / "gone.png")


def test_expand_inputs_keeps_order_and_reports_empties(tmp_path):
    for name in ("b.png", "a.jpg", "sub/c.png", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "empty").mkdir()
    rows = expand_inputs(
        [str(tmp_path / "b.png"), str(tmp_path), str(tmp_path / "empty"), str(tmp_path / "*.jpg"), "nope.png"]
    )
    labels = [label for label, _, _ in rows]
    assert labels[0] == str(tmp_path / "b.png")
    assert labels[1:4] == [str(tmp_path / n) for n in ("a.jpg", "b.png", "sub/c.png")]  # recursive, sorted, no .txt
    assert rows[4][:2] == (str(tmp_path / "empty"), None) and "folder holds no images" in rows[4][2]
    assert labels[5] == str(tmp_path / "a.jpg")
    assert rows[6] == ("nope.png", None, "nope.png: no such file or folder")


def test_an_empty_argument_is_an_error_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "here.png")  # what Path("") would have found
    ((label, path, error),) = expand_inputs([""])
    assert (label, path) == ("", None) and "an empty argument" in error


def test_pillow_notes_about_a_file_do_not_flood_the_output():
    # "Corrupt EXIF data" once per image buried predict's rows; the image itself reads fine.
    import io
    import warnings

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(
        buffer, "JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff\x01"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(buffer.getvalue(), 32)
    assert image.shape == (3, 32, 32)
    assert not [w for w in caught if "PIL" in w.filename], [str(w.message) for w in caught]
