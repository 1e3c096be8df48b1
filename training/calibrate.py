"""Post-export calibration on validation data only: temperature, the open-set detector, the copy threshold.

`calibrate(model_dir)` runs the exported ONNX model (what ships) over the training run's validation split
and writes into `model.json`:

- `calibration`: the temperature that minimises validation NLL, with the ECE before and after;
- `unknown`: the chosen open-set score, its threshold (the validation quantile that keeps
  1 - `false_unknown` of known images known) and the sidecar statistics (`openset.npz`: class means and
  shared precision of the training embeddings, and a reference set for k-NN), pinned by sha256;
- `copies`: the instance-space cosine threshold that keeps the false-copy rate on distinct tokens at
  `false_copy` or below, with the precision and recall it gave on held-out validation pairs; the cuts
  raised by the margins that cross-fitting says keep that rate on new tokens, the overlay cut alone
  lowered within a share of it (`choose_margins`, `overlay_margin`).

Test images are never read here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.agreement import OverlayRule
from app.config import Settings
from app.inference import OnnxModel, logits_of
from app.manifest import Calibration, CopyDetector, UnknownDetector, sha256_of
from app.openset import (
    LayeredMahalanobis,
    energy_score,
    fit_statistics,
    knn_score,
    mahalanobis_score,
    max_probability_score,
    network_embedding,
    save_statistics,
    softmax,
    stage_features,
)
from app.sprites import GATE
from app.verify import Check, is_copy
from app.views import ViewSet
from training.checking import ReferenceChecks, top_candidates
from training.datasets.select import select_rows, token_key
from training.edits import EDITS
from training.intervals import clopper_pearson
from training.metrics import auroc
from training.runner import edit_transform, infer, view_similarity
from training.stagestats import is_stage_output

STATS_FILE = "openset.npz"
COLOURS_FLOOR = 0.9  # a colour-agreement minimum is never below this (a copy keeps most of its figure)
TAIL = 10  # the distinct tokens' largest values that `tail_scale` fits a cut's margin to
MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # the margins (in tail scales) `choose_margins` tries
FOLDS = 5  # `crossfit_false_copies` holds out each fifth of the distinct tokens in turn
OVERLAY_SEEDS = 5  # fold assignments `overlay_margin` pools its cross-fit over
OVERLAY_SHARE = 0.5  # of the false-copy budget, what a lowered overlay margin may spend (`overlay_margin`)
GROUPS = ("colours", "layout", "none")  # check kinds: painted collections, sprites, neither
DETECTOR_FIELDS = ("threshold", "per_collection", "colours_min", "overlay_min", "layout_min")
BEYOND = 0.01  # `OverlayRule.beyond` calibrated by default: a share of the figure (app/agreement.py: overlay)
OPENSET_METHODS = ("max_probability", "energy", "mahalanobis", "knn", "multilayer")


# -- temperature -------------------------------------------------------------------------------------
def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising NLL (log-spaced grid, then a finer grid around the best)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 121))
    best = min(grid, key=lambda t: nll(logits, y, t))
    fine = np.linspace(best / 1.06, best * 1.06, 41)
    return float(min(fine, key=lambda t: nll(logits, y, t)))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> dict:
    """ECE of the top-1 confidence (equal-width bins) and the per-bin table a reliability diagram draws."""
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            gap = abs(correct[m].mean() - conf[m].mean())
            ece += m.mean() * gap
            table.append(
                {
                    "lo": float(lo),
                    "hi": float(hi),
                    "n": int(m.sum()),
                    "confidence": float(conf[m].mean()),
                    "accuracy": float(correct[m].mean()),
                }
            )
    return {"ece": float(ece), "bins": table}


# -- open set ----------------------------------------------------------------------------------------
def openset_scores(
    out: dict[str, np.ndarray],
    stats: dict[str, np.ndarray],
    temperature: float,
    k: int = 10,
    layers: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Every open-set score (higher = more unknown) for a batch of outputs (`multilayer` with `layers`)."""
    logits, emb = logits_of(out), network_embedding(out)
    scores = {
        "max_probability": max_probability_score(logits, temperature),
        "energy": energy_score(logits, temperature),
        "mahalanobis": mahalanobis_score(emb, stats["means"], stats["precision"]),
        "knn": knn_score(emb, stats["references"], k),
    }
    if layers:
        scores["multilayer"] = LayeredMahalanobis(layers, stats).score(out)
    return scores


MIN_SCALE = 1e-2  # a channel (nearly) constant on the fit sample must not blow up when it moves at serving


def stage_names(out: dict[str, np.ndarray]) -> list[str]:
    """The `stageI` outputs a model has (see training/stagestats.py), shallow to deep."""
    return sorted((k for k in out if is_stage_output(k)), key=lambda k: int(k[5:]))


