"""`nftlens refit-instance`: the instance head refitted on frozen backbone features inside the graph, every
other output untouched, the refitted head the graph's own function of the pooled features."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the refit needs the [train] extra")


def test_refit_instance_rewrites_the_head_and_leaves_every_other_output(punks, nouns, tmp_path):
    from onnx import load, numpy_helper

    from app.inference import OnnxModel
    from app.manifest import load_manifest, sha256_of
    from app.preprocessing import load_tensor
    from tests.tiny_model import export_tiny_model
    from training.instancerefit import POOLED, WEIGHTS, _embed, _head, pooled_model_dir, refit_instance
    from training.whiten import _images

    plain = export_tiny_model(tmp_path / "float", [punks.root, nouns.root])
    files = [punks.image_path(r).read_bytes() for r in punks.rows[:6]]
    files += [nouns.image_path(r).read_bytes() for r in nouns.rows[:6]]
    before = load_manifest(plain)
    x = np.stack([load_tensor(f, before.preprocessing) for f in files])
    cpu = ["CPUExecutionProvider"]
    raw = OnnxModel(plain, cpu).run(x)
    # the head the refit trains is the graph's: on the exposed pooled features it gives the graph's instance
    (tmp_path / "pooled").mkdir()
    pooled = OnnxModel(pooled_model_dir(plain, tmp_path / "pooled"), cpu).run(x)
    inits = {i.name: numpy_helper.to_array(i) for i in load(str(plain / before.onnx_file)).graph.initializer}
    head = _head({k: inits[k] for k in WEIGHTS})
    np.testing.assert_allclose(_embed(head, pooled[POOLED]), raw["instance"], atol=1e-5)

    out = tmp_path / "refit"
    done = refit_instance(plain, tokens=64, val_tokens=16, views=2, epochs=2, out=out, select="last")
    after = load_manifest(out)
    _, _, vlabels = _images(before, "val")  # an even share of each label, as many as it has
    assert done["val_tokens"] == sum(min(int((vlabels == c).sum()), 8) for c in set(vlabels.tolist()))
    assert done["epoch_kept"] == 2 and done["tokens"] == 64
    assert after.sha256 == sha256_of(out / after.onnx_file) != before.sha256
    assert after.catalog_key != before.catalog_key  # a new instance space: catalogs need a reindex
    assert after.training["instance_refit"] == done and done["from_sha256"] == before.sha256
    assert json.loads((out / "instance_refit.json").read_text())["epoch_kept"] == 2
    refit = OnnxModel(out, cpu).run(x)
    assert set(refit) == set(raw)
    for name in raw:
        if name != "instance":
            np.testing.assert_array_equal(refit[name], raw[name], err_msg=name)
    assert not np.allclose(refit["instance"], raw["instance"], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(refit["instance"], axis=1), 1.0, rtol=1e-5)
    assert load_manifest(plain).sha256 == before.sha256  # `out` given: the source is left as it was
    for bad in ({"sepia": 2.0}, {"exact": 1.0}):
        with pytest.raises(ValueError, match="unknown edits"):
            refit_instance(plain, tokens=64, weights=bad)
