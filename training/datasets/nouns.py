"""Nouns rendered from the pinned `@nouns/assets` RLE parts with a Python decoder.

Part data (hex): byte 0 palette id, bytes 1-4 top, right, bottom, left, then (run length, colour index)
pairs filling rows left to right over columns left..right-1 and rows top..bottom on a 32x32 canvas.
Colour 0 is transparent. Layers: body, accessory, head, glasses, over a background colour.
"""

from __future__ import annotations

import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from app.imaging import parse_hex_color
from training.datasets.packages import NOUNS_ASSETS, fetch_package
from training.datasets.standard import Dataset, write_dataset

CANVAS = 32
LAYERS = ("bodies", "accessories", "heads", "glasses")
_TRAIT = {"bodies": "body", "accessories": "accessory", "heads": "head", "glasses": "glasses"}


@dataclass
class NounsAssets:
    palette: list[str]
    backgrounds: list[str]
    parts: dict[str, list[dict]]  # layer -> [{filename, data}]

    @classmethod
    def from_tarball(cls, path: Path) -> NounsAssets:
        with tarfile.open(path) as tar:
            data = json.load(tar.extractfile("package/dist/image-data.json"))
        return cls(palette=data["palette"], backgrounds=data["bgcolors"], parts=data["images"])


def decode_part(hex_data: str, palette: list[str]) -> np.ndarray:
    """One RLE part -> 32x32x4 uint8 RGBA (alpha 0 where the part is transparent)."""
    raw = bytes.fromhex(hex_data[2:] if hex_data.startswith("0x") else hex_data)
    top, right, bottom, left = raw[1], raw[2], raw[3], raw[4]
    out = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    if len(raw) == 5:  # an empty part, e.g. `accessory-none`
        return out
    x, y = left, top
    for i in range(5, len(raw) - 1, 2):
        length, colour = raw[i], raw[i + 1]
        for _ in range(length):
            if colour != 0:
                out[y, x, :3] = parse_hex_color(palette[colour])
                out[y, x, 3] = 255
            x += 1
            if x == right:
                x, y = left, y + 1
    if y != bottom + 1 or x != left:
        raise ValueError(f"RLE part ended at ({x},{y}); expected the row after {bottom}")
    return out


def render_noun(assets: NounsAssets, seed: dict[str, int]) -> np.ndarray:
    """Seed {background, body, accessory, head, glasses} -> 32x32x3 uint8."""
    canvas = np.empty((CANVAS, CANVAS, 3), dtype=np.uint8)
    canvas[:] = parse_hex_color(assets.backgrounds[seed["background"]])
    for layer in LAYERS:
        part = decode_part(assets.parts[layer][seed[_TRAIT[layer]]]["data"], assets.palette)
        mask = part[..., 3] == 255
        canvas[mask] = part[..., :3][mask]
    return canvas


def random_seeds(assets: NounsAssets, count: int, seed: int) -> list[dict[str, int]]:
    """`count` distinct trait combinations drawn with a seeded RNG."""
    rng = random.Random(seed)
    sizes = {"background": len(assets.backgrounds), **{_TRAIT[k]: len(v) for k, v in assets.parts.items()}}
    total = int(np.prod(list(sizes.values())))
    if count > total:
        raise ValueError(f"only {total} distinct Nouns exist; asked for {count}")
    seen: set[tuple[int, ...]] = set()
    seeds = []
    while len(seeds) < count:
        s = {k: rng.randrange(n) for k, n in sizes.items()}
        key = tuple(s.values())
        if key not in seen:
            seen.add(key)
            seeds.append(s)
    return seeds


def fetch_nouns(out: Path, count: int = 2000, seed: int = 0, progress: bool = True) -> Dataset:
    """Render `count` random Nouns (32x32 PNG) into `out`; label = collection, traits kept as columns.

    Token ids are the render index: these are valid trait combinations, not on-chain Noun ids.
    """
    assets = NounsAssets.from_tarball(fetch_package(NOUNS_ASSETS))
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, s in enumerate(tqdm(random_seeds(assets, count, seed), desc="nouns", disable=not progress)):
        rel = f"images/{i:05d}.png"
        Image.fromarray(render_noun(assets, s)).save(out / rel)
        rows.append(
            {
                "path": rel,
                "collection": "nouns",
                "token_id": str(i),
                "label": "nouns",
                "split": "",
                "background": assets.backgrounds[s["background"]],
                **{_TRAIT[k]: assets.parts[k][s[_TRAIT[k]]]["filename"] for k in LAYERS},
            }
        )
    return write_dataset(
        out,
        rows,
        name="nouns",
        description=f"{count} Nouns rendered (32x32) from @nouns/assets RLE parts, RNG seed {seed}; "
        "token_id is the render index, not an on-chain id.",
        source={**NOUNS_ASSETS.as_source(), "count": str(count), "seed": str(seed)},
    )
