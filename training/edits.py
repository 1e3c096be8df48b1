"""Copymint edits: the changes OpenSea's policy lists as still being a copy of a token.

Every edit takes a decoded RGB uint8 image and a NumPy generator and returns a new RGB uint8 image. They
serve twice: as the augmentations that teach the instance embedding (two edited views of one token must
meet) and as the fixed edits of the copy-detection evaluation, where each is applied to tokens the model
never trained on.

Small pixel art (a 24-px punk) is first upscaled with nearest neighbour to a working size, as marketplaces
and copymints show it; the exact copy alone keeps the original pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from app.imaging import background_region, border_colour
from app.preprocessing import reencode

Edit = Callable[[np.ndarray, np.random.Generator], np.ndarray]

PIXEL_ART_SIDE = 64  # images smaller than this are treated as pixel art ...
WORK_MIN_SIDE = 192  # ... and nearest-upscaled by an integer factor to at least this before editing


def working_copy(rgb: np.ndarray, min_side: int = WORK_MIN_SIDE) -> np.ndarray:
    """Nearest-upscale small pixel art by an integer factor so that edits act on visible pixels."""
    side = min(rgb.shape[:2])
    if side >= PIXEL_ART_SIDE:
        return rgb
    f = -(-min_side // side)
    return cv2.resize(rgb, (rgb.shape[1] * f, rgb.shape[0] * f), interpolation=cv2.INTER_NEAREST)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def exact(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rgb.copy()


def reencode_resize(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Resized 0.5-1.5x (area or cubic) and saved as JPEG or WebP at quality 50-90."""
    f = float(rng.uniform(0.5, 1.5))
    h, w = rgb.shape[:2]
    out = cv2.resize(
        rgb,
        (max(16, round(w * f)), max(16, round(h * f))),
        interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC,
    )
    return reencode(out, "jpeg" if rng.random() < 0.5 else "webp", int(rng.integers(50, 91)))


def mirror(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, ::-1])


def crop_zoom(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep 70-90 % of each side at a random place, zoomed back to the original size."""
    h, w = rgb.shape[:2]
    s = float(rng.uniform(0.7, 0.9))
    ch, cw = max(8, round(h * s)), max(8, round(w * s))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return cv2.resize(rgb[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def reposition(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Placed, at 60-85 % of its size, somewhere on a canvas of the original size and a new colour."""
    h, w = rgb.shape[:2]
    s = float(rng.uniform(0.6, 0.85))
    sh, sw = max(8, round(h * s)), max(8, round(w * s))
    small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
    canvas = np.empty_like(rgb)
    canvas[:] = _colour(rng)
    y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    canvas[y : y + sh, x : x + sw] = small
    return canvas


def _rotate(rgb: np.ndarray, degrees: float, fill: tuple[int, int, int]) -> np.ndarray:
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=fill)


