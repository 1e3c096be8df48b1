"""Candidate checks for the copy search: the instance space proposes, a direct look at the pixels orders
and confirms.

The best `copy_verify_k` candidates of a copy query are checked against the query itself: sprites (pixel
art) by their colour layout (`app/sprites.py`); paintings by SIFT keypoints that agree on one similarity
transform (`app/keypoints.py`), and by their colour agreement (`app/agreement.py`) with the query aligned
by that transform or simply stretched over the candidate, whichever agrees more (the query first turned
the way its candidates agree with most, `facing`: SIFT cannot match a mirror image). Candidates that pass
(layout >= `GATE`, inliers >= `MIN_INLIERS`) come first, best checked first (paintings that show all of
the query in their colours first, then by inliers); the rest keep the instance-space order. A cropped or
recoloured sprite that no candidate shows whole is completed from the candidates it fits best (their pixels around a crop, their palette for a recolouring), a cropped
painting from the candidates its keypoints align it with (their pixels around it), a painting on a new
background put on the backgrounds its candidates are drawn on, and looked up again
(`find_by_completion`; a sprite crop's look-up reads deeper and keeps the tokens the crop fits best:
the tokens nearest a completion share the cells it borrowed): the instance space misses such copies,
not their completions. The copy
verdict (`is_copy`) is the calibrated instance-space threshold, or a check that reaches its collection's
minimum (the layout, the colours, or the colours with one pasted-on region forgiven, `Check.overlay`),
chosen on validation pairs with the thresholds (`nftlens calibrate`: only as far as distinct
tokens allow). For a lossless pixel-art query (its own grid is the
sprite's) the layout alone decides: the score cannot tell a token from a sibling one pixel away.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import cv2
import numpy as np

from app.agreement import (
    OVERLAY_MAX,
    Comparison,
    OverlayRule,
    block_comparison,
    comparison,
    overlay,
    scale_transform,
)
from app.catalog import Catalog, Neighbour, SearchFilter
from app.errors import NftlensError
from app.imaging import background_region, decode_image
from app.keypoints import MIN_INLIERS, FeatureCache, Features, Match, features, match
from app.manifest import CopyDetector
from app.sprites import (
    GATE,
    SpriteQuery,
    as_query,
    candidate_layouts,
    completed_crop,
    crop_misfit,
    edge_layouts,
    lossless,
    native_sprite,
    recoloured_as,
    strict_layouts,
)

COMPLETE_FROM = 30  # a cropped or recoloured sprite is completed from the best of this many candidates ...
COMPLETIONS = 3  # ... this many at a time ...
CROP_DEPTH = 300  # ... each looking this deep for a sprite crop, kept by how the crop fits (`by_fit`)
ROUNDS = 2  # ... at most this many times (each from the candidates the last one found)
FACING_FROM = 3  # without keypoints, a painted query faces the way these first candidates' colours agree
CROP_SHOWS = (0.25, 0.9)  # a painted query is completed from an aligned candidate it shows this share of
COMPLETE_COLOURS = 0.4  # ... whose colours agree at least this much (a wrong alignment agrees little)
FOUND = 0.99  # a painted candidate with colours at or above this shows the whole query: nothing to complete
BACKDROP_MIN = 0.05  # a painted query is put on its candidates' backgrounds when its own covers this share
BACKDROP_APART = 40.0  # ... each a background colour this far (RGB distance) from its own and the others
BACKDROPS = 8  # ... in at most this many of them (a collection's few background colours, all of them)

K = TypeVar("K")
T = TypeVar("T")
# a found candidate (key, decoded image) -> how badly the query fits it
Misfit = Callable[[K, np.ndarray | None], float]


@dataclass(frozen=True)
class Check:
    """What the direct check found for one candidate (None: not checked that way)."""

    layout: float | None = None  # sprites: share of pixels whose colour layout and palette the query shows
    keypoints: int | None = None  # paintings: matches one similarity transform explains
    colours: float | None = None  # paintings: share of the figure the aligned query shows in its colours
    overlay: float | None = None  # paintings: `colours` with one pasted-on region forgiven (app/agreement.py)
    lossless: bool = False  # sprites: the query shows the sprite's own pixel grid, so its layout decides
    edges: float | None = None  # sprites tied at the best layout under a crop: with the cut cells too
    strict: float | None = None  # sprites tied at the best layout of a lossy query: at the lossless tolerance
    # paintings at MIN_INLIERS or more: the query (mirrored first, `mirrored`) -> candidate pixels transform
    transform: np.ndarray | None = field(default=None, compare=False, repr=False)
    mirrored: bool = field(default=False, compare=False)


def is_copy(detector: CopyDetector, collection: str, score: float, check: Check) -> bool:
    """The served verdict on one candidate: its score reaches its collection's threshold, or its direct
    check reaches the collection's calibrated minimum. A `lossless` sprite check in a collection with a
    layout minimum decides alone: the query shows every pixel as it is, and a sibling a few pixels
    away scores as high in the instance space as an edited copy."""
    if check.lossless and check.layout is not None and collection in detector.layout_min:
        return check.layout >= detector.layout_min[collection]
    return score >= detector.threshold_for(collection) or detector.confirmed(
        collection, check.layout, check.colours, check.overlay
    )


def stored_rgb(data: bytes | None, background: tuple[int, int, int]) -> np.ndarray | None:
    """A catalogued token's decoded image (None: stored without one, or undecodable)."""
    try:
        return decode_image(data, background) if data else None
    except NftlensError:
        return None


