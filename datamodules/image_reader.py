"""The one image reader: every image the project reads becomes a uint8 (3, size, size) tensor here.

Training folders, ``predict.py``, ``serve.py`` and export's parity images all come through
``read_image``, so a model sees the same pixels when it is trained, tested and used. Inputs may
be untrusted: only an allowlist of formats is decoded, decompression bombs are refused before
any pixel is allocated, and every failure is an ImageFileError naming the file, never a
traceback or a crashed process (Pillow, not torchvision's native decoders, which can take the
process down on a damaged PNG).

Conversions, so that the model sees what a person sees:
- EXIF orientation is applied (phone photos are stored sideways);
- animated images (GIF, WebP, APNG) give their first frame;
- transparency (RGBA, LA, P with a transparent colour) is composited onto a white background,
  as an image viewer on a light page shows it;
- CMYK and grayscale become RGB; 16-bit and 32-bit images are scaled to 8 bits, not clipped;
- the result is resized to ``size`` x ``size`` by ``augment.resize`` (bilinear, antialiased), the
  resize progressive resizing uses too.

A plain JPEG (8-bit, grayscale or colour, no EXIF or Adobe segment) small enough to decode whole,
every CIFAR-10 file, skips Pillow's Python header parser: its frame header is read by
``jpeg_header`` and the whole file goes to Pillow's libjpeg decoder in one call, the same decoder
and settings, so the same pixels (tests/test_plain_jpeg.py); anything else, or anything that fails
there, takes the full path.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from datamodules.augment import resize
from datamodules.jpeg_header import read_jpeg_header

# Pillow format names that are decoded; everything else is refused unread.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"})
# 40 megapixels: any real photo fits; a 64k x 64k PNG header (a decompression bomb) does not.
MAX_PIXELS = 40_000_000
# Width to height, either way: a panorama is ~10:1. A 1 x 12,000,000 PNG (47 KB) took 25 s to resize
# on 2 cores; at most 64:1, the slowest shape within the pixel limit takes well under a second.
MAX_ASPECT = 64
BACKGROUND = (255, 255, 255)
# A large JPEG is decoded at the smallest of 1/2, 1/4 or 1/8 scale that keeps this many times the input
# size in each dimension; the antialiased resize does the rest.
DRAFT_MARGIN = 4
# Files up to this size are read whole before decoding (a CIFAR-10 JPEG is ~1 KB, a phone photo ~3 MB).
SMALL_FILE = 1 << 20


class ImageFileError(Exception):
    """This one input could not be used as an image; the message names it and says why."""


def is_image_file(path: str | os.PathLike) -> bool:
    """The one rule for which files are images, wherever a folder or pattern is listed (training and
    evaluation folders, predict.py's and export.py's folders and patterns): a supported suffix and a
    name that does not start with "." (hidden files: macOS's ``._x.jpg`` resource forks, editors'
    and thumbnailers' leftovers). A file named explicitly on a command line is read whatever its name."""
    return is_image_name(os.path.basename(os.fspath(path)))


def is_image_name(name: str) -> bool:
    """``is_image_file`` for a bare file name."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in SUFFIXES


def read_image(
    source: str | os.PathLike | bytes, size: int, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> torch.Tensor:
    """Decode a file path or raw bytes into a (3, size, size) uint8 tensor, or raise ImageFileError.

    ``max_pixels`` may only lower the limit (a server bounds the decode work of one request)."""
    return _resized(*_decode(source, size, name, max_pixels), size)


def read_pixels(
    source: str | os.PathLike | bytes, size: int, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> bytes:
    """``read_image``'s pixels as bytes, ``size`` rows of ``size`` RGB pixels: for callers that batch
    many images (predict), one tensor per batch instead of one per image costs ~10 us less an image."""
    pixels, width, height = _decode(source, size, name, max_pixels)
    if width == size and height == size:
        return pixels
    return _resized(pixels, width, height, size).permute(1, 2, 0).contiguous().numpy().tobytes()


def _resized(pixels: bytes, width: int, height: int, size: int) -> torch.Tensor:
    image = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(height, width, 3).permute(2, 0, 1)
    return image if width == size and height == size else resize(image[None], size)[0]


def _decode(source: str | os.PathLike | bytes, size: int, name: str | None, max_pixels: int) -> tuple[bytes, int, int]:
    """(RGB bytes, width, height) of the decoded image, before resizing (draft-decoded JPEGs are already
    closer to ``size``)."""
    max_pixels = min(max_pixels, MAX_PIXELS)
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes) and not source:
        raise ImageFileError(f"{label}: empty input (0 bytes)")
    data = source if isinstance(source, bytes) else _open_regular_file(source, label)
    if isinstance(data, bytes):
        decoded = _decode_plain_jpeg(data, size, max_pixels)
        if decoded is not None:
            return decoded
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with quiet_pillow():
            with Image.open(stream, formats=FORMATS) as im:
                if im.width * im.height > max_pixels:
                    raise ImageFileError(
                        f"{label}: {im.width}x{im.height} pixels is over the {max_pixels:,}-pixel limit"
                    )
                if max(im.width, im.height) > MAX_ASPECT * min(im.width, im.height):
                    raise ImageFileError(
                        f"{label}: {im.width}x{im.height} pixels is over the {MAX_ASPECT}:1 aspect-ratio limit; "
                        "crop it to the part to classify"
                    )
                # JPEG's DCT scaling: a 4032x3024 photo for a 32x32 input decodes at 504x378 (1/8),
                # ~5x less work than decoding and resizing it whole (0.07 against 0.39 s) and within one
                # grey level of it; images under DRAFT_MARGIN x size decode whole. No-op for other formats.
                im.draft(None, (size * DRAFT_MARGIN, size * DRAFT_MARGIN))
                im.load()  # the first frame of an animation
                # Orientation lives in EXIF (JPEG, PNG, WebP: info["exif"] once loaded) or TIFF tags;
                # skipping the EXIF parse for files without it saves ~10% per small image.
                if "exif" in im.info or im.format == "TIFF":
                    im = ImageOps.exif_transpose(im)
                rgb = im if im.mode == "RGB" else to_rgb(im)
                decoded = rgb.tobytes(), rgb.width, rgb.height
    except ImageFileError:
        raise
    except UnidentifiedImageError:
        raise ImageFileError(f"{label}: not an image in a supported format ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageFileError(
            f"{label}: image too large, over the {max_pixels:,}-pixel limit (a decompression bomb?)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageFileError(f"{label}: damaged or truncated image ({reason})") from None
    finally:
        stream.close()
    return decoded


def _decode_plain_jpeg(data: bytes, size: int, max_pixels: int) -> tuple[bytes, int, int] | None:
    """(RGB bytes, width, height) for a plain JPEG small enough to decode whole (the case of every
    CIFAR-10 file), or None: then the full path reads it, and names what is wrong with it if anything is.

    The same libjpeg decoder with the same settings as Pillow's ``Image.open`` path, so the same
    pixels (tests/test_plain_jpeg.py compares the two), given the whole file at once: ~50 us instead
    of ~150 us for a 32x32 image, about half of it decoding with the GIL released."""
    header = read_jpeg_header(data)
    if header is None:
        return None
    width, height = header.width, header.height
    if width * height > max_pixels or max(width, height) > MAX_ASPECT * min(width, height):
        return None
    if min(width // (size * DRAFT_MARGIN), height // (size * DRAFT_MARGIN)) >= 2:
        return None  # Pillow's draft would decode it at a reduced scale
    mode = "L" if header.channels == 1 else "RGB"
    # Decoding into this thread's last image of the same shape saves allocating one (~10 us a 32x32 image).
    im = getattr(_decode_target, "image", None)
    if im is None or im.mode != mode or im.size != (width, height):
        im = _decode_target.image = Image.new(mode, (width, height))
    try:
        im.frombytes(data, "jpeg", mode, "")
    except (OSError, ValueError):  # truncated or damaged: the full path says which
        return None
    rgb = im if im.mode == "RGB" else to_rgb(im)
    return rgb.tobytes(), width, height


_decode_target = threading.local()


# catch_warnings swaps the process's whole filter list on entry and back on exit, so two threads
# decoding at once (predict reads in parallel) would each restore the other's list and leave Pillow's
# filters in place, or drop them, for good. Readers share one entry instead: the first installs the
# filters, the last one out restores the list.
_quiet_lock = threading.Lock()
_quiet_readers = 0
_quiet_context: warnings.catch_warnings | None = None


@contextlib.contextmanager
def quiet_pillow():
    """Pillow's notes about a file ("Corrupt EXIF data", ...) unprinted (they would come once per image
    and bury predict's rows; the image is still read, or refused in one line), and its decompression-bomb
    warning raised as an error; safe to enter from several threads at once."""
    global _quiet_readers, _quiet_context
    with _quiet_lock:
        if _quiet_readers == 0:
            _quiet_context = warnings.catch_warnings()
            _quiet_context.__enter__()
            warnings.filterwarnings("ignore", module=r"PIL\.")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        _quiet_readers += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_readers -= 1
            if _quiet_readers == 0:
                _quiet_context.__exit__(None, None, None)
                _quiet_context = None


def _open_regular_file(source: str | os.PathLike, label: str) -> bytes | io.BufferedReader:
    """A small file's bytes, or a large file opened for reading; ImageFileError if it is not a regular,
    non-empty, readable file."""
    # Open first and interpret the failure: one system call instead of exists/is_dir/stat checks.
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below as not a file.
    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageFileError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageFileError(f"{label}: is a folder") from None
    except PermissionError:
        raise ImageFileError(f"{label}: permission denied") from None
    except OSError as err:
        raise ImageFileError(f"{label}: cannot open ({err.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "is a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe or device?)"
        raise ImageFileError(f"{label}: {what}")
    if st.st_size == 0:
        os.close(fd)
        raise ImageFileError(f"{label}: empty file (0 bytes)")
    if st.st_size > SMALL_FILE:
        return os.fdopen(fd, "rb")
    # Read whole, with bare system calls: Pillow's header parsing makes dozens of small reads, cheaper
    # from memory, and a file object costs ~10 us of a 32x32 JPEG's ~60.
    try:
        data = os.read(fd, st.st_size + 1)  # a shorter read than asked is the end of a regular file
        if len(data) > st.st_size:  # the file grew since fstat: read to its end
            chunks = [data]
            while chunks[-1]:
                chunks.append(os.read(fd, 1 << 20))
            data = b"".join(chunks)
    except OSError as err:
        raise ImageFileError(f"{label}: cannot read ({err.strerror})") from None
    finally:
        os.close(fd)
    return data


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(im)), mode="L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        # Float images are taken as [0, 1] when they fit it, else scaled by their own maximum.
        peak = 1.0 if values.max(initial=0) <= 1.0 else float(values.max())
        return np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    peak = 65535 if values.max(initial=0) <= 65535 else int(values.max())
    return (values.astype(np.float64) * (255.0 / peak) + 0.5).astype(np.uint8)


def expand_inputs(args: list[str]) -> list[tuple[str, str | None, str | None]]:
    """Each argument (file, folder searched recursively, or glob pattern) as (label, path, error) rows,
    in argument order; a row with an error stands for an input that yields no image.

    Folders and patterns give image files only (``is_image_file``: hidden files and folders are
    skipped, as a shell's ``*`` skips them), regular files, each real file once (symlinks to files
    are followed, symlinks to folders are not, so a loop cannot repeat or hang), at any depth. A
    file named explicitly is read whatever its name. Paths are strings: a ``Path`` per file cost
    ~6 us of a 32x32 JPEG's ~50 in predict."""
    import glob

    rows: list[tuple[str, str | None, str | None]] = []
    for arg in args:
        path = Path(arg)
        if not arg:  # Path("") is ".": an empty argument (an unset shell variable) is not this folder
            rows.append((arg, None, f"{arg!r}: an empty argument; give a file, folder or pattern"))
        elif path.is_dir():
            unreadable: list[str] = []
            found = walk_files(path, unreadable, keep=is_image_name)
            if not found:
                why = f"; a folder inside could not be read: {unreadable[0]}" if unreadable else ""
                rows.append((arg, None, f"{arg}: folder holds no images ({', '.join(sorted(SUFFIXES))}){why}"))
            rows.extend((p, p, None) for p in found)
        elif path.exists() or path.is_symlink():
            rows.append((arg, arg, None))  # the reader names what is wrong with it, if anything
        elif glob.has_magic(arg):
            found = match_pattern(arg, keep=is_image_name)
            if not found:
                rows.append((arg, None, f"{arg}: pattern matches no image files ({', '.join(sorted(SUFFIXES))})"))
            rows.extend((p, p, None) for p in found)
        else:
            rows.append((arg, None, f"{arg}: no such file or folder"))
    return rows


def walk_files(
    root: str | os.PathLike, unreadable: list[str] | None = None, keep: Callable[[str], bool] | None = None
) -> list[str]:
    """Regular files under ``root`` whose names ``keep`` accepts (all, by default), in ``Path`` order
    (folder by folder, names sorted), without recursion (any depth) and without entering symlinked
    or hidden folders (names starting with "."); a file reached twice (through links) is listed once,
    where it comes first. Folders that cannot be listed are skipped; ``unreadable`` gets one line for
    each (the folder and the reason). Paths start with ``root`` as ``Path`` writes it."""
    # A stack of (path, real path, is a folder), popped in order: each folder's entries are pushed in
    # reverse name order, so files come out sorted as Paths sort, with no sort of the whole list.
    # A folder entered is never a symlink, so a child's real path is its parent's plus its name (one
    # realpath per walk: per folder, it cost O(depth^2) in a deep tree; per file, ~20 us).
    start = str(Path(root))
    files, seen, stack = [], set(), [(start, os.path.realpath(start), True)]
    while stack:
        path, real, is_folder = stack.pop()
        if not is_folder:
            if real not in seen:
                seen.add(real)
                files.append(path)
            continue
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name, reverse=True)
        except OSError as err:  # no access, or nested past the system's path length limit
            if unreadable is not None:
                unreadable.append(f"{path[:80]}{'...' if len(path) > 80 else ''} ({err.strerror})")
            continue
        for entry in entries:
            name = entry.name
            child = name if path == "." else os.path.join(path, name)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not name.startswith("."):
                        stack.append((child, os.path.join(real, name), True))
                elif (keep is None or keep(name)) and entry.is_file():
                    # is_file follows a symlink to a file; False for FIFOs, devices, dangling links.
                    stack.append(
                        (child, os.path.realpath(child) if entry.is_symlink() else os.path.join(real, name), False)
                    )
            except OSError:  # a symlink loop or a file removed meanwhile
                continue
    return files


def match_pattern(pattern: str, keep: Callable[[str], bool] | None = None) -> list[str]:
    """Files matching a glob pattern (``*``, ``?``, ``[...]``; ``**`` across folders) whose names ``keep``
    accepts, found by walk_files."""
    import glob
    import re

    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    regex = []
    for i, part in enumerate(parts[fixed:]):
        last = i == len(parts) - fixed - 1
        if part == "**":
            regex.append(".*" if last else "(?:.*/)?")
            continue
        piece = ""
        for char in re.split(r"(\*|\?|\[[^\]]*\])", part):
            if char == "*":
                piece += "[^/]*"
            elif char == "?":
                piece += "[^/]"
            elif char.startswith("[") and char.endswith("]") and len(char) > 2:
                piece += "[" + char[1:-1].replace("!", "^", 1) + "]" if char[1] == "!" else char
            else:
                piece += re.escape(char)
        regex.append(piece + ("" if last else "/"))
    compiled = re.compile("".join(regex))
    if not root.is_dir():
        return []
    prefix = "" if str(root) == "." else os.path.join(str(root), "")
    return [p for p in walk_files(root, keep=keep) if compiled.fullmatch(p[len(prefix) :].replace(os.sep, "/"))]
