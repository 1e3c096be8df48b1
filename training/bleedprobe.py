"""The codec-bleed design check (app/sprites.py: codec_bleed), on validation pixel art only.

Seeded edits of validation punks and Nouns are checked, with and without the bleed, against their
original and its nearest siblings by pixels (the tokens a copy is most easily mistaken for). Per edit it
counts: originals at the layout minimum, siblings at the minimum, queries where a sibling lays out at
least as well as the original, and queries whose checked order (`verified_order`, the original given
the lowest score so only the checks can lift it) puts the original first.

    python -m training.bleedprobe reencode_resize mirror_reencode text saturate
    python -m training.bleedprobe --floor 0 reencode_resize mirror_reencode   # the floor's effect
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app import sprites
from app.imaging import decode_image
from app.manifest import load_manifest
from app.verify import check_candidates, stored_rgb, verified_order
from training.datasets.standard import load_dataset
from training.edits import apply_edit

PIXEL_ART = ("data/cryptopunks", "data/nouns")
BACKGROUND = (255, 255, 255)


def probe(
    edits: Sequence[str],
    data: Sequence[str] = PIXEL_ART,
    queries: int = 200,
    siblings: int = 15,
    model_dir: str = "models/default",
    seed: int = 7,
    floor: float | None = None,
) -> dict[str, dict[str, dict[str, int]]]:
    """{edit: {"without": counts, "with": counts}} over `queries` validation tokens (see the module);
    `floor`: the bleed's floor in place of `BLEED_FLOOR`; at the minimum: `model_dir`'s calibrated layout
    minimum of the query's collection."""
    images, grids, val = {}, {}, []
    for root in data:
        ds = load_dataset(root)
        for r in ds.rows:
            key = f"{r['collection']}/{r['token_id']}"
            images[key] = stored_rgb(ds.image_path(r).read_bytes(), BACKGROUND)
            grids[key] = sprites.native_sprite(images[key])
            if r["split"] == "val":
                val.append((key, ds.image_path(r)))
    rng = np.random.default_rng(seed)
    val = [val[i] for i in sorted(rng.choice(len(val), min(queries, len(val)), replace=False))]
    layout_min = load_manifest(model_dir).copies.layout_min  # by collection, as calibrated
    bleed, served_floor = sprites.codec_bleed, sprites.BLEED_FLOOR
    out: dict[str, dict[str, dict[str, int]]] = {}
    for edit in edits:
        counts = {
            m: dict.fromkeys(("original", "siblings", "tied_or_beaten", "first"), 0)
            for m in ("without", "with")
        }
        for j, (key, path) in enumerate(tqdm(val, desc=edit, leave=False)):
            coll, grid = key.split("/")[0], grids[key]  # its siblings: same grid, fewest pixels apart
            same = [
                k for k in grids if k.startswith(coll + "/") and k != key and grids[k].shape == grid.shape
            ]
            dist = np.array([np.abs(grids[k].astype(int) - grid).sum() for k in same])
            near = [same[i] for i in np.argsort(dist)[:siblings]]
            query = apply_edit(
                edit, decode_image(Path(path).read_bytes(), BACKGROUND), np.random.default_rng((999, j))
            )
            for mode, c in counts.items():
                sprites.codec_bleed = bleed if mode == "with" else lambda sprite, size: None
                sprites.BLEED_FLOOR = served_floor if floor is None else floor
                try:
                    checks = check_candidates(query, [images[k] for k in near] + [images[key]], False)
                finally:
                    sprites.codec_bleed, sprites.BLEED_FLOOR = bleed, served_floor
                lay = [checks[-1].layout] + [x.layout for x in checks[:-1]]  # the original first
                c["original"] += lay[0] >= layout_min[coll]
                c["siblings"] += sum(a >= layout_min[coll] for a in lay[1:])
                c["tied_or_beaten"] += max(lay[1:]) >= lay[0]
                c["first"] += verified_order([1.0 - 0.001 * i for i in range(len(checks))], checks)[0] == len(
                    near
                )
        out[edit] = counts
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("edits", nargs="*", default=["reencode_resize", "mirror_reencode"])
    parser.add_argument("--floor", type=float, default=None, help="the bleed's floor (default: BLEED_FLOOR)")
    args = parser.parse_args()
    for name, row in probe(args.edits, floor=args.floor).items():
        print(name, row)
