"""Evaluate an exported model (ONNX Runtime, exactly what ships) on standard datasets.

Writes into a report folder: metrics.json, report.md, confusion.png, similarity.png, robustness.png
(and denoise.png with `denoise_sweep`), and records the headline figures in the model's manifest.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.imaging import decode_image
from app.inference import OnnxModel
from app.manifest import UnknownDetector
from app.preprocessing import PreprocessConfig, preprocess
from training.datasets import load_dataset
from training.degrade import CORRUPTIONS, Degrade
from training.metrics import auroc, classification_report, precision_at_k
from training.reports import markdown_table, plot_confusion, plot_grouped_bars, plot_similarity

SWEEP_CORRUPTIONS = ("gauss_sigma25", "salt_pepper_2pct", "jpeg_q10")
DENOISE_METHODS = ("none", "median", "gaussian", "bilateral", "nlmeans")


def run_model(
    model: OnnxModel,
    paths: list[Path],
    cfg: PreprocessConfig,
    corruption: Degrade | None = None,
    batch: int = 64,
    desc: str = "infer",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and embeddings for image files, optionally corrupted after decoding."""
    probs, embs = [], []
    for start in tqdm(range(0, len(paths), batch), desc=desc, leave=False):
        xs = []
        for i, p in enumerate(paths[start : start + batch]):
            rgb = decode_image(Path(p).read_bytes(), cfg.background_rgb)
            if corruption is not None:
                rgb = corruption(rgb, np.random.default_rng((seed, start + i)))
            xs.append(preprocess(rgb, cfg))
        pr, em = model.run(np.stack(xs))
        probs.append(pr)
        embs.append(em)
    return np.concatenate(probs), np.concatenate(embs)


def _rows(
    data: list[str], split: str, label_field: str, exclude: dict | None = None
) -> tuple[list[Path], list[dict]]:
    paths, rows = [], []
    for root in data:
        ds = load_dataset(root)
        for r in ds.rows if split == "all" else ds.split(split):
            if exclude and any(r.get(c) in v for c, v in exclude.items()):
                continue
            paths.append(ds.image_path(r))
            rows.append({**r, "_label": r[label_field]})
    return paths, rows


def group_similarity(emb: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, list[str], dict[str, float]]:
    """Mean cosine similarity between every pair of groups, and the within/across summary."""
    names = sorted(set(groups.tolist()))
    means = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        ea = emb[groups == a]
        for j, b in enumerate(names):
            eb = emb[groups == b]
            sims = ea @ eb.T
            if a == b:
                n = len(ea)
                means[i, j] = (sims.sum() - n) / max(n * (n - 1), 1)
            else:
                means[i, j] = sims.mean()
    off = ~np.eye(len(names), dtype=bool)
    return means, names, {"within": float(np.diag(means).mean()), "across": float(means[off].mean())}


