"""The frame header of a plain JPEG, read from its bytes without Pillow.

Pillow's ``Image.open`` parses a JPEG's markers in Python, ~100 us of a 32x32 CIFAR-10 image's
~150 us, holding the GIL, so predict's reading threads could not run it in parallel. The image
reader (``image_reader.read_image``) instead reads the frame header here (a few us) and, for a
small plain JPEG, hands the whole file to Pillow's libjpeg decoder at once (``Image.frombytes``),
which releases the GIL. Anything this parser does not recognise as plain returns None and takes
Pillow's full path, with all its conversions and error messages.
"""

from __future__ import annotations

from typing import NamedTuple

# Start-of-frame markers libjpeg decodes the same way through either Pillow entry: baseline, extended
# sequential and progressive Huffman. Lossless, hierarchical and arithmetic-coded frames go to Pillow.
PLAIN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
OTHER_FRAMES = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
START_OF_SCAN = 0xDA
# Segments that change what the pixels mean: EXIF (orientation, applied by the reader), Adobe
# (CMYK/YCCK and RGB transforms) and MPF (multi-picture files); and Photoshop's, whose parse in Pillow
# can fail on a short block.
SPECIAL_SEGMENTS = ((0xE1, b"Exif"), (0xEE, b"Adobe"), (0xE2, b"MPF"), (0xED, b"Photoshop 3.0"))
# Segments Pillow parses and refuses the file for when shorter than this (payload bytes): JFIF's
# version and an ICC profile chunk's sequence numbers. libjpeg ignores them either way.
SHORTEST = ((0xE0, b"JFIF", 7), (0xE2, b"ICC_PROFILE\0", 14))


class JpegHeader(NamedTuple):
    width: int
    height: int
    channels: int  # 1 (grayscale) or 3 (YCbCr or RGB)


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """Size and channels of an 8-bit, 1- or 3-channel JPEG without EXIF, Adobe, MPF or Photoshop
    segments; None for anything else (other formats, damaged headers, rarer JPEG kinds)."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, header = 2, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        end = pos + 2 + length
        if length < 2 or end > n:
            return None
        if marker == START_OF_SCAN:
            return header
        if marker in PLAIN_FRAMES:
            if header is not None or length < 8:
                return None
            precision, height = data[pos + 4], (data[pos + 5] << 8) | data[pos + 6]
            width, channels = (data[pos + 7] << 8) | data[pos + 8], data[pos + 9]
            if precision != 8 or channels not in (1, 3) or width == 0 or height == 0:
                return None
            header = JpegHeader(width, height, channels)
        elif marker < 0xC0 or marker in OTHER_FRAMES or 0xD0 <= marker <= 0xD8:
            # Not a segment: Pillow and libjpeg skip "FF 00" and what follows as junk, and would then
            # see a segment this parser would have stepped over as the bytes of a length.
            return None
        else:
            for special, tag in SPECIAL_SEGMENTS:
                if marker == special and data.startswith(tag, pos + 4, end):
                    return None
            for special, tag, shortest in SHORTEST:
                if marker == special and data.startswith(tag, pos + 4, end) and end - (pos + 4) < shortest:
                    return None
        pos = end
    return None