def check_candidates(
    query: np.ndarray | SpriteQuery,
    images: Iterable[np.ndarray | None],
    keypoints: bool = True,
    features_of: Callable[[int, np.ndarray], Features] | None = None,
    rule: OverlayRule = OverlayRule(),
) -> list[Check]:
    """Each candidate's check against the query (an RGB image, or a `SpriteQuery` to share its side of
    the sprite checks), from its decoded image (best instance-space score first): the layout check for
    sprites; for other images, when the query is painted, its colour agreement and (with `keypoints`)
    its keypoints; nothing for candidates without an image.
    `features_of(i, image)` may hand over candidate i's keypoint features from a cache; `rule`: how a
    painted candidate's `Check.overlay` forgives a pasted-on region (app/agreement.py: overlay; the
    model's `CopyDetector.overlay_rule`)."""
    q = as_query(query)
    images = list(images)
    sprites = [None if im is None else native_sprite(im) for im in images]
    layouts = candidate_layouts(q, sprites)
    edges, strict = edge_layouts(q, sprites, layouts), strict_layouts(q, sprites, layouts)
    # a painted query: not when the best candidate is a sprite (the query is pixel art, whose pixel
    # corners match paintings' too); keypoints not for a pixelated query either (SIFT sees its blocks)
    painted = bool(images) and sprites[0] is None
    blocks = q.blocks if painted else None
    keypoints = keypoints and painted and blocks is None
    features_of = features_of or (lambda i, image: features(image))
    if painted:
        paintings = [im if sp is None else None for im, sp in zip(images, sprites, strict=True)]
        rgb, blocks, query_features, matched = facing(q.rgb, blocks, paintings, keypoints, features_of)
    out: list[Check] = []
    scaled: dict[tuple[int, ...], dict[int, np.ndarray]] = {}

    def others(i: int, frame: tuple[int, ...]) -> list[np.ndarray]:
        """The painted candidates but i, scaled to a comparison's frame (each frame once)."""
        if frame not in scaled:
            size = (frame[1], frame[0])
            scaled[frame] = {
                k: cv2.resize(im, size, interpolation=cv2.INTER_AREA)
                for k, im in enumerate(paintings)
                if im is not None
            }
        return [im for k, im in scaled[frame].items() if k != i]

    for i, (image, sprite) in enumerate(zip(images, sprites, strict=True)):
        if sprite is not None:
            out.append(
                Check(
                    layout=layouts[i], lossless=lossless(q.native, sprite), edges=edges[i], strict=strict[i]
                )
            )
        elif image is not None and painted:
            found = None
            if query_features is not None:
                found = matched[i] if i in matched else match(query_features, features_of(i, image))
            inliers = None if found is None else found.inliers
            compared = colour_comparison(rgb, image, found, blocks)
            out.append(
                Check(
                    keypoints=inliers,
                    colours=None if compared is None else compared.share,
                    overlay=overlaid(compared, partial(others, i), rule),
                    transform=None if found is None else found.transform,
                    mirrored=rgb is not q.rgb,
                )
            )
        else:
            out.append(Check())
    return out


