"""Whiten an exported model's collection embedding: collections further apart, inside the graph.

`nftlens whiten MODEL_DIR` runs the model over its own training images (split `train` of the datasets it
was trained on, never validation or test), fits the embedding's mean and its pooled within-collection
covariance (shrunk towards a multiple of the identity), and appends to the graph, after the `embedding`
output, `(embedding - mean) @ S^(-alpha/2)` normalised to length 1 under the same name. With `alpha` 1
that is the within-class whitening of LDA with every dimension kept: the directions in which the tokens
of one collection vary are shrunk and those that tell collections apart kept, so the nearest neighbours
of a token are more often of its collection. The default `alpha` 0.5 (the square root of it) was chosen
on validation images (reports/default/whitening.md): retrieval precision@10 on the validation images
0.976 -> 0.999, while edited copies find their original in this space a little more often (mean top-1
over five edits 0.727 -> 0.753; mirrors slightly less often, colour changes more).

Every other output is untouched (probabilities, instance, stage statistics), and the network's own
embedding stays an output, `network_embedding`, which the unknown detector reads (app/openset.py): the
copy verdicts and thresholds and the open-set statistics and threshold carry over. The embedding is new,
so the manifest gets a new sha256 and no `vectors_sha256` (catalogs need `nftlens catalog reindex`).
`strip_whitening` removes the step again (`nftlens quantize` quantises the network without it; `whiten`
then fits the int8 model's own).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.manifest import load_manifest, sha256_of
from app.openset import NETWORK_EMBEDDING

PREFIX = "whiten/"
RAW = NETWORK_EMBEDDING  # the network's own embedding: an output of the rewritten graph too
ALPHA, SHRINK = 0.5, 0.01


def fit_whitening(
    embeddings: np.ndarray, labels: np.ndarray, alpha: float = ALPHA, shrink: float = SHRINK
) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], projection [D, D]) = (the embeddings' mean, S^(-alpha/2)) with S the pooled
    within-label covariance shrunk by `shrink` towards trace(S)/D times the identity."""
    x = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    centred = np.concatenate([x[labels == c] - x[labels == c].mean(0) for c in np.unique(labels)])
    within = centred.T @ centred / len(centred)
    d = len(within)
    s = (1.0 - shrink) * within + shrink * np.trace(within) / d * np.eye(d)
    values, vectors = np.linalg.eigh(s)
    projection = vectors @ np.diag(values ** (-alpha / 2)) @ vectors.T
    return x.mean(0).astype(np.float32), projection.astype(np.float32)


