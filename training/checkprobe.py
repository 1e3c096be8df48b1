"""The checks' design check (app/verify.py), on validation tokens only.

Seeded edits of validation tokens of the CDN thumbnails (`data/nft-thumbs`, split `val`; or of other
datasets, `--data`: the pixel art's `data/cryptopunks data/nouns`) are searched in the instance space
against all of those datasets' train and validation tokens; the best 50 candidates
are checked as the service checks them. Per edit it prints the share of queries whose original comes
first: with aligned paintings ordered by their keypoint inliers alone, as served (those whose colours
show all of the query, `FOUND`, first, the rest by inliers), by their colours, then inliers (the order
shipped before), and as served with the painted completion (`find_by_completion`: the query put over
the candidates it aligns with and looked up again); the share the served verdict calls a copy
(`is_copy`: a score or a check over its collection's threshold or minimum, model.json, among every
candidate checked), and that share without `Check.overlay`; and how many originals were not among the
50. For genuine validation tokens (their own image taken out of the candidates) it prints how many a
check calls a copy among the first 50 and with the completion's finds, and how many the served verdict
calls a copy.

    python -m training.checkprobe                      # every edit, 100 queries each, 200 genuine
    python -m training.checkprobe crop_zoom background_swap --queries 200
    python -m training.checkprobe crop_zoom --data data/cryptopunks data/nouns --misses   # pixel art
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from app.inference import OnnxModel
from app.keypoints import MIN_INLIERS
from app.preprocessing import preprocess_batch
from app.verify import Check, is_copy, verified_order
from training.checking import ReferenceChecks, lookup_references, top_candidates
from training.datasets.select import select_rows
from training.edits import COMBINED, EDITS
from training.runner import edit_transform, infer, view_similarity

PAINTED = "data/nft-thumbs"
VERIFY_K = 50


def inliers_first(scores: Sequence[float], checks: Sequence[Check]) -> list[int]:
    """`verified_order` with aligned paintings by their inliers, then score (colours unused)."""
    plain = [replace(c, colours=None) for c in checks]
    return verified_order(scores, plain)


def colours_first(scores: Sequence[float], checks: Sequence[Check]) -> list[int]:
    """`verified_order` with aligned paintings by their colours, then inliers, then score."""
    order = verified_order(scores, checks)
    aligned = [i for i in order if (checks[i].keypoints or 0) >= MIN_INLIERS]  # as verified_order's `points`
    by_colours = iter(
        sorted(aligned, key=lambda i: (-(checks[i].colours or 0.0), -checks[i].keypoints, -scores[i]))
    )
    moved = set(aligned)
    return [next(by_colours) if i in moved else i for i in order]


def probe(
    edits: Sequence[str],
    queries: int = 100,
    genuine: int = 200,
    model_dir: str = "models/default",
    seed: int = 7,
    data: Sequence[str] = (PAINTED,),
) -> dict:
    """{edit: counts} and {"genuine": counts} (see the module); each edit's counts carry `misses`: for
    each query whose original the served order with completion does not put first, (the query's path,
    the first candidate's path, the original's place among the checked candidates or None)."""
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    m = model.manifest
    vpaths, vrows = select_rows(list(data), "val", "collection")
    tpaths, trows = select_rows(list(data), "train", "collection")
    paths, rows = [*tpaths, *vpaths], [*trows, *vrows]
    colls = [r["collection"] for r in rows]
    cat = infer(model, paths, desc="catalog")["instance"]
    refs = ReferenceChecks(paths, m.preprocessing.background_rgb, True, m.copies.overlay_rule)
    skip: set[int] = set()

    def embed(images: list[np.ndarray]) -> np.ndarray:
        return model.run(preprocess_batch(images, m.preprocessing))["instance"]

    lookup = lookup_references(embed, cat, refs, VERIFY_K, skip)

    def ranked(rgb: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, list[Check], np.ndarray, list[Check]]:
        """The best 50 with their checks, and those with the completion's finds."""
        top = np.array([i for i in top_candidates(sims, VERIFY_K + len(skip)) if i not in skip][:VERIFY_K])
        checks, found, more = refs.completed(rgb, top, lookup)
        return top, checks, np.array(found), more

    def verdict(idx: np.ndarray, scores: np.ndarray, checks: list[Check]) -> bool:
        """The served `is_copy`: some candidate's score or check calls it (app/verify.py: is_copy)."""
        return any(
            is_copy(m.copies, colls[i], float(s), c) for i, s, c in zip(idx, scores, checks, strict=True)
        )

    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(vpaths), min(queries, len(vpaths)), replace=False))
    out: dict = {}
    for e, name in enumerate(edits):
        rgbs: list[np.ndarray] = []
        q = infer(
            model,
            [vpaths[i] for i in pick],
            edit_transform(name),
            desc=name,
            seed=seed + e,
            views=m.copies.views,
            images=rgbs,
        )["instance"]
        sims = view_similarity(q, cat)
        c = {
            "n": len(pick),
            "before": 0,
            "served": 0,
            "colours_first": 0,
            "completed": 0,
            "is_copy": 0,
            "is_copy_without_overlay": 0,
            "not_in_50": 0,
            "looked_up": 0,
            "misses": [],
        }
        for j, i in enumerate(tqdm(pick, desc=f"check {name}", leave=False)):
            truth = len(tpaths) + i
            top, checks, found, more = ranked(rgbs[j], sims[j])
            c["not_in_50"] += truth not in top
            c["before"] += top[inliers_first(sims[j, top].tolist(), checks)[0]] == truth
            c["served"] += top[verified_order(sims[j, top].tolist(), checks)[0]] == truth
            c["colours_first"] += top[colours_first(sims[j, top].tolist(), checks)[0]] == truth
            order = found[verified_order(sims[j, found].tolist(), more)]
            c["completed"] += order[0] == truth
            if order[0] != truth:
                place = int(np.flatnonzero(order == truth)[0]) if truth in order else None
                c["misses"].append((str(paths[truth]), str(paths[order[0]]), place))
            c["is_copy"] += verdict(found, sims[j, found], more)
            plain = [replace(x, overlay=None) for x in more]
            c["is_copy_without_overlay"] += verdict(found, sims[j, found], plain)
            c["looked_up"] += len(found) > len(top)
        out[name] = c
    gpick = sorted(rng.choice(len(vpaths), min(genuine, len(vpaths)), replace=False))
    rgbs = []
    q = infer(model, [vpaths[i] for i in gpick], desc="genuine", views=m.copies.views, images=rgbs)[
        "instance"
    ]
    sims = view_similarity(q, cat)
    g = {"n": len(gpick), "called_first_50": 0, "called_completed": 0, "is_copy": 0, "looked_up": 0}

    def called(idx: np.ndarray, checks: list[Check]) -> bool:
        return any(
            m.copies.confirmed(colls[i], c.layout, c.colours, c.overlay)
            for i, c in zip(idx, checks, strict=True)
        )

    for j, i in enumerate(tqdm(gpick, desc="check genuine", leave=False)):
        skip.clear()
        skip.add(len(tpaths) + i)  # the token itself is not a distinct token
        top, checks, found, more = ranked(rgbs[j], sims[j])
        g["called_first_50"] += called(top, checks)
        g["called_completed"] += called(found, more)
        g["is_copy"] += verdict(found, sims[j, found], more)
        g["looked_up"] += len(found) > len(top)
    skip.clear()
    out["genuine"] = g
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("edits", nargs="*", default=[*EDITS, *COMBINED])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--genuine", type=int, default=200)
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--data", nargs="+", default=[PAINTED], help="the datasets queried and searched")
    ap.add_argument("--misses", action="store_true", help="list the served misses (with completion)")
    args = ap.parse_args(argv)
    out = probe(args.edits, args.queries, args.genuine, args.model, data=args.data)
    print(
        "| edit | n | top-1 inliers first | whole colours first, then inliers (served) | colours first "
        "| served with completion | is_copy (served) | is_copy without `overlay` | not in 50 | looked up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.edits:
        c = out[name]
        rates = " | ".join(
            f"{c[k] / c['n']:.2f}"
            for k in ("before", "served", "colours_first", "completed", "is_copy", "is_copy_without_overlay")
        )
        print(f"| {name} | {c['n']} | {rates} | {c['not_in_50']} | {c['looked_up']} |")
    for name in args.edits if args.misses else ():
        for query, first, place in out[name]["misses"]:
            print(f"{name} miss: {query} -> {first} (original's place: {place})")
    g = out["genuine"]
    print(
        f"genuine validation tokens: {g['n']}, called copies by a check in the first 50: "
        f"{g['called_first_50']}, with the completion's finds: {g['called_completed']}, "
        f"called copies as served (score or check): {g['is_copy']} (completion looked up for {g['looked_up']})"
    )


if __name__ == "__main__":
    main()