def fit_stage_statistics(out: dict[str, np.ndarray], y: np.ndarray) -> dict[str, np.ndarray]:
    """Per stage: the log-feature standardisation, then class means and shared precision on that scale."""
    stats = {}
    for name in stage_names(out):
        logf = stage_features(out[name], 0.0, 1.0)
        center, scale = logf.mean(0), np.maximum(logf.std(0) + 1e-6, MIN_SCALE)
        fitted = fit_statistics(stage_features(out[name], center, scale), y, shrinkage=1e-2)
        stats |= {
            f"{name}/center": center.astype(np.float32),
            f"{name}/scale": scale.astype(np.float32),
            f"{name}/means": fitted["means"],
            f"{name}/precision": fitted["precision"],
        }
    return stats


def layer_spread(stats: dict[str, np.ndarray], layers: list[str], val: dict[str, np.ndarray]) -> None:
    """Add `L/z` = [mean, std] of each layer's Mahalanobis score on known validation images to `stats`."""
    raw = LayeredMahalanobis(layers, {**stats, **{f"{n}/z": np.array([0.0, 1.0]) for n in layers}})
    for name, v in raw.layer_scores(val).items():
        stats[f"{name}/z"] = np.array([v.mean(), v.std() + 1e-9], dtype=np.float32)


def choose_layers(
    stats: dict[str, np.ndarray],
    candidates: list[str],
    val: dict[str, np.ndarray],
    outliers: dict[str, np.ndarray] | None,
    false_unknown: float,
) -> tuple[list[str], dict]:
    """The `multilayer` layer set. With auxiliary outliers (never a collection that is scored later): the
    subset of `candidates` that flags most of them at the threshold keeping 1 - `false_unknown` of known
    validation images known (ties: AUROC); without: every candidate."""
    if outliers is None:
        return candidates, {}
    scorer = LayeredMahalanobis(candidates, stats)
    z = [scorer.standardised(val), scorer.standardised(outliers)]  # per layer, computed once
    table = {}
    for mask in range(1, 1 << len(candidates)):
        layers = [c for i, c in enumerate(candidates) if mask >> i & 1]
        known, unknown = (sum(part[name] for name in layers) for part in z)
        threshold = np.quantile(known, 1 - false_unknown)
        table["+".join(layers)] = {
            "outliers_flagged": float((unknown > threshold).mean()),
            "auroc": auroc(unknown, known),
        }
    best = max(table, key=lambda k: (table[k]["outliers_flagged"], table[k]["auroc"]))
    return best.split("+"), table


def fit_openset_statistics(
    model: OnnxModel, data: list[str], label_field: str, exclude, holdout, per_label: int = 300, seed: int = 0
) -> dict[str, np.ndarray]:
    """Class means, shared precision and k-NN references from (a seeded sample of) the training split."""
    paths, rows = select_rows(data, "train", label_field, exclude, holdout)
    labels = np.array([r["_label"] for r in rows])
    rng = np.random.default_rng(seed)
    pick = np.concatenate(
        [
            rng.choice(
                np.flatnonzero(labels == lab), min(per_label, int((labels == lab).sum())), replace=False
            )
            for lab in sorted(set(labels))
        ]
    )
    out = infer(model, [paths[i] for i in pick], desc="openset stats")
    y = np.array([model.labels.index(lab) for lab in labels[pick]])
    emb = network_embedding(out)  # the network's own, whitened or not (training/whiten.py)
    stats = fit_statistics(emb, y)
    stats["references"] = emb.astype(np.float16)
    return stats | fit_stage_statistics(out, y)


# -- copies ------------------------------------------------------------------------------------------
def _allowed(n: int, false_copy: float) -> int:
    """How many of n distinct tokens may be called copies within the `false_copy` promise."""
    return int(np.floor(false_copy * n + 1e-9))


def _score_threshold(negatives: np.ndarray, allowed: int) -> float:
    """The lowest score threshold that calls at most `allowed` of `negatives` copies."""
    ranked = np.sort(negatives)[::-1]
    return float(ranked[allowed]) + 1e-6 if allowed < len(ranked) else -1.0


def copy_threshold(positives: np.ndarray, negatives: np.ndarray, false_copy: float) -> dict:
    """The lowest threshold that calls at most `false_copy` of `negatives` copies, with P/R at it."""
    threshold = _score_threshold(negatives, _allowed(len(negatives), false_copy))
    return {"threshold": threshold, **verdict_rates(positives, negatives, threshold, threshold)}


def verdict_rates(positives, negatives, pos_threshold, neg_threshold) -> dict:
    """Recall, precision and false-copy rate when each pair meets its own threshold (scalars or arrays)."""
    tp = int((positives >= pos_threshold).sum())
    fp = int((negatives >= neg_threshold).sum())
    return {
        "recall": tp / len(positives),
        "precision": tp / max(tp + fp, 1),
        "false_copy_rate": fp / len(negatives),
    }


