"""Exact-copy fingerprint: a hash of the decoded pixels that ignores integer upscaling, mirroring and
quarter turns.

A pixel-for-pixel replica of a token (saved in another format, blown up 20x with nearest neighbour,
flipped or turned) gets the same fingerprint as the original, so the copy search can answer it exactly,
in front of the learned instance embedding that carries the fuzzy edits.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _first_run(same_as_next: np.ndarray) -> int:
    """Length of the leading run of identical rows, given row[i] == row[i+1] flags."""
    breaks = np.flatnonzero(~same_as_next)
    return int(breaks[0]) + 1 if len(breaks) else len(same_as_next) + 1


def reduce_integer_upscale(rgb: np.ndarray) -> np.ndarray:
    """Undo a nearest-neighbour upscale by the largest integer factor that reproduces the image exactly."""
    h, w = rgb.shape[:2]
    if h < 2 or w < 2:
        return rgb
    run_rows = _first_run(np.all(rgb[1:] == rgb[:-1], axis=(1, 2)))
    run_cols = _first_run(np.all(rgb[:, 1:] == rgb[:, :-1], axis=(0, 2)))
    for f in range(min(run_rows, run_cols, h, w), 1, -1):  # a factor never exceeds the first runs
        if h % f or w % f:
            continue
        small = rgb[::f, ::f]
        if np.array_equal(np.repeat(np.repeat(small, f, axis=0), f, axis=1), rgb):
            return small
    return rgb


def pixel_fingerprint(rgb: np.ndarray) -> str:
    """sha256 over the smallest (by bytes) of the 8 dihedral views of the upscale-reduced pixels."""
    base = np.ascontiguousarray(reduce_integer_upscale(rgb))
    views = [np.rot90(v, k) for v in (base, base[:, ::-1]) for k in range(4)]
    canonical = min((np.ascontiguousarray(v) for v in views), key=lambda v: (v.shape, v.tobytes()))
    digest = hashlib.sha256(f"{canonical.shape}".encode())
    digest.update(canonical.tobytes())
    return digest.hexdigest()
