"""Keypoint alignment for painted candidates: SIFT matches between the query and a catalogued image that
agree on one similarity transform.

A copy keeps the drawing: cropped, zoomed, framed, recoloured, captioned or on a new background, most of
its corners and blobs are still there, where one shift, scale and turn puts them. `match` counts the
matches (Lowe's ratio test) that RANSAC fits to one transform (`inliers`: orders candidates) and hands the
transform on, so that the colour check (app/agreement.py) can compare the two images pixel by pixel.
Generative siblings share many inliers too (their traits are the same layers at the same place): the
count admits a candidate to be aligned, the colour check orders the aligned ones and decides.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import cv2
import numpy as np

WORK_SIDE = (256, 512)  # images are scaled so their longer side falls in this range before SIFT
MAX_FEATURES = 500
RATIO = 0.8  # Lowe's ratio test
RANSAC_PX = 6.0  # reprojection error (at the working scale) within which a match is an inlier
MIN_INLIERS = 20  # a candidate re-ranks by its inliers (and is aligned by them) only at or above this


@dataclass(frozen=True)
class Features:
    points: np.ndarray  # [N, 2] float32, keypoint positions at the working scale
    descriptors: np.ndarray | None  # [N, 128] float32
    scale: float = 1.0  # working scale / original size


@dataclass(frozen=True)
class Match:
    inliers: int  # matches one similarity transform explains
    transform: np.ndarray | None = None  # 2x3, query pixels -> candidate pixels (None: under MIN_INLIERS)


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


def features(rgb: np.ndarray) -> Features:
    """SIFT keypoints and descriptors of an RGB image, on grey, scaled into `WORK_SIDE`."""
    side = max(rgb.shape[:2])
    f = (
        1.0
        if WORK_SIDE[0] <= side <= WORK_SIDE[1]
        else (WORK_SIDE[0] if side < WORK_SIDE[0] else WORK_SIDE[1]) / side
    )
    grey = _scaled(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), f)
    points, descriptors = _tools()[0].detectAndCompute(grey, None)
    return Features(np.float32([p.pt for p in points]).reshape(-1, 2), descriptors, scale=f)


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


def match(query: Features, candidate: Features) -> Match:
    """How many ratio-test matches one similarity transform explains, and (at `MIN_INLIERS` or more) that
    transform in the two images' own pixels."""
    count, transform = _transform(query, candidate)
    if count < MIN_INLIERS or transform is None:
        return Match(count)
    into, out = (
        np.diag([query.scale, query.scale, 1.0]),
        np.diag([1 / candidate.scale, 1 / candidate.scale, 1.0]),
    )
    return Match(count, (out @ np.vstack([transform, [0, 0, 1]]) @ into)[:2])


class FeatureCache:
    """Catalogued images' keypoint features (`features`), by token and a digest of its stored bytes (a
    replaced image is a new entry), the least recently used dropped past `size` entries; 0 keeps none.
    Descriptors are kept as uint8 (SIFT's are whole numbers 0-255): about 66 KB an image at most.
    Thread-safe; a miss computes outside the lock. `counted(hit)` is told of every lookup."""

    def __init__(self, size: int, counted: Callable[[bool], None] | None = None):
        self.size, self.hits, self.misses, self.counted = size, 0, 0, counted
        self._entries: OrderedDict[Hashable, Features] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(token: Hashable, data: bytes) -> Hashable:
        """The cache key of a token whose stored image is `data`."""
        return token, hashlib.blake2b(data, digest_size=16).digest()

    def get(self, key: Hashable, image: np.ndarray) -> Features:
        """`features(image)`, from the cache when `key` (`FeatureCache.key`) is there."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if self.counted is not None:
            self.counted(found is not None)
        if found is None:
            computed = features(image)
            with self._lock:
                self.misses += 1
                if self.size > 0:
                    d = computed.descriptors
                    kept = None if d is None else d.astype(np.uint8)
                    self._entries[key] = Features(computed.points, kept, computed.scale)
                    while len(self._entries) > self.size:
                        self._entries.popitem(last=False)
            return computed
        d = found.descriptors
        return Features(found.points, None if d is None else d.astype(np.float32), found.scale)
