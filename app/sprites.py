"""Pixel-art layout check: re-ranks the copy search's candidates when they are small sprites.

Distinct tokens of a pixel-art collection (two punks that differ by one earring) sit closer in the learned
instance space than a token and its recoloured or captioned copy, so the embedding's top-1 is often a
sibling. Pixel art allows a direct check: the candidate's own pixels (its stored image, reduced to the
native sprite) partition the image into colour regions, and a copy that kept the geometry (recoloured,
saturated, captioned, badge added, re-encoded) shows the same partition: each region one colour, and every
edge between regions still an edge. `layout_agreement` is the share of sprite pixels for which both hold,
in the best of the 8 dihedral views, whatever the colours became.

It orders candidates only; the copy verdict stays the calibrated instance-space threshold. Geometric edits
(crops, rotations by a few degrees) break the alignment, so candidates below `GATE` keep the embedding's
order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from app.errors import NftlensError
from app.fingerprint import reduce_integer_upscale
from app.imaging import decode_image
from app.views import deskew, peel_canvas

MAX_SPRITE_SIDE = 64  # a catalogued image whose native grid is at most this is a sprite
TOLERANCE = 24.0  # RGB distance (0-255 per channel) within which two query pixels are one colour
GATE = 0.9  # a candidate re-ranks by its layout agreement only at or above this


def native_sprite(rgb: np.ndarray) -> np.ndarray | None:
    """The image's native pixel grid if it is pixel art (nearest-upscaled or small), else None."""
    small = reduce_integer_upscale(rgb)
    return small if max(small.shape[:2]) <= MAX_SPRITE_SIDE else None


def _labels(sprite: np.ndarray) -> np.ndarray:
    """One integer per distinct colour of the sprite, [H, W]."""
    rgb = sprite.astype(np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return np.unique(codes, return_inverse=True)[1].reshape(sprite.shape[:2])


def _stack(views: Sequence[np.ndarray], h: int, w: int) -> np.ndarray:
    """Every view, area-resampled onto an h x w grid, in each dihedral turn that has that shape:
    [T, h, w, 3] float32."""
    out = []
    for rgb in views:
        for size in {(w, h), (h, w)}:
            q = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
            for view in (q, q[:, ::-1]):
                out += [t for t in (np.rot90(view, k) for k in range(4)) if t.shape[:2] == (h, w)]
    return np.stack(out)


def _best_agreement(stack: np.ndarray, sprite: np.ndarray, tolerance: float) -> float:
    """The best, over the stacked query turns, share of pixels whose query colour is its region's colour
    and whose region edges the query keeps."""
    t, h, w = stack.shape[:3]
    labels = _labels(sprite).reshape(-1)
    onehot = np.zeros((h * w, labels.max() + 1), np.float32)
    onehot[np.arange(h * w), labels] = 1
    flat = stack.reshape(t, h * w, 3).transpose(0, 2, 1)  # [T, 3, N]
    mean = (flat @ onehot) / onehot.sum(0)  # each region's mean query colour, [T, 3, K]
    tol2 = tolerance * tolerance

    def far(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
        return np.square(a - b).sum(axis) > tol2

    bad = far(flat, mean[:, :, labels], 1).reshape(t, h, w)
    ref = sprite.astype(np.float32)
    edge_h = far(ref[:, 1:], ref[:, :-1], 2)  # the sprite's edges ...
    edge_v = far(ref[1:], ref[:-1], 2)
    lost_h = edge_h & ~far(stack[:, :, 1:], stack[:, :, :-1], 3)  # ... that the query does not show
    lost_v = edge_v & ~far(stack[:, 1:], stack[:, :-1], 3)
    bad[:, :, 1:] |= lost_h
    bad[:, :, :-1] |= lost_h
    bad[:, 1:] |= lost_v
    bad[:, :-1] |= lost_v
    return float(1.0 - bad.reshape(t, -1).mean(1).min())


def query_views(rgb: np.ndarray) -> list[np.ndarray]:
    """The query as it is, inside its frame or canvas and turned upright, where those apply (the copy
    views of app/views.py), so a bordered, repositioned or slightly rotated copy lines up again."""
    return [rgb] + [v for v in (peel_canvas(rgb), deskew(rgb)) if v is not None]


def layout_agreement(
    query: np.ndarray | Sequence[np.ndarray], sprite: np.ndarray, tolerance: float = TOLERANCE
) -> float:
    """How well the query (an RGB image, or several views of one) shows the sprite's colour layout (0-1),
    in its best view and dihedral turn. Each view is area-resampled onto the sprite's grid."""
    views = [query] if isinstance(query, np.ndarray) else query
    return _best_agreement(_stack(views, *sprite.shape[:2]), sprite, tolerance)


def stored_sprite(data: bytes | None, background: tuple[int, int, int]) -> np.ndarray | None:
    """A catalogued token's sprite from its stored image bytes (None: no image, an undecodable one, or
    not pixel art)."""
    try:
        return native_sprite(decode_image(data, background)) if data else None
    except NftlensError:
        return None


def candidate_layouts(query_rgb: np.ndarray, sprites: Iterable[np.ndarray | None]) -> list[float | None]:
    """Each candidate's layout agreement with the query in its `query_views` (None where the candidate
    is no sprite)."""
    views: list[np.ndarray] | None = None
    stacks: dict[tuple[int, int], np.ndarray] = {}  # the query on each sprite grid, made once
    out: list[float | None] = []
    for s in sprites:
        if s is None:
            out.append(None)
            continue
        views = views or query_views(query_rgb)
        grid = s.shape[:2]
        if grid not in stacks:
            stacks[grid] = _stack(views, *grid)
        out.append(_best_agreement(stacks[grid], s, TOLERANCE))
    return out


def verified_order(
    scores: Sequence[float], agreements: Sequence[float | None], gate: float = GATE
) -> list[int]:
    """Candidate indices best first: those whose layout agreement reaches `gate` (by agreement, then
    score), then the others by score. `agreements` holds None for candidates that are not sprites."""
    passed = [i for i, a in enumerate(agreements) if a is not None and a >= gate]
    rest = sorted(set(range(len(scores))) - set(passed))
    passed.sort(key=lambda i: (-agreements[i], -scores[i]))
    rest.sort(key=lambda i: -scores[i])
    return passed + rest