def facing(
    rgb: np.ndarray,
    blocks: np.ndarray | None,
    images: Sequence[np.ndarray | None],
    keypoints: bool,
    features_of: Callable[[int, np.ndarray], Features],
) -> tuple[np.ndarray, np.ndarray | None, Features | None, dict[int, Match]]:
    """A painted query as it is or mirrored left to right, whichever the candidates with an image agree
    with more: SIFT matches no drawing to its mirror image, and the colour check compares the query
    unturned. Agreement is the most keypoint inliers with any candidate (with `keypoints`: an original
    below a few siblings still decides, where siblings' chance inliers either way do not), else the best
    colour agreement of the first `FACING_FROM`; a tie keeps the query as it is. Returns its image, its
    `blocks` (a pixelated query's, app/sprites.py: collapse_runs) turned alike, its keypoint features
    (None without `keypoints`) and its matches with those candidates, by index (for the caller to
    reuse: only the other side's matches are extra work)."""
    voters = [(i, im) for i, im in enumerate(images) if im is not None]
    if not keypoints:
        voters = voters[:FACING_FROM]
    turned = None if blocks is None else np.ascontiguousarray(blocks[:, ::-1])
    sides = [(rgb, blocks), (np.ascontiguousarray(rgb[:, ::-1]), turned)]
    if keypoints:
        found = [features(r) for r, _ in sides]
        theirs = {i: features_of(i, im) for i, im in voters}  # once each: both sides match them
        matches = [{i: match(f, theirs[i]) for i in theirs} for f in found]
        value = [max((m.inliers for m in ms.values()), default=0) for ms in matches]
    else:
        found, matches = [None, None], [{}, {}]
        value = [
            max((colour_check(r, im, None, b) or 0.0 for _, im in voters), default=0.0) for r, b in sides
        ]
    k = int(value[1] > value[0])
    return sides[k][0], sides[k][1], found[k], matches[k]


def colour_check(
    query_rgb: np.ndarray, image: np.ndarray, found: Match | None = None, blocks: np.ndarray | None = None
) -> float | None:
    """A painted candidate's colour agreement with the query (app/agreement.py), the best of the query
    stretched over it, (with `found` keypoints) aligned by their transform, and (with the `blocks` of a
    pixelated query, app/sprites.py: collapse_runs) block by block."""
    best = colour_comparison(query_rgb, image, found, blocks)
    return None if best is None else best.share


def colour_comparison(
    query_rgb: np.ndarray, image: np.ndarray, found: Match | None = None, blocks: np.ndarray | None = None
) -> Comparison | None:
    """`colour_check` with where the two agree: the comparison that agrees most."""
    values = [comparison(query_rgb, image, scale_transform(query_rgb.shape, image.shape))]
    if found is not None and found.transform is not None:
        values.append(comparison(query_rgb, image, found.transform))
    if blocks is not None:
        values.append(block_comparison(blocks, image))
    return max((v for v in values if v is not None), key=lambda v: v.share, default=None)


def overlaid(
    compared: Comparison | None,
    others: Callable[[tuple[int, ...]], Sequence[np.ndarray]],
    rule: OverlayRule = OverlayRule(),
) -> float | None:
    """A painted candidate's `Check.overlay` (app/agreement.py: overlay, against the other painted
    candidates' images, `others(frame)`: scaled to the comparison's frame), worked out where forgiving a
    region could make it a copy (its colours within twice `OVERLAY_MAX` of the whole); else its colours."""
    if compared is None:
        return None
    return (
        overlay(compared, others(compared.differ.shape), rule)
        if compared.share >= 1 - 2 * OVERLAY_MAX
        else compared.share
    )


