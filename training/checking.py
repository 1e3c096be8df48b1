"""Direct checks (app/verify.py) of many queries against one fixed set of reference images, as evaluation and
calibration run them: each reference is decoded, and its keypoints found, once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.keypoints import FeatureCache
from app.sprites import SpriteQuery
from app.verify import Check, check_candidates, stored_rgb


class ReferenceChecks:
    """Check queries against reference images (image files, by index), caching what each reference costs."""

    def __init__(self, paths: Sequence[Path], background: tuple[int, int, int], keypoints: bool = True):
        self.paths, self.background, self.keypoints = list(paths), background, keypoints
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
        )


def top_candidates(sims: np.ndarray, k: int) -> np.ndarray:
    """The k best columns of one row of similarities, best first."""
    k = min(k, len(sims))
    top = np.argpartition(-sims, k - 1)[:k]
    return top[np.argsort(-sims[top])]
