"""Colour agreement for painted candidates: how much of a catalogued token's figure an aligned query shows
in the same colours, up to one global hue, saturation and brightness change.

A copy keeps the drawing *and* its colours: cropped, framed, captioned, re-encoded or on a new background,
the pixels it still shows are the original's, and a hue rotation or a saturation filter changes every
colour the same way. A sibling token of the same collection is the same base drawing at the same place
with one or more traits swapped: a hat, a shirt, the eyes differ as whole regions, which no single colour
change explains. `agreement` warps the query onto the candidate (a similarity transform, e.g. from the
keypoint check), fits the global change, and returns the share of the candidate's figure (its pixels not
joined to the border's colour) where the two agree; disagreements thinner than `OPENING` px (anti-aliased
outlines, resampling, thin caption strokes) are not counted.

A badge, logo or emoji pasted on a copy hides one region of the original's figure; a sibling's swapped
trait is a region too, but one that other tokens of the collection are drawn with. `overlay` forgives a
copy its largest disagreeing region when that region is small (`OVERLAY_MAX`) and the other candidates do
not show the query's pixels there (`EXPLAINED`): no single one of them (`WITNESSES` "one": a trait is
drawn whole on the tokens that have it) or not all of them together ("together", the first rule; among
fifty tokens some shows nearly any colour somewhere, so a badge's pixels are often "shown" piecemeal).
A copy shows nothing beyond the original's figure but its own background (swapped or not) and what was
pasted on: with `OverlayRule.beyond`, a region is forgiven only when, outside it, the query shows at most
that share of the figure where the candidate has background and neither background is shown (a sibling
on another background that differs by one trait inside the figure often wears another beyond it). A
caption is many regions, one per letter or what is left of it after the opening: with `OverlayRule.lines`,
regions that line up as a line of text in one colour (`text_lines`) are one region. A sticker, badge or
emoji is one compact shape, larger than most traits a sibling swaps: with `OverlayRule.compact`, a
compact region (`compact`) may cover up to `COMPACT_MAX` of the figure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from app.imaging import background_region

SIDE = 96  # both images are compared with the candidate scaled to this longer side
TOLERANCE = 40.0  # RGB distance (0-255 scale) within which two pixels agree
OPENING = 3  # disagreements that a square opening of this size removes do not count
MIN_FIGURE = 0.1  # the candidate's figure inside the aligned query must cover this share of it ...
MIN_COVER = 0.4  # ... and the query this share of the candidate, or there is nothing to compare
SATURATED, LIT = 60, 30  # HSV levels above which a pixel's hue (saturation, brightness) is trusted
FACTORS = np.geomspace(0.1, 4.0, 161)  # the saturation and brightness factors tried (2.3 % apart)
FACTOR_TOLERANCE = 6  # HSV levels within which a factor explains a pixel (whole: `_factor`)
OVERLAY_MAX = 0.08  # the largest disagreeing region is forgiven up to this share of the figure ...
COMPACT_MAX = 0.12  # ... and a compact one (`compact`, with `OverlayRule.compact`) up to this ...
EXPLAINED = 0.5  # ... unless other candidates show the query's pixels in this share of it or more
WITNESSES = ("together", "one")  # who must show that share: the other candidates together, or one of them
# a line of text (`text_lines`): regions side by side, each at most LINE_GAP times the taller one's height
# from the next and overlapping it by LINE_OVERLAP of the shorter one's height, at least LINE_MIN of them
# spanning LINE_ASPECT times their height, and LINE_COLOURS of them in the line's colour (their median
# colours within `TOLERANCE` of the median of those)
LINE_GAP, LINE_OVERLAP, LINE_MIN, LINE_ASPECT, LINE_COLOURS = 3.0, 0.5, 3, 2.0, 0.8
# a compact region (`compact`): it fills SOLIDITY of its convex hull, its box COMPACT_ASPECT as wide as long
SOLIDITY, COMPACT_ASPECT = 0.9, 0.5


@dataclass(frozen=True)
class OverlayRule:
    """How `overlay` forgives a pasted-on region (the model's, `CopyDetector.overlay_rule`): who must show
    its pixels for it not to be forgiven (`WITNESSES`: the other candidates together, or one of them), and
    how much the query may show beyond the candidate's figure outside it (a share of the figure; None: not
    looked at, the rule before `beyond` was chosen), whether regions that line up as text are one
    (`text_lines`; False: each region on its own, the rule before), and whether a compact region may
    cover up to `COMPACT_MAX` of the figure (`compact`; False: every region `OVERLAY_MAX`)."""

    witness: str = "together"
    beyond: float | None = None
    lines: bool = False
    compact: bool = False

    def __post_init__(self) -> None:
        if self.witness not in WITNESSES:
            raise ValueError(f"witness must be one of {WITNESSES}, not {self.witness!r}")
        if self.beyond is not None and not 0.0 <= self.beyond <= 1.0:
            raise ValueError(f"beyond must be a share of the figure (0..1), not {self.beyond!r}")


@dataclass(frozen=True, eq=False)
class Comparison:
    """One aligned comparison of a query with a candidate, in the candidate's frame at `SIDE`."""

    share: float  # share of `where` in which the query shows the candidate's colours
    query: np.ndarray  # the aligned query (uint8 RGB, the candidate's frame)
    where: np.ndarray  # the candidate's figure the query covers (bool)
    differ: np.ndarray  # where they disagree, after the opening (bool)
    # where the query shows something over the candidate's background that is neither background (the
    # candidate's, in its changed colours, nor the query's own), after the opening; None: not looked at
    beyond: np.ndarray | None = None


