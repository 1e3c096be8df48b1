"""Open-set scores: how unlike every known collection an image is (higher = more likely unknown).

Five scores, all computed from one ONNX pass (logits, the collection embedding, the stage statistics):

- `max_probability`: 1 - max softmax(logits / T)
- `energy`: -T * logsumexp(logits / T) (Liu et al., 2020)
- `mahalanobis`: the smallest Mahalanobis distance from the embedding to a class mean, with one shared
  covariance (Lee et al., 2018)
- `knn`: 1 - the cosine similarity to the k-th nearest training embedding (Sun et al., 2022)
- `multilayer`: the same Mahalanobis score at several depths, summed: on the embedding and on the
  per-stage channel statistics (`stageI` outputs, see `training/stagestats.py`), each standardised by its
  spread on known validation images. A new collection that lands inside a known class in the embedding
  often still differs in palette, line work and texture, which the shallower stages keep.

The statistics all but the first two need (class means, shared precision matrices, reference embeddings,
the stage features' standardisation) ship beside the model as an .npz that the manifest pins by sha256.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from app.errors import ModelIntegrityError
from app.inference import logits_of
from app.manifest import UnknownDetector, verify_file

STATS_METHODS = ("mahalanobis", "knn", "multilayer")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def max_probability_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return 1.0 - softmax(logits, temperature).max(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(axis=1)
    return -(temperature * (m + np.log(np.exp(z - m[:, None]).sum(axis=1))))


class Mahalanobis:
    """min over classes of (x - mu_c)^T P (x - mu_c), with everything that does not depend on x computed
    once: (x-m)P(x-m) = xPx - 2 x(Pm) + mPm."""

    def __init__(self, means: np.ndarray, precision: np.ndarray):
        self.p = np.asarray(precision, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        self.pm = self.p @ means.T  # [D, C] (P is symmetric)
        self.mpm = (means.T * self.pm).sum(0)  # [C]

    def score(self, embedding: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(embedding, dtype=np.float64))
        d = ((x @ self.p) * x).sum(1)[:, None] - 2 * x @ self.pm + self.mpm[None, :]
        return d.min(axis=1)


def stage_features(x: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A `stageI` output (channel means and stds, >= 0) on a log scale, standardised per feature."""
    return (np.log1p(np.maximum(np.asarray(x, dtype=np.float64), 0.0)) - center) / scale


