"""`nftlens whiten`: the collection embedding whitened inside the graph, every other output untouched, the
network's own embedding kept as `network_embedding` for the unknown detector."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from training.whiten import fit_whitening, whitened

pytest.importorskip("onnx", reason="the graph rewrite needs the [train] extra")


def test_full_whitening_makes_the_pooled_within_label_covariance_the_identity():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6))
    labels = np.repeat(np.arange(3), 400)
    x = rng.normal(size=(1200, 6)) @ mix + 5 * rng.normal(size=(3, 6))[labels]
    mean, projection = fit_whitening(x, labels, alpha=1.0, shrink=0.0)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5, atol=1e-5)
    y = x @ projection
    centred = np.concatenate([y[labels == c] - y[labels == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(centred.T @ centred / len(centred), np.eye(6), atol=1e-3)
    # half the power: the covariance's square root is left (the within-label spread is evened, not removed)
    _, half = fit_whitening(x, labels, alpha=0.5, shrink=0.0)
    np.testing.assert_allclose(half @ half, projection, rtol=1e-3, atol=1e-4)
    out = whitened(x, mean, projection)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_whiten_rewrites_the_embedding_and_leaves_every_other_output(punks, nouns, tmp_path):
    from app.inference import OnnxModel
    from app.manifest import load_manifest, sha256_of
    from app.openset import NETWORK_EMBEDDING, LayeredMahalanobis, fit_statistics
    from app.preprocessing import load_tensor
    from tests.tiny_model import export_tiny_model
    from training.whiten import strip_whitening, whiten_model

    plain = export_tiny_model(tmp_path / "float", [punks.root, nouns.root])
    white = tmp_path / "white"
    shutil.copytree(plain, white)
    fitted = whiten_model(white, images=200)
    before, after = load_manifest(plain), load_manifest(white)
    assert after.sha256 == sha256_of(white / after.onnx_file) != before.sha256
    assert after.catalog_key != before.catalog_key  # a new embedding: catalogs need a reindex
    assert after.training["embedding_whitening"] == fitted and fitted["from_sha256"] == before.sha256
    assert fitted["images"] == 200 and fitted["data"] == [f"{punks.root}@train", f"{nouns.root}@train"]
    with pytest.raises(ValueError, match="whitened already"):
        whiten_model(white, images=200)

    files = [punks.image_path(r).read_bytes() for r in punks.rows[:5]]
    files += [nouns.image_path(r).read_bytes() for r in nouns.rows[:5]]
    x = np.stack([load_tensor(f, after.preprocessing) for f in files])
    cpu = ["CPUExecutionProvider"]
    raw, out = OnnxModel(plain, cpu).run(x), OnnxModel(white, cpu).run(x)
    assert set(out) == {*raw, NETWORK_EMBEDDING} and after.outputs == [*before.outputs, NETWORK_EMBEDDING]
    for name in raw:
        if name != "embedding":
            np.testing.assert_array_equal(out[name], raw[name], err_msg=name)
    np.testing.assert_array_equal(out[NETWORK_EMBEDDING], raw["embedding"])
    # the unknown detector reads the network's own embedding: the same scores before and after
    y = np.repeat([0, 1], 5)
    stats = fit_statistics(raw["embedding"], y) | {"embedding/z": np.array([0.0, 1.0])}
    layered = LayeredMahalanobis(["embedding"], stats)
    np.testing.assert_array_equal(layered.score(out), layered.score(raw))
    assert not np.allclose(layered.score({"embedding": out["embedding"]}), layered.score(raw))
    import onnx

    inits = {
        i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(white / "model.onnx")).graph.initializer
    }
    want = whitened(raw["embedding"], inits["whiten/mean"], inits["whiten/projection"])
    np.testing.assert_allclose(out["embedding"], want, atol=1e-5)
    assert not np.allclose(out["embedding"], raw["embedding"], atol=1e-3)

    stripped = tmp_path / "stripped"
    shutil.copytree(white, stripped)
    strip_whitening(white / "model.onnx", stripped / "model.onnx")
    after.model_copy(update={"sha256": sha256_of(stripped / "model.onnx"), "outputs": before.outputs}).write(
        stripped
    )
    np.testing.assert_array_equal(OnnxModel(stripped, cpu).run(x)["embedding"], raw["embedding"])