def checked_threshold(
    pos: np.ndarray,
    pos_check: np.ndarray,
    neg: np.ndarray,
    neg_check: np.ndarray,
    false_copy: float,
    floor: float,
) -> tuple[float, float | None]:
    """The score threshold and the check minimum (None: the check never decides) that together call the most
    positives copies while calling at most `false_copy` of the negatives, by score or by check.

    A pair is called when its score reaches the threshold or its check (NaN: not checked) the minimum; the
    minimum is never below `floor` (the check's own ordering gate). Each minimum just above a negative's check
    is tried, the score threshold then taking what is left of the false-copy budget."""
    allowed = _allowed(len(neg), false_copy)
    neg_c, pos_c = np.nan_to_num(neg_check, nan=-np.inf), np.nan_to_num(pos_check, nan=-np.inf)
    above = np.nextafter(neg_c[np.isfinite(neg_c)], np.inf)
    minima = [None, *sorted({float(max(v, floor)) for v in above}, reverse=True)]
    if np.isfinite(pos_c).any():
        minima.append(float(max(floor, np.min(pos_c[np.isfinite(pos_c)]))))
    best: tuple[float, float, float | None] | None = None
    for c in minima:
        by_check = neg_c >= c if c is not None else np.zeros(len(neg), bool)
        left = allowed - int(by_check.sum())
        if left < 0:
            continue
        s = _score_threshold(neg[~by_check], left)
        recall = float(((pos >= s) | ((pos_c >= c) if c is not None else False)).mean())
        if best is None or recall > best[0] + 1e-12:
            best = (recall, s, c)
    assert best is not None  # c = None always fits the budget
    return best[1], best[2]


def _check_kind(pairs: dict, pos_mask: np.ndarray, neg_mask: np.ndarray) -> str | None:
    """The direct check a collection's pairs carry ("colours" or "layout"), None when unchecked."""
    counts = {
        kind: int(
            np.isfinite(pairs[f"pos_{kind}"][pos_mask]).sum()
            + np.isfinite(pairs[f"neg_{kind}"][neg_mask]).sum()
        )
        for kind in ("colours", "layout")
        if f"pos_{kind}" in pairs
    }
    kind = max(counts, key=counts.get, default=None)
    return kind if kind and counts[kind] else None


def called_copies(
    detector: CopyDetector, scores, colls, layouts, colours, lossless=None, overlays=None
) -> np.ndarray:
    """The served verdict (`app.verify.is_copy`) for each pair, its checks NaN where not checked
    (`lossless`: whether each layout check saw the sprite's own grid; none did when not given;
    `overlays`: each pair's `Check.overlay`, none checked when not given)."""

    def value(v: float) -> float | None:
        return None if not np.isfinite(v) else float(v)

    lossless = np.zeros(len(scores), bool) if lossless is None else lossless
    overlays = np.full(len(scores), np.nan) if overlays is None else overlays
    return np.array(
        [
            is_copy(
                detector,
                str(c),
                s,
                Check(layout=value(lay), colours=value(col), overlay=value(ov), lossless=bool(ll)),
            )
            for s, c, lay, col, ov, ll in zip(
                scores, colls, layouts, colours, overlays, lossless, strict=True
            )
        ],
        dtype=bool,
    )


def _side_called(detector: CopyDetector, pairs: dict, side: str) -> np.ndarray:
    """`called_copies` for one side ("pos" or "neg") of `pairs`, with whichever checks it carries."""
    unchecked = np.full(len(pairs[side]), np.nan)
    return called_copies(
        detector,
        pairs[side],
        pairs[f"{side}_coll"],
        pairs.get(f"{side}_layout", unchecked),
        pairs.get(f"{side}_colours", unchecked),
        pairs.get(f"{side}_lossless"),
        pairs.get(f"{side}_overlay"),
    )


def pooled_minimum(
    pairs: dict,
    kind: str,
    collections: Collection[str],
    thresholds: dict[str, float],
    false_copy: float,
    called: np.ndarray | None = None,
) -> float | None:
    """The least check minimum that, over the distinct tokens of all `collections` together (each called
    by score at its own threshold, and those `called` already, a mask over all of them), calls at most
    `false_copy` of them copies (None: the rest use the budget up)."""
    if not collections:
        return None
    mask = np.isin(pairs["neg_coll"], list(collections))
    score_called = pairs["neg"][mask] >= np.array([thresholds[c] for c in pairs["neg_coll"][mask]])
    if called is not None:
        score_called |= called[mask]
    left = _allowed(int(mask.sum()), false_copy) - int(score_called.sum())
    if left < 0:
        return None
    checks = np.sort(np.nan_to_num(pairs[f"neg_{kind}"][mask][~score_called], nan=-np.inf))[::-1]
    return float(np.nextafter(checks[left], np.inf)) if left < len(checks) else -np.inf


def tail_scale(values: np.ndarray, tail: int = TAIL) -> float:
    """How fast the top of `values` (NaN: none) thins out: the mean excess of its `tail` largest over the
    next one (the scale of an exponential tail fitted to them, peaks over threshold); 0 with too few."""
    v = np.sort(np.asarray(values, dtype=float)[np.isfinite(values)])[::-1]
    return float(np.mean(v[:tail] - v[tail])) if len(v) > tail else 0.0


