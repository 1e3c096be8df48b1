"""Keypoint check for painted candidates: SIFT matches between the query and a catalogued image that agree
on one similarity transform, and how much of the candidate's drawing the query, aligned by it, keeps.

A copy keeps the drawing: cropped, zoomed, framed, recoloured, captioned or on a new background, most of
its corners and blobs are still there, where one shift, scale and turn puts them. A sibling token of the
same collection shares the base drawing (the same ape body, the same pose) but not its details, so it
keeps fewer. `match` counts the matches (Lowe's ratio test) that RANSAC fits to one transform
(`inliers`: orders candidates) and, with the query warped onto the candidate by that transform, how well
their colour edges agree both ways (`edges`): generative siblings share most of their inliers, since their
traits are the same layers at the same place, but one has edges the other lacks (a shirt, glasses).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

WORK_SIDE = (256, 512)  # images are scaled so their longer side falls in this range before SIFT
MAX_FEATURES = 500
RATIO = 0.8  # Lowe's ratio test
RANSAC_PX = 6.0  # reprojection error (at the working scale) within which a match is an inlier
MIN_INLIERS = 20  # a candidate re-ranks by its inliers only at or above this
EDGE_SIDE = 256  # edges are compared with both images scaled to this longer side
EDGE_CANNY = (60, 150)  # Canny thresholds, per colour channel
EDGE_TOLERANCE = 2  # px at EDGE_SIDE: an edge within this distance counts as kept
MIN_COVER = 0.4  # the aligned query must overlap at least this share of the candidate for `edges`


@dataclass(frozen=True)
class Features:
    points: np.ndarray  # [N, 2] float32, keypoint positions at the working scale
    descriptors: np.ndarray | None  # [N, 128] float32
    scale: float = 1.0  # working scale / original size
    edges: np.ndarray | None = None  # [h, w] uint8 (0/255): colour edges at EDGE_SIDE
    edge_scale: float = 1.0  # EDGE_SIDE scale / original size


@dataclass(frozen=True)
class Match:
    inliers: int  # matches one similarity transform explains
    edges: (
        float | None
    )  # share of the candidate's edges the aligned query keeps (None: fewer than MIN_INLIERS)


_local = threading.local()  # OpenCV's detector and matcher objects are not shared across threads


def _tools() -> tuple[cv2.SIFT, cv2.BFMatcher]:
    if not hasattr(_local, "sift"):
        _local.sift, _local.matcher = cv2.SIFT_create(nfeatures=MAX_FEATURES), cv2.BFMatcher(cv2.NORM_L2)
    return _local.sift, _local.matcher


def _scaled(image: np.ndarray, f: float) -> np.ndarray:
    if f == 1:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)


def colour_edges(rgb: np.ndarray) -> np.ndarray:
    """Canny edges of each colour channel, together: [H, W] uint8 (0/255)."""
    out = np.zeros(rgb.shape[:2], np.uint8)
    for c in range(3):
        out |= cv2.Canny(np.ascontiguousarray(rgb[..., c]), *EDGE_CANNY)
    return out


def features(rgb: np.ndarray) -> Features:
    """SIFT keypoints and descriptors of an RGB image, on grey, scaled into `WORK_SIDE`; its colour edges
    at `EDGE_SIDE`."""
    side = max(rgb.shape[:2])
    f = (
        1.0
        if WORK_SIDE[0] <= side <= WORK_SIDE[1]
        else (WORK_SIDE[0] if side < WORK_SIDE[0] else WORK_SIDE[1]) / side
    )
    grey = _scaled(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), f)
    points, descriptors = _tools()[0].detectAndCompute(grey, None)
    fe = EDGE_SIDE / side
    return Features(
        np.float32([p.pt for p in points]).reshape(-1, 2),
        descriptors,
        scale=f,
        edges=colour_edges(_scaled(rgb, fe)),
        edge_scale=fe,
    )


def _transform(query: Features, candidate: Features) -> tuple[int, np.ndarray | None]:
    """Inlier count and the 2x3 similarity (query -> candidate, working scales) RANSAC found."""
    if query.descriptors is None or candidate.descriptors is None:
        return 0, None
    if len(query.points) < 2 or len(candidate.points) < 2:
        return 0, None
    pairs = _tools()[1].knnMatch(query.descriptors, candidate.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 4:
        return 0, None
    src = query.points[[m.queryIdx for m in good]]
    dst = candidate.points[[m.trainIdx for m in good]]
    m, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX)
    return (int(mask.sum()), m) if mask is not None and m is not None else (0, None)


def kept_edges(query: Features, candidate: Features, transform: np.ndarray) -> float | None:
    """How much the two drawings' edges agree with the query warped onto the candidate by `transform`
    (working scales): the smaller of the share of the candidate's edges the query shows, and of the
    query's edges the candidate shows, each within `EDGE_TOLERANCE` px, inside the candidate's frame where
    the query lies. None when that overlap is under `MIN_COVER` of the candidate (a degenerate transform)."""
    if query.edges is None or candidate.edges is None:
        return None
    # the query's edge map -> its working scale -> the candidate's working scale -> the candidate's edge map
    into = np.diag([query.scale / query.edge_scale] * 2 + [1.0])
    out = np.diag([candidate.edge_scale / candidate.scale] * 2 + [1.0])
    m = (out @ np.vstack([transform, [0, 0, 1]]) @ into)[:2]
    h, w = candidate.edges.shape
    warped = cv2.warpAffine(query.edges, m, (w, h), flags=cv2.INTER_LINEAR) > 0
    footprint = cv2.warpAffine(np.full(query.edges.shape, 255, np.uint8), m, (w, h), flags=cv2.INTER_NEAREST)
    margin = 2 * EDGE_TOLERANCE + 3  # the footprint's own border is no edge of the drawing
    footprint = cv2.erode(footprint, np.ones((margin, margin), np.uint8)) > 0
    if footprint.mean() < MIN_COVER:
        return None
    near = np.ones((2 * EDGE_TOLERANCE + 1,) * 2, np.uint8)
    theirs, mine = (candidate.edges > 0) & footprint, warped & footprint
    kept = (theirs & (cv2.dilate(warped.astype(np.uint8), near) > 0)).sum() / max(int(theirs.sum()), 1)
    shown = (mine & (cv2.dilate(candidate.edges, near) > 0)).sum() / max(int(mine.sum()), 1)
    return float(min(kept, shown))


def match(query: Features, candidate: Features) -> Match:
    """How many ratio-test matches one similarity transform explains, and (at `MIN_INLIERS` or more) the
    share of the candidate's edges the query keeps under it."""
    count, transform = _transform(query, candidate)
    if count < MIN_INLIERS or transform is None:
        return Match(count, None)
    return Match(count, kept_edges(query, candidate, transform))
