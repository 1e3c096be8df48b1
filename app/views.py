"""The eight dihedral views of a network input (identity, 3 rotations, and the mirror of each).

A copy search may embed all eight views of the query and keep, for each catalogued token, the best
score: a mirrored or quarter-turned copy then meets its original in the orientation it was catalogued in.
The input is square (the preprocessing pads to S x S), so every view is again a valid input.
"""

from __future__ import annotations

import numpy as np

N_VIEWS = 8


def dihedral_views(x: np.ndarray) -> np.ndarray:
    """[3,S,S] -> [8,3,S,S]: rotations by 0/90/180/270 degrees, then the same of the mirror image."""
    flipped = x[:, :, ::-1]
    views = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    views += [np.rot90(flipped, k, axes=(1, 2)) for k in range(4)]
    return np.ascontiguousarray(np.stack(views))


def best_over_views(sims: np.ndarray) -> np.ndarray:
    """[V, N] similarities of V views to N tokens -> [N]: each token's best view."""
    return sims.max(axis=0)
