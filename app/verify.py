"""Candidate checks for the copy search: the instance space proposes, a direct look at the pixels orders.

The best `copy_verify_k` candidates of a copy query are checked against the query itself: sprites (pixel
art) by their colour layout (`app/sprites.py`), paintings by SIFT keypoints that agree on one similarity
transform (`app/keypoints.py`). Candidates that pass (layout >= `GATE`, inliers >= `MIN_INLIERS`) come
first, best checked first; the rest keep the instance-space order. The copy verdict (`is_copy`) is the
calibrated instance-space threshold, or a check that reaches its collection's minimum, chosen on
validation pairs with the thresholds (`nftlens calibrate`: only where distinct tokens never reach it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from app.catalog import Catalog, Neighbour
from app.errors import NftlensError
from app.imaging import decode_image
from app.keypoints import MIN_INLIERS, Features, features, match
from app.manifest import CopyDetector
from app.sprites import GATE, candidate_layouts, collapse_runs, native_sprite


@dataclass(frozen=True)
class Check:
    """What the direct check found for one candidate (None: not checked that way)."""

    layout: float | None = None  # sprites: share of pixels whose colour layout the query shows
    keypoints: int | None = None  # paintings: matches one similarity transform explains
    edges: float | None = None  # paintings: edge agreement, both ways, once aligned by the keypoints


def is_copy(detector: CopyDetector, collection: str, score: float, check: Check) -> bool:
    """The served verdict on one candidate: its score reaches its collection's threshold, or its direct
    check reaches the collection's calibrated minimum."""
    return score >= detector.threshold_for(collection) or detector.confirmed(
        collection, check.layout, check.edges
    )


def stored_rgb(data: bytes | None, background: tuple[int, int, int]) -> np.ndarray | None:
    """A catalogued token's decoded image (None: stored without one, or undecodable)."""
    try:
        return decode_image(data, background) if data else None
    except NftlensError:
        return None


def check_candidates(
    query_rgb: np.ndarray,
    images: Iterable[np.ndarray | None],
    keypoints: bool = True,
    features_of: Callable[[int, np.ndarray], Features] | None = None,
) -> list[Check]:
    """Each candidate's check against the query, from its decoded image (best instance-space score first):
    the layout check for sprites, keypoints for other images (with `keypoints`, for a painted query),
    nothing for candidates without an image.
    `features_of(i, image)` may hand over candidate i's keypoint features from a cache."""
    images = list(images)
    sprites = [None if im is None else native_sprite(im) for im in images]
    layouts = candidate_layouts(query_rgb, sprites)
    # keypoints are for a painted query: not when the best candidate is a sprite (the query is pixel
    # art, whose pixel corners match paintings' too), nor a pixelated query (SIFT sees its blocks)
    keypoints = keypoints and bool(images) and sprites[0] is None and collapse_runs(query_rgb) is None
    query_features = None
    out: list[Check] = []
    for i, (image, sprite, layout) in enumerate(zip(images, sprites, layouts, strict=True)):
        if sprite is not None:
            out.append(Check(layout=layout))
        elif image is not None and keypoints:
            query_features = query_features or features(query_rgb)
            found = features_of(i, image) if features_of else features(image)
            found = match(query_features, found)
            out.append(Check(keypoints=found.inliers, edges=found.edges))
        else:
            out.append(Check())
    return out


def rank_by_checks(
    catalog: Catalog,
    hits: list[Neighbour],
    query_rgb: np.ndarray,
    background: tuple[int, int, int],
    keypoints: bool = True,
) -> tuple[list[Neighbour], list[Check]]:
    """Search hits (best score first) in their checked order, each with its check; every candidate's
    image is read from the catalog (`Catalog.image`)."""
    images = (stored_rgb(catalog.image(h.collection, h.token_id), background) for h in hits)
    checks = check_candidates(query_rgb, images, keypoints)
    order = verified_order([h.score for h in hits], checks)
    return [hits[i] for i in order], [checks[i] for i in order]


def verified_order(scores: Sequence[float], checks: Sequence[Check]) -> list[int]:
    """Candidate indices best first: sprites whose layout reaches `GATE` (by layout, then score), then
    paintings with at least `MIN_INLIERS` keypoint inliers (by inliers, then score), then the rest by
    score."""
    layout = [i for i, c in enumerate(checks) if c.layout is not None and c.layout >= GATE]
    points = [i for i, c in enumerate(checks) if c.keypoints is not None and c.keypoints >= MIN_INLIERS]
    rest = sorted(set(range(len(scores))) - set(layout) - set(points))
    layout.sort(key=lambda i: (-checks[i].layout, -scores[i]))
    points.sort(key=lambda i: (-checks[i].keypoints, -scores[i]))
    rest.sort(key=lambda i: -scores[i])
    return layout + points + rest