def copy_thresholds(
    pairs: dict, false_copy: float, min_negatives: int = 50, margins: dict[str, float] | None = None
) -> dict:
    """A global threshold plus one per collection with at least `min_negatives` distinct validation tokens,
    each keeping that collection's false-copy rate <= `false_copy`; where the pairs carry direct checks
    (`copy_pairs(verify_k=...)`), the collection's check minimum is chosen with its threshold
    (`checked_threshold`), then raised to what the distinct tokens of every collection checked that way
    allow together (`pooled_minimum`). The choice counts a lossless sprite pair's score as the verdict
    too, so it keeps to the budget even where the service lets the layout alone decide (`is_copy`): a
    distinct token shown at another size would meet the score. Rates as the service applies them.

    `margins` (by check kind, `GROUPS`, and "overlay" for that cut alone): each cut of a collection checked
    that way is then raised by this many `tail_scale`s of the distinct tokens' values it cuts (its own
    scores; the pooled checks), since a cut just above ~100 distinct tokens calls ~1 % of new ones
    (`crossfit_false_copies`, `choose_margins`)."""
    chosen = copy_threshold(pairs["pos"], pairs["neg"], false_copy)
    kinds: dict[str, str] = {}  # each calibrated collection's check kind (GROUPS)
    per: dict[str, float] = {}
    minima: dict[str, dict] = {"colours": {}, "layout": {}}
    painted: list[str] = []  # the collections checked by their colours
    floors = {"colours": COLOURS_FLOOR, "layout": GATE}
    for c in np.unique(pairs["neg_coll"]):
        pm, nm = pairs["pos_coll"] == c, pairs["neg_coll"] == c
        if nm.sum() < min_negatives or not pm.any():
            continue
        kind = _check_kind(pairs, pm, nm)
        kinds[str(c)] = kind or "none"
        if kind == "colours":
            painted.append(str(c))
        if kind is None:
            per[str(c)] = copy_threshold(pairs["pos"][pm], pairs["neg"][nm], false_copy)["threshold"]
            continue
        per[str(c)], least = checked_threshold(
            pairs["pos"][pm],
            pairs[f"pos_{kind}"][pm],
            pairs["neg"][nm],
            pairs[f"neg_{kind}"][nm],
            false_copy,
            floors[kind],
        )
        if least is not None:
            minima[kind][str(c)] = float(least)
    for kind, own in minima.items():  # one collection's ~100 negatives cannot vouch for 0.5 %: pool them
        pooled = pooled_minimum(pairs, kind, own, per, false_copy)
        for c in own:
            own[c] = max(own[c], pooled) if pooled is not None else float("inf")
        minima[kind] = {c: v for c, v in own.items() if np.isfinite(v)}
    minima["overlay"] = overlay_minima(pairs, painted, per, minima["colours"], false_copy)
    if margins:
        per, minima = _with_margins(pairs, kinds, per, minima, margins)
    cuts = {
        "threshold": chosen["threshold"],
        "per_collection": per,
        **{f"{check}_min": own for check, own in minima.items()},
    }
    detector = CopyDetector(**{k: cuts[k] for k in DETECTOR_FIELDS})
    pos_called, neg_called = (_side_called(detector, pairs, side) for side in ("pos", "neg"))
    tp, fp = int(pos_called.sum()), int(neg_called.sum())
    by_edit = {e: float(pos_called[pairs["pos_edit"] == e].mean()) for e in dict.fromkeys(pairs["pos_edit"])}
    return {
        **cuts,
        "kinds": kinds,
        "recall": tp / len(pos_called),
        "precision": tp / max(tp + fp, 1),
        "false_copy_rate": fp / len(neg_called),
        "recall_by_edit": by_edit,
    }


def _with_margins(
    pairs: dict,
    kinds: dict[str, str],
    per: dict[str, float],
    minima: dict[str, dict],
    margins: dict[str, float],
) -> tuple[dict[str, float], dict[str, dict]]:
    """`per` and `minima` each raised by its kind's margin times the tail scale of what it cuts (the
    overlay minima by `margins["overlay"]` where given, else by their painted collections' margin)."""
    per = {
        c: t + margins.get(kinds[c], 0.0) * tail_scale(pairs["neg"][pairs["neg_coll"] == c])
        for c, t in per.items()
    }
    raised = {}
    for check, own in minima.items():
        kind = "colours" if check == "overlay" else check  # the overlay is a painted collection's check
        values = pairs[f"neg_{check}"][np.isin(pairs["neg_coll"], list(own))] if own else np.array([])
        lift = margins.get(check, margins.get(kind, 0.0)) * tail_scale(values)
        # a layout minimum above 1 would make a lossless sprite's layout refuse every copy on its own
        # (app/verify.py: is_copy): without one, its score decides; other checks above 1 never decide
        raised[check] = {c: v + lift for c, v in own.items() if check != "layout" or v + lift <= 1.0}
    return per, raised


def _neg_subset(pairs: dict, keep: np.ndarray) -> dict:
    """`pairs` with only the distinct tokens (neg_*) that `keep` marks."""
    return {k: v[keep] if k.startswith("neg") else v for k, v in pairs.items()}


def crossfit_false_copies(pairs: dict, false_copy: float, **crossfit) -> dict[str, float]:
    """The false-copy rate `copy_thresholds` is expected to keep on new distinct tokens, by check kind
    (`expected_rates` of `crossfit_counts`)."""
    return expected_rates(crossfit_counts(pairs, false_copy, **crossfit))


