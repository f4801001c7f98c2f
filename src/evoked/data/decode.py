"""Robust image decoding shared by every stage.

Every image evoked reads goes through `decode_rgb`: EXIF orientation is applied, every PIL mode
becomes 8-bit RGB, a pixel-count limit guards against decompression bombs, and anything that is
not a readable image raises `DecodeError` with a reason a person can act on. Callers record that
reason; nothing is skipped silently.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from evoked.errors import DecodeError

log = logging.getLogger(__name__)

#: Default limit on width x height (about 178 megapixels, twice PIL's own warning level).
DEFAULT_MAX_PIXELS = 2 * 89_478_485

#: Widest long side : short side accepted. Models resize the short side to a few hundred pixels,
#: so a 4000x1 strip would become 896000x224 (gigabytes) before the crop; refuse it instead.
MAX_ASPECT = 50
#: JPEGs above this many pixels are decoded at a reduced scale (libjpeg's DCT scaling, 1/2..1/8)
#: down to no less than DRAFT_TARGET_PIXELS, so memory stays near the output size, not the file's.
DRAFT_ABOVE_PIXELS = 24_000_000
DRAFT_TARGET_PIXELS = 6_000_000

# Truncated files must fail, not decode into grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding the pixels."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int  # EXIF orientation tag, 1 when absent


def read_bytes(path: str | os.PathLike, root: str | os.PathLike | None = None) -> bytes:
    """Read a whole file, turning the usual failures into `DecodeError` reasons. With `root` (the
    dataset root), a file that leads outside it after symlinks is refused when it is read."""
    p = Path(path)
    if root is not None:
        real = os.path.realpath(p)
        if not Path(real).is_relative_to(os.path.realpath(root)):
            raise DecodeError(str(p), f"a symlink to {real}, outside the dataset root {root}; copy the image "
                                      "into the dataset folder, or give a root that holds it")  # fmt: skip
    try:
        data = _read_regular(p)
    except FileNotFoundError:
        raise DecodeError(str(p), "file not found") from None
    except IsADirectoryError:
        raise DecodeError(str(p), "is a directory, not an image file") from None
    except PermissionError:
        raise DecodeError(str(p), "permission denied") from None
    except OSError as e:
        raise DecodeError(str(p), f"cannot read file: {e.strerror or e}") from e
    if not data:
        raise DecodeError(str(p), "empty file (0 bytes)")
    return data


def _read_regular(p: Path) -> bytes:
    """The file's bytes; a FIFO, socket or device is refused, never read (a FIFO would block forever:
    it is opened without blocking, and checked before any read)."""
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(str(p))
        if not stat.S_ISREG(mode):
            raise DecodeError(str(p), "not a regular file (a FIFO, socket or device); an image is a file")
        return f.read()


def _open(data: bytes, source: str, max_pixels: int) -> Image.Image:
    if not data:
        raise DecodeError(source, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise DecodeError(source, f"{e}; raise the limit with --max-pixels if the image is trusted") from e
    except UnidentifiedImageError:  # never echo the bytes: the file may be one it should not be
        what = "text" if data[:512].isascii() else "binary data"
        raise DecodeError(source, f"not a recognised image format ({len(data):,} bytes of {what})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DecodeError(source, f"unreadable image header (truncated or corrupt file): {e}") from e
    w, h = img.size
    if w <= 0 or h <= 0:
        raise DecodeError(source, f"image has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise DecodeError(
            source,
            f"image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
            "(decompression-bomb guard); raise it with --max-pixels if the image is trusted",
        )
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise DecodeError(
            source,
            f"image is {w}x{h}, an aspect ratio above {MAX_ASPECT}:1; resizing it for a model would take "
            "far more memory than the file suggests (crop it to a usable shape)",
        )
    return img


def _draft(img: Image.Image) -> None:
    """Let libjpeg decode a huge JPEG at 1/2, 1/4 or 1/8 scale (never below DRAFT_TARGET_PIXELS)."""
    w, h = img.size
    if img.format != "JPEG" or w * h <= DRAFT_ABOVE_PIXELS:
        return
    f = (DRAFT_TARGET_PIXELS / (w * h)) ** 0.5
    img.draft(img.mode, (max(1, int(w * f)), max(1, int(h * f))))


def probe(data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read format, size, mode and EXIF orientation from the header only."""
    img = _open(data, source, max_pixels)
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block must not make a good image fail
        orientation = 1
    return ImageInfo(img.format or "", img.width, img.height, img.mode, orientation)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB, with high-bit-depth images scaled rather than clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = float(arr.max(initial=0.0))
        if mode.startswith("I;16") or (mode == "I" and 255.0 < top <= 65535.0):
            arr = arr / 257.0  # 16-bit range to 8-bit
        elif mode == "F" and top <= 1.0:
            arr = arr * 255.0  # float images in [0, 1]
        elif top > 255.0:
            arr = arr * (255.0 / top)  # anything wider: scale by its own maximum
        gray = np.clip(arr, 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_rgb(data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array, upright per its EXIF orientation.

    Raises `DecodeError` for empty, truncated, corrupt, oversized, extremely thin or unknown
    files. JPEGs above `DRAFT_ABOVE_PIXELS` come back at a reduced scale (see `_draft`).
    """
    img = _open(data, source, max_pixels)
    _draft(img)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except OSError as e:
        raise DecodeError(source, f"truncated or corrupt image data: {e}") from e
    except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DecodeError(source, f"corrupt image data: {e}") from e
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # a broken EXIF block: keep the pixels as stored
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", source, e)
    try:
        rgb = _to_rgb(img)
        return np.array(rgb, dtype=np.uint8)  # a writable copy that owns its memory
    except (OSError, ValueError) as e:
        raise DecodeError(source, f"cannot convert mode {img.mode} to RGB: {e}") from e


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode one file; see `decode_rgb`."""
    return decode_rgb(read_bytes(path), str(path), max_pixels)
