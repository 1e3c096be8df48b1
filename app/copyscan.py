"""Bulk copy scan: check a folder of images (a new collection before it lists) against the catalog.

Batched inference and a progress bar, like `catalog index`; writes a CSV (one row per image: the best
match, its score and the verdict) and a Markdown summary a reviewer reads first.
"""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.catalog import Catalog, SearchFilter, best_per_token
from app.config import Settings
from app.imaging import IMAGE_SUFFIXES
from app.indexing import safe_prepare
from app.inference import OnnxModel
from app.keypoints import FeatureCache
from app.preprocessing import preprocess_batch
from app.verify import Check, catalog_lookup, is_copy, rank_by_checks

CSV_COLUMNS = ("query", "best_collection", "best_token_id", "score", "is_copy", "exact", "error")


def scan_folder(
    model: OnnxModel,
    catalog: Catalog,
    folder: Path,
    out: Path,
    collections: set[str] | None = None,
    batch: int = 64,
    threads: int = 4,
    verify_k: int = 50,
    keypoints: bool = True,
    features_cache: int = Settings.model_fields["copy_features_cache"].default,
) -> dict:
    """Scan every image in `folder` (recursively); write `out`/copies.csv and `out`/SUMMARY.md. As in
    `POST /copies`, the best `verify_k` candidates are checked against the image (app/verify.py; keypoints
    for paintings with `keypoints`, those of up to `features_cache` candidates kept between images) for the
    best match, and the verdict is the service's (`is_copy`: a score over its threshold, or a check over
    its collection's minimum)."""
    m = model.manifest
    if not m.instance_dim or m.copies is None:
        raise ValueError(f"model {m.name}@{m.version} has no instance head or copy threshold")
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    out.mkdir(parents=True, exist_ok=True)
    detector, views = m.copies, m.copies.views
    background = m.preprocessing.background_rgb
    flt = SearchFilter(collections=collections)

    def embed(images: list[np.ndarray]) -> np.ndarray:  # crop completions (app/verify.py)
        return model.run(preprocess_batch(images, m.preprocessing))["instance"]

    cache = FeatureCache(features_cache)  # a folder's images share many candidates
    rows: list[dict] = []
    with ThreadPoolExecutor(threads) as pool, tqdm(total=len(files), desc="copies scan", unit="img") as bar:
        for start in range(0, len(files), batch):
            chunk = files[start : start + batch]
            prepared = list(pool.map(lambda p: safe_prepare(p.read_bytes(), m.preprocessing, views), chunk))
            ok = [i for i, t in enumerate(prepared) if t is not None]
            inst = None
            if ok:
                x = np.concatenate([prepared[i][0] for i in ok])
                inst = model.run(x)["instance"].reshape(len(ok), views.count, -1)
            found = dict(zip(ok, range(len(ok)), strict=True))
            for i, path in enumerate(chunk):
                rel = str(path.relative_to(folder))
                if i not in found:
                    rows.append({"query": rel, "error": "undecodable image"})
                    continue
                exact = catalog.find_exact(prepared[i][1], flt)[:1]
                hits = exact or best_per_token(
                    h
                    for v in inst[found[i]]
                    for h in catalog.search(v, max(1, verify_k), flt, space="instance")
                )
                checks = [Check()] * len(hits)
                if hits and not exact and verify_k:
                    more = catalog_lookup(catalog, embed, inst[found[i]], verify_k, flt, background)
                    hits, checks = rank_by_checks(
                        catalog,
                        hits,
                        prepared[i][2],
                        background,
                        keypoints,
                        more,
                        cache,
                        detector.overlay_rule,
                    )
                copy = bool(exact) or any(
                    is_copy(detector, h.collection, h.score, c) for h, c in zip(hits, checks, strict=True)
                )
                best = hits[0] if hits else None
                rows.append(
                    {
                        "query": rel,
                        "best_collection": best.collection if best else "",
                        "best_token_id": best.token_id if best else "",
                        "score": round(best.score, 6) if best else "",
                        "is_copy": copy,
                        "exact": bool(exact),
                        "error": "",
                    }
                )
            bar.update(len(chunk))
    with open(out / "copies.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "images": len(rows),
        "copies": sum(1 for r in rows if r.get("is_copy")),
        "errors": sum(1 for r in rows if r.get("error")),
        "threshold": detector.threshold,
        "per_collection": detector.per_collection,
        "check_minima": detector.check_minima if verify_k else {},
        "model": f"{m.name}@{m.version}",
    }
    (out / "SUMMARY.md").write_text(render_summary(folder, rows, summary))
    return summary


def render_summary(folder: Path, rows: list[dict], s: dict) -> str:
    copies = sorted((r for r in rows if r.get("is_copy")), key=lambda r: -float(r["score"]))
    lines = [
        f"# Copy scan of `{folder}`",
        "",
        f"Model {s['model']}; copy thresholds (instance-space cosine, from model.json): "
        + ", ".join(f"{c} {t:.4f}" for c, t in sorted(s["per_collection"].items()))
        + f"; other collections {s['threshold']:.4f}."
        + "".join(
            f" A checked candidate is a copy at {kind} "
            + ", ".join(f"{c} {v:.3f}" for c, v in sorted(per.items()))
            + " or more."
            for kind, per in s.get("check_minima", {}).items()
            if per
        ),
        "",
        f"- images scanned: {s['images']}",
        f"- flagged as copies of catalogued tokens: **{s['copies']}**",
        f"- undecodable: {s['errors']}",
        "",
    ]
    if copies:
        lines += ["| query | copy of | score |", "|---|---|---:|"]
        lines += [
            f"| {r['query']} | {r['best_collection']}/{r['best_token_id']} | {float(r['score']):.4f} |"
            for r in copies[:200]
        ]
        if len(copies) > 200:
            lines.append(f"\n… and {len(copies) - 200} more in copies.csv")
    return "\n".join(lines) + "\n"
