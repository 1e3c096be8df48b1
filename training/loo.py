"""Leave-one-collection-out evaluation of the open-set scores.

For each held-out collection: train the shipped recipe without it (fewer epochs for the CPU budget; the
count is recorded), export, calibrate on the run's own validation data (the threshold keeps
1 - `false_unknown` of known validation images known), then score the known collections' unseen test
images and every image of the held-out collection. Reports, per held-out collection and per score
(max-probability, energy, Mahalanobis, k-NN): AUROC, the false-unknown rate at a 95 % catch rate, and the
flagged shares at the validation threshold. `alien_frens` (never in any training set) is scored with the
shipped model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.inference import OnnxModel
from app.manifest import ModelManifest, load_manifest
from app.openset import OpenSetScorer
from training.calibrate import calibrate, openset_scores
from training.datasets.select import select_spec_rows
from training.metrics import auroc
from training.reports import markdown_table, plot_grouped_bars
from training.runner import infer

KNOWN_TEST = ["data/nft-collections@all", "data/cryptopunks@test", "data/nouns@test", "data/nft-thumbs@test"]
UNKNOWN_SOURCES = ["data/nft-thumbs", "data/cryptopunks", "data/nouns", "data/nft-collections"]


def fpr_at_tpr(unknown: np.ndarray, known: np.ndarray, tpr: float = 0.95) -> float:
    """Share of known images flagged when the threshold catches `tpr` of the unknown ones."""
    threshold = np.quantile(unknown, 1 - tpr)
    return float((known >= threshold).mean())


def score_open_set(
    model_dir: Path, unknown_collections: set[str], max_unknown: int = 1000, seed: int = 0
) -> dict:
    """Every open-set score of a calibrated model on known test images vs the unknown collections."""
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    m = model.manifest
    kp, kr = select_spec_rows(KNOWN_TEST, label_field="collection", skip_missing=True)
    known_paths = [
        p for p, r in zip(kp, kr, strict=True) if r["collection"] in m.labels and r.get("hires", "0") != "1"
    ]
    up, ur = select_spec_rows(UNKNOWN_SOURCES, label_field="collection", skip_missing=True)
    unknown_paths = [p for p, r in zip(up, ur, strict=True) if r["collection"] in unknown_collections]
    if len(unknown_paths) > max_unknown:
        rng = np.random.default_rng(seed)
        unknown_paths = [
            unknown_paths[i] for i in sorted(rng.choice(len(unknown_paths), max_unknown, replace=False))
        ]
    t = m.calibration.temperature if m.calibration else 1.0
    with np.load(model_dir / m.unknown.stats_file) as f:
        stats = dict(f)
    ko, uo = infer(model, known_paths, desc="known"), infer(model, unknown_paths, desc="unknown")
    layers = m.unknown.validation.get("multilayer_layers")
    ks, us = (openset_scores(o, stats, t, m.unknown.k, layers) for o in (ko, uo))
    thresholds = m.unknown.validation["thresholds"]
    per_method = {
        name: {
            "auroc": auroc(us[name], ks[name]),
            "false_unknown_at_95_catch": fpr_at_tpr(us[name], ks[name]),
            "known_flagged": float((ks[name] > thresholds[name]).mean()),
            "unknown_flagged": float((us[name] > thresholds[name]).mean()),
        }
        for name in ks
    }
    shipped = OpenSetScorer(m.unknown, model_dir)  # the sidecar check the service does
    outliers, edited = _outlier_training(m)
    return {
        "model": f"{m.name}@{m.version}",
        "outliers": outliers,  # what it trained on, resumed or not
        "outlier_edits": edited,
        "n_known": len(known_paths),
        "n_unknown": len(unknown_paths),
        "shipped_method": shipped.detector.method,
        "per_method": per_method,
    }


def has_alien_frens() -> bool:
    """Whether the never-trained-on `alien_frens` images are here (the nft-collections sample)."""
    _, rows = select_spec_rows(UNKNOWN_SOURCES, label_field="collection", skip_missing=True)
    return any(r["collection"] == "alien_frens" for r in rows)


def leave_one_out(
    config: Path,
    collections: list[str],
    epochs: int,
    runs: Path = Path("runs/loo"),
    out: Path = Path("reports/openset"),
    shipped_model: Path = Path("models/default"),
    false_unknown: float = 0.01,
    outliers: list[str] | None = None,
    outlier_check: list[str] | None = None,
    outlier_edits: bool = False,
) -> dict:
    """Train/export/calibrate one model per held-out collection (skipping finished ones), score them all.

    `outliers`: auxiliary outlier datasets every held-out model trains on (outlier exposure);
    `outlier_check`: those whose val split picks the multilayer score's layers (`calibrate --outliers`);
    `outlier_edits`: whether the outliers get the known images' edits (`TrainConfig.outlier_edits`).
    `alien_frens` is scored by every held-out model too (none trained on it) and by the shipped model.
    """
    from training.export import export
    from training.stagestats import add_stage_statistics
    from training.train import gather, load_config, train

    if outlier_edits and not outliers:
        raise ValueError("outlier_edits needs outliers to edit: pass the outlier datasets too")
    base = load_config(config)
    report: dict = {
        "config": str(config),
        "epochs": epochs,
        "false_unknown_target": false_unknown,
        "held_out": {},
    }
    aliens = has_alien_frens()  # read the dataset manifests once, not once per held-out model
    if (shipped_model / "model.json").is_file() and aliens:
        report["held_out"]["alien_frens (shipped model)"] = score_open_set(shipped_model, {"alien_frens"})
    for c in collections:
        run = runs / c
        model_dir = run / "model"
        if (model_dir / "model.json").is_file():
            _check_resumed(model_dir, outliers or [], outlier_edits)
        else:
            cfg = base.model_copy(
                update={
                    "exclude": {**base.exclude, "collection": [*base.exclude.get("collection", []), c]},
                    "epochs": epochs,
                    "out": str(run),
                    "name": f"loo-{c}",
                    **({"outliers": outliers, "outlier_edits": outlier_edits} if outliers else {}),
                }
            )
            best = train(cfg)
            paths, *_ = gather(cfg, "test")
            export(
                best,
                model_dir,
                paths[:: max(1, len(paths) // 16)][:16],
                command=f"nftlens loo --config {config}",
            )
            add_stage_statistics(model_dir)
            calibrate(
                model_dir,
                method="multilayer",
                false_unknown=false_unknown,
                copies=False,
                out=run / "report",
                outliers=outlier_check,
            )
        report["held_out"][c] = score_open_set(model_dir, {c})
        if aliens:
            report["held_out"][f"alien_frens (model without {c})"] = score_open_set(
                model_dir, {"alien_frens"}
            )
        write_report(report, out)  # after every held-out model: a long run stopped midway keeps its rows
    return report


def _outlier_training(m: ModelManifest) -> tuple[list[str], bool]:
    """The outlier datasets a model trained on and whether they were edited (runs from before
    `outlier_edits` existed trained on unedited outliers)."""
    trained = m.training.get("config", {})
    return list(trained.get("outliers", [])), bool(trained.get("outlier_edits", False))


def _check_resumed(model_dir: Path, outliers: list[str], outlier_edits: bool) -> None:
    """Refuse to reuse a finished held-out model trained otherwise than asked (another `--runs` keeps
    both)."""
    had = _outlier_training(load_manifest(model_dir))
    if had != (list(outliers), outlier_edits):
        raise ValueError(
            f"{model_dir} was trained with outliers={had[0]}, outlier_edits={had[1]}, not "
            f"outliers={outliers}, outlier_edits={outlier_edits}: pass another --runs folder"
        )


def write_report(report: dict, out: Path) -> None:
    """openset.json, OPENSET.md and the AUROC plot of the rows so far."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "openset.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "OPENSET.md").write_text(render_markdown(report))
    methods = list(dict.fromkeys(m for v in report["held_out"].values() for m in v["per_method"]))
    plot_grouped_bars(
        {  # a model calibrated before a score existed has no figure for it: the bar is left out
            meth: {
                c: v["per_method"][meth]["auroc"]
                for c, v in report["held_out"].items()
                if meth in v["per_method"]
            }
            for meth in methods
        },
        out / "auroc_by_heldout.png",
        "unknown-collection AUROC per held-out collection and score",
        "AUROC",
    )