def scale_transform(query_shape: tuple[int, ...], candidate_shape: tuple[int, ...]) -> np.ndarray:
    """The 2x3 transform that stretches the query over the candidate's frame (no keypoints needed: a
    re-encoded, recoloured or pixelated copy keeps its framing)."""
    (qh, qw), (ch, cw) = query_shape[:2], candidate_shape[:2]
    return np.float64([[cw / qw, 0, 0], [0, ch / qh, 0]])


def _factor(candidate: np.ndarray, query: np.ndarray) -> float:
    """The factor f for which min(255, f * candidate) matches the query (1-D HSV levels) at the most
    pixels, within `FACTOR_TOLERANCE`, closer matches counting more: a strong saturation filter clips,
    which a median ratio misreads."""
    # HSV levels are whole numbers: count the (candidate, query) level pairs, spread each row's counts over
    # the predicted levels by the fit's tent (whole-level knots), and read every factor's fit off that table
    # by linear interpolation, which is exact for a tent with whole-level knots
    joint = np.bincount(
        np.round(candidate).astype(np.int64) * 256 + np.round(query).astype(np.int64), minlength=65536
    ).reshape(256, 256)
    levels = np.flatnonzero(joint.any(axis=1))
    reach = int(FACTOR_TOLERANCE) + 1
    tent = np.maximum(reach - np.abs(np.arange(-reach + 1, reach)), 0).astype(np.float64)
    spread = cv2.filter2D(joint[levels].astype(np.float64), -1, tent[None, :], borderType=cv2.BORDER_CONSTANT)
    predicted = np.minimum(FACTORS[:, None] * levels[None, :], 255.0)
    low = np.floor(predicted).astype(np.int64)
    high, t = np.minimum(low + 1, 255), predicted - low
    rows = np.arange(len(levels))[None, :]
    fit = (spread[rows, low] * (1 - t) + spread[rows, high] * t).sum(axis=1)
    return float(FACTORS[int(np.argmax(fit))])


