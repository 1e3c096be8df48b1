"""`nftlens copies twins`: recoloured and near twins among genuine pixel-art tokens, on real punks."""

from __future__ import annotations

import json

from PIL import Image

from app.imaging import decode_image
from app.views import rotate_hue


def test_twins_counts_recolourings_and_near_copies(punks, tmp_path):
    from training.datasets.standard import write_dataset
    from training.twins import analyse_twins, colour_layout

    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    base = {i: decode_image(punks.image_path(punks.rows[i]).read_bytes(), (0, 0, 0)) for i in (5, 3100, 7804)}
    recoloured = rotate_hue(base[5], 120)
    marked = base[7804].copy()
    marked[0, 0] = (255, 255, 255)  # one pixel off
    images = {"5": base[5], "3100": base[3100], "7804": base[7804], "9001": recoloured, "9002": marked}
    rows = []
    for tid, rgb in images.items():
        Image.fromarray(rgb).save(root / "images" / f"{tid}.png")
        rows.append(
            {
                "path": f"images/{tid}.png",
                "collection": "cryptopunks",
                "token_id": tid,
                "label": "p",
                "split": "test",
            }
        )
    write_dataset(root, rows, "mini", "five punks")

    assert colour_layout(recoloured) == colour_layout(base[5]) != colour_layout(base[3100])
    r = analyse_twins([str(root)], tmp_path / "out", sample=5)
    punk = r["collections"]["cryptopunks"]
    assert punk["tokens"] == 5 and punk["grid"] == "24x24"
    assert punk["recoloured_twins"] == 2 / 5  # punk 5 and its recolouring
    assert punk["near_twins"]["<= 1 px"] == 2 / 5  # punk 7804 and its one-pixel mark
    assert punk["near_twins"]["<= 16 px"] >= punk["near_twins"]["<= 4 px"] >= 2 / 5
    assert json.loads((tmp_path / "out" / "twins.json").read_text()) == r
    assert "| cryptopunks | 5 | 24x24 | 0.4" in (tmp_path / "out" / "TWINS.md").read_text()