def expected_rates(counts: dict[str, tuple[int, int]]) -> dict[str, float]:
    """(k + 1) / (n + 1) of each kind's cross-fitted (k, n): the rate expected on a new token."""
    return {g: (k + 1) / (n + 1) for g, (k, n) in counts.items()}


def crossfit_counts(
    pairs: dict,
    false_copy: float,
    margins: dict[str, float] | None = None,
    folds: int = FOLDS,
    seed: int = 0,
    min_negatives: int = 50,
) -> dict[str, tuple[int, int]]:
    """By check kind (GROUPS, over the collections checked that way), (k, n): each of `folds` seeded parts
    of each collection's distinct tokens in turn is judged by the cuts `copy_thresholds` chooses on the
    rest (with every positive); n are so judged, k called copies. `min_negatives` as in
    `copy_thresholds`, for the whole: each fit holds its share of it."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(pairs["neg"]), int)
    for c in np.unique(pairs["neg_coll"]):  # each collection spread evenly over the folds
        idx = np.flatnonzero(pairs["neg_coll"] == c)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    called = np.zeros(len(pairs["neg"]), bool)
    kind_of = np.full(len(pairs["neg"]), "", dtype=object)
    for f in range(folds):
        fit, held = _neg_subset(pairs, fold != f), _neg_subset(pairs, fold == f)
        chosen = copy_thresholds(fit, false_copy, min_negatives * (folds - 1) // folds, margins)
        detector = CopyDetector(**{k: chosen[k] for k in DETECTOR_FIELDS})
        called[fold == f] = _side_called(detector, held, "neg")
        for c, kind in chosen["kinds"].items():
            kind_of[(fold == f) & (pairs["neg_coll"] == c)] = kind
    return {
        g: (int(called[kind_of == g].sum()), int((kind_of == g).sum()))
        for g in GROUPS
        if (kind_of == g).any()
    }


def choose_margins(
    pairs: dict, false_copy: float, **crossfit
) -> tuple[dict[str, float], dict[str, float], dict[str, tuple[int, int]], dict[float, float]]:
    """For each check kind, the least of `MARGINS` whose cross-fitted false-copy rate (`expected_rates`
    of `crossfit_counts`) is within `false_copy` (the largest where none is); then the painted
    collections' overlay cut alone lowered as `overlay_margin` allows (key "overlay", present only where
    it is lower). With the cross-fitted rates and counts (k, n) at the chosen margins, and the pooled
    rate of each overlay margin tried."""
    counts = {m: crossfit_counts(pairs, false_copy, dict.fromkeys(GROUPS, m), **crossfit) for m in MARGINS}
    rates = {m: expected_rates(c) for m, c in counts.items()}
    chosen = {
        g: next((m for m in MARGINS if rates[m][g] <= false_copy), MARGINS[-1]) for g in rates[MARGINS[0]]
    }
    judged = {g: counts[m][g] for g, m in chosen.items()}
    overlay, tried = overlay_margin(pairs, false_copy, chosen, **crossfit)
    if overlay is not None and overlay < chosen["colours"]:
        chosen["overlay"] = overlay
        judged = crossfit_counts(pairs, false_copy, chosen, **crossfit)
    return chosen, expected_rates(judged), judged, tried


def overlay_margin(
    pairs: dict,
    false_copy: float,
    margins: dict[str, float],
    seeds: int = OVERLAY_SEEDS,
    share: float = OVERLAY_SHARE,
    **crossfit,
) -> tuple[float | None, dict[float, float]]:
    """The least of `MARGINS` up to the painted collections' own margin (`margins["colours"]`) for their
    overlay cut alone, the score and colour cuts kept at theirs, whose cross-fitted false-copy rate on
    paintings, (k + 1) / (n + 1) pooled over `seeds` fold assignments, is within `share` of `false_copy`.

    The overlay is the check that calls copies with a badge or caption pasted on (their colours differ
    where it covers), so its cut is the one worth lowering alone. Only a share of the budget: a search
    that spent all of it on a fresh cut per check (every combination of margins, the most recall within
    the budget) called 8 of 600 new genuine paintings (reports/tried/percut-verdict). With the pooled
    rate of each margin tried; None where the pairs carry no overlay check or no painted collection."""
    if "neg_overlay" not in pairs or "colours" not in margins:
        return None, {}
    fixed = {k: v for k, v in crossfit.items() if k != "seed"}
    tried: dict[float, float] = {}
    for m in (x for x in MARGINS if x <= margins["colours"]):
        k = n = 0
        for seed in range(seeds):
            counts = crossfit_counts(pairs, false_copy, {**margins, "overlay": m}, seed=seed, **fixed)
            k, n = k + counts["colours"][0], n + counts["colours"][1]
        tried[m] = (k + 1) / (n + 1)
        if tried[m] <= share * false_copy:
            return m, tried
    return margins["colours"], tried


def overlay_minima(
    pairs: dict,
    painted: Sequence[str],
    thresholds: dict[str, float],
    colours_min: dict[str, float],
    false_copy: float,
) -> dict[str, float]:
    """Each `painted` collection's `overlay` minimum (app/agreement.py: overlay): the least that keeps its
    distinct tokens, and then those of all of them together, within `false_copy`, counting those its score
    threshold or its `colours_min` calls already; never below `COLOURS_FLOOR`, and none where only a
    value above 1 (never reached) would do: such a collection's tokens are then not pooled either. Empty
    when the pairs carry no overlay check."""
    if "neg_overlay" not in pairs or not painted:
        return {}
    least = np.array([colours_min.get(c, np.inf) for c in pairs["neg_coll"]])
    called = np.nan_to_num(pairs["neg_colours"], nan=-np.inf) >= least
    own = {c: pooled_minimum(pairs, "overlay", [c], thresholds, false_copy, called) for c in painted}
    own = {c: max(v, COLOURS_FLOOR) for c, v in own.items() if v is not None and v <= 1.0}
    pooled = pooled_minimum(pairs, "overlay", list(own), thresholds, false_copy, called)  # as for colours
    if pooled is None or pooled > 1.0:
        return {}
    return {c: float(max(v, pooled)) for c, v in own.items()}


def pr_curve(positives: np.ndarray, negatives: np.ndarray) -> dict[str, list[float]]:
    """Precision and recall over every threshold (equal-weight pairs)."""
    th = np.unique(np.concatenate([positives, negatives]))[::-1]
    tp = np.array([(positives >= t).sum() for t in th], dtype=float)
    fp = np.array([(negatives >= t).sum() for t in th], dtype=float)
    return {
        "threshold": th.tolist(),
        "precision": (tp / np.maximum(tp + fp, 1)).tolist(),
        "recall": (tp / len(positives)).tolist(),
    }


def copy_pairs(
    model: OnnxModel,
    data: list[str],
    label_field: str,
    exclude,
    holdout,
    per_edit: int = 60,
    seed: int = 1,
    views: ViewSet | None = None,
    verify_k: int = 0,
    keypoints: bool = True,
    rule: OverlayRule = OverlayRule("one", BEYOND, lines=True, compact=True),
) -> dict[str, np.ndarray]:
    """Validation pairs for the copy thresholds, scored as the service scores (best of the query's
    `views`).

    Positives: sim(edit(x), x) for validation images x, every edit on a seeded sample.
    Negatives: for each validation image, its highest similarity to any *other* token of its collection in
    the train + val splits (the nearest distinct token: what a genuine new mint meets in the catalog).
    Returns pos, pos_coll, pos_edit, neg, neg_coll; with `verify_k`, also each pair's direct checks
    (app/verify.py) as pos_/neg_layout and pos_/neg_colours (NaN: not checked that way): a positive's
    against its original, a negative's best over its `verify_k` nearest distinct tokens; pos_/neg_lossless
    (bool) where those layout checks saw the sprite's own grid; pos_/neg_overlay (`Check.overlay`: a
    positive's has no other candidate to show its pasted-on region, so it bounds the served one; `rule`:
    app/agreement.py: overlay).
    """
    vpaths, vrows = select_rows(data, "val", label_field, exclude, holdout)
    tpaths, trows = select_rows(data, "train", label_field, exclude, holdout)
    val_rgbs: list[np.ndarray] = []
    val_q = infer(model, vpaths, desc="copy val", views=views, images=val_rgbs)["instance"]
    val = val_q[:, 0] if views else val_q  # view 0 is the image as it is: the catalogued vector
    ref = infer(model, tpaths, desc="copy ref")["instance"]
    vcol = np.array([r["collection"] for r in vrows])
    tcol = np.array([r["collection"] for r in trows])
    vkey = np.array([token_key(r) for r in vrows])
    tkey = np.array([token_key(r) for r in trows])
    refs = ReferenceChecks([*tpaths, *vpaths], model.manifest.preprocessing.background_rgb, keypoints, rule)
    negatives, neg_checks = nearest_distinct(
        val_q,
        vcol,
        vkey,
        val_rgbs,
        np.concatenate([ref, val]),
        np.concatenate([tcol, vcol]),
        np.concatenate([tkey, vkey]),
        refs,
        verify_k,
    )
    rng = np.random.default_rng(seed)
    pos, pos_coll, pos_edit, pos_checks = [], [], [], []
    for e, name in enumerate(EDITS):
        pick = rng.choice(len(vpaths), min(per_edit, len(vpaths)), replace=False)
        rgbs: list[np.ndarray] = []
        edited = infer(
            model,
            [vpaths[i] for i in pick],
            edit_transform(name),
            desc=f"copy {name}",
            seed=seed + e,
            views=views,
            images=rgbs,
        )["instance"]
        for j, i in enumerate(pick):
            pos.append(float(view_similarity(edited[j : j + 1], val[i : i + 1])[0, 0]))
            pos_coll.append(vcol[i])
            pos_edit.append(name)
            pos_checks.append(
                _best_checks(refs.check(rgbs[j], [len(tpaths) + i])) if verify_k else (np.nan,) * 4
            )
    pairs = {
        "pos": np.array(pos),
        "pos_coll": np.array(pos_coll),
        "pos_edit": np.array(pos_edit),
        "neg": negatives,
        "neg_coll": vcol,
    }
    if verify_k:
        pos_c = np.array(pos_checks, dtype=float).T
        pairs.update(
            pos_layout=pos_c[0],
            pos_colours=pos_c[1],
            pos_lossless=pos_c[2] == 1,
            neg_layout=neg_checks[0],
            neg_colours=neg_checks[1],
            neg_lossless=neg_checks[2] == 1,
            pos_overlay=pos_c[3],
            neg_overlay=neg_checks[3],
        )
    return pairs


def nearest_distinct(
    queries: np.ndarray,
    q_coll: np.ndarray,
    q_key: np.ndarray,
    q_rgbs: Sequence[np.ndarray],
    references: np.ndarray,
    r_coll: np.ndarray,
    r_key: np.ndarray,
    checks: ReferenceChecks,
    verify_k: int = 0,
    closest: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's nearest *distinct* token, as a genuine new mint meets the catalog: its best score
    (`view_similarity` of its views, [N, V, D], with the `references`' vectors) over the other tokens of its
    collection (a reference with its own key is not one), and with `verify_k` the best direct checks of its
    `verify_k` nearest (`checks`, indexed as `references`) as [layout, colours, lossless, overlay] rows
    (`_best_checks`; NaN where unchecked). A `closest` array receives, for each query, the reference
    whose `colours` agreed most (-1: none)."""
    negatives = np.full(len(queries), -1.0)
    neg_checks = np.full((4, len(queries)), np.nan)
    for c in tqdm(np.unique(q_coll), desc="copy negatives", leave=False):
        qi, ri = np.flatnonzero(q_coll == c), np.flatnonzero(r_coll == c)
        sims = view_similarity(queries[qi], references[ri])
        sims[q_key[qi][:, None] == r_key[ri][None, :]] = -2.0  # the token itself is not a distinct token
        negatives[qi] = sims.max(1)
        for row, i in enumerate(qi if verify_k else []):
            top = [j for j in top_candidates(sims[row], verify_k) if sims[row, j] > -2.0]
            found = checks.check(q_rgbs[i], ri[top])
            neg_checks[:, i] = _best_checks(found)
            if closest is not None:
                colours = [-1.0 if x.colours is None else x.colours for x in found]
                closest[i] = ri[top[int(np.argmax(colours))]] if max(colours, default=-1.0) >= 0 else -1
    return negatives, neg_checks


