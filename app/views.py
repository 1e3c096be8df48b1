"""The views a copy query is embedded in: the eight dihedral views of a network input (identity, 3
rotations, and the mirror of each), the image inside its frame or canvas (`peel_canvas`), the image
turned upright (`deskew`), the image on the background transparent tokens are catalogued on
(`repaint_background`), and the image with its hues rotated round the colour wheel (`rotate_hue`).

A copy search may embed all eight views of the query and keep, for each catalogued token, the best
score: a mirrored or quarter-turned copy then meets its original in the orientation it was catalogued in.
The input is square (the preprocessing pads to S x S), so every view is again a valid input.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from app.imaging import background_region, border_colour
from app.preprocessing import PreprocessConfig, downscale_max_side, preprocess

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


def skew_degrees(rgb: np.ndarray) -> float:
    """The dominant orientation of the image's edges modulo 90 degrees, in (-45, 45]: 0 for upright art
    (pixel art above all), the angle of a copy turned by a few degrees."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    hist, _ = np.histogram(
        np.degrees(np.arctan2(gy, gx)) % 90.0, bins=180, range=(0.0, 90.0), weights=np.hypot(gx, gy)
    )
    smooth = np.convolve(np.r_[hist[-3:], hist, hist[:3]], np.ones(7) / 7, mode="valid")  # circular
    bins = np.arange(int(np.argmax(smooth)) - 3, int(np.argmax(smooth)) + 4)  # the peak's window
    weights = hist[bins % 180]
    offset = float((weights * (bins + 0.5)).sum() / max(weights.sum(), 1e-9)) * 0.5  # degrees, may wrap
    angle = offset % 90.0
    return angle if angle <= 45 else angle - 90


def deskew(rgb: np.ndarray, min_degrees: float = 2.0) -> np.ndarray | None:
    """The image turned back by `skew_degrees`, corners filled with its border colour, so a copy rotated by
    a few degrees meets its original upright; None when it is already upright within `min_degrees`."""
    angle = skew_degrees(rgb)
    return None if abs(angle) < min_degrees else _turn_back(rgb, angle)


def _turn_back(rgb: np.ndarray, angle: float) -> np.ndarray:
    """The image turned by `angle` about its centre, corners filled with its border colour."""
    h, w = rgb.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    fill = tuple(int(c) for c in border_colour(rgb))
    return cv2.warpAffine(rgb, turn, (w, h), flags=cv2.INTER_LINEAR, borderValue=fill)


REFINE_MAX_SIDE = 256  # `refine_skew` reads a larger image shrunk to this


def _axis_sharpness(grey: np.ndarray, angle: float) -> float:
    """How sharply the image turned by `angle` concentrates its edges on rows and columns (the squared
    projection profiles of its gradients): highest when a pixel grid stands upright."""
    h, w = grey.shape
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    t = cv2.warpAffine(grey, turn, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    across, down = np.abs(np.diff(t, axis=1)).sum(0), np.abs(np.diff(t, axis=0)).sum(1)
    return float((across**2).sum() + (down**2).sum())


def refine_skew(rgb: np.ndarray, angle: float) -> float:
    """`skew_degrees` refined for pixel art, whose staircase edges bias gradients towards the axes (by a
    tenth of the angle): the turn within 3 degrees of `angle` that stands the grid most sharply upright
    (`_axis_sharpness`: to 0.25, then 0.05 degrees; about 7 ms at 192 px; a larger image is first
    shrunk to `REFINE_MAX_SIDE`, the angle is the same)."""
    grey = downscale_max_side(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), REFINE_MAX_SIDE)
    for span, step in ((3.0, 0.25), (0.25, 0.05)):
        turns = angle + np.arange(-span, span + step / 2, step)
        angle = float(turns[int(np.argmax([_axis_sharpness(grey, a) for a in turns]))])
    return angle


def deskew_framed(
    rgb: np.ndarray, min_degrees: float = 2.0, refine: bool = False
) -> tuple[np.ndarray, np.ndarray] | None:
    """`deskew` (with `refine`, at the `refine_skew` angle), with the pixels it shows of the image,
    [H, W] bool: the corners that turning back brings in from outside its frame were cut off by the
    rotation, and are filled, not shown."""
    angle = skew_degrees(rgb)
    if abs(angle) < min_degrees:
        return None
    angle = refine_skew(rgb, angle) if refine else angle
    h, w = rgb.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    inside = cv2.warpAffine(
        np.full((h, w), 255, np.uint8), turn, (w, h), flags=cv2.INTER_LINEAR, borderValue=0
    )
    return _turn_back(rgb, angle), inside == 255


def repaint_background(rgb: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray | None:
    """The image with its background region (`background_region`) painted `colour`, the model's
    `alpha_background`: a copymint that only swapped the background of a token catalogued on that colour
    (a transparent punk) meets its original. None when the image has no background region."""
    region = background_region(rgb)
    if not region.any():
        return None
    out = rgb.copy()
    out[region] = colour
    return out


def rotate_hue(rgb: np.ndarray, degrees: int) -> np.ndarray:
    """The image with every hue turned by `degrees` round the colour wheel (saturation and value kept):
    one of these views undoes most of a copymint's colour shift."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + round(degrees / 2)) % 180).astype(np.uint8)  # 0..179
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@dataclass(frozen=True)
class ViewSet:
    """The views a copy query is embedded in (each catalog token keeps its best score): the image, its 8
    dihedral views with `dihedral`; with `peel` one more, the image inside its uniform frame or canvas
    (`peel_canvas`), with `deskew` one more, the image turned upright (`deskew`), with `background` one
    more, the image on the model's alpha background (`repaint_background`), and `hues` more, the
    image with its hues turned by 360 / (hues + 1) degrees, twice that, and so on. An extra view that
    does not apply is the image itself again, so the count is fixed."""

    dihedral: bool = False
    peel: bool = False
    deskew: bool = False
    background: bool = False
    hues: int = 0

    @property
    def count(self) -> int:
        return (N_VIEWS if self.dihedral else 1) + self.peel + self.deskew + self.background + self.hues

    def inputs(self, rgb: np.ndarray, x: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
        """Decoded RGB + its network input [3,S,S] -> the views' network inputs [count, 3, S, S]."""
        views = [dihedral_views(x) if self.dihedral else x[None]]
        repaint = partial(repaint_background, colour=cfg.background_rgb)
        for wanted, undo in ((self.peel, peel_canvas), (self.deskew, deskew), (self.background, repaint)):
            if wanted:
                undone = undo(rgb)
                views.append((x if undone is None else preprocess(undone, cfg))[None])
        for i in range(1, self.hues + 1):
            views.append(preprocess(rotate_hue(rgb, i * 360 // (self.hues + 1)), cfg)[None])
        return np.concatenate(views)
