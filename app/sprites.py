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
    flat = sprite.reshape(-1, sprite.shape[2])
    return np.unique(flat, axis=0, return_inverse=True)[1].reshape(sprite.shape[:2])


def _agreement(query: np.ndarray, sprite: np.ndarray, labels: np.ndarray, tolerance: float) -> float:
    """Share of pixels whose query colour is its region's colour and whose region edges the query keeps."""
    h, w = labels.shape
    flat, lab = query.reshape(-1, 3), labels.reshape(-1)
    n = np.bincount(lab)
    mean = np.stack([np.bincount(lab, flat[:, c]) for c in range(3)], 1) / n[:, None]
    bad = (np.linalg.norm(flat - mean[lab], axis=1) > tolerance).reshape(h, w)

    def lost(a: slice, b: slice) -> np.ndarray:  # an edge of the sprite the query does not show
        edge = np.linalg.norm(sprite[a] - sprite[b], axis=2) > tolerance
        return edge & (np.linalg.norm(query[a] - query[b], axis=2) <= tolerance)

    whole = slice(None)
    lost_h = lost((whole, slice(1, None)), (whole, slice(None, -1)))
    lost_v = lost(slice(1, None), slice(None, -1))
    bad[:, 1:] |= lost_h
    bad[:, :-1] |= lost_h
    bad[1:] |= lost_v
    bad[:-1] |= lost_v
    return float(1.0 - bad.mean())


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
    h, w = sprite.shape[:2]
    labels = _labels(sprite)
    ref = sprite.astype(np.float32)
    best = 0.0
    for rgb in views:
        for size in {(w, h), (h, w)}:
            q = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
            for view in (q, q[:, ::-1]):
                for turn in range(4):
                    turned = np.rot90(view, turn)
                    if turned.shape[:2] == (h, w):
                        best = max(best, _agreement(turned, ref, labels, tolerance))
    return best


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
    out: list[float | None] = []
    for s in sprites:
        if s is not None and views is None:
            views = query_views(query_rgb)
        out.append(None if s is None else layout_agreement(views, s))
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
