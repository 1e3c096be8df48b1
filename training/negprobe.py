"""Can training tokens stand in for validation tokens as *distinct* tokens in the painted copy cuts?
(a design probe, on training and validation data only)

The painted cuts (`colours_min`, `overlay_min`) sit in the top of the best direct checks that the 100
distinct validation tokens of each collection reach against their nearest 50 tokens
(training/calibrate.py: copy_pairs), too few to place a 0.5 % cut without the cross-fitted margin
(`choose_margins`) that costs recall. The checks compare pixels, which training never saw; but the
candidates come from the instance space, which training drew apart for its own tokens, so a training
token's nearest siblings may be checked less closely, and its checks reach lower. This probe measures
it: the same negatives (`nearest_distinct`) for every validation token of the painted collections and a
seeded sample of training tokens, compared by collection and pooled (quantiles, `tail_scale`, the
two-sample Kolmogorov-Smirnov test, and the pooled 0.5 % cut each gives).

    python -m training.negprobe --out reports/default/negatives-probe
    python -m training.negprobe --rerender      # the summary again from its negatives.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

from app.config import Settings
from app.inference import OnnxModel
from app.manifest import load_manifest
from training.calibrate import _allowed, _score_threshold, nearest_distinct, tail_scale
from training.checking import ReferenceChecks
from training.datasets.select import select_rows, token_key
from training.reports import markdown_table
from training.runner import infer

VALUES = {"score": 0, "colours": 1, "overlay": 2}  # what each negative carries, as columns of `values`


def _rows(data: list[str], split: str, cfg: dict, painted: set[str]) -> tuple[list[Path], list[dict]]:
    paths, rows = select_rows(
        data, split, cfg.get("label_field", "label"), cfg.get("exclude"), cfg.get("holdout")
    )
    keep = [i for i, r in enumerate(rows) if r["collection"] in painted]
    return [paths[i] for i in keep], [rows[i] for i in keep]


def probe(model_dir: str = "models/default", per_collection: int = 100, seed: int = 0) -> dict:
    """The negatives of validation and sampled training tokens of the painted collections ({split:
    {"coll", "values": [[score, colours, overlay], ...], "key", "closest": the sibling whose colours
    agreed most}})."""
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    m = model.manifest
    if m.copies is None or not m.copies.colours_min:
        raise ValueError(f"{model_dir} has no painted copy cuts (model.json copies.colours_min)")
    painted = set(m.copies.colours_min)
    cfg = m.training.get("config", {})
    data = [d for d in cfg.get("data", []) if Path(d, "manifest.csv").is_file()]
    vpaths, vrows = _rows(data, "val", cfg, painted)
    tpaths, trows = _rows(data, "train", cfg, painted)
    rng = np.random.default_rng(seed)
    sample = sorted(
        int(i)
        for c in sorted(painted)
        for i in rng.permutation([j for j, r in enumerate(trows) if r["collection"] == c])[:per_collection]
    )
    ref = np.concatenate(
        [infer(model, tpaths, desc="train")["instance"], infer(model, vpaths, desc="val")["instance"]]
    )
    r_coll = np.array([r["collection"] for r in [*trows, *vrows]])
    r_key = np.array([token_key(r) for r in [*trows, *vrows]])
    checks = ReferenceChecks(
        [*tpaths, *vpaths],
        m.preprocessing.background_rgb,
        Settings().copy_keypoints,
        m.copies.overlay_rule,
    )
    out = {}
    for split, paths, rows in (
        ("val", vpaths, vrows),
        ("train", [tpaths[i] for i in sample], [trows[i] for i in sample]),
    ):
        rgbs: list[np.ndarray] = []
        q = infer(model, paths, desc=f"{split} queries", views=m.copies.views, images=rgbs)["instance"]
        coll, keys = np.array([r["collection"] for r in rows]), np.array([token_key(r) for r in rows])
        closest = np.full(len(rows), -1)
        neg, best = nearest_distinct(
            q, coll, keys, rgbs, ref, r_coll, r_key, checks, Settings().copy_verify_k, closest
        )  # fmt: skip
        out[split] = {
            "coll": coll.tolist(),
            "values": np.stack([neg, best[1], best[3]], 1).tolist(),
            "key": keys.tolist(),
            "closest": [str(r_key[j]) if j >= 0 else None for j in closest],  # the best colours' sibling
        }
    return out


def summarise(found: dict, false_copy: float = 0.005) -> dict:
    """By value (score, colours, overlay): per collection and pooled, each split's n, 95th and 99th
    percentiles, maximum and `tail_scale`; pooled, the KS test and the 0.5 % cut of each split and of both."""
    table: dict = {}
    for name, col in VALUES.items():
        split_values = {s: (np.array(f["coll"]), np.array(f["values"])[:, col]) for s, f in found.items()}
        rows = []
        for c in [*sorted(set(found["val"]["coll"])), "pooled"]:
            row = {"collection": c}
            for s, (coll, v) in split_values.items():
                v = v[(coll == c) if c != "pooled" else slice(None)]
                v = v[np.isfinite(v)]
                row[f"{s} n"] = len(v)
                for label, q in (("p95", 95), ("p99", 99)):
                    row[f"{s} {label}"] = float(np.percentile(v, q)) if len(v) else float("nan")
                row[f"{s} max"] = float(v.max()) if len(v) else float("nan")
                row[f"{s} tail"] = tail_scale(v)
            rows.append(row)
        val, train = (v[np.isfinite(v)] for _, v in (split_values["val"], split_values["train"]))
        test = ks_2samp(val, train)
        cuts = {
            split: _score_threshold(v, _allowed(len(v), false_copy))
            for split, v in (("val", val), ("train", train), ("both", np.concatenate([val, train])))
        }
        table[name] = {
            "rows": rows,
            "ks": {"statistic": float(test.statistic), "pvalue": float(test.pvalue)},
            "cuts": cuts,
        }
    return table


def near_copies(found: dict, at: float = 0.99) -> list[dict]:
    """The distinct tokens whose best `colours` reach `at`, with the sibling that agreed most (when the
    probe recorded it): candidates for a look at what the colour check cannot tell from a copy."""
    return [
        {"split": split, "token": key, "sibling": sibling, "score": v[0], "colours": v[1]}
        for split, f in found.items()
        if "key" in f  # recorded since the probe kept them
        for key, sibling, v in zip(f["key"], f["closest"], f["values"], strict=True)
        if v[1] is not None and v[1] >= at
    ]


def render(
    summary: dict, model_dir: str, per_collection: int, shipped: dict[str, float], near: list[dict]
) -> str:
    lines = [
        "# Training tokens as distinct tokens for the painted copy cuts (design probe)",
        "",
        f"`python -m training.negprobe --model {model_dir} --per-collection {per_collection}`: every "
        "validation token of the painted collections and a seeded sample of training tokens, each against "
        "its nearest distinct tokens among the training and validation tokens, scored and checked as "
        "`nftlens calibrate` does (training/calibrate.py: nearest_distinct). A training token's checks "
        "reaching lower than a validation token's would make cuts fitted on them too low for new tokens.",
        "",
        "The pooled 0.5 % cut (the least value above all but 0.5 % of the tokens; no margin) of each set, "
        "beside the shipped pooled minimum (model.json, after the cross-fitted margin):",
        "",
        markdown_table(
            [
                {
                    "value": name,
                    **{f"cut on {k}": v for k, v in t["cuts"].items()},
                    "shipped": shipped.get(name),
                }
                for name, t in summary.items()
            ],
            ["value", "cut on val", "cut on train", "cut on both", "shipped"],
        ),
    ]
    for name, t in summary.items():
        ks = t["ks"]
        lines += [
            "",
            f"## {name}",
            "",
            f"Pooled, validation vs training: Kolmogorov-Smirnov statistic {ks['statistic']:.3f}, "
            f"p = {ks['pvalue']:.3g}.",
            "",
            markdown_table(t["rows"], list(t["rows"][0])),
        ]
    lines += [
        "",
        "## Distinct tokens at `colours` 0.99 or more",
        "",
        "Each with the sibling whose colours agreed most (`score`: the token's best instance score over its "
        "collection):",
        "",
        markdown_table(near, ["split", "token", "sibling", "score", "colours"]) if near else "None.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--per-collection", type=int, default=100, help="training tokens sampled per collection")
    ap.add_argument("--out", type=Path, default=Path("reports/default/negatives-probe"))
    ap.add_argument("--rerender", action="store_true", help="summarise the negatives.json in --out again")
    args = ap.parse_args(argv)
    saved = args.out / "negatives.json"
    found = (
        json.loads(saved.read_text())["negatives"]
        if args.rerender
        else probe(args.model, args.per_collection)
    )
    summary = summarise(found)
    copies = load_manifest(args.model).copies
    shipped = {"colours": min(copies.colours_min.values(), default=None)}
    if copies.overlay_min:
        shipped["overlay"] = min(copies.overlay_min.values())
    args.out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"negatives": found, "summary": summary}) + "\n")
    near = near_copies(found)
    (args.out / "NEGATIVES.md").write_text(render(summary, args.model, args.per_collection, shipped, near))
    print((args.out / "NEGATIVES.md").read_text())


if __name__ == "__main__":
    main()