class LayeredMahalanobis:
    """The `multilayer` score: sum over layers of (Mahalanobis(layer) - mu) / sigma, where mu and sigma are
    that layer's score spread on known validation images. Layer `embedding` is the network's embedding as
    is (`network_embedding`); a `stageI` layer goes through `stage_features` first. `stats` holds, per
    stage layer L, `L/center`, `L/scale`, `L/means`, `L/precision`, and for every layer `L/z` = [mu,
    sigma] (the embedding's means and precision are the top-level `means` and `precision`)."""

    def __init__(self, layers: list[str], stats: Mapping[str, np.ndarray]):
        if not layers:
            raise ModelIntegrityError("the multilayer score needs at least one layer")
        self.layers = list(layers)
        self.parts = []
        for name in self.layers:
            k = layer_keys(name)
            scorer = Mahalanobis(stats[k["means"]], stats[k["precision"]])
            norm = (stats[k["center"]], stats[k["scale"]]) if "center" in k else None
            self.parts.append((name, scorer, norm, *np.asarray(stats[k["z"]], dtype=np.float64)))

    def layer_scores(self, out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each layer's raw Mahalanobis score for a batch of outputs."""
        return {
            name: scorer.score(
                (network_embedding(out) if name == "embedding" else out[name])
                if norm is None
                else stage_features(out[name], *norm)
            )
            for name, scorer, norm, _, _ in self.parts
        }

    def standardised(self, out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each layer's score in units of its spread on known validation images."""
        raw = self.layer_scores(out)
        return {name: (raw[name] - mu) / sigma for name, _, _, mu, sigma in self.parts}

    def score(self, out: Mapping[str, np.ndarray]) -> np.ndarray:
        return sum(self.standardised(out).values())


NETWORK_EMBEDDING = "network_embedding"  # a whitened graph's own embedding (training/whiten.py)


def network_embedding(out: Mapping[str, np.ndarray]) -> np.ndarray:
    """The embedding the network computes, which every open-set score reads: `network_embedding` where a
    whitened graph outputs it beside its whitened `embedding`, else `embedding`. The detector, fitted on
    it, is then the same before and after `nftlens whiten`."""
    return out[NETWORK_EMBEDDING] if NETWORK_EMBEDDING in out else out["embedding"]


def layer_keys(name: str) -> dict[str, str]:
    """Where a multilayer layer's arrays live in the sidecar: the embedding's means and precision are the
    top-level ones (shared with `mahalanobis`); a stage's are prefixed with its name, with its
    standardisation (`center`, `scale`) beside them; every layer has its validation spread `z`."""
    if name == "embedding":
        return {"means": "means", "precision": "precision", "z": "embedding/z"}
    return {part: f"{name}/{part}" for part in ("means", "precision", "center", "scale", "z")}


def mahalanobis_score(embedding: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """min over classes of (x - mu_c)^T P (x - mu_c)."""
    return Mahalanobis(means, precision).score(embedding)


def knn_score(embedding: np.ndarray, references: np.ndarray, k: int = 10) -> np.ndarray:
    sims = np.asarray(embedding, dtype=np.float32) @ np.asarray(references, dtype=np.float32).T
    k = min(k, sims.shape[1])
    return 1.0 + np.partition(-sims, k - 1, axis=1)[:, k - 1]  # 1 - the k-th largest similarity


def fit_statistics(embeddings: np.ndarray, labels: np.ndarray, shrinkage: float = 1e-3) -> dict:
    """Class means and the shared precision matrix (with ridge shrinkage) of training embeddings."""
    x = np.asarray(embeddings, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / len(x)
    cov += shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    return {"means": means.astype(np.float32), "precision": np.linalg.inv(cov).astype(np.float32)}


def save_statistics(path: Path, stats: dict[str, np.ndarray]) -> None:
    np.savez_compressed(path, **stats)


class OpenSetScorer:
    """The manifest's unknown detector, ready to score: loads and verifies its sidecar statistics."""

    def __init__(self, detector: UnknownDetector, model_dir: str | Path):
        self.detector = detector
        self.stats: dict[str, np.ndarray] = {}
        if detector.method in STATS_METHODS:
            if not detector.stats_file:
                raise ModelIntegrityError(f"unknown.method {detector.method} needs unknown.stats_file")
            path = Path(model_dir) / detector.stats_file
            verify_file(path, detector.stats_sha256)
            with np.load(path) as data:
                need = self.needed_stats(detector)
                missing = [k for k in need if k not in data]
                if missing:
                    raise ModelIntegrityError(f"{path} lacks {missing}")
                self.stats = {k: data[k].astype(np.float32) for k in need}
        if detector.method == "mahalanobis":
            self._mahalanobis = Mahalanobis(self.stats["means"], self.stats["precision"])
        if detector.method == "multilayer":
            self._layered = LayeredMahalanobis(detector.layers, self.stats)

    @staticmethod
    def needed_stats(detector: UnknownDetector) -> tuple[str, ...]:
        """The sidecar arrays a detector reads."""
        if detector.method == "knn":
            return ("references",)
        if detector.method == "mahalanobis":
            return ("means", "precision")
        return tuple(dict.fromkeys(k for name in detector.layers for k in layer_keys(name).values()))

    def score(self, out: Mapping[str, np.ndarray]) -> np.ndarray:
        """A batch of model outputs (`logits` or `probabilities`, `embedding`, the `stageI` a
        `multilayer` detector uses) -> [N] scores."""
        d = self.detector
        if d.method == "multilayer":
            return self._layered.score(out)
        if d.method in ("max_probability", "energy"):
            logits = logits_of(out)
            fn = max_probability_score if d.method == "max_probability" else energy_score
            return fn(logits, d.temperature)
        if d.method == "mahalanobis":
            return self._mahalanobis.score(network_embedding(out))
        return knn_score(network_embedding(out), self.stats["references"], d.k)

    def verdict(self, score: float) -> dict:
        """The `unknown` block of one image's response, from its score."""
        score = float(score)
        return {
            "method": self.detector.method,
            "score": round(score, 6),
            "threshold": round(self.detector.threshold, 6),
            "is_unknown": score > self.detector.threshold,
        }