def duplicate_pairs_top1(emb: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """Rows sharing collection+token_id (e.g. a thumbnail and its hi-res original): is the other the top-1?"""
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_key[(r["collection"], r["token_id"])].append(i)
    members = [idx for idx in by_key.values() if len(idx) == 2]
    if not members:
        return {}
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    top1 = sims.argmax(1)
    found = sum(int(top1[a] == b) + int(top1[b] == a) for a, b in members)
    return {
        "pairs": len(members),
        "queries": 2 * len(members),
        "top1_found": found,
        "top1_rate": found / (2 * len(members)),
    }


def calibrate_unknown(model: OnnxModel, target_tpr: float = 0.95) -> UnknownDetector | None:
    """Threshold on `1 - max prob` that keeps `target_tpr` of the training data's validation images known."""
    train_cfg = model.manifest.training.get("config", {})
    data = [d for d in train_cfg.get("data", []) if Path(d, "manifest.csv").is_file()]
    if not data:
        return None
    paths, _ = _rows(data, "val", train_cfg.get("label_field", "label"), train_cfg.get("exclude"))
    probs, _ = run_model(model, paths, model.manifest.preprocessing, desc="calibrate")
    return UnknownDetector(threshold=float(np.quantile(1 - probs.max(1), target_tpr)), target_tpr=target_tpr)


def evaluate(
    model_dir: str | Path,
    data: list[str],
    label_field: str = "label",
    split: str = "test",
    out: str | Path | None = None,
    robustness: bool = True,
    denoise_sweep: bool = False,
    update_manifest: bool = True,
) -> dict:
    """Classification, robustness, embedding quality, duplicate retrieval and unknown detection."""
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    cfg, labels = model.manifest.preprocessing, model.labels
    out = Path(out or Path(model_dir) / "report")
    out.mkdir(parents=True, exist_ok=True)
    paths, rows = _rows(data, split, label_field)
    if not rows:
        raise ValueError(f"no rows in split {split!r} of {data}")
    index = {lab: i for i, lab in enumerate(labels)}
    probs, emb = run_model(model, paths, cfg, desc="clean")
    known = np.array([r["_label"] in index for r in rows])
    primary = known & np.array([r.get("hires", "0") != "1" for r in rows])
    y_true = np.array([index.get(r["_label"], -1) for r in rows])
    report = classification_report(y_true[primary], probs[primary].argmax(1), labels)
    present = [lab for lab in labels if lab in report["per_class"]]
    plot_confusion(
        report["confusion_matrix"],
        labels,
        out / "confusion.png",
        f"{model.manifest.name} on {split} ({report['n']} images)",
    )

    groups = np.array([r["collection"] for r in rows])
    no_dup = np.array([r.get("hires", "0") != "1" for r in rows])
    sim, names, sim_summary = group_similarity(emb[no_dup], groups[no_dup])
    plot_similarity(
        sim,
        names,
        out / "similarity.png",
        "mean cosine similarity of embeddings (within vs across collections)",
    )
    result: dict = {
        "model": {"name": model.manifest.name, "version": model.manifest.version, "dir": str(model_dir)},
        "data": data,
        "split": split,
        "label_field": label_field,
        "clean": report,
        "retrieval": {
            "precision_at_10_label": precision_at_k(emb[primary], y_true[primary], 10),
            "precision_at_10_collection": precision_at_k(emb[no_dup], groups[no_dup], 10),
        },
        "similarity": {**sim_summary, "groups": names, "matrix": sim.round(4).tolist()},
        "duplicates": duplicate_pairs_top1(emb, rows),
    }
    detector = calibrate_unknown(model)
    if (~known).any():
        score = 1 - probs.max(1)
        result["unknown"] = {
            "labels": sorted({r["_label"] for r, k in zip(rows, known, strict=True) if not k}),
            "auroc_max_probability": auroc(score[~known], score[known]),
            "n_unknown": int((~known).sum()),
            "n_known": int(known.sum()),
        }
        if detector:
            result["unknown"]["threshold"] = detector.threshold
            result["unknown"]["unknown_flagged_rate"] = float((score[~known] > detector.threshold).mean())
            result["unknown"]["known_flagged_rate"] = float((score[known] > detector.threshold).mean())
    known_paths = [p for p, m in zip(paths, primary, strict=True) if m]  # what robustness/sweep re-run
    if robustness:
        rob = {}
        for name, fn in CORRUPTIONS.items():
            pr = probs[primary] if name == "clean" else run_model(model, known_paths, cfg, fn, desc=name)[0]
            r = classification_report(y_true[primary], pr.argmax(1), labels)
            rob[name] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
        result["robustness"] = rob
        plot_grouped_bars(
            {
                "macro-F1": {k: v["macro_f1"] for k, v in rob.items()},
                "accuracy": {k: v["accuracy"] for k, v in rob.items()},
            },
            out / "robustness.png",
            f"{model.manifest.name}: robustness",
            "score",
        )
    if denoise_sweep:
        sweep: dict[str, dict[str, float]] = {}
        for method in DENOISE_METHODS:
            swept = cfg.model_copy(update={"denoise": cfg.denoise.model_copy(update={"method": method})})
            sweep[method] = {}
            for name in SWEEP_CORRUPTIONS:
                pr = run_model(model, known_paths, swept, CORRUPTIONS[name], desc=f"{method}/{name}")[0]
                sweep[method][name] = classification_report(y_true[primary], pr.argmax(1), labels)["macro_f1"]
        result["denoise_sweep"] = sweep
        plot_grouped_bars(sweep, out / "denoise.png", "macro-F1 by test-time denoise method", "macro-F1")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(result, present))
    if update_manifest:
        m = model.manifest
        rob = result.get("robustness", {})
        m.metrics["test"] = {
            "data": [Path(d).name for d in data],
            "split": split,
            "n": report["n"],
            "accuracy": report["accuracy"],
            "macro_f1": report["macro_f1"],
            **{f"{k}_macro_f1": v["macro_f1"] for k, v in rob.items() if k != "clean"},
            "precision_at_10": result["retrieval"]["precision_at_10_collection"],
            **({"duplicate_top1_rate": result["duplicates"]["top1_rate"]} if result["duplicates"] else {}),
            **({"unknown_auroc": result["unknown"]["auroc_max_probability"]} if "unknown" in result else {}),
        }
        m.robustness = {k: round(v["macro_f1"], 4) for k, v in rob.items()}
        if detector:
            m.unknown = detector
        m.write(Path(model_dir))
    return result


