"""Keypoint check for painted candidates: SIFT matches between the query and a catalogued image that agree
on one similarity transform.

A copy keeps the drawing: cropped, zoomed, framed, recoloured, captioned or on a new background, most of
its corners and blobs are still there, where one shift, scale and turn puts them. A sibling token of the
same collection shares the base drawing (the same ape body, the same pose) but not its details, so it
keeps fewer. `inliers` counts the matches (Lowe's ratio test) that RANSAC fits to one transform.
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


@dataclass(frozen=True)
class Features:
    points: np.ndarray  # [N, 2] float32, keypoint positions at the working scale
    descriptors: np.ndarray | None  # [N, 128] float32


_local = threading.local()  # OpenCV's detector and matcher objects are not shared across threads


def _tools() -> tuple[cv2.SIFT, cv2.BFMatcher]:
    if not hasattr(_local, "sift"):
        _local.sift, _local.matcher = cv2.SIFT_create(nfeatures=MAX_FEATURES), cv2.BFMatcher(cv2.NORM_L2)
    return _local.sift, _local.matcher


def features(rgb: np.ndarray) -> Features:
    """SIFT keypoints and descriptors of an RGB image, on grey, scaled into `WORK_SIDE`."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    side = max(grey.shape)
    if not WORK_SIDE[0] <= side <= WORK_SIDE[1]:
        f = (WORK_SIDE[0] if side < WORK_SIDE[0] else WORK_SIDE[1]) / side
        grey = cv2.resize(grey, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
    points, descriptors = _tools()[0].detectAndCompute(grey, None)
    return Features(np.float32([p.pt for p in points]).reshape(-1, 2), descriptors)


def inliers(query: Features, candidate: Features) -> int:
    """How many ratio-test matches between the two images one similarity transform explains."""
    if query.descriptors is None or candidate.descriptors is None:
        return 0
    if len(query.points) < 2 or len(candidate.points) < 2:
        return 0
    pairs = _tools()[1].knnMatch(query.descriptors, candidate.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 4:
        return 0
    src = query.points[[m.queryIdx for m in good]]
    dst = candidate.points[[m.trainIdx for m in good]]
    _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX)
    return int(mask.sum()) if mask is not None else 0
