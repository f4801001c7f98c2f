import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evoked.data.decode import decode_rgb, load_rgb, probe, read_bytes
from evoked.errors import DecodeError


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgb_jpeg_round_trip():
    data = _encode(Image.new("RGB", (20, 10), (255, 0, 0)), "JPEG", quality=95)
    arr = decode_rgb(data)
    assert arr.shape == (10, 20, 3) and arr.dtype == np.uint8
    assert arr[..., 0].mean() > 240 and arr[..., 1].mean() < 15


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _encode(img, "JPEG", exif=exif.tobytes())
    assert probe(data).orientation == 6
    assert decode_rgb(data).shape == (30, 10, 3)  # upright: width and height swapped


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("P", (8, 6), 3),
        lambda: Image.new("L", (8, 6), 128),
        lambda: Image.new("1", (8, 6), 1),
        lambda: Image.new("LA", (8, 6), (100, 0)),
        lambda: Image.new("RGBA", (8, 6), (10, 20, 30, 0)),
        lambda: Image.new("CMYK", (8, 6), (0, 255, 255, 0)),
        lambda: Image.new("I;16", (8, 6), 65535),
        lambda: Image.new("I", (8, 6), 70000),
        lambda: Image.new("F", (8, 6), 0.5),
        lambda: Image.new("YCbCr", (8, 6), (128, 128, 128)),
    ],
    ids=["P", "L", "1", "LA", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"],
)
def test_every_mode_becomes_rgb(make):
    img = make()
    fmt = "TIFF" if img.mode in ("CMYK", "I", "F", "YCbCr") else "PNG"
    arr = decode_rgb(_encode(img, fmt))
    assert arr.shape == (6, 8, 3) and arr.dtype == np.uint8


def test_transparent_pixels_become_white_and_16bit_scales():
    assert decode_rgb(_encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG")).min() == 255
    assert decode_rgb(_encode(Image.new("LA", (4, 4), (0, 0)), "PNG")).min() == 255
    # 16-bit white must stay white, not clip; 16-bit mid-grey must be mid-grey
    assert decode_rgb(_encode(Image.new("I;16", (4, 4), 65535), "PNG")).min() == 255
    mid = decode_rgb(_encode(Image.new("I;16", (4, 4), 32768), "PNG"))
    assert 126 <= mid.mean() <= 129
    cmyk_red = decode_rgb(_encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    assert cmyk_red[..., 0].mean() > 200 and cmyk_red[..., 1].mean() < 60


def test_palette_with_transparency():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    assert decode_rgb(_encode(img, "PNG", transparency=0)).min() == 255


def test_truncated_file_is_a_failure():
    data = _encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG"
    )
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_rgb(data[: len(data) // 2], "half.jpg")


def test_zero_byte_and_non_image(tmp_path: Path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        load_rgb(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    with pytest.raises(DecodeError, match="not a recognised image format") as e:
        load_rgb(text)
    assert e.value.source == str(text)


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(DecodeError, match="file not found"):
        read_bytes(tmp_path / "nope.jpg")
    with pytest.raises(DecodeError, match="directory"):
        read_bytes(tmp_path)


def test_pixel_limit_guards_against_bombs():
    data = _encode(Image.new("L", (200, 200)), "PNG")
    with pytest.raises(DecodeError, match="above the limit of 10,000 .*--max-pixels"):
        decode_rgb(data, max_pixels=10_000)
    assert decode_rgb(data, max_pixels=40_000).shape == (200, 200, 3)
