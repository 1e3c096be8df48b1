"""Twins: how close genuine tokens of a pixel-art collection are to each other, as a copy check sees them.

OpenSea's policy calls an image with its colours swapped, or with a small mark added, a copy. In a
generated pixel-art collection many genuine tokens are exactly that to one another: the same sprite in
another skin tone or hair colour, or the same sprite plus one accessory pixel. This measures it on the
data, so the copy verdict's targets can be read against it:

- *recoloured twins*: tokens whose native sprite has the same colour layout (the same partition of pixels
  into colour regions) as another token's, whatever the colours;
- *near twins*: for a sample of tokens, how many pixels separate each from its nearest other token.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.imaging import decode_image
from app.sprites import native_sprite
from training.datasets.select import select_rows
from training.reports import markdown_table

NEAR = (1, 4, 16)  # pixel differences reported for near twins
UNLIKELY = (255, 0, 254)  # transparent pixels become this, so they stay a region of their own


def colour_layout(sprite: np.ndarray) -> bytes:
    """The sprite's partition into colour regions, labelled in order of first appearance (colours dropped)."""
    flat = sprite.reshape(-1, sprite.shape[2])
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return bytes(f"{sprite.shape}", "ascii") + rank[inverse.reshape(-1)].astype(np.uint16).tobytes()


def _nearest_pixel_distance(codes: np.ndarray, sample: np.ndarray, chunk: int = 8) -> np.ndarray:
    """For each sampled token, the fewest pixels in which another token of the same grid differs."""
    out = np.empty(len(sample), dtype=np.int64)
    for start in range(0, len(sample), chunk):
        idx = sample[start : start + chunk]
        diff = (codes[idx, None, :] != codes[None, :, :]).sum(2)
        diff[np.arange(len(idx)), idx] = np.iinfo(np.int64).max  # not itself
        out[start : start + chunk] = diff.min(1)
    return out


def analyse_twins(data: list[str], out: Path, sample: int = 500, seed: int = 0) -> dict:
    """Recoloured and near twins per pixel-art collection of `data`; writes TWINS.md and twins.json."""
    paths, rows = select_rows(data, "all", "collection")
    by_collection: dict[str, list[np.ndarray]] = {}
    for path, row in tqdm(list(zip(paths, rows, strict=True)), desc="sprites", unit="img"):
        sprite = native_sprite(decode_image(path.read_bytes(), UNLIKELY))
        if sprite is not None:
            by_collection.setdefault(row["collection"], []).append(sprite)
    rng = np.random.default_rng(seed)
    result: dict = {"data": data, "sample": sample, "collections": {}}
    for coll, sprites in sorted(by_collection.items()):
        layouts = Counter(colour_layout(s) for s in sprites)
        twins = sum(n for n in layouts.values() if n > 1)
        shape = Counter(s.shape for s in sprites).most_common(1)[0][0]
        same = [s for s in sprites if s.shape == shape]
        flat = np.stack([s.reshape(-1, s.shape[2]) for s in same]).astype(np.uint32)
        codes = (flat[..., 0] << 16) | (flat[..., 1] << 8) | flat[..., 2]  # one int per pixel colour
        picked = rng.choice(len(same), min(sample, len(same)), replace=False)
        nearest = _nearest_pixel_distance(codes, picked)
        result["collections"][coll] = {
            "tokens": len(sprites),
            "grid": f"{shape[1]}x{shape[0]}",
            "recoloured_twins": twins / len(sprites),
            "near_twins": {f"<= {n} px": float((nearest <= n).mean()) for n in NEAR},
            "nearest_median_px": float(np.median(nearest)),
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "twins.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "TWINS.md").write_text(render_markdown(result))
    return result


def render_markdown(r: dict) -> str:
    rows = [
        {
            "collection": c,
            "tokens": v["tokens"],
            "grid": v["grid"],
            "recoloured twins": v["recoloured_twins"],
            **{f"nearest other token {k}": s for k, s in v["near_twins"].items()},
            "median px to nearest": v["nearest_median_px"],
        }
        for c, v in r["collections"].items()
    ]
    return (
        "# Twins: genuine pixel-art tokens that are copies of each other by OpenSea's definition\n\n"
        f"Data: {', '.join(r['data'])}. *Recoloured twins*: share of tokens whose native sprite has the same "
        "colour layout as another token's (the same sprite with colours swapped, which the policy calls a "
        f"copy). *Nearest other token*: over {r['sample']} sampled tokens per collection, the share whose "
        "nearest other token differs in at most that many pixels (a mark that small is also called a copy).\n\n"
        + markdown_table(rows, list(rows[0]) if rows else ["collection"])
        + "\n\nA copy verdict that ignores colours calls every recoloured twin a copy of its sibling, and one "
        "that tolerates a caption or a badge (tens of pixels) calls near twins copies too: where these "
        "shares are large, catching colour-swapped and captioned copies and passing every genuine token "
        "cannot both hold. Reproduce: `nftlens copies twins` (default data: data/cryptopunks, data/nouns).\n"
    )
