"""Decoding real-world image bytes: formats, modes, orientation, limits, and clear errors."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaError
from app.imaging import decode_image


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def rgb_image() -> Image.Image:
    rng = np.random.default_rng(0)
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:, :15] = (200, 30, 40)
    arr[:, 15:] = rng.integers(0, 255, (20, 15, 3))
    return Image.fromarray(arr)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_decodes_common_formats(rgb_image, fmt):
    out = decode_image(_bytes(rgb_image, fmt))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    # the flat red half survives every codec closely
    assert np.abs(out[5:15, 2:10].astype(int) - (200, 30, 40)).max() < 40


def test_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue())
    assert tuple(out[4, 4]) == (255, 0, 0)


def test_exif_orientation_is_applied(rgb_image):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode_image(_bytes(rgb_image, "JPEG", exif=exif.tobytes()))
    assert out.shape == (30, 20, 3)


def test_alpha_composited_onto_background():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    out = decode_image(_bytes(rgba, "PNG"), background="#638596")
    assert tuple(out[3, 3]) == (0x63, 0x85, 0x96)
    assert tuple(out[0, 0]) == (10, 20, 30)
    la = Image.new("LA", (4, 4), (100, 0))
    assert tuple(decode_image(_bytes(la, "PNG"), background=(1, 2, 3))[0, 0]) == (1, 2, 3)


def test_palette_with_transparency():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((1, 1), 1)
    out = decode_image(_bytes(p, "PNG", transparency=0), background=(9, 9, 9))
    assert tuple(out[0, 0]) == (9, 9, 9) and tuple(out[1, 1]) == (0, 255, 0)


def test_cmyk_and_16bit():
    cmyk = Image.new("CMYK", (6, 6), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_bytes(cmyk, "JPEG", quality=95))
    assert out[3, 3, 0] > 200 and out[3, 3, 1] < 60
    sixteen = Image.fromarray(np.full((5, 5), 40000, np.uint16))
    assert sixteen.mode.startswith("I")
    out16 = decode_image(_bytes(sixteen, "PNG"))
    assert out16.shape == (5, 5, 3) and abs(int(out16[0, 0, 0]) - 40000 // 256) <= 1


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions but carries almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_pixel_limit_refuses_bombs_before_decoding():
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(_png_header_only(60000, 60000))
    with pytest.raises(ImageTooLargeError):
        decode_image(_bytes(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)


@pytest.mark.parametrize(
    "payload, error",
    [
        (b"", InvalidImageError),
        (b"this is not an image at all" * 10, InvalidImageError),
        (None, InvalidImageError),  # truncated PNG, built below
        ("tiff", UnsupportedMediaError),
    ],
)
def test_bad_input_raises_typed_errors(rgb_image, payload, error):
    if payload is None:
        full = _bytes(rgb_image, "PNG")
        payload = full[: len(full) // 2]
    elif payload == "tiff":
        payload = _bytes(rgb_image, "TIFF")
    with pytest.raises(error) as info:
        decode_image(payload)
    assert info.value.detail


def test_a_thumbnail_with_transparent_rounded_corners_has_a_background_region(shared_data):
    """The CDN's BAYC thumbnails have transparent, anti-aliased rounded corners: once decoded, their corner
    pixels are not in the border's colour, so the background's seed is found further along each corner's
    diagonal (`reach`); with no reach, none is found (as before stop 45: a background swap then changed
    nothing on them). Azuki thumbnails, square-cornered, have one either way."""
    from app.imaging import background_region

    def shares(collection: str, **kw: float) -> list[float]:
        files = sorted((shared_data / "nft-thumbs" / collection).glob("*.webp"))[:6]
        images = [decode_image(f.read_bytes(), (99, 133, 150)) for f in files]
        return [float(background_region(image, **kw).mean()) for image in images]

    assert max(shares("bayc", reach=0.0)) == 0.0
    assert min(shares("bayc")) > 0.05
    assert min(shares("azuki", reach=0.0)) > 0.05
