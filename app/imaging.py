"""Decode untrusted image bytes into an RGB uint8 array, or fail with a typed error.

Handles PNG, JPEG, MPO (multi-picture JPEG from phones and cameras), WebP, GIF and BMP, multi-frame files as
their first frame; EXIF orientation; palette, grey, LA/RGBA (alpha is composited onto a background colour),
CMYK and 16-bit images. A pixel-count limit is checked from the header, before any pixel is decoded, so
decompression bombs are refused cheaply. Whatever the decoder raises on hostile bytes becomes
InvalidImageError (400), never an unexpected error.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaError

SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP"})
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".mpo", ".webp", ".gif", ".bmp"}
)  # file names of those formats
DEFAULT_MAX_PIXELS = 40_000_000

# We do our own limit check; PIL's global one would raise a warning or a bare error instead.
Image.MAX_IMAGE_PIXELS = None


def parse_hex_color(color: str) -> tuple[int, int, int]:
    """'#638596' or '638596' -> (99, 133, 150)."""
    value = color.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"colour must be #RRGGBB, got {color!r}")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def composite_rgba(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Alpha-composite an HxWx4 uint8 array onto a solid background, returning HxWx3 uint8."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    bg = np.asarray(background, dtype=np.float32)
    out = rgba[..., :3].astype(np.float32) * alpha + bg * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit grey or float images into 8-bit 'L'."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return img.convert("L")
    arr = arr.astype(np.float64)
    if img.mode == "F":
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
    else:
        arr = arr / (256.0 if arr.max() > 255 else 1.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def image_to_rgb(img: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8, with transparency composited onto `background`."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        return composite_rgba(np.asarray(img.convert("RGBA")), background)
    return np.asarray(img.convert("RGB"))


def decode_image(
    data: bytes,
    background: tuple[int, int, int] | str = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode image bytes into a contiguous HxWx3 uint8 RGB array.

    Raises InvalidImageError (400), UnsupportedMediaError (415) or ImageTooLargeError (413).
    """
    if isinstance(background, str):
        background = parse_hex_color(background)
    if not data:
        raise InvalidImageError("empty body: no image bytes were sent")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidImageError("cannot identify an image in the bytes sent") from exc
    except Exception as exc:  # PIL raises assorted errors on hostile headers
        raise InvalidImageError(f"cannot read image header: {exc}") from exc
    if img.format not in SUPPORTED_FORMATS:
        raise UnsupportedMediaError(
            f"image format {img.format} is not supported; send one of {', '.join(sorted(SUPPORTED_FORMATS))}"
        )
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            rgb = image_to_rgb(img, background)
    except Exception as exc:  # any decoder failure on untrusted bytes is the caller's bad image
        raise InvalidImageError(f"image data is corrupt or truncated: {exc}") from exc
    return np.ascontiguousarray(rgb)


def read_image_file(path: str, background: tuple[int, int, int] | str = (255, 255, 255)) -> np.ndarray:
    """Read and decode an image file from disk (same code path as bytes from the network)."""
    with open(path, "rb") as fh:
        return decode_image(fh.read(), background)


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)


def media_type(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their signature (application/octet-stream if unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _SIGNATURES if data.startswith(magic)), "application/octet-stream")


CORNER_REACH = 0.05  # how far along a corner's diagonal (share of the shorter side) a background seed may lie


def border_colour(rgb: np.ndarray) -> np.ndarray:
    """The median colour of the image's outermost ring of pixels (its background, for most NFTs)."""
    ring = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return np.median(ring, axis=0)


def background_region(rgb: np.ndarray, tolerance: int = 12, reach: float = CORNER_REACH) -> np.ndarray:
    """[H, W] bool: the background, the pixels joined (4-connected, within `tolerance` per channel) to a
    corner in the border's colour: seeded at each pixel in that colour along the corners' diagonals, within
    `reach` of the shorter side (rounded, anti-aliased corners: a CDN thumbnail's transparent corners
    decode to another colour, and its halo is a ring apart). Empty when no corner has one."""
    import cv2

    h, w = rgb.shape[:2]
    bg = border_colour(rgb)
    steps = int(reach * min(h, w)) + 1  # the corner itself, then along the diagonal
    mask = np.zeros((h + 2, w + 2), np.uint8)
    tol = (tolerance,) * 3
    work = rgb.copy()  # OpenCV wants a writable image even for a mask-only fill: one copy serves all 4
    for y0, x0, dy, dx in ((0, 0, 1, 1), (0, w - 1, 1, -1), (h - 1, 0, -1, 1), (h - 1, w - 1, -1, -1)):
        for i in range(min(steps, h, w)):
            y, x = y0 + dy * i, x0 + dx * i
            if not mask[y + 1, x + 1] and np.abs(rgb[y, x].astype(int) - bg).max() <= tolerance:
                cv2.floodFill(work, mask, (x, y), 0, tol, tol, cv2.FLOODFILL_MASK_ONLY | 4 | (255 << 8))
    return mask[1:-1, 1:-1].astype(bool)