def rank_by_checks(
    catalog: Catalog,
    hits: list[Neighbour],
    query_rgb: np.ndarray,
    background: tuple[int, int, int],
    keypoints: bool = True,
    more: Callable[[list[np.ndarray]], list[Neighbour]] | None = None,
    cache: FeatureCache | None = None,
    rule: OverlayRule = OverlayRule(),
) -> tuple[list[Neighbour], list[Check]]:
    """Search hits (best score first, one per token) in their checked order, each with its check; every
    candidate's image is read from the catalog (`Catalog.image`), its keypoint features from `cache`
    when given. With `more` (`catalog_lookup`), a cropped or recoloured sprite query's completions find
    further candidates (`find_by_completion`). `rule`: as `check_candidates`."""
    stored = [catalog.image(h.collection, h.token_id) for h in hits]
    images = [stored_rgb(data, background) for data in stored]
    features_of = None
    if cache is not None:

        def features_of(i: int, image: np.ndarray) -> Features:  # only candidates with an image
            key = FeatureCache.key((hits[i].collection, hits[i].token_id), stored[i] or b"")
            return cache.get(key, image)

    query = SpriteQuery(query_rgb)
    checks = check_candidates(query, images, keypoints, features_of, rule)
    if more is not None:
        by_key = {(h.collection, h.token_id): h for h in hits}

        def lookup(
            rendered: list[np.ndarray], fit: Misfit | None = None
        ) -> list[tuple[tuple[str, str], np.ndarray | None]]:
            found = [h for h in more(rendered, fit) if (h.collection, h.token_id) not in by_key]
            by_key.update({(h.collection, h.token_id): h for h in found})
            return [
                ((h.collection, h.token_id), stored_rgb(catalog.image(h.collection, h.token_id), background))
                for h in found
            ]

        keys, images, checks = find_by_completion(
            query, list(by_key), images, checks, lookup, keypoints, rule
        )
        hits = [by_key[key] for key in keys]
    order = verified_order([h.score for h in hits], checks)
    return [hits[i] for i in order], [checks[i] for i in order]


def interleave(ranked: Sequence[Sequence[T]], key: Callable[[T], Hashable] = lambda x: x) -> list[T]:
    """Several best-first lists merged rank by rank (every list's first, then every list's second, ...),
    each item (by `key`) once."""
    seen: set[Hashable] = set()
    out = []
    for rank in range(max((len(r) for r in ranked), default=0)):
        for item in (r[rank] for r in ranked if rank < len(r)):
            if key(item) not in seen:
                seen.add(key(item))
                out.append(item)
    return out


def catalog_lookup(
    catalog: Catalog,
    embed: Callable[[list[np.ndarray]], np.ndarray],
    instances: np.ndarray,
    k: int,
    flt: SearchFilter,
    background: tuple[int, int, int],
    skip: Iterable[tuple[str, str]] = (),
) -> Callable[..., list[Neighbour]]:
    """`rank_by_checks`' `more`: the catalog's nearest tokens (instance space, within `flt`, not those in
    `skip`) to images (`embed`: images -> their instance vectors), `k` of them taken in turn from each
    image's (`interleave`: one completion's near siblings cannot crowd out another's finds), each scored by
    the query's own vectors (`instances` [V, D]: its best view, as its own search scores it), so the
    verdict on them is the query's. `more(images, fit)`: with a `fit` (`Misfit`, keyed (collection,
    token id), given each stored image decoded over `background`), `CROP_DEPTH` taken from each image's,
    the `k` that fit best kept (`by_fit`)."""
    skipped, queries = set(skip), np.atleast_2d(instances)

    def more(images: list[np.ndarray], fit: Misfit | None = None) -> list[Neighbour]:
        found = interleave(
            [
                catalog.search(v, k if fit is None else CROP_DEPTH, flt, space="instance")
                for v in embed(images)
            ],
            lambda h: (h.collection, h.token_id),
        )
        found = [h for h in found if (h.collection, h.token_id) not in skipped]
        if fit is not None:
            pairs = [(h, stored_rgb(catalog.image(h.collection, h.token_id), background)) for h in found]
            found = [h for h, _ in by_fit(pairs, lambda h, im: fit((h.collection, h.token_id), im))]
        out = []
        for h in found:
            token = catalog.get(h.collection, h.token_id, with_vector=True)
            if token is not None and token.instance is not None and token.instance.shape == queries.shape[1:]:
                score = float((queries @ token.instance).max())
                out.append(Neighbour(h.collection, h.token_id, score, h.metadata))
                if len(out) == k:
                    break
        return out

    return more


