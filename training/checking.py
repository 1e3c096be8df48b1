"""Direct checks (app/verify.py) of many queries against one fixed set of reference images, as evaluation and
calibration run them: each reference is decoded, and its keypoints found, once."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np

from app.agreement import OverlayRule
from app.keypoints import FeatureCache
from app.sprites import SpriteQuery
from app.verify import (
    CROP_DEPTH,
    Check,
    Misfit,
    by_fit,
    check_candidates,
    find_by_completion,
    interleave,
    stored_rgb,
)

Lookup = Callable[[list[np.ndarray], Misfit | None], list[tuple[int, np.ndarray | None]]]


class ReferenceChecks:
    """Check queries against reference images (image files, by index), caching what each reference costs."""

    def __init__(
        self,
        paths: Sequence[Path],
        background: tuple[int, int, int],
        keypoints: bool = True,
        rule: OverlayRule = OverlayRule(),
    ):
        self.paths, self.background, self.keypoints = list(paths), background, keypoints
        self.rule = rule  # app/agreement.py: overlay
        self._images: dict[int, np.ndarray | None] = {}
        self._features = FeatureCache(len(self.paths))  # every reference's, by index

    def image(self, i: int) -> np.ndarray | None:
        """Reference i, decoded as the service decodes a stored token's image."""
        if i not in self._images:
            self._images[i] = stored_rgb(Path(self.paths[i]).read_bytes(), self.background)
        return self._images[i]

    def check(self, query: np.ndarray | SpriteQuery, candidates: Sequence[int]) -> list[Check]:
        """The query's check (an RGB image or a `SpriteQuery`) against each candidate reference (best
        instance-space score first)."""
        candidates = [int(i) for i in candidates]

        return check_candidates(
            query,
            (self.image(i) for i in candidates),
            self.keypoints,
            lambda n, image: self._features.get(candidates[n], image),
            self.rule,
        )

    def completed(
        self, rgb: np.ndarray, candidates: Sequence[int], lookup: Lookup
    ) -> tuple[list[Check], list[int], list[Check]]:
        """The query's checks against candidate references (best score first), then with the references
        its completions find (app/verify.py: find_by_completion; `lookup`, e.g. `lookup_references`):
        (the candidates' checks, every candidate, every candidate's check)."""
        query, candidates = SpriteQuery(rgb), [int(i) for i in candidates]
        checks = self.check(query, candidates)
        images = [self.image(i) for i in candidates]
        found, _, more = find_by_completion(
            query, candidates, images, checks, lookup, self.keypoints, self.rule
        )
        return checks, found, more


def lookup_references(
    embed: Callable[[list[np.ndarray]], np.ndarray],
    references: np.ndarray,
    refs: ReferenceChecks,
    k: int,
    skip: Collection[int] = (),
) -> Lookup:
    """The service's completion lookup (app/verify.py: catalog_lookup) over reference vectors [N, D]:
    each rendering's `k` nearest references (`embed`: images -> vectors) taken in turn, those in `skip`
    left out (read at each call), `k` at most, with their images; with a `fit` (app/verify.py: Misfit),
    `CROP_DEPTH` from each rendering's, the `k` that fit best kept."""

    def lookup(rendered: list[np.ndarray], fit: Misfit | None = None) -> list[tuple[int, np.ndarray | None]]:
        depth = k if fit is None else CROP_DEPTH
        found = interleave([top_candidates(v @ references.T, depth).tolist() for v in embed(rendered)])
        found = [i for i in found if i not in skip]
        return by_fit([(i, refs.image(i)) for i in (found if fit is not None else found[:k])], fit)[:k]

    return lookup


def top_candidates(sims: np.ndarray, k: int) -> np.ndarray:
    """The k best columns of one row of similarities, best first."""
    k = min(k, len(sims))
    top = np.argpartition(-sims, k - 1)[:k]
    return top[np.argsort(-sims[top])]
