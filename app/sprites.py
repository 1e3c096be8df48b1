"""Pixel-art layout check: re-ranks the copy search's candidates when they are small sprites.

Distinct tokens of a pixel-art collection (two punks that differ by one earring) sit closer in the learned
instance space than a token and its recoloured or captioned copy, so the embedding's top-1 is often a
sibling. Pixel art allows a direct check: the candidate's own pixels (its stored image, reduced to the
native sprite) partition the image into colour regions, and a copy shows the same partition: each region
one colour, and every edge between regions still an edge. `layout` is the share of sprite pixels for
which both hold and whose colour keeps the palette (below), at the best of the query's alignments:

1. the whole query (as it is, inside its frame or canvas, turned upright: `query_views`) read onto the
   sprite's grid (each cell from its middle, `_stack`), in the 8 dihedral turns: recoloured, saturated,
   captioned, badged, re-encoded, framed, repositioned and slightly rotated copies line up;
2. the blocks of a pixelated copy against the sprite rendered onto as many blocks, and, when no
   candidate lines up as a whole, the cells of the query's own pixel grid (`regrid`: found from its
   edges): the native pixels a crop kept, at every place and turn inside the sprite. A crop that two
   sprites show alike is told apart by the cells its edge cuts (`edge_layouts`); `completed_crop` puts
   a crop into a sprite, which app/verify.py looks up when no candidate shows the crop whole.

A query read whole that is not lossless (re-encoded, resized) is one colour per region within
`LOSSY_TOLERANCE` rather than `TOLERANCE`: JPEG bleeds colour into small cells. Each cell gets the
bleed the candidate sprite itself shows when drawn at the query's size and saved as heavily compressed
JPEG, on top (`codec_bleed`: chroma subsampling smears a one-cell eye into its neighbours at 3-5
pixels a cell). Sprites that it then shows alike are told apart at `TOLERANCE` (`strict_layouts`).

The sprite's background (the border colour's region) is a region of its own. In the best alignment the
regions must also keep one *palette* (`palette_disagreements`): the query's colours are the sprite's
after one global hue, saturation and brightness change (`app/agreement.py: global_change`; the
background may take any colour). Distinct punks often differ from their nearest sibling by a single
pixel or by one region's shade (7 RGB levels for punks 1000 and 9013), and 59 % share their layout with
a sibling on another skin tone, none of which a colour-blind layout sees. So a lossless query (one whose own
grid, `native_sprite`, is the sprite's size: the sprite or its nearest upscale, as minted files are;
a JPEG saved at that size counts too) that leaves most coloured pixels as they were must
match within `EXACT`, and a change that would have moved the background but finds it kept is no filter
(a figure recoloured alone is a sibling): the query is then compared with the sprite unchanged.

What a copy covers or cuts off is set aside: `layout` is then the share of the cells the query still
shows (at most `COVERED_MAX` set aside). On an exact upscale of the grid, cells that show more than one
colour were drawn over finer than the sprite's pixels (a caption, a badge: `drawn_over`), with what
they enclose; a distinct token is drawn cell by cell and shows none. The upright view of a slightly
rotated copy lacks the corners the rotation cut off (its frame, `framed_views`).

`app/verify.py` orders the candidates by it (at or above `GATE` first), and a layout at its collection's
calibrated `layout_min` makes a copy. Paintings are no sprites: `app/keypoints.py` and `app/agreement.py`
check them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import NamedTuple

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from app.agreement import TOLERANCE as PALETTE_TOLERANCE
from app.agreement import global_change
from app.fingerprint import reduce_integer_upscale
from app.imaging import background_region
from app.preprocessing import downscale_max_side, reencode
from app.views import deskew_framed, peel_canvas

MAX_SPRITE_SIDE = 64  # a catalogued image whose native grid is at most this is a sprite
TOLERANCE = 24.0  # RGB distance (0-255 per channel) within which two query pixels are one colour ...
LOSSY_TOLERANCE = 32.0  # ... and in a lossy query read whole (JPEG bleeds colour into 4-px cells)
GATE = 0.9  # a candidate re-ranks by its layout agreement only at or above this
RENDER_SCALE = 8  # a sprite is rendered onto a finer block grid from this nearest upscale
REGRID_MAX_SIDE = 384  # a larger query is shrunk to this before its pixel grid is searched
SAMPLES = 3  # a large query's cells are read at the middle of a 3 x 3 split
KEPT = 8.0  # RGB distance: the query keeps a sprite's edge where its two sides differ by this much
HUED = 15  # HSV saturation above which a sprite pixel's hue counts for the palette's hue shift
BACKGROUND_KEPT = 12.0  # RGB distance within which the query's background is the sprite's own
EXACT = 3.0  # RGB distance within which a lossless query keeps a colour the global change leaves alone
SPRITE_BACKGROUND = 2  # a catalogued sprite is pixel-exact: its background is its border colour, within this
TIES = 8  # at most this many equally good alignments are told apart by their palette
FLAT = 8.0  # RGB spread within which a cell of a nearest-upscaled query shows one colour
COVERED_MAX = 0.2  # at most this share of an upscaled query's cells may be set aside as drawn over
BLEED_QUALITY = 50  # a lossy query read whole may show each cell's bleed at this JPEG quality ...
BLEED_FLOOR = 8.0  # ... beyond this RGB distance (a flat area's codec noise) ...
BLEED_CELL_MAX = 16  # ... when its cells are fewer pixels than this (larger ones keep their middles)
PARTIAL = 0.3  # a crop's cell that the image's edge cuts is read where this share of it shows (ties)


def native_sprite(rgb: np.ndarray) -> np.ndarray | None:
    """The image's native pixel grid if it is pixel art (nearest-upscaled or small), else None."""
    small = reduce_integer_upscale(rgb)
    return small if max(small.shape[:2]) <= MAX_SPRITE_SIDE else None


