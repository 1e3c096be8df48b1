"""The eight dihedral views of a network input (identity, 3 rotations, and the mirror of each).

A copy search may embed all eight views of the query and keep, for each catalogued token, the best
score: a mirrored or quarter-turned copy then meets its original in the orientation it was catalogued in.
The input is square (the preprocessing pads to S x S), so every view is again a valid input.
"""

from __future__ import annotations

import numpy as np

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