def verified_order(scores: Sequence[float], checks: Sequence[Check]) -> list[int]:
    """Candidate indices best first: sprites whose layout reaches `GATE` (by layout, then, for a crop
    that several show alike, by the layout with its cut cells, `Check.edges`, for a lossy query that
    several show alike, by the layout at the lossless tolerance, `Check.strict`, then score), then
    paintings with at least `MIN_INLIERS` keypoint inliers (those whose colours show all of the query,
    `FOUND`, first, then by inliers, then score: siblings drawn from the same layers share as many inliers
    as the original, within a few, but not all of its colours; below `FOUND`, where a badge or caption
    hides part of the query, the inliers are the surer witness), then the rest by score."""
    layout = [i for i, c in enumerate(checks) if c.layout is not None and c.layout >= GATE]
    points = [i for i, c in enumerate(checks) if c.keypoints is not None and c.keypoints >= MIN_INLIERS]
    rest = sorted(set(range(len(scores))) - set(layout) - set(points))
    layout.sort(
        key=lambda i: (-checks[i].layout, -(checks[i].edges or 0.0), -(checks[i].strict or 0.0), -scores[i])
    )
    points.sort(key=lambda i: (-((checks[i].colours or 0.0) >= FOUND), -checks[i].keypoints, -scores[i]))
    rest.sort(key=lambda i: -scores[i])
    return layout + points + rest