def global_change(
    query: np.ndarray,
    candidate: np.ndarray,
    where: np.ndarray,
    saturated: int = SATURATED,
    min_hued: int = 10,
) -> np.ndarray:
    """The candidate (uint8 RGB) with the hue shift, saturation and brightness factors that best turn it
    into the query within `where` (the shift: the histogram mode of hue differences; the factors: the
    ones that explain the most pixels, `_factor`), as float RGB. The shift is read from pixels whose
    saturation in both images (and the candidate's brightness) is above `saturated`, when more than
    `min_hued` are. Also the palette check of sprites (app/sprites.py), whose few pixels lower both.
    Both images are uint8: HSV levels are then whole numbers, as `_factor` assumes."""
    hq = cv2.cvtColor(query, cv2.COLOR_RGB2HSV).astype(np.float32)
    hc = cv2.cvtColor(candidate, cv2.COLOR_RGB2HSV).astype(np.float32)
    shift = 0.0
    hued = where & (hc[..., 1] > saturated) & (hq[..., 1] > saturated) & (hc[..., 2] > saturated)
    if hued.sum() > min_hued:  # OpenCV hue runs 0..179
        diff = np.round((hq[..., 0] - hc[..., 0])[hued]).astype(int) % 180
        hist = np.bincount(diff, minlength=180).astype(float)
        hist = np.convolve(np.r_[hist[-3:], hist, hist[:3]], np.ones(7), "valid")  # circular smoothing
        shift = float(np.argmax(hist))
    factors = []
    for ch in (1, 2):
        lit = where & (hc[..., ch] > LIT)
        factors.append(_factor(hc[..., ch][lit], hq[..., ch][lit]) if lit.sum() > 10 else 1.0)
    hc[..., 0] = (hc[..., 0] + shift) % 180
    hc[..., 1] = np.clip(hc[..., 1] * factors[0], 0, 255)
    hc[..., 2] = np.clip(hc[..., 2] * factors[1], 0, 255)
    return cv2.cvtColor(hc.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)


def _compare(
    query: np.ndarray,
    candidate: np.ndarray,
    where: np.ndarray,
    opening: int,
    outside: np.ndarray | None = None,
) -> Comparison:
    """Where within `where` the query (aligned, uint8) shows the candidate's colours after the global
    change, not counting disagreements that a square opening of `opening` px removes; with `outside` (the
    candidate's background that the query covers and does not show as its own), where the query shows
    something else there too (`Comparison.beyond`)."""
    expected = global_change(query, candidate, where)
    apart = np.linalg.norm(query.astype(np.float32) - expected, axis=-1) >= TOLERANCE
    differ = _opened(apart & where, opening)
    beyond = None if outside is None else _opened(apart & outside, opening)
    return Comparison(float(1.0 - differ.sum() / where.sum()), query, where, differ, beyond)


def _opened(mask: np.ndarray, opening: int) -> np.ndarray:
    """`mask` without what a square opening of `opening` px removes (as it is for 1 or less)."""
    if opening <= 1:
        return mask
    kernel = np.ones((opening, opening), np.uint8)
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel) > 0


def agreement(query: np.ndarray, candidate: np.ndarray, transform: np.ndarray) -> float | None:
    """Share of the candidate's figure that the query, moved by `transform` (2x3, query pixels ->
    candidate pixels), shows in the candidate's colours after one global hue/saturation/brightness change.
    None when the aligned query covers too little of the candidate (a degenerate transform)."""
    found = comparison(query, candidate, transform)
    return None if found is None else found.share


