"""`nftlens copies scan`: a folder checked against a real catalog with the real model (CSV + summary)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from app.manifest import load_manifest
from app.views import rotate_hue


def test_copies_scan_flags_copies_and_reports_errors(model_dir, punks, tmp_path, monkeypatch):
    m = load_manifest(model_dir)
    if not m.instance_dim or m.copies is None:
        pytest.skip("the model under test has no copy head")
    from app.cli import serve_app

    runner = CliRunner()
    monkeypatch.setenv("NFTLENS_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("NFTLENS_CATALOG", str(tmp_path / "c.db"))
    catalogued = tmp_path / "catalogued"
    catalogued.mkdir()
    for i in range(40):
        (catalogued / f"{i}.png").write_bytes(punks.image_path(punks.rows[i]).read_bytes())
    r = runner.invoke(serve_app, ["catalog", "index", str(catalogued), "--collection", "cryptopunks"])
    assert r.exit_code == 0, r.output
    new = tmp_path / "new-collection"
    (new / "sub").mkdir(parents=True)
    (new / "copy-of-7.png").write_bytes(punks.image_path(punks.rows[7]).read_bytes())
    (new / "sub" / "copy-of-12.png").write_bytes(punks.image_path(punks.rows[12]).read_bytes())
    (new / "broken.png").write_bytes(b"not an image at all")
    punk5 = np.asarray(
        Image.open(punks.image_path(punks.rows[5])).convert("RGB").resize((192, 192), Image.NEAREST)
    )
    Image.fromarray(rotate_hue(punk5, 120)).save(new / "recoloured-5.png")  # found by the layout check
    out = tmp_path / "scan"
    r = runner.invoke(serve_app, ["copies", "scan", str(new), "--out", str(out), "--batch", "2"])
    assert r.exit_code == 0, r.output
    with open(out / "copies.csv", newline="") as fh:
        rows = {row["query"]: row for row in csv.DictReader(fh)}
    assert set(rows) == {"copy-of-7.png", "sub/copy-of-12.png", "broken.png", "recoloured-5.png"}
    flagged = sum(row["is_copy"] == "True" for row in rows.values())
    assert flagged >= 2 and f"{flagged} of 4 images are copies" in r.output
    assert rows["recoloured-5.png"]["best_token_id"] == "5" and rows["recoloured-5.png"]["exact"] == "False"
    assert rows["copy-of-7.png"]["best_token_id"] == "7" and rows["copy-of-7.png"]["is_copy"] == "True"
    assert (
        rows["sub/copy-of-12.png"]["best_token_id"] == "12"
        and float(rows["sub/copy-of-12.png"]["score"]) > 0.999
    )
    assert rows["broken.png"]["error"] == "undecodable image" and rows["broken.png"]["is_copy"] == ""
    summary = (out / "SUMMARY.md").read_text()
    assert f"flagged as copies of catalogued tokens: **{flagged}**" in summary and "cryptopunks/7" in summary
    # a collection filter that excludes the catalogued one finds nothing to copy
    r = runner.invoke(serve_app, ["copies", "scan", str(new), "--out", str(out), "--collection", "nouns"])
    assert r.exit_code == 0 and "0 of 4 images are copies" in r.output
    r = runner.invoke(serve_app, ["copies", "scan", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "not a folder" in r.output