def _background(sprite: np.ndarray) -> np.ndarray:
    """[H, W] bool: a pixel-exact sprite's background (`background_region` within `SPRITE_BACKGROUND`:
    a figure colour a few levels off the background is figure)."""
    return background_region(sprite, SPRITE_BACKGROUND)


def _labels(sprite: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """One integer per distinct colour of the sprite, and one for its background (`_background`,
    unless given), [H, W]."""
    labels = np.unique(_codes(sprite), return_inverse=True)[1].reshape(sprite.shape[:2])
    background = _background(sprite) if background is None else background
    # the background is a region of its own: a new background leaves enclosed pixels of its colour alone
    return np.where(background, labels.max() + 1, labels)


def drawn_over(view: np.ndarray, h: int, w: int) -> np.ndarray | None:
    """[h, w] bool: the cells of a nearest upscale of an h x w grid (the view an exact multiple of it, at
    least 4 pixels a cell) that something drawn finer than the grid covers: cells that show more than
    one colour (a caption's strokes, a badge's anti-aliased rim) and what they enclose (the badge's
    face). A copymint draws on the minted image; a distinct token is drawn on the grid, cell by cell.
    None when the view is no such upscale, or more than `COVERED_MAX` of it would be set aside."""
    rows, cols = view.shape[:2]
    f = rows // h
    if f < 4 or rows != f * h or cols != f * w:
        return None
    cells = view.reshape(h, f, w, f, 3).astype(np.int16)
    busy = (cells.max((1, 3)) - cells.min((1, 3))).max(-1) > FLAT
    if not busy.any():
        return busy
    _, regions = cv2.connectedComponents((~busy).astype(np.uint8), connectivity=4)
    outer = np.unique(np.r_[regions[0], regions[-1], regions[:, 0], regions[:, -1]])
    covered = busy | ((regions > 0) & ~np.isin(regions, outer))  # busy cells' rims enclose the rest
    return covered if covered.mean() <= COVERED_MAX else None


def _cells(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    """The image read onto an h x w grid, [h, w, 3] float32: each cell the mean of its middle when the
    image is at least `SAMPLES` times the grid (area-resampled onto a grid `SAMPLES` times finer), else
    area-resampled onto the grid."""
    if rgb.shape[0] >= SAMPLES * h and rgb.shape[1] >= SAMPLES * w:
        fine = cv2.resize(rgb, (w * SAMPLES, h * SAMPLES), interpolation=cv2.INTER_AREA)
        return fine[SAMPLES // 2 :: SAMPLES, SAMPLES // 2 :: SAMPLES].astype(np.float32)
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)


def _stack(
    views: Sequence[np.ndarray], h: int, w: int, frames: Sequence[np.ndarray | None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every view on an h x w grid, in each dihedral turn that has that shape: [T, h, w, 3] float32, and
    which of its cells are to be compared, [T, h, w] bool: not those `drawn_over`, nor those a view's
    frame (`frames`: the pixels it shows, None: all) does not wholly show (a rotation cut them off),
    together at most `COVERED_MAX` of them. A view at least `SAMPLES` times the grid gives each cell the
    mean of its middle (area-resampled onto a grid `SAMPLES` times finer): a resized, re-encoded or
    repositioned copy blurs and rings at the cells' edges, not at their centres. A smaller view is
    area-resampled onto the grid."""
    out, seen = [], []
    for rgb, frame in zip(views, frames or [None] * len(views), strict=True):
        for size in {(w, h), (h, w)}:
            q = _cells(rgb, size[1], size[0])
            covered = drawn_over(rgb, size[1], size[0])
            shown = np.ones(q.shape[:2], bool) if covered is None else ~covered
            if frame is not None:
                inside = cv2.resize(frame.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.99
                shown = shown & inside if (shown & inside).mean() >= 1 - COVERED_MAX else shown
            for view, mask in ((q, shown), (q[:, ::-1], shown[:, ::-1])):
                for k in range(4):
                    turned = np.rot90(view, k)
                    if turned.shape[:2] == (h, w):
                        out.append(turned)
                        seen.append(np.rot90(mask, k))
    return np.stack(out), np.stack(seen)


def _disagreements(
    stack: np.ndarray,
    labels: np.ndarray,
    ref: np.ndarray,
    tolerance: float,
    kept: float = KEPT,
    seen: np.ndarray | None = None,
    slack: np.ndarray | None = None,
) -> np.ndarray:
    """For query turns `stack` [T, a, b, 3] against sprite windows (`labels` [O, a, b] of the sprite's
    colours, `ref` [O, a, b, 3] their RGB): the pixels whose query colour is not its region's colour or
    whose region edges the query loses (its two sides closer than `kept`), [O, T, a, b] bool. With
    `seen` [T, a, b], only those pixels count: region colours are read from them, edges between them.
    `slack` [a, b] (one window): added to `tolerance` per pixel for its colour (`codec_bleed`)."""
    t, a, b = stack.shape[:3]
    o, n = len(labels), a * b
    flat_labels = labels.reshape(o, n)
    k = int(labels.max()) + 1
    keys = np.arange(o)[:, None] * k + flat_labels  # (window, region) of each pixel, [O, N]
    onehot = np.zeros((n, o * k), np.float32)
    onehot[np.arange(n)[None, :], keys] = 1
    if seen is None:  # every pixel counts
        pixels, counts = stack.reshape(t, n, 3), onehot.sum(0)
    else:  # region colours from the seen pixels only
        weight = seen.reshape(t, n).astype(np.float32)
        pixels, counts = stack.reshape(t, n, 3) * weight[..., None], (weight @ onehot)[:, None, :]
    sums = pixels.transpose(0, 2, 1).reshape(t * 3, n) @ onehot  # one matmul, [T*3, O*K]
    mean = sums.reshape(t, 3, o * k) / np.maximum(counts, 1)
    region_mean = mean.transpose(2, 0, 1)[keys]  # each pixel's region mean, [O, N, T, 3]

    def far(x: np.ndarray, y: np.ndarray, tol: float = tolerance) -> np.ndarray:
        d = x - y  # RGB last; summed by hand, a 3-wide reduce is slow
        return d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2] > tol * tol

    pixels = stack.reshape(t, n, 3).transpose(1, 0, 2)[None]  # [1, N, T, 3]
    tol = tolerance if slack is None else tolerance + slack.reshape(1, n, 1)  # per pixel where given
    bad = far(pixels, region_mean, tol).transpose(0, 2, 1).reshape(o, t, a, b)
    for cut in ((slice(None), slice(1, None)), (slice(1, None),)):  # edges across, then down
        prev = tuple(slice(None, -1) if c.start == 1 else c for c in cut)
        edge = far(ref[(slice(None), *cut)], ref[(slice(None), *prev)])  # the sprite's edges ...
        shown = far(stack[(slice(None), *cut)], stack[(slice(None), *prev)], kept)  # (desaturated: closer)
        lost = edge[:, None] & ~shown[None]  # ... that the query does not show
        if seen is not None:
            lost &= (seen[(slice(None), *cut)] & seen[(slice(None), *prev)])[None]
        bad[(slice(None), slice(None), *cut)] |= lost
        bad[(slice(None), slice(None), *prev)] |= lost
    return bad if seen is None else bad & seen[None]


def palette_disagreements(
    cells: np.ndarray,
    sprite: np.ndarray,
    lossless: bool = False,
    background: np.ndarray | None = None,
    seen: np.ndarray | None = None,
    slack: np.ndarray | None = None,
) -> np.ndarray:
    """[H, W] bool: the sprite's figure pixels (not its background) whose colour in the aligned query
    `cells` (float RGB on the sprite's grid) is not the sprite's after the best global colour change.
    A `lossless` query that leaves most of the sprite's coloured pixels exactly as they were had no
    colour change: all of its figure must then be within `EXACT`. A change that would move the
    background but finds it kept (within `BACKGROUND_KEPT`) is no filter: the figure alone was recoloured,
    as sibling punks of another skin tone are, and the query is compared with the sprite unchanged.
    `background`: the sprite's (`_background`), when already at hand; `seen`: the pixels to compare
    (all by default); `slack`: added to the tolerance per pixel (`codec_bleed`)."""
    back = _background(sprite) if background is None else background
    seen = np.ones(back.shape, bool) if seen is None else seen
    where, back = ~back & seen, back & seen
    if not where.any():  # all background: no figure to recolour
        return where
    if lossless:
        hued = where & (cv2.cvtColor(sprite, cv2.COLOR_RGB2HSV)[..., 1] > HUED)
        same = np.abs(cells - sprite).max(-1) <= 1
        if same[hued if hued.any() else where].mean() >= 0.5:
            return (np.linalg.norm(cells - sprite, axis=-1) >= EXACT) & where
    query = np.rint(np.clip(cells, 0, 255)).astype(np.uint8)
    expected = global_change(query, sprite, where, saturated=HUED, min_hued=0)
    if back.any():  # a colour filter changes the whole picture; a figure recoloured alone is a sibling
        kept = np.linalg.norm(cells[back].mean(0) - sprite[back].mean(0)) < BACKGROUND_KEPT
        if kept and np.linalg.norm(expected[back].mean(0) - sprite[back].mean(0)) >= PALETTE_TOLERANCE:
            expected = sprite.astype(np.float32)
    tol = PALETTE_TOLERANCE if slack is None else PALETTE_TOLERANCE + slack
    return (np.linalg.norm(cells - expected, axis=-1) >= tol) & where


def _ties(tied: np.ndarray, bound: float) -> np.ndarray:
    """The indices of equally good alignments (`tied`, any shape) whose palettes are worth reading: up to
    `TIES` of them, or only the first when even a perfect palette (`bound`: the layout's agreement) stays
    below `GATE`, where the value decides nothing (it neither ranks the candidate nor confirms a copy)."""
    found = np.argwhere(tied) if tied.ndim > 1 else np.flatnonzero(tied)
    return found[: TIES if bound >= GATE else 1]


def _best_agreement(
    stacked: tuple[np.ndarray, np.ndarray],
    sprite: np.ndarray,
    tolerance: float,
    lossless: bool = False,
    slack: np.ndarray | None = None,
) -> float:
    """The agreement of the best stacked query turn (`_stack`: turns and their cells to compare) with
    the whole sprite, its palette checked too: the share of compared cells that agree. `slack`: each
    cell's extra colour tolerance (`codec_bleed`), for a lossy query."""
    stack, seen = stacked
    back = _background(sprite)  # one flood fill serves the regions and the palette
    labels, ref = _labels(sprite, back)[None], sprite.astype(np.float32)[None]
    # a lossless query's cells are exact: an edge a strong filter brought within `KEPT` is still there
    bad = _disagreements(stack, labels, ref, tolerance, EXACT if lossless else KEPT, seen, slack)[0]
    share = bad.reshape(len(bad), -1).sum(1) / np.maximum(seen.reshape(len(seen), -1).sum(1), 1)
    best = 0.0
    for t in _ties(share == share.min(), 1.0 - share.min()):  # equally good layouts: the palette decides
        wrong = bad[t] | palette_disagreements(stack[t], sprite, lossless, back, seen[t], slack)
        best = max(best, 1.0 - float(wrong[seen[t]].mean()))
    return best


def lossless(native: np.ndarray | None, sprite: np.ndarray) -> bool:
    """Whether a query whose own native grid is `native` (`native_sprite`: the query reduced by its
    integer upscale, if any) has the sprite's grid size, in some turn."""
    return native is not None and sorted(native.shape[:2]) == sorted(sprite.shape[:2])


def _comb_scores(d: np.ndarray, p: float, phase_step: float = 0.25) -> tuple[float, float]:
    """(score, phase) of the best comb of boundaries phase + k * p on edge profile `d`: its mean edge
    strength minus that of the comb shifted by a third, a half or two thirds of a period (whichever is
    strongest), so a multiple of the true period, whose shifted combs land on boundaries too, scores low."""
    n = len(d)
    pos = np.arange(0, p, phase_step)[:, None] + np.arange(int(n / p) + 1)[None, :] * p
    valid = pos + p <= n - 1

    def at(x: np.ndarray) -> np.ndarray:
        return np.where(valid, d[np.minimum(np.round(x).astype(int), n - 1)], 0).sum(1)

    off = np.maximum.reduce([at(pos + p * f) for f in (1 / 3, 1 / 2, 2 / 3)])
    score = (at(pos) - off) / np.maximum(valid.sum(1), 1)
    i = int(score.argmax())
    return float(score[i]), float(pos[i, 0])


def pixel_grid(rgb: np.ndarray, min_cells: int = 8) -> tuple[float, float, float]:
    """(period, phase across, phase down) of the square pixel grid an upscaled, cropped or re-encoded
    piece of pixel art shows: boundaries between its cells sit at phase + 0.5 + k * period (in pixel
    coordinates). The period scores both axes' edge profiles at once (a coarse, then a fine search)."""
    img = rgb.astype(np.float32)
    profiles = [np.abs(np.diff(img, axis=axis)).sum(2).sum(1 - axis) for axis in (1, 0)]
    top = max(3.2, min(len(d) for d in profiles) / min_cells)

    def best(periods: np.ndarray, near: float) -> float:
        """The smallest period scoring within `near` of the best (2.5 or 3 periods can score as well)."""
        scores = np.array([sum(_comb_scores(d, p)[0] for d in profiles) for p in periods])
        return float(periods[int(np.argmax(scores >= near * scores.max()))])

    p = best(np.arange(3.0, top, 0.1), 0.85)
    p = best(np.arange(max(3.0, p - 0.12), p + 0.12, 0.01), 1.0)
    return p, _comb_scores(profiles[0], p)[1], _comb_scores(profiles[1], p)[1]


def regrid(rgb: np.ndarray, min_cells: int = 8, partial: float = 1.0) -> np.ndarray | None:
    """The native pixels a pixel-art query shows: its colour at the centre of every whole cell of its own
    grid (`pixel_grid`), [cells down, cells across, 3] float32; None with fewer than `min_cells` a side.
    A crop zoomed back to size keeps a regular grid of whole native pixels, which this recovers. With
    `partial` < 1, a cell the image's edge cuts is read too (at the middle of what shows of it) where at
    least that share of it shows. A large query is first shrunk to `REGRID_MAX_SIDE` (the grid search
    grows with the side)."""
    if min(rgb.shape[:2]) < 2 * min_cells:  # too small to show that many cells of two pixels or more
        return None
    rgb = downscale_max_side(rgb, REGRID_MAX_SIDE)
    p, fx, fy = pixel_grid(rgb, min_cells)
    k = max(1, int(p / 2)) | 1
    smooth = cv2.blur(rgb, (k, k)).astype(np.float32)  # each centre: the mean of the cell's middle

    def centres(p: float, phase: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Each read cell's centre along one axis, and which of them the edge cuts."""
        first = int(np.ceil((-1.0 - phase) / p))  # cell m spans phase + 0.5 + [m, m + 1] * p
        last = int(np.floor((n - 1.0 - phase) / p)) - 1
        mid = np.round(phase + 0.5 + (np.arange(first, last + 1) + 0.5) * p).astype(int)
        mid = mid[(mid >= 0) & (mid < n)]
        start, end = phase + 0.5 + first * p, phase + 0.5 + (last + 1) * p  # the whole cells' extent
        lead = [round((start - 0.5) / 2)] if start + 0.5 >= partial * p else []  # shown: -0.5 .. start
        tail = [round((end + n - 0.5) / 2)] if n - 0.5 - end >= partial * p else []  # end .. n - 0.5
        cut = np.r_[np.ones(len(lead), bool), np.zeros(len(mid), bool), np.ones(len(tail), bool)]
        return np.r_[lead, mid, tail].astype(int), cut

    (ys, cut_y), (xs, cut_x) = centres(p, fy, rgb.shape[0]), centres(p, fx, rgb.shape[1])
    if min(len(ys) - cut_y.sum(), len(xs) - cut_x.sum()) < min_cells:
        return None
    out = smooth[np.ix_(ys, xs)]
    if cut_y.any() or cut_x.any():  # a cut cell shows too little for the blurred middle: its pixel
        raw = rgb.astype(np.float32)[np.ix_(ys, xs)]
        out[cut_y] = raw[cut_y]
        out[:, cut_x] = raw[:, cut_x]
    return out


def collapse_runs(rgb: np.ndarray, min_cells: int = 8) -> np.ndarray | None:
    """The block image of a nearest-upscaled picture (a pixelated copy): its colour at the centre of each
    block, float32. Blocks are runs of identical rows and columns; neighbouring blocks of one colour
    merge into a run of a multiple of the block size. None with fewer than `min_cells` blocks a side or
    runs that are no multiples of one size (not a nearest upscale: a linear zoom also repeats columns,
    but with single transition columns between)."""
    cells = []
    for axis, n in ((0, rgb.shape[0]), (1, rgb.shape[1])):
        other = (1, 2) if axis == 0 else (0, 2)
        changes = np.any(np.diff(rgb, axis=axis) != 0, axis=other)
        runs = np.diff(np.r_[0, np.flatnonzero(changes) + 1, n])
        single = runs[runs <= 1.5 * np.median(runs)]  # one block each: a fractional size alternates
        size = float(single.mean())
        if runs.min() < 2 or np.abs(runs - size * np.round(runs / size)).max() > 1.5:
            return None
        blocks = int(np.round(runs / size).sum())  # each run's own count: robust to size's error
        if blocks < min_cells:
            return None
        cells.append(((np.arange(blocks) + 0.5) * n / blocks).astype(int))
    return rgb[np.ix_(cells[0], cells[1])].astype(np.float32)


def _is_crop(a: int, b: int, h: int, w: int) -> bool:
    """Whether a cells fit inside an h x w sprite, fewer of them on some side (a crop's)."""
    return a <= h and b <= w and not (a >= h and b >= w)


def _crop_windows(
    labels: np.ndarray, ref: np.ndarray, back: np.ndarray, a: int, b: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every a x b window of a sprite's labels, RGB and background (`_window_agreement`), row by row:
    [O, a, b], [O, a, b, 3], [O, a, b]."""
    return (
        sliding_window_view(labels, (a, b)).reshape(-1, a, b),
        sliding_window_view(ref, (a, b, 3)).reshape(-1, a, b, 3),
        sliding_window_view(back, (a, b)).reshape(-1, a, b),  # the sprite's, not the crop's
    )


def _turns(patch: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral turns of a patch of cells."""
    return [np.rot90(v, k) for v in (patch, patch[:, ::-1]) for k in range(4)]


class CropFit(NamedTuple):
    """Where a crop fits a sprite best (`completed_crop`)."""

    share: float  # the share of the crop's cells that disagree there (0: the sprite shows it as it is)
    sprite: np.ndarray  # the sprite with the crop's native pixels put in there
    turned: np.ndarray  # the crop's native pixels in the turn that fits


def completed_crop(patch: np.ndarray, sprite: np.ndarray, tolerance: float = TOLERANCE) -> CropFit | None:
    """The sprite with the native pixels a crop shows (`regrid`) put in at their best place and turn
    (the fewest layout disagreements, `_disagreements`). What the crop cut off stays the sprite's: a
    sibling of the cropped token mostly shares it, so the completion stands for the whole token, which
    the instance space finds. None when the patch is no crop of the sprite's grid."""
    h, w = sprite.shape[:2]
    back = _background(sprite)
    labels, ref = _labels(sprite, back), sprite.astype(np.float32)
    turns = _turns(patch)
    best: CropFit | None = None
    for a, b in {t.shape[:2] for t in turns}:
        if not _is_crop(a, b, h, w):
            continue
        stack = np.stack([t for t in turns if t.shape[:2] == (a, b)])
        win_labels, win_ref, _ = _crop_windows(labels, ref, back, a, b)
        bad = _disagreements(stack, win_labels, win_ref, tolerance)  # [O, T, a, b]
        share = bad.reshape(*bad.shape[:2], -1).mean(2)
        o, t = np.unravel_index(int(share.argmin()), share.shape)
        if best is None or share[o, t] < best.share:
            y, x = divmod(int(o), w - b + 1)
            out = sprite.copy()
            out[y : y + a, x : x + b] = np.clip(np.rint(stack[t]), 0, 255).astype(np.uint8)
            best = CropFit(float(share[o, t]), out, stack[t])
    return best


def crop_misfit(
    turned: Sequence[np.ndarray], sprite: np.ndarray | None, tolerance: float = TOLERANCE
) -> float:
    """How badly a crop's native pixels (each of `turned`: in a turn a completion put them,
    `CropFit.turned`) fit a sprite: the smallest share of them farther than `tolerance` (RGB) from the
    sprite's pixels, at any place they fit inside it; inf for no sprite or one too small. A cheap
    stand-in for `completed_crop`'s fit (no regions, no other turns) that orders hundreds of candidates
    (app/verify.py: find_by_completion)."""
    best = float("inf")
    if sprite is None:
        return best
    ref = sprite.astype(np.float32)
    for patch in turned:
        a, b = patch.shape[:2]
        if a > sprite.shape[0] or b > sprite.shape[1]:
            continue
        d = sliding_window_view(ref, (a, b, 3))[:, :, 0] - patch  # [rows, cols, a, b, 3]
        far = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2] > tolerance * tolerance
        best = min(best, float(far.mean((-1, -2)).min()))
    return best


class SpriteQuery:
    """A query's own side of the sprite checks, each worked out once when first needed: the checks of
    every candidate (and every completion round, app/verify.py) share them."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = rgb
        self._stacks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._bleeds: dict[tuple, np.ndarray | None] = {}

    @cached_property
    def native(self) -> np.ndarray | None:
        """Its own native pixel grid (`native_sprite`)."""
        return native_sprite(self.rgb)

    @cached_property
    def framed(self) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """Its views and their frames (`framed_views`)."""
        return framed_views(self.rgb)

    @cached_property
    def blocks(self) -> np.ndarray | None:
        """The blocks of a pixelated copy (`collapse_runs`)."""
        return collapse_runs(self.rgb)

    @cached_property
    def patch(self) -> np.ndarray | None:
        """The native pixels a cropped query shows (`regrid`), unless it is pixelated (blocks, not
        pixels)."""
        return None if self.blocks is not None else regrid(self.rgb)

    @cached_property
    def cut_patch(self) -> np.ndarray | None:
        """`patch` with the cells its edge cuts (`regrid` with `PARTIAL`)."""
        return None if self.blocks is not None else regrid(self.rgb, partial=PARTIAL)

    def stack(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Its views on an h x w grid (`_stack`)."""
        if (h, w) not in self._stacks:
            views, frames = self.framed
            self._stacks[h, w] = _stack(views, h, w, frames)
        return self._stacks[h, w]

    def bleed(self, sprite: np.ndarray) -> np.ndarray | None:
        """The sprite's `codec_bleed` at this query's size, worked out once per sprite (the layout and
        its lossy tie-break both read it)."""
        key = sprite.shape[:2] + (sprite.tobytes(),)
        if key not in self._bleeds:
            self._bleeds[key] = codec_bleed(sprite, self.rgb.shape[:2])
        return self._bleeds[key]


def as_query(query: np.ndarray | SpriteQuery) -> SpriteQuery:
    """The query as a `SpriteQuery` (an RGB image is wrapped)."""
    return query if isinstance(query, SpriteQuery) else SpriteQuery(query)


def _edges(sprite: np.ndarray) -> np.ndarray:
    """Where neighbouring pixels differ, down and across, flattened."""
    return np.r_[
        (sprite[1:] != sprite[:-1]).any(-1).ravel(), (sprite[:, 1:] != sprite[:, :-1]).any(-1).ravel()
    ]


def _codes(rgb: np.ndarray) -> np.ndarray:
    """One integer per RGB colour, [H, W]."""
    x = rgb.astype(np.int64)
    return (x[..., 0] << 16) | (x[..., 1] << 8) | x[..., 2]


def recoloured_as(native: np.ndarray, sprite: np.ndarray) -> list[np.ndarray]:
    """A lossless query's native pixels (`native_sprite`, the sprite's size in some turn) in the sprite's
    colours, in the dihedral turn whose edges agree with the sprite's most, two ways: with the global
    hue, saturation and brightness change that turns its figure into the sprite's (`global_change`)
    and the sprite's background; and with each of its colours replaced by the sprite colour that most
    of its pixels show, where that is at least half of them (the rest as the first way). A recoloured
    or saturated copy, put back into a sibling's palette, sits close to its original in the instance
    space."""
    edges = _edges(sprite)
    turns = [t for t in _turns(native) if t.shape == sprite.shape]
    turn = np.ascontiguousarray(max(turns, key=lambda t: int((_edges(t) == edges).sum())))
    back = _background(sprite)
    changed = np.clip(global_change(sprite, turn, ~back), 0, 255).astype(np.uint8)
    if back.any():
        changed[_background(turn)] = np.median(sprite[back], axis=0).astype(np.uint8)
    own, inverse = np.unique(_codes(turn).ravel(), return_inverse=True)
    pairs, counts = np.unique(inverse * (1 << 24) + _codes(sprite).ravel(), return_counts=True)
    mapped = changed.reshape(-1, 3).copy()
    totals = np.bincount(inverse, minlength=len(own))
    best = np.full(len(own), -1, np.int64)
    top = np.zeros(len(own), np.int64)
    for pair, n in zip(pairs.tolist(), counts.tolist(), strict=True):  # a few dozen colours
        c = pair >> 24
        if n > top[c]:
            top[c], best[c] = n, pair & 0xFFFFFF
    keep = 2 * top >= totals
    hit = keep[inverse]
    code = best[inverse][hit]
    mapped[hit] = np.stack([(code >> 16) & 255, (code >> 8) & 255, code & 255], axis=-1).astype(np.uint8)
    return [changed, mapped.reshape(changed.shape)]


def _tied(layouts: Sequence[float | None]) -> list[int]:
    """The candidates that share the best layout, when it reaches `GATE` and two or more do."""
    best = max((a for a in layouts if a is not None), default=0.0)
    tied = [i for i, a in enumerate(layouts) if a is not None and a == best >= GATE]
    return tied if len(tied) > 1 else []


def edge_layouts(
    query: np.ndarray | SpriteQuery, sprites: Sequence[np.ndarray | None], layouts: Sequence[float | None]
) -> list[float | None]:
    """Tie-breaks for a cropped query: where two or more sprites share the best layout (at least
    `GATE`: every cell the crop wholly shows agrees with each, as with a sibling that differs only
    near the cut), their layout with the cells the edge cuts counted too (`regrid` with `PARTIAL`);
    None elsewhere, and for a query that shows no crop of them."""
    out: list[float | None] = [None] * len(layouts)
    tied = _tied(layouts)
    patch = as_query(query).cut_patch if tied else None
    for i in tied if patch is not None else ():
        h, w = sprites[i].shape[:2]
        if any(_is_crop(a, b, h, w) for a, b in (patch.shape[:2], patch.shape[1::-1])):
            out[i] = _window_agreement(patch, sprites[i], TOLERANCE)
    return out


def strict_layouts(
    query: np.ndarray | SpriteQuery, sprites: Sequence[np.ndarray | None], layouts: Sequence[float | None]
) -> list[float | None]:
    """Tie-breaks for a lossy query read whole: where two or more sprites share the best layout (at
    least `GATE`), their layout at `TOLERANCE` rather than `LOSSY_TOLERANCE`, whose wider margin lets
    a sibling a shade away pass as well; None elsewhere, and for sprites the query is lossless to
    (read at `TOLERANCE` already)."""
    out: list[float | None] = [None] * len(layouts)
    q = as_query(query)
    for i in _tied(layouts):
        if not lossless(q.native, sprites[i]):
            stacked = q.stack(*sprites[i].shape[:2])
            out[i] = _best_agreement(stacked, sprites[i], TOLERANCE, slack=q.bleed(sprites[i]))
    return out


def _window_agreement(patch: np.ndarray, sprite: np.ndarray, tolerance: float, whole: bool = False) -> float:
    """The best agreement of the cells a query shows (`regrid`, `collapse_runs`) with the sprite, in every
    dihedral turn: fewer cells than the sprite has (a crop) at every place they fit inside it; more (a
    pixelated copy, whose blocks are finer than the sprite's pixels) against the sprite rendered onto
    that many blocks, as also, with `whole` (the blocks of a pixelated copy, which may be coarser than
    the sprite's pixels), fewer. The best place and turn must keep the palette too."""
    h, w = sprite.shape[:2]
    back = _background(sprite)
    labels, ref = _labels(sprite, back), sprite.astype(np.float32)
    turns = _turns(patch)
    best = 0.0
    for a, b in {t.shape[:2] for t in turns}:
        stack = np.stack([t for t in turns if t.shape[:2] == (a, b)])
        windows = []  # (labels [O, a, b], RGB [O, a, b, 3], background [O, a, b]) to compare with
        if _is_crop(a, b, h, w):  # every place inside the sprite
            windows.append(_crop_windows(labels, ref, back, a, b))
        if whole or (a >= h and b >= w):  # blocks: the sprite rendered onto as many
            up = cv2.resize(sprite, (w * RENDER_SCALE, h * RENDER_SCALE), interpolation=cv2.INTER_NEAREST)
            rendered = cv2.resize(up, (b, a), interpolation=cv2.INTER_AREA)  # blended at block edges
            rendered_back = _background(rendered)
            windows.append(
                (
                    _labels(rendered, rendered_back)[None],
                    rendered.astype(np.float32)[None],
                    rendered_back[None],
                )
            )
        for win_labels, win_ref, win_back in windows:
            bad = _disagreements(stack, win_labels, win_ref, tolerance)  # [O, T, a, b]
            counts = bad.reshape(*bad.shape[:2], -1).sum(2)
            for o, t in _ties(counts == counts.min(), 1.0 - counts.min() / (a * b)):  # the palette decides
                palette = palette_disagreements(stack[t], win_ref[o].astype(np.uint8), background=win_back[o])
                best = max(best, 1.0 - float((bad[o, t] | palette).mean()))
    return best


def framed_views(rgb: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """The query as it is, inside its frame or canvas and turned upright, where those apply (the copy
    views of app/views.py; upright to a twentieth of a degree, `refine_skew`), so a bordered,
    repositioned or slightly rotated copy lines up again; and the pixels each shows of the query (None:
    all; the upright view's corners were cut off)."""
    views, frames = [rgb], [None]
    peeled, turned = peel_canvas(rgb), deskew_framed(rgb, refine=True)
    if peeled is not None:
        views, frames = [*views, peeled], [*frames, None]
    if turned is not None:
        views, frames = [*views, turned[0]], [*frames, turned[1]]
    return views, frames


def query_views(rgb: np.ndarray) -> list[np.ndarray]:
    """The views of `framed_views`, without their frames."""
    return framed_views(rgb)[0]


def codec_bleed(sprite: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """[h, w]: how much farther than a flat area's noise (`BLEED_FLOOR`) each of the sprite's cells,
    read as a query's are (`_cells`), moves when the sprite is drawn at `size` (the query's rows, cols)
    and saved as JPEG at `BLEED_QUALITY`: the slack a lossy query read whole gets per cell. Chroma
    subsampling smears a one-cell eye or earring into its neighbours at 3-5 pixels a cell; None at
    `BLEED_CELL_MAX` pixels a cell or more, where it does not."""
    if min(size) >= BLEED_CELL_MAX * max(sprite.shape[:2]):
        return None
    rendered = cv2.resize(sprite, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    cells = _cells(reencode(rendered, "jpeg", BLEED_QUALITY), *sprite.shape[:2])
    bleed = np.linalg.norm(cells - sprite.astype(np.float32), axis=-1)
    return np.maximum(bleed - BLEED_FLOOR, 0.0)


def whole_tolerance(exact_grid: bool) -> float:
    """The colour tolerance of a query read whole onto a sprite's grid: `TOLERANCE` for a lossless
    one (whose palette must be exact anyway), `LOSSY_TOLERANCE` for the rest (re-encoded, resized)."""
    return TOLERANCE if exact_grid else LOSSY_TOLERANCE


def layout_agreement(
    query: np.ndarray | Sequence[np.ndarray],
    sprite: np.ndarray,
    tolerance: float | None = None,
    frames: Sequence[np.ndarray | None] | None = None,
) -> float:
    """How well the query (an RGB image, or several views of one, with their `frames` as
    `framed_views` gives them) shows the sprite's colour layout (0-1), in its best view and dihedral
    turn, palette included (the first view decides whether the query is lossless). Each view is read
    onto the sprite's grid (`_stack`). `tolerance`: `whole_tolerance` unless given."""
    views = [query] if isinstance(query, np.ndarray) else query
    exact_grid = lossless(native_sprite(views[0]), sprite)
    tolerance = whole_tolerance(exact_grid) if tolerance is None else tolerance
    slack = None if exact_grid else codec_bleed(sprite, views[0].shape[:2])
    return _best_agreement(_stack(views, *sprite.shape[:2], frames), sprite, tolerance, exact_grid, slack)


def candidate_layouts(
    query: np.ndarray | SpriteQuery, sprites: Iterable[np.ndarray | None]
) -> list[float | None]:
    """Each candidate's layout agreement with the query in its `query_views` (None where the candidate
    is no sprite)."""
    q = as_query(query)
    sprites_list = list(sprites)
    out: list[float | None] = []
    for s in sprites_list:
        if s is None:
            out.append(None)
            continue
        exact_grid = lossless(q.native, s)
        slack = None if exact_grid else q.bleed(s)
        out.append(_best_agreement(q.stack(*s.shape[:2]), s, whole_tolerance(exact_grid), exact_grid, slack))
    if all(a is None for a in out):
        return out
    patch = q.blocks  # pixelated blocks (averaged from several sprite pixels), ...
    whole = patch is not None
    if patch is None and max(a for a in out if a is not None) < GATE:  # ... or, when no candidate
        patch = q.patch  # lines up as a whole, the native pixels of a crop
    if patch is not None:
        out = [
            a if s is None or lossless(q.native, s) else max(a, _window_agreement(patch, s, TOLERANCE, whole))
            for s, a in zip(sprites_list, out, strict=True)
        ]
    return out