def comparison(query: np.ndarray, candidate: np.ndarray, transform: np.ndarray) -> Comparison | None:
    """`agreement` with where the two agree (`Comparison`)."""
    ch, cw = candidate.shape[:2]
    f = SIDE / max(ch, cw)
    size = (max(1, round(cw * f)), max(1, round(ch * f)))
    small = cv2.resize(candidate, size, interpolation=cv2.INTER_AREA)
    m = np.diag([f, f, 1.0]) @ np.vstack([transform, [0, 0, 1]])
    g = min(1.0, f * float(np.sqrt(abs(np.linalg.det(transform[:, :2])))))  # shrink the query first
    if g < 1.0:
        qh, qw = query.shape[:2]
        query = cv2.resize(
            query, (max(1, round(qw * g)), max(1, round(qh * g))), interpolation=cv2.INTER_AREA
        )
        m = m @ np.diag([qw / query.shape[1], qh / query.shape[0], 1.0])
    warped = cv2.warpAffine(query, m[:2], size, flags=cv2.INTER_LINEAR)
    cover = cv2.warpAffine(np.full(query.shape[:2], 255, np.uint8), m[:2], size, flags=cv2.INTER_NEAREST)
    cover = cv2.erode(cover, np.ones((3, 3), np.uint8)) > 0  # the footprint's own edge is interpolated
    background = background_region(small)
    where = cover & ~background
    if cover.mean() < MIN_COVER or where.mean() < MIN_FIGURE:
        return None
    own = background_region(query).astype(np.uint8)  # the query's own background, however coloured
    own = cv2.warpAffine(own, m[:2], size, flags=cv2.INTER_NEAREST) > 0
    return _compare(warped, small, where, OPENING, cover & background & ~own)


def block_agreement(blocks: np.ndarray, candidate: np.ndarray) -> float | None:
    """`agreement` for a pixelated query, given as its blocks (one colour each, app/sprites.py:
    collapse_runs): the candidate averaged onto as many blocks, as pixelation averages it, compared block
    by block (no opening: a block is already coarse). None when the candidate shows no figure there."""
    found = block_comparison(blocks, candidate)
    return None if found is None else found.share


def block_comparison(blocks: np.ndarray, candidate: np.ndarray) -> Comparison | None:
    """`block_agreement` with where the two agree (`Comparison`, at the blocks' grid)."""
    gh, gw = blocks.shape[:2]
    small = cv2.resize(candidate, (gw, gh), interpolation=cv2.INTER_AREA)
    where = ~background_region(small)
    if where.mean() < MIN_FIGURE:
        return None
    return _compare(np.clip(blocks, 0, 255).astype(np.uint8), small, where, 1)


def text_lines(stats: np.ndarray, labels: np.ndarray, query: np.ndarray) -> list[list[int]]:
    """The regions (`stats`: OpenCV's connected components of `labels`, 0 the background) as lines of text
    and single regions: regions that line up (`LINE_GAP`, `LINE_OVERLAP`) are joined, and what they join
    is one region when it is a line (`LINE_MIN` regions spanning `LINE_ASPECT` times its height) in one
    colour (`LINE_COLOURS` of the regions' median colours in the query within `TOLERANCE` of theirs);
    otherwise each of its regions is one on its own. A caption's letters come apart (each its own region,
    thin strokes lost to the opening); two eyes or two swapped traits are fewer or not in one line."""
    x, y, w, h = (stats[1:, k].astype(np.float64) for k in range(4))
    n = len(x)
    tall, short = np.maximum.outer(h, h), np.minimum.outer(h, h)
    overlap = np.minimum.outer(y + h, y + h) - np.maximum.outer(y, y)
    gap = np.maximum.outer(x, x) - np.minimum.outer(x + w, x + w)
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in np.argwhere((overlap >= LINE_OVERLAP * short) & (gap <= LINE_GAP * tall)):
        if a < b:
            parent[root(int(a))] = root(int(b))
    joined: dict[int, list[int]] = {}
    for a in range(n):
        joined.setdefault(root(a), []).append(a + 1)
    out: list[list[int]] = []
    for group in joined.values():
        g = np.array(group)
        span = (x[g - 1] + w[g - 1]).max() - x[g - 1].min()
        height = (y[g - 1] + h[g - 1]).max() - y[g - 1].min()
        if len(group) >= LINE_MIN and span >= LINE_ASPECT * height and _one_colour(labels, query, group):
            out.append(group)
        else:
            out.extend([i] for i in group)
    return out