def whitened(embeddings: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """What the rewritten graph outputs for these embeddings (numpy, for checks)."""
    y = (np.asarray(embeddings, np.float32) - mean) @ projection
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def _append(graph, mean: np.ndarray, projection: np.ndarray) -> None:
    """Rename the graph's `embedding` to `RAW` (an output too) and compute `embedding` from it."""
    from onnx import helper, numpy_helper

    for node in graph.node:
        node.output[:] = [RAW if o == "embedding" else o for o in node.output]
        node.input[:] = [RAW if i == "embedding" else i for i in node.input]
    shape = next(o for o in graph.output if o.name == "embedding")
    raw = graph.output.add()
    raw.CopyFrom(shape)
    raw.name = RAW
    graph.initializer.extend(
        [
            numpy_helper.from_array(mean, PREFIX + "mean"),
            numpy_helper.from_array(projection, PREFIX + "projection"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Sub", [RAW, PREFIX + "mean"], [PREFIX + "centred"], name=PREFIX + "centre"),
            helper.make_node(
                "MatMul",
                [PREFIX + "centred", PREFIX + "projection"],
                [PREFIX + "projected"],
                name=PREFIX + "project",
            ),
            helper.make_node(
                "LpNormalization",
                [PREFIX + "projected"],
                ["embedding"],
                axis=1,
                p=2,
                name=PREFIX + "normalise",
            ),
        ]
    )


def strip_whitening(src: Path, dst: Path) -> None:
    """Write `src`'s graph without the whitening step (`embedding` the network's own again)."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    keep = [n for n in graph.node if not n.name.startswith(PREFIX)]
    for node in keep:
        node.output[:] = ["embedding" if o == RAW else o for o in node.output]
        node.input[:] = ["embedding" if i == RAW else i for i in node.input]
    del graph.node[:]
    graph.node.extend(keep)
    outputs = [o for o in graph.output if o.name != RAW]
    del graph.output[:]
    graph.output.extend(outputs)
    kept = [i for i in graph.initializer if not i.name.startswith(PREFIX)]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(dst))


def is_whitened(path: Path) -> bool:
    import onnx

    return any(n.name.startswith(PREFIX) for n in onnx.load(str(path), load_external_data=False).graph.node)


def _images(m, split: str, data: list[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    """(datasets, image paths, labels) of the model's `split`, chosen as training chose its images: its
    datasets (or `data`) by its label field, without the excluded labels and the held-out (test) tokens."""
    from training.datasets.select import select_rows

    config = m.training.get("config", {})
    data = data or [d for d in config.get("data", []) if Path(d, "manifest.csv").is_file()]
    if not data:
        raise ValueError("no training data found: pass the datasets the model was trained on (--data)")
    label = config.get("label_field", "collection")
    held = [h for h in config.get("holdout") or [] if Path(h, "manifest.csv").is_file()]
    paths, rows = select_rows(data, split, label, config.get("exclude") or {}, held)
    return data, paths, np.array([r[label] for r in rows])


def _sample(n: int, k: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of min(k, n) of range(n)."""
    return np.sort(np.random.default_rng(seed).choice(n, min(k, n), replace=False))


def whiten_model(
    model_dir: Path,
    alpha: float = ALPHA,
    shrink: float = SHRINK,
    images: int = 6000,
    data: list[str] | None = None,
    seed: int = 0,
) -> dict:
    """Fit the whitening on the model's training images and rewrite MODEL_DIR's graph and manifest
    (see the module). Returns what was fitted (also in the manifest's `training.embedding_whitening`)."""
    import onnx

    from app.inference import OnnxModel
    from training.runner import infer

    m = load_manifest(model_dir)
    path = Path(model_dir) / m.onnx_file
    if is_whitened(path):
        raise ValueError(f"{path} is whitened already (strip it first: training/whiten.py strip_whitening)")
    data, paths, labels = _images(m, "train", data)
    keep = _sample(len(paths), images, seed)
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    emb = infer(model, [paths[i] for i in keep], desc="training embeddings")["embedding"]
    mean, projection = fit_whitening(emb, labels[keep], alpha, shrink)
    graph = onnx.load(str(path))
    _append(graph.graph, mean, projection)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    fitted = {
        "alpha": alpha,
        "shrink": shrink,
        "images": len(keep),
        "data": [f"{d}@train" for d in data],
        "from_sha256": m.sha256,
    }
    manifest = m.model_copy(  # the unknown detector reads `network_embedding`: unchanged, still valid
        update={
            "outputs": [*m.outputs, RAW],
            "sha256": sha256_of(path),
            "vectors_sha256": None,  # a new embedding: catalogs need a reindex
            "training": {**m.training, "embedding_whitening": fitted},
        }
    )
    manifest.write(model_dir)
    return fitted


SWEEP_EDITS = ("crop_zoom", "mirror", "colour_shift", "pixelate", "rotate_small")


def validation_sweep(
    model_dir: Path,
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
    shrink: float = SHRINK,
    images: int = 6000,
    queries: int = 400,
    seed: int = 0,
) -> str:
    """The design check behind `ALPHA`, on validation images only (Markdown): for each alpha, retrieval
    precision@10 among the validation images of the model's training datasets (by `label_field`), and
    how often an edited copy of one of `queries` of them (`SWEEP_EDITS`) finds its original first among
    the validation and `images` training images, in the whitened space (alpha 0: the network's own)."""
    import shutil
    import tempfile

    from app.inference import OnnxModel
    from training.metrics import precision_at_k
    from training.runner import edit_transform, infer

    m = load_manifest(model_dir)
    _, tpaths, ytrain = _images(m, "train")
    _, vpaths, yval = _images(m, "val")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(model_dir)
        if is_whitened(source / m.onnx_file):  # the network's own embedding
            source = Path(tmp) / "model"
            shutil.copytree(model_dir, source)
            strip_whitening(Path(model_dir) / m.onnx_file, source / m.onnx_file)
            outputs = [o for o in m.outputs if o != RAW]
            m.model_copy(update={"sha256": sha256_of(source / m.onnx_file), "outputs": outputs}).write(source)
        model = OnnxModel(source, providers=["CPUExecutionProvider"])
        keep = _sample(len(tpaths), images, seed)  # as `whiten_model` fits
        train = infer(model, [tpaths[i] for i in keep], desc="training embeddings")["embedding"]
        ytrain = ytrain[keep]
        val = infer(model, vpaths, desc="validation embeddings")["embedding"]
        pick = _sample(len(vpaths), queries, seed + 1)
        edited = {
            e: infer(model, [vpaths[i] for i in pick], edit_transform(e), desc=e, seed=seed + 3)["embedding"]
            for e in SWEEP_EDITS
        }
    gallery = np.concatenate([val, train])
    lines = [
        f"| alpha | precision@10 (validation, {len(val)}) | "
        + " | ".join(f"{e} top-1" for e in SWEEP_EDITS)
        + " | mean top-1 |",
        "|---:|---:|" + "---:|" * (len(SWEEP_EDITS) + 1),
    ]
    for alpha in alphas:
        mean, projection = fit_whitening(train, ytrain, alpha, shrink)

        def space(x: np.ndarray, fit: tuple = (alpha, mean, projection)) -> np.ndarray:
            return whitened(x, *fit[1:]) if fit[0] else x / np.linalg.norm(x, axis=1, keepdims=True)

        g = space(gallery)
        top1 = [float(((space(q) @ g.T).argmax(1) == pick).mean()) for q in edited.values()]
        lines.append(
            f"| {alpha:g} | {precision_at_k(space(val), yval, 10):.4f} | "
            + " | ".join(f"{t:.3f}" for t in top1)
            + f" | {np.mean(top1):.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="the whitening's design check on validation images")
    ap.add_argument("model_dir", type=Path, nargs="?", default=Path("models/default"))
    args = ap.parse_args()
    print(validation_sweep(args.model_dir))
