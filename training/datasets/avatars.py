"""Auxiliary outliers for open-set training: DiceBear avatars rendered from pinned npm packages.

Thirty-one procedural avatar styles (cartoon faces, pixel art, robots, doodles, abstract shapes): profile
pictures that belong to none of the known collections. Training shows them to the classifier with a
uniform target (outlier exposure, Hendrycks et al. 2019) so that an unseen collection's images score
as unknown. Rendering needs Node.js and npm (the pinned packages are installed into the cache once; only
the three top-level packages are pinned, not their dependencies).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tqdm import tqdm

from training.datasets.packages import cache_dir
from training.datasets.standard import Dataset, write_dataset

DICEBEAR = {"@dicebear/core": "9.4.3", "@dicebear/collection": "9.4.3", "@resvg/resvg-js": "2.6.2"}
SCRIPT = Path(__file__).with_name("avatars.mjs")


def _renderer() -> Path:
    """A folder holding the pinned DiceBear + resvg packages and the render script (installed once)."""
    root = cache_dir() / ("dicebear-" + DICEBEAR["@dicebear/core"])
    if not (root / "node_modules" / "@dicebear" / "collection").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        cmd = ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(root)]
        try:
            subprocess.run(
                [*cmd, *(f"{k}@{v}" for k, v in DICEBEAR.items())], check=True, capture_output=True
            )
        except FileNotFoundError as exc:
            raise RuntimeError(
                "`npm` (Node.js) is needed to render the avatar outliers; install it and retry"
            ) from exc
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"installing DiceBear failed:\n{exc.stderr.decode().strip()}") from exc
    shutil.copy(SCRIPT, root / SCRIPT.name)
    return root


def fetch_avatars(
    out: Path, count: int = 3000, seed: int = 0, size: int = 128, progress: bool = True
) -> Dataset:
    """Render `count` avatars (styles in turn, `size`-px PNG) into `out` as a standard dataset.

    Every row's collection is `avatars-<style>`: outliers for training, never a known collection.
    """
    root = _renderer()
    (out / "images").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["node", str(root / SCRIPT.name), str((out / "images").resolve()), str(count), str(seed), str(size)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rows = []
    for line in tqdm(proc.stdout, total=count, desc="avatars", disable=not progress):
        r = json.loads(line)
        rows.append(
            {
                "path": f"images/{r['file']}",
                "collection": f"avatars-{r['style']}",
                "token_id": str(len(rows)),
                "label": f"avatars-{r['style']}",
                "split": "",
                "style": r["style"],
                "seed": r["seed"],
                "background": r["background"],
            }
        )
    if proc.wait() != 0:
        raise RuntimeError(f"rendering avatars failed:\n{proc.stderr.read().strip()}")
    return write_dataset(
        out,
        rows,
        name="avatars",
        description=f"{count} DiceBear avatars ({size} px), styles in turn, RNG seed {seed}: auxiliary "
        "outliers for open-set training (none is a token of any collection).",
        source={"registry": "npm", **DICEBEAR, "count": str(count), "seed": str(seed)},
    )