def render_markdown(r: dict, present: list[str]) -> str:
    c = r["clean"]
    lines = [
        f"# Evaluation: {r['model']['name']} {r['model']['version']}",
        "",
        f"Data: {', '.join(r['data'])} (split `{r['split']}`, label `{r['label_field']}`), {c['n']} images.",
        "",
        f"- accuracy **{c['accuracy']:.4f}**, macro-F1 **{c['macro_f1']:.4f}**, macro precision {c['macro_precision']:.4f}, macro recall {c['macro_recall']:.4f}",
        f"- retrieval precision@10: same label {r['retrieval']['precision_at_10_label']:.4f}, same collection {r['retrieval']['precision_at_10_collection']:.4f}",
        f"- embedding cosine similarity: within collection {r['similarity']['within']:.3f}, across {r['similarity']['across']:.3f}",
    ]
    if r.get("duplicates"):
        d = r["duplicates"]
        lines.append(
            f"- duplicate pairs found as top-1 neighbour: {d['top1_found']}/{d['queries']} ({d['top1_rate']:.3f})"
        )
    if r.get("unknown"):
        u = r["unknown"]
        lines.append(
            f"- unknown detection ({', '.join(u['labels'])}): AUROC {u['auroc_max_probability']:.4f} (score = 1 - max probability)"
        )
    lines += [
        "",
        "## Per class",
        "",
        markdown_table(
            [{"label": k, **v} for k, v in c["per_class"].items()],
            ["label", "precision", "recall", "f1", "support"],
        ),
    ]
    if r.get("robustness"):
        lines += [
            "",
            "## Robustness",
            "",
            markdown_table(
                [{"corruption": k, **v} for k, v in r["robustness"].items()],
                ["corruption", "accuracy", "macro_f1"],
            ),
        ]
    if r.get("denoise_sweep"):
        cols = list(next(iter(r["denoise_sweep"].values())))
        lines += [
            "",
            "## Test-time denoise method (macro-F1)",
            "",
            markdown_table([{"denoise": k, **v} for k, v in r["denoise_sweep"].items()], ["denoise", *cols]),
        ]
    lines += ["", "![confusion](confusion.png) ![similarity](similarity.png)"]
    return "\n".join(lines) + "\n"
