"""The learned denoiser: trains and exports through the real pipeline, runs in the shared preprocessing
path through ONNX Runtime, and is refused when its file is missing or not the one the manifest names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import app.denoiser
from app.denoiser import DENOISER_MANIFEST, DenoiserManifest, autoencoder_config, load_denoiser_dir
from app.errors import ModelIntegrityError
from app.manifest import MANIFEST_FILE, load_manifest, sha256_of
from app.preprocessing import DenoiseConfig, PreprocessConfig, ResizeConfig, denoise, load_tensor

torch = pytest.importorskip("torch", reason="training the denoiser needs the [train] extra")


@pytest.fixture(scope="module")
def denoiser_dir(tmp_path_factory, punks) -> Path:
    """A tiny denoiser trained for two steps on real training punks by `train_denoiser`, exported."""
    from training.denoiser import train_denoiser

    out = tmp_path_factory.mktemp("denoiser")
    spec = [f"{punks.root}@train"]
    train_denoiser(out, spec, [f"{punks.root}@val"], steps=2, base=4, val_images=8, command="tests")
    return out


def _classifier_with_denoiser(src: Path, dst: Path, denoiser_dir: Path) -> Path:
    """A copy of the classifier folder whose manifest names the denoiser (copied beside model.onnx)."""
    dst.mkdir()
    (dst / "model.onnx").symlink_to((src / "model.onnx").resolve())
    shutil.copy(denoiser_dir / "denoiser.onnx", dst / "denoiser.onnx")
    manifest = json.loads((src / MANIFEST_FILE).read_text())
    named = autoencoder_config(denoiser_dir).model_copy(update={"model_file": "denoiser.onnx"})
    manifest["preprocessing"]["denoise"] = named.model_dump()
    (dst / MANIFEST_FILE).write_text(json.dumps(manifest))
    return dst


def test_denoiser_trains_a_step_and_exports_an_onnx_graph_ort_runs(denoiser_dir, punks):
    from training.denoiser import DenoiserNet, load_images, sample_batch, train_step

    net = DenoiserNet(base=4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    images = load_images([f"{punks.root}@train"], 32)[f"{punks.root}@train"]
    noisy, clean = sample_batch(images, 96, 16 * 24 * 24, np.random.default_rng(0))
    assert noisy.shape == clean.shape and noisy.dtype == np.float32 and not np.array_equal(noisy, clean)
    assert np.isfinite(train_step(net, opt, noisy, clean))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))

    manifest, served = load_denoiser_dir(denoiser_dir)
    assert manifest.sha256 == sha256_of(denoiser_dir / manifest.onnx_file)
    assert manifest.training["steps"] == 2 and "gauss_sigma25" in next(iter(manifest.val["psnr"].values()))
    odd = images[0][:23, :21]  # not a multiple of 4: padded and cropped back
    out = served(odd)
    assert out.shape == odd.shape and out.dtype == np.uint8


def test_serving_with_autoencoder_equals_the_training_path(denoiser_dir, model_dir, punks, nouns, tmp_path):
    from training.loader import ImageDataset

    folder = _classifier_with_denoiser(model_dir, tmp_path / "model", denoiser_dir)
    app.denoiser._LOADED.clear()  # only loading the manifest may register it now
    cfg = load_manifest(folder).preprocessing
    assert cfg.denoise.method == "autoencoder" and cfg.denoise.model_file == "denoiser.onnx"

    paths = [punks.image_path(punks.rows[7804]), nouns.image_path(nouns.rows[0])]
    ds = ImageDataset(paths, [0, 1], cfg)
    plain = cfg.model_copy(update={"denoise": DenoiseConfig()})
    for i, path in enumerate(paths):
        served = load_tensor(path.read_bytes(), cfg)  # what app.inference feeds ONNX Runtime
        assert ds[i][0].numpy().tobytes() == served.tobytes()
        assert not np.array_equal(served, load_tensor(path.read_bytes(), plain))  # the denoiser ran


def test_a_denoiser_file_with_another_sha256_is_refused(denoiser_dir, model_dir, tmp_path):
    folder = _classifier_with_denoiser(model_dir, tmp_path / "model", denoiser_dir)
    data = bytearray((folder / "denoiser.onnx").read_bytes())
    data[-1] ^= 0xFF
    (folder / "denoiser.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match"):
        load_manifest(folder)

    manifest = DenoiserManifest.model_validate_json((denoiser_dir / DENOISER_MANIFEST).read_text())
    copy = tmp_path / "wrong"
    shutil.copytree(denoiser_dir, copy)
    (copy / DENOISER_MANIFEST).write_text(manifest.model_copy(update={"sha256": "0" * 64}).model_dump_json())
    with pytest.raises(ModelIntegrityError, match="does not match"):
        load_denoiser_dir(copy)


def test_a_missing_denoiser_file_is_refused(denoiser_dir, model_dir, tmp_path):
    folder = _classifier_with_denoiser(model_dir, tmp_path / "model", denoiser_dir)
    (folder / "denoiser.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match="not found"):
        load_manifest(folder)


def test_an_unregistered_denoiser_is_refused_at_preprocess_time():
    cfg = DenoiseConfig(method="autoencoder", model_file="denoiser.onnx", model_sha256="1" * 64)
    with pytest.raises(ModelIntegrityError, match="not loaded"):
        denoise(np.zeros((8, 8, 3), np.uint8), cfg)
    with pytest.raises(ValidationError, match="model_file and model_sha256"):
        PreprocessConfig(resize=ResizeConfig(size=32), denoise=DenoiseConfig(method="autoencoder"))
