"""Run an exported model (ONNX Runtime: what ships) over image files, optionally transforming each image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.fingerprint import pixel_fingerprint
from app.imaging import decode_image
from app.inference import OnnxModel
from app.preprocessing import PreprocessConfig, preprocess
from app.views import ViewSet

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def infer(
    model: OnnxModel,
    paths: list[Path],
    transform: Transform | None = None,
    cfg: PreprocessConfig | None = None,
    batch: int = 64,
    desc: str = "infer",
    seed: int = 0,
    views: ViewSet | None = None,
    fingerprints: bool = False,
    images: list[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Every model output for image files, concatenated.

    `transform` (a corruption, a copymint edit) acts on the decoded RGB with a generator seeded by
    (seed, index), so runs repeat exactly; `cfg` swaps in another preprocessing (the denoise sweep).
    With `views`, each image runs in those views as the service runs a copy query, and outputs are
    [N, V, ...]; with
    `fingerprints`, a "fingerprint" entry holds each (transformed) image's pixel fingerprint; a list
    given as `images` receives each (transformed) decoded RGB.
    """
    cfg = cfg or model.manifest.preprocessing
    outs: dict[str, list[np.ndarray]] = {}
    if views:
        batch = max(1, batch // views.count)
    for start in tqdm(range(0, len(paths), batch), desc=desc, leave=False):
        xs = []
        for i, p in enumerate(paths[start : start + batch]):
            rgb = decode_image(Path(p).read_bytes(), cfg.background_rgb)
            if transform is not None:
                rgb = transform(rgb, np.random.default_rng((seed, start + i)))
            if images is not None:
                images.append(rgb)
            x = preprocess(rgb, cfg)
            xs.append(views.inputs(rgb, x, cfg) if views else x)
            if fingerprints:
                outs.setdefault("fingerprint", []).append(np.array([pixel_fingerprint(rgb)]))
        batch_in = np.concatenate(xs) if views else np.stack(xs)
        for name, arr in model.run(batch_in).items():
            outs.setdefault(name, []).append(
                arr.reshape(len(xs), views.count, *arr.shape[1:]) if views else arr
            )
    return {k: np.concatenate(v) for k, v in outs.items()}


def edit_transform(name: str) -> Transform:
    """A named copymint edit (training.edits) as a transform."""
    from training.edits import apply_edit

    return lambda rgb, rng: apply_edit(name, rgb, rng)


def view_similarity(query_views: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """[N, V, D] query views x [M, D] references -> [N, M]: each pair's best view (as the service scores)."""
    if query_views.ndim == 2:
        return query_views @ refs.T
    out = query_views[:, 0] @ refs.T
    for v in range(1, query_views.shape[1]):
        np.maximum(out, query_views[:, v] @ refs.T, out=out)
    return out