def render_markdown(r: dict) -> str:
    lines = [
        "# Unknown-collection detection: leave one collection out",
        "",
        f"Each model: `{r['config']}` without the held-out collection, {r['epochs']} epochs; the threshold keeps "
        f"{1 - r['false_unknown_target']:.3f} of known *validation* images known. Known test images: "
        f"{', '.join(KNOWN_TEST)} (the held-out collection removed); unknown: every image of the held-out "
        "collection (up to 1,000).",
        "",
    ]
    trained_on = {
        c: v["outliers"] for c, v in r["held_out"].items() if v.get("outliers") and "shipped" not in c
    }
    if trained_on:
        sets = sorted({d for v in trained_on.values() for d in v})
        edited = [bool(r["held_out"][c].get("outlier_edits")) for c in trained_on]
        how = (
            "copy-edited as known views are"
            if all(edited)
            else "edited in some runs"
            if any(edited)
            else "unedited"
        )
        lines += [
            f"Outlier exposure: the models without {', '.join(c for c in trained_on if '(' not in c)} also "
            f"trained on {', '.join(sets)} with a uniform target (none of them is a collection scored here), "
            f"the outliers {how}.",
            "",
        ]
    rows = []
    for c, v in r["held_out"].items():
        for meth, s in v["per_method"].items():
            rows.append(
                {
                    "held out": c,
                    "score": meth + (" (shipped)" if meth == v["shipped_method"] else ""),
                    "AUROC": s["auroc"],
                    "false unknown @95% catch": s["false_unknown_at_95_catch"],
                    "known flagged @val threshold": s["known_flagged"],
                    "held-out flagged @val threshold": s["unknown_flagged"],
                }
            )
    lines.append(markdown_table(rows, list(rows[0])))
    lines += ["", "![AUROC by held-out collection](auroc_by_heldout.png)"]
    return "\n".join(lines) + "\n"
