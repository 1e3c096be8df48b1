"""Evaluate an exported model (ONNX Runtime, exactly what ships) on standard datasets.

Writes into a report folder: metrics.json, report.md, confusion.png, similarity.png, robustness.png
(and denoise.png with `denoise_sweep`), and records the headline figures in the model's manifest.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from app.denoiser import DENOISER_MANIFEST, autoencoder_config
from app.inference import OnnxModel, logits_of
from app.openset import OpenSetScorer, softmax
from training.calibrate import expected_calibration_error, openset_scores
from training.datasets.select import select_spec_rows
from training.degrade import CORRUPTIONS
from training.metrics import auroc, classification_report, precision_at_k
from training.reports import (
    markdown_table,
    plot_confusion,
    plot_grouped_bars,
    plot_reliability,
    plot_similarity,
)
from training.runner import infer

SWEEP_CORRUPTIONS = ("clean", "gauss_sigma25", "salt_pepper_2pct", "jpeg_q10")
DENOISE_METHODS = ("none", "median", "gaussian", "bilateral", "nlmeans")


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


def evaluate(
    model_dir: str | Path,
    data: list[str],
    label_field: str = "label",
    split: str = "test",
    out: str | Path | None = None,
    robustness: bool = True,
    denoise_sweep: bool = False,
    update_manifest: bool = True,
    denoiser: str | Path | None = None,
) -> dict:
    """Classification, robustness, embedding quality, duplicate retrieval and unknown detection; the
    denoise sweep also swaps in the learned denoiser in `denoiser` (a folder with denoiser.json) if any."""
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    cfg, labels = model.manifest.preprocessing, model.labels
    out = Path(out or Path(model_dir) / "report")
    out.mkdir(parents=True, exist_ok=True)
    paths, rows = select_spec_rows(data, split, label_field)
    if not rows:
        raise ValueError(f"no rows in split {split!r} of {data}")
    index = {lab: i for i, lab in enumerate(labels)}
    outputs = infer(model, paths, desc="clean")
    emb, logits = outputs["embedding"], logits_of(outputs)
    temperature = model.manifest.calibration.temperature if model.manifest.calibration else 1.0
    probs = softmax(logits, temperature)
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
    raw = expected_calibration_error(softmax(logits[primary], 1.0), y_true[primary])
    cal = expected_calibration_error(probs[primary], y_true[primary])
    result["calibration"] = {"temperature": temperature, "ece_before": raw["ece"], "ece_after": cal["ece"]}
    plot_reliability(
        {"T=1 (uncalibrated)": raw, f"T={temperature:.2f} (served)": cal},
        out / "reliability.png",
        f"reliability on {split} ({int(primary.sum())} images)",
    )
    det = model.manifest.unknown
    if det is not None:
        scorer = OpenSetScorer(det, model_dir)
        shipped = scorer.score(outputs)
        result["unknown"] = {
            "method": det.method,
            "threshold": det.threshold,
            "known_flagged_rate": float((shipped[known] > det.threshold).mean()),
            "n_known": int(known.sum()),
        }
        if (~known).any():
            result["unknown"].update(
                labels=sorted({r["_label"] for r, k in zip(rows, known, strict=True) if not k}),
                n_unknown=int((~known).sum()),
                unknown_flagged_rate=float((shipped[~known] > det.threshold).mean()),
                auroc=auroc(shipped[~known], shipped[known]),
            )
            stats_path = Path(model_dir) / (det.stats_file or "")
            if det.stats_file and stats_path.is_file():
                with np.load(stats_path) as stats:
                    layers = det.validation.get("multilayer_layers")
                    all_scores = openset_scores(outputs, dict(stats), temperature, det.k, layers)
                result["unknown"]["auroc_by_method"] = {
                    k: auroc(v[~known], v[known]) for k, v in all_scores.items()
                }
    known_paths = [p for p, m in zip(paths, primary, strict=True) if m]  # what robustness/sweep re-run
    if robustness:
        rob = {}
        for name, fn in CORRUPTIONS.items():
            pr = (
                probs[primary]
                if name == "clean"
                else infer(model, known_paths, fn, desc=name)["probabilities"]
            )
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
        methods = {m: cfg.denoise.model_copy(update={"method": m}) for m in DENOISE_METHODS}
        if denoiser is not None and (Path(denoiser) / DENOISER_MANIFEST).is_file():
            methods["autoencoder"] = autoencoder_config(denoiser, model_dir)
            result["denoiser"] = {"dir": str(denoiser), "sha256": methods["autoencoder"].model_sha256}
        sweep: dict[str, dict[str, float]] = {}
        for method, denoise in methods.items():
            swept = cfg.model_copy(update={"denoise": denoise})
            sweep[method] = {}
            for name in SWEEP_CORRUPTIONS:
                if name == "clean" and swept == cfg:  # the clean pass above
                    pr = probs[primary]
                else:
                    pr = infer(model, known_paths, CORRUPTIONS[name], swept, desc=f"{method}/{name}")[
                        "probabilities"
                    ]
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
            "ece": result["calibration"]["ece_after"],
            **{
                f"unknown_{k}": v
                for k, v in result.get("unknown", {}).items()
                if k in ("auroc", "known_flagged_rate", "unknown_flagged_rate")
            },
        }
        m.robustness = {k: round(v["macro_f1"], 4) for k, v in rob.items()}
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
    cal = r["calibration"]
    lines.append(
        f"- calibration: ECE {cal['ece_before']:.4f} at T=1, **{cal['ece_after']:.4f}** at the served T={cal['temperature']:.3f}"
    )
    if r.get("unknown"):
        u = r["unknown"]
        line = f"- unknown flag (`{u['method']}`, threshold {u['threshold']:.4g}): **{u['known_flagged_rate']:.4f}** of {u['n_known']} known images flagged"
        if "labels" in u:
            line += f"; {u['unknown_flagged_rate']:.4f} of {u['n_unknown']} images of {', '.join(u['labels'])} flagged, AUROC {u['auroc']:.4f}"
        lines.append(line)
        if u.get("auroc_by_method"):
            lines.append(
                "- unknown AUROC by score: "
                + ", ".join(f"{k} {v:.4f}" for k, v in u["auroc_by_method"].items())
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
    lines += ["", "![confusion](confusion.png) ![similarity](similarity.png) ![reliability](reliability.png)"]
    return "\n".join(lines) + "\n"
