"""The plain-JPEG fast path (``image_reader._decode_plain_jpeg``) answers exactly as Pillow's full path.

Every outcome is compared with the one the reader gives with the fast path switched off: the same
pixels, byte for byte, or the same one-line error, for JPEGs of every kind Pillow writes and for
damaged copies of them."""

from __future__ import annotations

import io
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from datamodules import image_reader
from datamodules.image_reader import MAX_PIXELS, ImageFileError, read_pixels
from datamodules.jpeg_header import read_jpeg_header


def outcome(data: bytes, size: int) -> bytes | str:
    try:
        return read_pixels(data, size)
    except ImageFileError as err:
        return str(err)


def full_path_outcome(data: bytes, size: int) -> bytes | str:
    with mock.patch.object(image_reader, "_decode_plain_jpeg", return_value=None):
        return outcome(data, size)


@st.composite
def jpegs(draw) -> bytes:
    width, height = draw(st.integers(1, 160)), draw(st.integers(1, 160))  # up to past draft scaling at 8 and 16
    mode = draw(st.sampled_from(["RGB", "L"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = (height, width) if mode == "L" else (height, width, 3)
    if draw(st.booleans()):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    else:  # smooth, as photos are: other coefficients survive quantisation
        ramp = np.linspace(0, 255, width * height).reshape(height, width)
        pixels = (ramp if mode == "L" else np.stack([ramp, ramp[::-1], 255 - ramp], axis=-1)).astype(np.uint8)
    options = {
        "quality": draw(st.integers(5, 100)),
        "progressive": draw(st.booleans()),
        "optimize": draw(st.booleans()),
    }
    if mode == "RGB":
        options["subsampling"] = draw(st.sampled_from([0, 1, 2]))  # 4:4:4, 4:2:2, 4:2:0
    if draw(st.booleans()):
        options["restart_marker_blocks"] = draw(st.integers(1, 4))
    buffer = io.BytesIO()
    try:
        Image.fromarray(pixels, mode=mode).save(buffer, "JPEG", **options)
    except OSError:  # Pillow's encoder: progressive or optimized noise at quality 95+ outgrows its buffer
        assume(False)
    return buffer.getvalue()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=jpegs(), size=st.sampled_from([8, 16, 32]))
def test_a_plain_jpeg_decodes_to_the_full_paths_pixels(data, size):
    header = read_jpeg_header(data)
    assert header is not None  # every JPEG Pillow writes from RGB or L is plain
    # Past 1:64, the full path names the aspect-ratio limit; from 2x DRAFT_MARGIN x size, it draft-decodes.
    w, h, margin = header.width, header.height, size * image_reader.DRAFT_MARGIN
    sane = max(w, h) <= image_reader.MAX_ASPECT * min(w, h)
    small = min(w // margin, h // margin) < 2
    assert (image_reader._decode_plain_jpeg(data, size, MAX_PIXELS) is not None) == (sane and small)
    assert outcome(data, size) == full_path_outcome(data, size)


@settings(max_examples=150, deadline=None)
@given(data=jpegs(), cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4))
def test_a_damaged_jpeg_gets_the_full_paths_answer(data, cut, flips):
    damaged = bytearray(data[: max(1, int(len(data) * cut))] if cut < 0.9 else data)
    for where, xor in flips:
        damaged[int(where * (len(damaged) - 1))] ^= xor
    assert outcome(bytes(damaged), 16) == full_path_outcome(bytes(damaged), 16)


def test_jpegs_that_need_pillows_conversions_take_the_full_path(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the reader turns it upright
    kinds = {"exif": {"exif": exif}, "cmyk": {}, "adobe": {}}
    for name, options in kinds.items():
        image = rgb.convert("CMYK") if name == "cmyk" else rgb
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **options)
        data = buffer.getvalue()
        if name == "adobe":  # an Adobe segment (APP14) after the start of image
            data = data[:2] + b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x01" + data[2:]
        assert read_jpeg_header(data) is None, name
        assert outcome(data, 16) == full_path_outcome(data, 16)
    png = io.BytesIO()
    rgb.save(png, "PNG")
    assert read_jpeg_header(png.getvalue()) is None


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def test_segments_pillow_reads_differently_from_a_plain_parse_get_the_full_paths_answer():
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 32, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG")
    base = buffer.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    app1 = segment(0xE1, exif.tobytes())
    sof_at = base.index(b"\xff\xc0")
    sof_length = int.from_bytes(base[sof_at + 2 : sof_at + 4], "big")
    narrower = bytearray(base[sof_at : sof_at + 2 + sof_length])
    narrower[7:9] = (16).to_bytes(2, "big")  # the frame libjpeg reads: 16 wide, not 32
    cases = {
        # "FF 00" is junk to Pillow and libjpeg, which then see what a parser taking it for a segment
        # would step over: an EXIF rotation, or another frame header.
        "EXIF behind FF 00": base[:2] + b"\xff\x00" + (len(app1) + 2).to_bytes(2, "big") + app1 + base[2:],
        "frame behind FF 00": base[:sof_at]
        + b"\xff\x00"
        + (len(narrower) + 2).to_bytes(2, "big")
        + bytes(narrower)
        + base[sof_at:],
        # Segments libjpeg ignores but Pillow refuses the file for.
        "short JFIF": base[:2] + segment(0xE0, b"JFIF\0") + base[20:],
        "short ICC profile": base[:2] + segment(0xE2, b"ICC_PROFILE\0") + base[2:],
        "short Photoshop block": base[:2] + segment(0xED, b"Photoshop 3.0\x008BIM\x04\x04") + base[2:],
    }
    for name, data in cases.items():
        assert read_jpeg_header(data) is None, name
        assert outcome(data, 16) == full_path_outcome(data, 16), name