def crop_completions(
    patch: np.ndarray, images: Sequence[np.ndarray | None], n: int = COMPLETIONS
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The sprite candidates (decoded images) that best fit a crop's native pixels (`patch`:
    app/sprites.py: SpriteQuery.patch), completed by it (`completed_crop`) and rendered at the candidate's
    size, best fit first: at most `n`; and the crop's pixels in the turn each completion put them."""
    fits = []
    for image in images:
        sprite = None if image is None else native_sprite(image)
        found = None if sprite is None else completed_crop(patch, sprite)
        if found is not None:
            up = cv2.resize(found.sprite, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
            fits.append((found.share, len(fits), up, found.turned))
    best = sorted(fits, key=lambda f: f[:2])[:n]
    return [f[2] for f in best], [f[3] for f in best]


def by_fit(
    found: Sequence[tuple[K, np.ndarray | None]], fit: Misfit | None
) -> list[tuple[K, np.ndarray | None]]:
    """A completion look-up's finds (key, decoded image) as they are, or with `fit` those that fit best
    first, ties in their order."""
    if fit is None:
        return list(found)
    misfits = [fit(key, image) for key, image in found]
    return [found[i] for i in sorted(range(len(found)), key=lambda i: misfits[i])]


def recolour_completions(
    native: np.ndarray, images: Sequence[np.ndarray | None], checks: Sequence[Check], n: int = COMPLETIONS
) -> list[np.ndarray]:
    """A lossless sprite query (its `native` pixels) in the colours of the `n` sprite candidates it is
    lossless to and lays out best on (at least `GATE`), both ways of app/sprites.py: recoloured_as,
    rendered at the candidate's size, best layout first."""
    best = sorted(
        (
            i
            for i, c in enumerate(checks)
            if c.lossless and (c.layout or 0.0) >= GATE and images[i] is not None
        ),
        key=lambda i: -checks[i].layout,
    )[:n]
    out = []
    for i in best:
        image, sprite = images[i], native_sprite(images[i])
        for recoloured in recoloured_as(native, sprite) if sprite is not None else ():
            size = (image.shape[1], image.shape[0])
            out.append(cv2.resize(recoloured, size, interpolation=cv2.INTER_NEAREST))
    return out


def painted_completions(
    rgb: np.ndarray, images: Sequence[np.ndarray | None], checks: Sequence[Check], n: int = COMPLETIONS
) -> list[np.ndarray]:
    """A cropped painted query (`rgb`) completed by the painted candidates its keypoints align it with
    (`Check.transform`) as a part of them (the aligned query spans a `CROP_SHOWS` share of the
    candidate's area, and their colours agree at least `COMPLETE_COLOURS`): the query put where it
    aligns over the candidate, the candidate's own pixels around it; the `n` with the most inliers,
    best first."""

    def shows(i: int) -> float:
        t, image = checks[i].transform, images[i]
        return abs(np.linalg.det(t[:, :2])) * rgb.shape[0] * rgb.shape[1] / (image.shape[0] * image.shape[1])

    parts = sorted(
        (
            i
            for i, c in enumerate(checks)
            if c.transform is not None
            and images[i] is not None
            and (c.colours or 0.0) >= COMPLETE_COLOURS
            and CROP_SHOWS[0] <= shows(i) <= CROP_SHOWS[1]
        ),
        key=lambda i: -(checks[i].keypoints or 0),
    )[:n]
    out = []
    for i in parts:
        image, check = images[i], checks[i]
        query = np.ascontiguousarray(rgb[:, ::-1]) if check.mirrored else rgb
        size = (image.shape[1], image.shape[0])
        shown = cv2.warpAffine(np.ones(query.shape[:2], np.uint8), check.transform, size) > 0
        warped = cv2.warpAffine(query, check.transform, size, flags=cv2.INTER_LINEAR)
        out.append(np.where(shown[..., None], warped, image))
    return out


def backdrop_completions(
    rgb: np.ndarray, images: Sequence[np.ndarray | None], n: int = BACKDROPS
) -> list[np.ndarray]:
    """A painted query on a swapped background (`rgb`) put back on the backgrounds its candidates (decoded
    images) are drawn on: its background (app/imaging.py: background_region, at least `BACKDROP_MIN` of
    it) painted in each of the `n` background colours most candidates show (their median background
    colour, `BACKDROP_APART` from the query's own and from each other), most shown first, ties by rank;
    none when a candidate is drawn on the query's own background colour (a genuine token's, most often)."""
    region = background_region(rgb)
    if region.mean() < BACKDROP_MIN:
        return []
    seen = [np.median(rgb[region], axis=0)]
    counts: list[int] = []
    for image in images:
        theirs = None if image is None else background_region(image)
        if theirs is None or theirs.mean() < BACKDROP_MIN:
            continue
        colour = np.median(image[theirs], axis=0)
        near = [j for j, c in enumerate(seen) if np.linalg.norm(c - colour) <= BACKDROP_APART]
        if not near:
            seen.append(colour)
            counts.append(1)
        elif near[0] == 0:  # drawn on the query's own colour: the rest need not be read
            return []
        else:
            counts[near[0] - 1] += 1
    best = sorted(range(len(counts)), key=lambda j: (-counts[j], j))[:n]
    out = []
    for j in best:
        done = rgb.copy()
        done[region] = np.round(seen[j + 1]).astype(np.uint8)
        out.append(done)
    return out


def _found(checks: Iterable[Check]) -> bool:
    """Some candidate shows all of the query: a sprite's layout of 1, a painting's colours of `FOUND`."""
    return any((c.layout or 0.0) >= 1.0 or (c.colours or 0.0) >= FOUND for c in checks)


# candidates (images, checks) -> the query's completions, and a `Misfit` that orders a deeper look-up
Completer = Callable[[list[np.ndarray | None], list[Check]], tuple[list[np.ndarray], Misfit | None]]


def _completer(query: SpriteQuery, checks: Sequence[Check]) -> Completer | None:
    """How to complete the query from candidates (their images and checks): the completions, and how
    badly the query fits a further candidate where that orders a deeper look-up (a sprite crop:
    `crop_misfit`), or None: a lossless sprite query by recolouring, a sprite crop by its patch, a
    painting by the candidates it aligns with as a part or, failing that, on its candidates' backgrounds."""
    if _found(checks):
        return None
    if any(c.layout is not None for c in checks):
        if any(c.lossless for c in checks) and query.native is not None:
            native = query.native
            return lambda scan, scan_checks: (
                recolour_completions(native, scan[:COMPLETE_FROM], scan_checks[:COMPLETE_FROM]),
                None,
            )
        if query.patch is not None:
            patch = query.patch

            def crop(
                scan: list[np.ndarray | None], scan_checks: list[Check]
            ) -> tuple[list[np.ndarray], Misfit]:
                completions, turned = crop_completions(patch, scan[:COMPLETE_FROM])
                return completions, lambda key, image: crop_misfit(
                    turned, None if image is None else native_sprite(image)
                )

            return crop
        return None
    rgb = query.rgb

    def painted(scan: list[np.ndarray | None], scan_checks: list[Check]) -> tuple[list[np.ndarray], None]:
        parts = painted_completions(rgb, scan[:COMPLETE_FROM], scan_checks[:COMPLETE_FROM])
        return parts or backdrop_completions(rgb, scan[:COMPLETE_FROM]), None

    return painted


def _unknown_first(fit: Misfit, known: set, key: K, image: np.ndarray | None) -> float:
    """`fit`, with the candidates already `known` last."""
    return float("inf") if key in known else fit(key, image)


def find_by_completion(
    query: np.ndarray | SpriteQuery,
    keys: list[K],
    images: list[np.ndarray | None],
    checks: list[Check],
    lookup: Callable[[list[np.ndarray], Misfit | None], list[tuple[K, np.ndarray | None]]],
    keypoints: bool = True,
    rule: OverlayRule = OverlayRule(),
) -> tuple[list[K], list[np.ndarray | None], list[Check]]:
    """Candidates (`keys`, their decoded `images` and `checks`, best instance-space score first) with
    those a completion of the query finds, when no candidate shows all of it (`_found`).
    A cropped or recoloured copy sits far from its original in the instance space (most of a pixel-art
    crop's cells are cut off or shown larger, a painted crop lost its edges; a saturated copy's colours
    are all new), while the query completed from a sibling sits close: a sprite crop's native pixels
    (`SpriteQuery.patch`) put into the first `COMPLETE_FROM` candidates they fit best
    (`crop_completions`), a lossless sprite query put back into the palette of the candidates it lays out
    best on (`recolour_completions`), a painted query put over the candidates its keypoints align it
    with (`painted_completions`), a painting on a new background put on its candidates' backgrounds
    (`backdrop_completions`).
    `lookup(rendered completions, fit)` answers further candidates (key and image), which are checked and
    appended (those not already among `keys`); for a sprite crop, whose original may sit a few hundred
    deep behind the siblings a completion borrowed its cut-off cells from, `fit` (`crop_misfit`, the
    candidates already among `keys` last) asks it to look `CROP_DEPTH` deep and keep those the crop fits
    best. Up to `ROUNDS` times, each completing from the last
    round's finds. `rule`: as `check_candidates`."""
    query = as_query(query)
    complete = _completer(query, checks)
    if complete is None:
        return keys, images, checks
    keys, images, checks = list(keys), list(images), list(checks)
    scan, scan_checks = images, checks
    for _ in range(ROUNDS):
        completions, fit = complete(scan, scan_checks)
        known = set(keys)
        if fit is not None:
            fit = partial(_unknown_first, fit, known)
        found = [(k, im) for k, im in lookup(completions, fit) if k not in known] if completions else []
        if not found:
            break
        new_keys, new_images = [k for k, _ in found], [im for _, im in found]
        new_checks = check_candidates(query, new_images, keypoints, rule=rule)
        keys, images, checks = keys + new_keys, images + new_images, checks + new_checks
        if _found(new_checks):
            break
        scan, scan_checks = new_images, new_checks
    return keys, images, checks
