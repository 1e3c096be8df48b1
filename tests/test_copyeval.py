"""`nftlens copies evaluate` on a small real catalog with the real model: which tokens it catalogues,
queries and keeps out, the verdicts it reports, and the exact intervals beside its rates."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from app.agreement import COMPACT_MAX, OVERLAY_MAX
from app.manifest import load_manifest


def test_clopper_pearson_matches_its_closed_forms_and_covers():
    from training.intervals import chance_below, clopper_pearson, interval_text

    # none or all of n: the bound solves (1 - p)^n = alpha / 2 (or p^n), no beta function needed
    for n in (1, 10, 150, 1031):
        assert clopper_pearson(0, n) == (0.0, pytest.approx(1 - 0.025 ** (1 / n)))
        assert clopper_pearson(n, n) == (pytest.approx(0.025 ** (1 / n)), 1.0)
    low, high = clopper_pearson(1030, 1031)
    assert low < 0.995 < 1030 / 1031 < high  # one false copy in 1,031 cannot vouch for 0.5 % alone
    # at least 95 % coverage: 2,000 seeded binomial draws at p = 0.9
    draws = np.random.default_rng(0).binomial(150, 0.9, 2000)
    covered = np.mean([lo <= 0.9 <= hi for lo, hi in (clopper_pearson(int(k), 150) for k in draws)])
    assert covered >= 0.95
    assert interval_text(142, 150) == "95 % interval 0.898–0.977, 142 of 150"
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)
    assert chance_below(150, 150, 0.98) == 1.0 and chance_below(0, 150, 0.98) == pytest.approx(0.02**150)
    assert chance_below(149, 150, 0.98) == pytest.approx(1 - 0.98**150)  # all but "every one succeeds"
    assert chance_below(117, 150, 0.95) < 1e-9 < chance_below(140, 150, 0.95)  # 0.78 is no chance miss


def test_evaluate_copies_reports_a_planted_copy_among_the_distinct_tokens(model_dir, punks, tmp_path):
    if load_manifest(model_dir).copies is None:
        pytest.skip("the model under test has no copy head")
    from app.cli import serve_app
    from training.copyeval import _share, evaluate_copies, render_markdown
    from training.datasets.standard import write_dataset

    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    rows = []
    for i, row in enumerate(punks.rows[:60]):  # 30 catalogued only (trained on), 30 unseen (test)
        shutil.copy(punks.image_path(row), root / "images" / f"{row['token_id']}.png")
        split = "train" if i < 30 else "test"
        rows.append(
            {
                "path": f"images/{row['token_id']}.png",
                "collection": "cryptopunks",
                "token_id": row["token_id"],
                "label": "cryptopunks",
                "split": split,
            }
        )
    # an unseen token whose image is a catalogued punk's, pixel for pixel, under a key that the hash keeps
    # out of the catalog: a genuine distinct token to the evaluation, which must report it as a false copy
    planted = next(f"9{n:04d}" for n in range(10_000) if _share(f"cryptopunks/9{n:04d}", 0) < 0.3)
    original = rows[3]["token_id"]
    shutil.copy(root / rows[3]["path"], root / "images" / f"{planted}.png")
    rows.append({**rows[3], "path": f"images/{planted}.png", "token_id": planted, "split": "test"})
    write_dataset(root, rows, "mini", "60 punks and one copy")

    unseen = [f"cryptopunks/{r['token_id']}" for r in rows if r["split"] == "test"]
    kept_out = {k for k in unseen if _share(k, 0) < 0.3}
    out = tmp_path / "report"
    r = evaluate_copies(model_dir, [str(root)], out, per_domain=8, holdout=[], verify_k=5)

    assert r["catalog"]["tokens"] == len(rows) - len(kept_out)
    assert r["distinct"] == {"pixel_art": len(kept_out), "painted": 0}
    assert r["originals"] == {"pixel_art": 8, "painted": 0}
    assert set(r["per_edit"]["exact"]) == {"pixel_art"}  # no painted token: no painted row
    for edit in ("exact", "mirror"):  # both found by the flip-invariant pixel fingerprint
        row = r["per_edit"][edit]["pixel_art"]
        assert row["n"] == 8 and row["top1"] == row["is_copy"] == row["exact_stage"] == 1.0
    planted_copy = {"query": f"cryptopunks/{planted}", "match": f"cryptopunks/{original}", "by": "exact"}
    assert planted_copy in [{k: f[k] for k in ("query", "match", "by")} for f in r["false_copies"]]
    assert r["genuine_not_copy_rate"] == pytest.approx(1 - len(r["false_copies"]) / len(kept_out))
    assert json.loads((out / "copies.json").read_text()) == r
    rule = load_manifest(model_dir).copies.overlay_rule
    recorded = (r["overlay_witness"], r["overlay_beyond"], r["overlay_lines"], r["overlay_compact"])
    assert recorded == (rule.witness, rule.beyond, rule.lines, rule.compact)
    written = (out / "COPIES.md").read_text()
    k = round(r["genuine_not_copy_rate"] * len(kept_out))
    assert f"{k} of {len(kept_out)}; Clopper-Pearson" in written
    assert "| exact | 1.0000 | 1.0000 |" in written
    below = [
        f"{e} {row['pixel_art']['top1']:.3f}"
        for e, row in r["per_edit"].items()
        if row["pixel_art"]["top1"] < 0.98
    ]
    line = next(x for x in written.splitlines() if x.startswith("Below the targets"))
    assert all(b in line for b in below) and ("exact 1.000" not in line)
    # the edits the exact stage caught are named (a mirror always; the exact copy is no edit)
    caught = next(x for x in written.splitlines() if x.startswith("Edited queries the exact stage matched"))
    assert "mirror pixel_art 1.00" in caught and "exact pixel_art" not in caught

    (out / "COPIES.md").unlink()  # `copies render` writes the same report from copies.json
    done = CliRunner().invoke(serve_app, ["copies", "render", str(out)])
    assert done.exit_code == 0, done.output
    assert (out / "COPIES.md").read_text() == written
    missing = CliRunner().invoke(serve_app, ["copies", "render", str(tmp_path)])
    assert missing.exit_code != 0 and "copies.json" in missing.output
    # with painted overlay minima the report says which witness the rule took (older reports: nothing)
    painted = {**r, "check_minima": {**(r["check_minima"] or {}), "overlay": {"bayc": 0.99}}}
    assert "unless one other candidate shows" in render_markdown({**painted, "overlay_witness": "one"})
    beyond = render_markdown({**painted, "overlay_witness": "one", "overlay_beyond": 0.01})
    assert "at most 0.01 of the figure beyond" in beyond  # stop 40's rule; reports before it do not say
    assert "overlay_lines" in render_markdown({**painted, "overlay_witness": "one", "overlay_lines": True})
    assert "overlay_lines" not in render_markdown(
        {**painted, "overlay_witness": "one", "overlay_lines": False}
    )
    compact = render_markdown({**painted, "overlay_witness": "one", "overlay_compact": True})
    assert "up to 0.12 of the figure" in compact and "overlay_compact" in compact
    # the sizes the run used, as recorded, not the code's constants now (reports before stop 42: 0.12)
    assert r["overlay_max"] == {"region": OVERLAY_MAX, "compact": COMPACT_MAX}
    assert "a pasted-on region of up to 0.08 of the figure unless" in compact
    sized = {**painted, "overlay_witness": "one", "overlay_compact": True}
    larger = render_markdown({**sized, "overlay_max": {"region": 0.05, "compact": 0.2}})
    assert "up to 0.2 of the figure (model.json: overlay_compact)" in larger and "up to 0.05 of" in larger
    unsized = render_markdown({k: v for k, v in sized.items() if k != "overlay_max"})
    assert "up to 0.12 of the figure" in unsized and "a pasted-on region unless" in unsized
    later = ("overlay_beyond", "overlay_lines", "overlay_compact")  # stops 40 and 41: older reports lack them
    before = {k: v for k, v in painted.items() if k not in later}
    assert "overlay_beyond" not in render_markdown({**before, "overlay_witness": "one"})
    assert "overlay_witness" not in render_markdown(
        {k: v for k, v in painted.items() if k != "overlay_witness"}
    )


def test_build_sets_design_run_queries_validation_and_never_catalogues_a_test_token(punks, tmp_path):
    from training.copyeval import build_sets
    from training.datasets.standard import write_dataset

    root, held = tmp_path / "mini", tmp_path / "held"
    (root / "images").mkdir(parents=True)
    (held / "images").mkdir(parents=True)
    rows, held_rows = [], []
    for i, row in enumerate(punks.rows[:40]):  # 20 train, 10 val, 10 test
        shutil.copy(punks.image_path(row), root / "images" / f"{row['token_id']}.png")
        split = "train" if i < 20 else "val" if i < 30 else "test"
        r = {"path": f"images/{row['token_id']}.png", "collection": "cryptopunks"}
        rows.append({**r, "token_id": row["token_id"], "label": "cryptopunks", "split": split})
    write_dataset(root, rows, "mini", "40 punks")
    # a holdout dataset holding one train-split token of the first: a test token, wherever it appears
    shutil.copy(root / rows[0]["path"], held / rows[0]["path"])
    held_rows.append({**rows[0], "split": "test"})
    write_dataset(held, held_rows, "held", "one punk")
    keys = {
        s: {f"cryptopunks/{r['token_id']}" for r in rows if r["split"] == s} for s in ("train", "val", "test")
    }
    first = f"cryptopunks/{rows[0]['token_id']}"

    val = build_sets([str(root), str(held)], ["cryptopunks"], [str(held)], split="val")
    assert set(val["originals"]) | set(val["distinct"]) == keys["val"]
    assert set(val["catalog"]) == (keys["train"] - {first}) | set(val["originals"])
    assert not set(val["rows"]) & (keys["test"] | {first})
    test = build_sets([str(root), str(held)], ["cryptopunks"], [str(held)])  # the reported run, as before
    assert set(test["originals"]) | set(test["distinct"]) == keys["test"] | {first}  # a holdout token
    assert keys["train"] - {first} <= set(test["catalog"]) and not set(test["catalog"]) & set(
        test["distinct"]
    )
    with pytest.raises(ValueError, match="test or val"):
        build_sets([str(root)], ["cryptopunks"], [], split="train")