def _best_checks(checks: list[Check]) -> tuple[float, float, float, float]:
    """The best layout and colour agreement among checks (NaN where none was checked that way), 1.0
    when every layout check was lossless (its layout alone decides, `app.verify.is_copy`), else 0.0, and
    the best `overlay`."""

    def best(kind: str) -> float:
        return max((getattr(c, kind) for c in checks if getattr(c, kind) is not None), default=np.nan)

    lossless = any(c.layout is not None for c in checks) and all(
        c.lossless for c in checks if c.layout is not None
    )
    return best("layout"), best("colours"), float(lossless), best("overlay")


# -- all together ------------------------------------------------------------------------------------
def calibrate(
    model_dir: str | Path,
    method: str = "mahalanobis",
    false_unknown: float = 0.01,
    false_copy: float = 0.005,
    out: str | Path | None = None,
    copies: bool = True,
    dihedral: bool = True,
    peel: bool = True,
    deskew: bool = True,
    copies_only: bool = False,
    hues: int = 5,
    background: bool = True,
    outliers: list[str] | None = None,
    verify_k: int = Settings.model_fields["copy_verify_k"].default,
    keypoints: bool = Settings.model_fields["copy_keypoints"].default,
    crossfit: bool = True,
    overlay_rule: OverlayRule = OverlayRule("one", BEYOND, lines=True, compact=True),
) -> dict:
    """Fit temperature, open-set detector and copy threshold on validation data; update model.json
    (`copies_only`: only the copy thresholds, e.g. after the query views changed). `outliers`: auxiliary
    outlier datasets whose validation split picks the `multilayer` score's layers. `crossfit`: raise the
    copy cuts by the margins cross-fitting finds they need to keep `false_copy` on new tokens.
    `overlay_rule`: how `overlay` forgives a pasted-on region (app/agreement.py: overlay; witness
    "together" without `beyond`, `lines` or `compact`: the first rule)."""
    from training.reports import plot_pr_curve, plot_reliability

    model_dir = Path(model_dir)
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    m = model.manifest
    tc = m.training.get("config", {})
    data = [d for d in tc.get("data", []) if Path(d, "manifest.csv").is_file()]
    if not data:
        raise FileNotFoundError(f"the training data of {model_dir} ({tc.get('data')}) is not here")
    label_field, exclude, holdout = tc.get("label_field", "label"), tc.get("exclude"), tc.get("holdout")
    out = Path(out or model_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    if not copies_only:  # temperature and the open-set detector (copies_only keeps them as they are)
        vpaths, vrows = select_rows(data, "val", label_field, exclude, holdout)
        keep = [i for i, r in enumerate(vrows) if r["_label"] in m.labels]
        val = infer(model, [vpaths[i] for i in keep], desc="val")
        y = np.array([m.labels.index(vrows[i]["_label"]) for i in keep])
        logits = logits_of(val)

        t = fit_temperature(logits, y) if "logits" in val else 1.0
        before = expected_calibration_error(softmax(logits, 1.0), y)
        after = expected_calibration_error(softmax(logits, t), y)
        m.calibration = Calibration(
            temperature=t, fitted_on="validation split", ece_before=before["ece"], ece_after=after["ece"]
        )
        plot_reliability({"before (T=1)": before, f"after (T={t:.2f})": after}, out / "reliability_val.png")

        stages = stage_names(val)
        if method == "multilayer" and not stages:
            raise ValueError(f"{model_dir} has no stage outputs: run `nftlens stage-stats` first")
        stats = fit_openset_statistics(model, data, label_field, exclude, holdout)
        layers, layer_table = None, {}  # multilayer layers: only for a model with stage outputs
        if stages:
            candidates = ["embedding", *stages]
            layer_spread(stats, candidates, val)
            extra = None
            if outliers:
                opaths, _ = select_rows(outliers, "val", "collection")
                if not opaths:
                    raise ValueError(f"the outlier datasets {outliers} have no val split images")
                extra = infer(model, opaths, desc="outliers (val)")
            layers, layer_table = choose_layers(stats, candidates, val, extra, false_unknown)
        save_statistics(model_dir / STATS_FILE, stats)
        scores = openset_scores(val, stats, t, layers=layers)
        target_tpr = 1 - false_unknown
        thresholds = {k: float(np.quantile(v, target_tpr)) for k, v in scores.items()}
        m.unknown = UnknownDetector(
            method=method,
            threshold=thresholds[method],
            target_tpr=target_tpr,
            temperature=t,
            stats_file=STATS_FILE,
            stats_sha256=sha256_of(model_dir / STATS_FILE),
            layers=layers if method == "multilayer" else [],
            validation={
                "n": len(y),
                "thresholds": thresholds,
                "false_unknown_target": false_unknown,
                **({"multilayer_layers": layers} if layers else {}),
                **({"layer_choice": {"outliers": outliers, "subsets": layer_table}} if layer_table else {}),
            },
        )
        result = {
            "temperature": t,
            "ece_val_before": before["ece"],
            "ece_val_after": after["ece"],
            "openset_thresholds": thresholds,
            **({"multilayer_layers": layers} if layers else {}),
        }
    if m.instance_dim and copies:
        pairs = copy_pairs(
            model,
            data,
            label_field,
            exclude,
            holdout,
            views=ViewSet(dihedral=dihedral, peel=peel, deskew=deskew, background=background, hues=hues),
            verify_k=verify_k,
            keypoints=keypoints,
            rule=overlay_rule,
        )
        margins, expected, judged, overlay_tried = (
            choose_margins(pairs, false_copy) if crossfit else ({}, {}, {}, {})
        )
        chosen = copy_thresholds(pairs, false_copy, margins=margins)
        m.copies = CopyDetector(
            **{k: chosen[k] for k in DETECTOR_FIELDS},
            dihedral=dihedral,
            peel=peel,
            deskew=deskew,
            hues=hues,
            background=background,
            overlay_witness=overlay_rule.witness,
            overlay_beyond=overlay_rule.beyond,
            overlay_lines=overlay_rule.lines,
            overlay_compact=overlay_rule.compact,
            margins=margins,
            crossfit_false_copy=expected,
            crossfit_called={g: list(kn) for g, kn in judged.items()},
            precision=chosen["precision"],
            recall=chosen["recall"],
            target=f"false-copy rate <= {false_copy} per collection on distinct validation tokens"
            + (f", checking the best {verify_k} candidates" if verify_k else ""),
            calibrated_on=f"validation split: {len(pairs['pos'])} edited copies, {len(pairs['neg'])} distinct tokens",
        )
        plot_pr_curve(
            pr_curve(pairs["pos"], pairs["neg"]),
            None,
            out / "copies_pr_val.png",
            "copy score on validation pairs",
        )
        result["copies"] = {
            **chosen,
            "margins": margins,
            # the paintings' cross-fitted rate, pooled over seeds, at each overlay margin tried (overlay_margin)
            "overlay_margin_tried": {str(m): r for m, r in overlay_tried.items()},
            "crossfit_false_copy": expected,
            # the rate that k of n held-out tokens leaves possible (training/intervals.py)
            "crossfit_interval_95": {g: list(clopper_pearson(k, n)) for g, (k, n) in judged.items()},
            "n_positive": len(pairs["pos"]),
            "n_negative": len(pairs["neg"]),
        }
    m.write(model_dir)
    previous = out / "calibration.json"
    if (copies_only or not copies) and previous.is_file():  # keep the part this run did not re-fit
        result = {**json.loads(previous.read_text()), **result}
    previous.write_text(json.dumps(result, indent=2) + "\n")
    return result