def rotate_small(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotated 5-20 degrees either way, corners filled with the background colour."""
    deg = float(rng.uniform(5, 20)) * (1 if rng.random() < 0.5 else -1)
    return _rotate(rgb, deg, tuple(int(c) for c in border_colour(rgb)))


def rotate_90(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotated by 90, 180 or 270 degrees."""
    return np.ascontiguousarray(np.rot90(rgb, int(rng.integers(1, 4))))


def border(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A frame 4-15 % of the side wide, in a random colour (the image keeps its size)."""
    h, w = rgb.shape[:2]
    b = max(1, round(min(h, w) * float(rng.uniform(0.04, 0.15))))
    inner = cv2.resize(rgb, (w - 2 * b, h - 2 * b), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(inner, b, b, b, b, cv2.BORDER_CONSTANT, value=_colour(rng))


def text(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A short caption written across a random part of the image."""
    out = rgb.copy()
    h, w = out.shape[:2]
    words = ["COPY", "MINT", "NFT", "#1", "RARE", "HODL", "GM", "WAGMI", "FREE"]
    caption = " ".join(rng.choice(words, size=int(rng.integers(1, 3))))
    scale = min(h, w) / 200 * float(rng.uniform(0.6, 1.2))
    thick = max(1, round(scale * 2))
    (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x = int(rng.integers(0, max(1, w - tw)))
    y = int(rng.integers(th, max(th + 1, h)))
    cv2.putText(out, caption, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, _colour(rng), thick, cv2.LINE_AA)
    return out


def logo(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small emoji-like badge (filled circle with a mark) in a corner or at a random place."""
    out = rgb.copy()
    h, w = out.shape[:2]
    r = max(3, round(min(h, w) * float(rng.uniform(0.06, 0.12))))
    cx, cy = int(rng.integers(r, w - r + 1)), int(rng.integers(r, h - r + 1))
    cv2.circle(out, (cx, cy), r, _colour(rng), -1, cv2.LINE_AA)
    cv2.circle(out, (cx, cy), max(1, r // 2), _colour(rng), max(1, r // 4), cv2.LINE_AA)
    return out


def background_swap(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The background (the region joined to the corners with the border's colour) painted a new colour."""
    out = rgb.copy()
    out[background_region(rgb)] = _colour(rng)
    return out


def colour_shift(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hue rotated by 20-160 degrees."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    shift = int(rng.integers(10, 81)) * (1 if rng.random() < 0.5 else -1)  # OpenCV hue is 0..179
    hsv[..., 0] = ((hsv[..., 0].astype(int) + shift) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def saturate(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Saturation scaled by 1.5-2.5 (or down to 0.2-0.5), brightness by 0.8-1.2."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    s = float(rng.uniform(1.5, 2.5)) if rng.random() < 0.7 else float(rng.uniform(0.2, 0.5))
    hsv[..., 1] = np.clip(hsv[..., 1] * s, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * float(rng.uniform(0.8, 1.2)), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def pixelate(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Down to 24-48 blocks across, then back up with nearest neighbour."""
    h, w = rgb.shape[:2]
    blocks = int(rng.integers(24, 49))
    f = max(h, w) / blocks
    small = cv2.resize(rgb, (max(2, round(w / f)), max(2, round(h / f))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


# OpenSea's list of what still counts as a copy, as named edits (the evaluation's rows).
EDITS: dict[str, Edit] = {
    "exact": exact,
    "reencode_resize": reencode_resize,
    "mirror": mirror,
    "crop_zoom": crop_zoom,
    "reposition": reposition,
    "rotate_small": rotate_small,
    "rotate_90": rotate_90,
    "border": border,
    "text": text,
    "logo": logo,
    "background_swap": background_swap,
    "colour_shift": colour_shift,
    "saturate": saturate,
    "pixelate": pixelate,
}


# Edits combined, evaluated beside OpenSea's list (not drawn as training views): a copymint seldom leaves
# a flip lossless, and a lossless one is caught by the exact stage's flip-invariant fingerprint.
COMBINED: dict[str, tuple[str, ...]] = {"mirror_reencode": ("mirror", "reencode_resize")}


def apply_edit(name: str, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One named edit (of `EDITS`, or the parts of a `COMBINED` one in turn); every edit but `exact` works
    on the upscaled working copy of small pixel art."""
    if name == "exact":
        return exact(rgb, rng)
    if name in COMBINED:
        for part in COMBINED[name]:
            rgb = apply_edit(part, rgb, rng)
        return rgb
    return EDITS[name](working_copy(rgb), rng)


def random_edit(
    identity_prob: float | None = 0.2,
    second_prob: float = 0.3,
    weights: dict[str, float] | None = None,
    record: list[str] | None = None,
) -> Edit:
    """Training views: with `identity_prob` the image untouched at its own resolution (so degradations
    act on native pixels, as the robustness table applies them), else one random edit of the working
    copy, and with `second_prob` a second one on top (copymints often combine a flip with a colour change).
    `weights` makes some edits likelier than others (an edit not named weighs 1). `identity_prob=None`
    edits every view without drawing for it (the stream of `refit-instance`'s views); `record` collects
    each view's first edit by name ("identity" when untouched)."""
    names = [n for n in EDITS if n != "exact"]
    unknown = set(weights or {}) - set(names)
    if unknown:
        raise ValueError(f"unknown edits in weights: {sorted(unknown)}; known: {names}")
    p = np.array([(weights or {}).get(n, 1.0) for n in names], dtype=float)
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError("edit weights must be non-negative with a positive sum")
    p /= p.sum()

    def pick(rng: np.random.Generator) -> str:  # uniform draws keep the stream of unweighted runs
        return names[int(rng.choice(len(names), p=p) if weights else rng.integers(len(names)))]

    def apply(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if identity_prob is not None and rng.random() < identity_prob:
            first, out = "identity", rgb
        else:
            first = pick(rng)
            out = EDITS[first](working_copy(rgb), rng)
            if rng.random() < second_prob:
                out = EDITS[pick(rng)](out, rng)
        if record is not None:
            record.append(first)
        return out

    return apply