def _one_colour(labels: np.ndarray, query: np.ndarray, group: list[int]) -> bool:
    """Whether `LINE_COLOURS` of the regions' median colours in the query lie within `TOLERANCE` of the
    median of those."""
    medians = np.array([np.median(query[labels == i].astype(np.float32), axis=0) for i in group])
    centre = np.median(medians, axis=0)
    return bool((np.linalg.norm(medians - centre, axis=1) < TOLERANCE).mean() >= LINE_COLOURS)


def compact(region: np.ndarray) -> bool:
    """Whether a region (bool mask, one connected shape) is compact, as a pasted sticker, badge or emoji
    is: it fills `SOLIDITY` of its convex hull (pixels over the hull's area) and its box's shorter side is
    at least `COMPACT_ASPECT` of its longer one; a swapped hat, hair or mouth is mostly neither."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return False
    hull = cv2.contourArea(cv2.convexHull(np.vstack(contours)))
    _, _, w, h = cv2.boundingRect(region.astype(np.uint8))
    return hull > 0 and region.sum() / hull >= SOLIDITY and min(w, h) >= COMPACT_ASPECT * max(w, h)


def overlay(found: Comparison, others: Iterable[np.ndarray], rule: OverlayRule = OverlayRule()) -> float:
    """The comparison's share with its largest disagreeing region forgiven, when that region covers at
    most `OVERLAY_MAX` of the figure and the `others` (the other candidates' images, assumed drawn in the
    same frame, as a collection's tokens are) show the query's pixels in less than `EXPLAINED` of it, all
    of them together or (`rule.witness` "one") any one of them: what a pasted badge, logo or emoji leaves,
    and a sibling's swapped trait, drawn on other tokens too, does not. With `rule.beyond` (and a
    comparison that looked, `Comparison.beyond`), regions are taken with what the query shows beyond the
    figure, and one is forgiven only when, outside it, the query shows at most `rule.beyond` of the figure
    there; with `rule.lines`, a line of text is one region (`text_lines`); with `rule.compact`, a compact
    region (`compact`) may cover up to `COMPACT_MAX` of the figure. The largest region is the one
    with the most disagreeing figure pixels (pixels beyond the figure are not forgiven). Otherwise the
    share itself."""
    beyond = found.beyond if rule.beyond is not None else None
    joined = found.differ if beyond is None else found.differ | beyond
    count, labels, stats, _ = cv2.connectedComponentsWithStats(joined.astype(np.uint8), connectivity=8)
    if count < 2:
        return found.share
    regions = text_lines(stats, labels, found.query) if rule.lines else [[i] for i in range(1, count)]
    disagree = np.bincount(labels[found.differ], minlength=count)
    largest = max(regions, key=lambda r: int(disagree[r].sum()))  # the first of equals, as np.argmax
    inside = np.isin(labels, largest)
    region = inside & found.differ
    area = int(region.sum())
    figure = int(found.where.sum())
    if area == 0 or (
        area > OVERLAY_MAX * figure
        and not (rule.compact and len(largest) == 1 and area <= COMPACT_MAX * figure and compact(inside))
    ):
        return found.share
    if beyond is not None and int((beyond & ~inside).sum()) > rule.beyond * figure:
        return found.share
    size = (region.shape[1], region.shape[0])
    query, together = found.query[region].astype(np.float32), np.zeros(area, bool)
    for other in others:
        if other.shape[:2] != region.shape:
            other = cv2.resize(other, size, interpolation=cv2.INTER_AREA)
        shown = np.linalg.norm(query - other[region].astype(np.float32), axis=-1) < TOLERANCE
        if rule.witness == "together":  # what this candidate shows counts with what the others showed
            together |= shown
            shown = together
        if shown.sum() >= EXPLAINED * area:
            return found.share
    return found.share + area / figure
