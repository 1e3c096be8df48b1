"""The views a copy query is embedded in: the eight dihedral views of a network input (identity, 3
rotations, and the mirror of each), and the image inside its frame or canvas (`peel_canvas`).

A copy search may embed all eight views of the query and keep, for each catalogued token, the best
score: a mirrored or quarter-turned copy then meets its original in the orientation it was catalogued in.
The input is square (the preprocessing pads to S x S), so every view is again a valid input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.preprocessing import PreprocessConfig, preprocess

N_VIEWS = 8


def dihedral_view(x: np.ndarray, view: int) -> np.ndarray:
    """View `view` (0..7) of an image or a batch of them (the last two axes are H, W): rotation by
    `view % 4` quarter turns, of the mirror image when `view >= 4`."""
    if view >= 4:
        x = x[..., ::-1]
    return np.rot90(x, view % 4, axes=(-2, -1))


def dihedral_views(x: np.ndarray) -> np.ndarray:
    """[3,S,S] -> [8,3,S,S]: rotations by 0/90/180/270 degrees, then the same of the mirror image."""
    return np.ascontiguousarray(np.stack([dihedral_view(x, v) for v in range(N_VIEWS)]))


def best_over_views(sims: np.ndarray) -> np.ndarray:
    """[V, N] similarities of V views to N tokens -> [N]: each token's best view."""
    return sims.max(axis=0)


def peel_canvas(rgb: np.ndarray, tolerance: int = 12, min_keep: float = 0.3) -> np.ndarray | None:
    """The image inside a uniform outer frame or canvas: rows and columns are cut from each side while every
    pixel in them is within `tolerance` of the top-left corner's colour. A copymint that adds a border or
    sets the image smaller on a new canvas is undone, its original region then scaled back by the
    preprocessing. None when nothing is cut, or when what is left is under `min_keep` of a side."""
    h, w = rgb.shape[:2]
    same = np.abs(rgb.astype(np.int16) - rgb[0, 0].astype(np.int16)).max(axis=-1) <= tolerance
    rows, cols = same.all(axis=1), same.all(axis=0)
    if rows.all():
        return None
    top, bottom = int(np.argmin(rows)), h - int(np.argmin(rows[::-1]))
    left, right = int(np.argmin(cols)), w - int(np.argmin(cols[::-1]))
    if (
        (top, bottom, left, right) == (0, h, 0, w)
        or bottom - top < min_keep * h
        or right - left < min_keep * w
    ):
        return None
    return np.ascontiguousarray(rgb[top:bottom, left:right])


@dataclass(frozen=True)
class ViewSet:
    """The views a copy query is embedded in (each catalog token keeps its best score): the image, its 8
    dihedral views with `dihedral`, and with `peel` one more, the image inside its uniform frame or canvas
    (`peel_canvas`; the image itself again when there is none, so the count is fixed)."""

    dihedral: bool = False
    peel: bool = False

    @property
    def count(self) -> int:
        return (N_VIEWS if self.dihedral else 1) + self.peel

    def inputs(self, rgb: np.ndarray, x: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
        """Decoded RGB + its network input [3,S,S] -> the views' network inputs [count, 3, S, S]."""
        views = dihedral_views(x) if self.dihedral else x[None]
        if not self.peel:
            return views
        inner = peel_canvas(rgb)
        extra = x if inner is None else preprocess(inner, cfg)
        return np.concatenate([views, extra[None]])
