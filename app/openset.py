"""Open-set scores: how unlike every known collection an image is (higher = more likely unknown).

Four scores, all computed from one ONNX pass (logits + collection embedding):

- `max_probability`: 1 - max softmax(logits / T)
- `energy`: -T * logsumexp(logits / T) (Liu et al., 2020)
- `mahalanobis`: the smallest Mahalanobis distance from the embedding to a class mean, with one shared
  covariance (Lee et al., 2018)
- `knn`: 1 - the cosine similarity to the k-th nearest training embedding (Sun et al., 2022)

The statistics the last two need (class means, the shared precision matrix, reference embeddings) ship
beside the model as an .npz that the manifest pins by sha256.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.errors import ModelIntegrityError
from app.manifest import UnknownDetector, verify_file

STATS_KEYS = ("means", "precision", "references")


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
        if detector.method in ("mahalanobis", "knn"):
            if not detector.stats_file:
                raise ModelIntegrityError(f"unknown.method {detector.method} needs unknown.stats_file")
            path = Path(model_dir) / detector.stats_file
            verify_file(path, detector.stats_sha256)
            with np.load(path) as data:
                need = ("means", "precision") if detector.method == "mahalanobis" else ("references",)
                missing = [k for k in need if k not in data]
                if missing:
                    raise ModelIntegrityError(f"{path} lacks {missing}")
                self.stats = {k: data[k].astype(np.float32) for k in need}
        if detector.method == "mahalanobis":
            self._mahalanobis = Mahalanobis(self.stats["means"], self.stats["precision"])

    def score(self, logits: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """[N,C] logits and [N,D] embeddings -> [N] scores."""
        d = self.detector
        if d.method == "max_probability":
            return max_probability_score(logits, d.temperature)
        if d.method == "energy":
            return energy_score(logits, d.temperature)
        if d.method == "mahalanobis":
            return self._mahalanobis.score(embedding)
        return knn_score(embedding, self.stats["references"], d.k)

    def verdict(self, logits: np.ndarray, embedding: np.ndarray, score: float | None = None) -> dict:
        """The `unknown` block of one image's response (from its score, when already computed)."""
        score = float(self.score(logits[None], embedding[None])[0] if score is None else score)
        return {
            "method": self.detector.method,
            "score": round(score, 6),
            "threshold": round(self.detector.threshold, 6),
            "is_unknown": score > self.detector.threshold,
        }
