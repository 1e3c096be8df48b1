"""Training and serving compute byte-identical network inputs for the same file."""

from __future__ import annotations

import numpy as np
import pytest

from app.preprocessing import CompressionConfig, DenoiseConfig, PreprocessConfig, ResizeConfig, load_tensor

torch = pytest.importorskip("torch", reason="the training loader needs the [train] extra")


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(resize=ResizeConfig(size=64)),
        PreprocessConfig(
            compression=CompressionConfig(format="jpeg", quality=30),
            denoise=DenoiseConfig(method="bilateral"),
            alpha_background="#638596",
        ),
    ],
    ids=["plain", "jpeg30+bilateral"],
)
def test_training_loader_equals_service_path(punks, nouns, cfg):
    from training.loader import ImageDataset

    rows = [punks.rows[7804], punks.rows[1], nouns.rows[0]]
    paths = [punks.image_path(rows[0]), punks.image_path(rows[1]), nouns.image_path(rows[2])]
    ds = ImageDataset(paths, [0, 1, 2], cfg)
    for i, path in enumerate(paths):
        from_loader = ds[i][0].numpy()
        from_service = load_tensor(path.read_bytes(), cfg)  # what app.inference feeds ONNX Runtime
        assert from_loader.dtype == from_service.dtype == np.float32
        assert from_loader.tobytes() == from_service.tobytes()


def test_uint8_input_graph_equals_the_float_graph_on_the_training_path(punks, nouns, tmp_path):
    """The uint8 contract: pixels into the rewritten graph give the outputs that the training path's float
    tensors give the exported graph; float tensors into it (views, occlusions) are converted exactly."""
    import shutil

    from app.inference import OnnxModel
    from app.manifest import load_manifest, sha256_of
    from app.preprocessing import decode_and_preprocess
    from tests.tiny_model import export_tiny_model
    from training.uint8input import add_uint8_input

    float_dir = export_tiny_model(tmp_path / "float", [punks.root, nouns.root])
    pixels_dir = tmp_path / "pixels"
    shutil.copytree(float_dir, pixels_dir)
    add_uint8_input(pixels_dir)
    m = load_manifest(pixels_dir)
    assert m.input_format == "uint8_nhwc" and m.sha256 == sha256_of(pixels_dir / m.onnx_file)
    assert m.training["uint8_input_from"]["sha256"] == load_manifest(float_dir).sha256

    cpu = ["CPUExecutionProvider"]
    reference, served = OnnxModel(float_dir, cpu), OnnxModel(pixels_dir, cpu)
    cfg = m.preprocessing
    files = [punks.image_path(r).read_bytes() for r in punks.rows[:6]]
    files += [nouns.image_path(r).read_bytes() for r in nouns.rows[:6]]
    tensors = np.stack([load_tensor(f, cfg) for f in files])  # what training feeds the network
    pixels = np.stack([decode_and_preprocess(f, cfg, fmt="uint8_nhwc")[1] for f in files])
    assert pixels.dtype == np.uint8 and pixels.shape == (len(files), m.input_size, m.input_size, 3)
    want = reference.run(tensors)
    for got in (served.run(pixels), served.run(tensors)):
        for name in m.outputs:
            np.testing.assert_allclose(got[name], want[name], atol=1e-4, err_msg=name)
    assert set(want) == set(m.outputs)


def test_uint8_input_retiles_per_channel_constants_without_changing_any_output(
    punks, nouns, tmp_path, monkeypatch
):
    """A pixels-in graph whose normalising constants are per channel, [1,3,1,1] (as earlier exports stored
    them), is rewritten with the constants tiled to [1,3,S,S]: every output bit for bit the same, so the
    catalog key stays, and a second run changes nothing."""
    import onnx
    from onnx import numpy_helper

    from app.inference import OnnxModel
    from app.manifest import load_manifest, sha256_of
    from tests.tiny_model import export_tiny_model
    from training.uint8input import PREFIX, add_uint8_input

    model_dir = add_uint8_input(export_tiny_model(tmp_path / "m", [punks.root, nouns.root]))
    m = load_manifest(model_dir)
    path = model_dir / m.onnx_file
    model = onnx.load(str(path))
    consts = {i.name: i for i in model.graph.initializer if i.name.startswith(PREFIX)}
    assert {tuple(c.dims) for c in consts.values()} == {(1, 3, m.input_size, m.input_size)}
    for c in consts.values():  # back to the per-channel layout of earlier exports
        c.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(c)[:, :, :1, :1].copy(), c.name))
    onnx.save(model, str(path))
    old = m.model_copy(update={"sha256": sha256_of(path)})
    old.write(model_dir)
    pixels = np.random.default_rng(1).integers(0, 256, (5, m.input_size, m.input_size, 3), dtype=np.uint8)
    want = OnnxModel(model_dir, ["CPUExecutionProvider"]).run(pixels)

    add_uint8_input(model_dir)
    new = load_manifest(model_dir)
    assert new.sha256 == sha256_of(path) != old.sha256
    assert new.catalog_key == old.catalog_key and new.training["constants_tiled_from"]["sha256"] == old.sha256
    got = OnnxModel(model_dir, ["CPUExecutionProvider"]).run(pixels)
    assert all(np.array_equal(got[k], want[k]) for k in m.outputs)
    add_uint8_input(model_dir)
    assert load_manifest(model_dir) == new

    # outputs that would change (here: a comparison that reports a difference) give a new catalog key
    import training.uint8input as rewrite

    onnx.save(model, str(path))
    old.write(model_dir)
    answers = iter([[np.zeros(1)], [np.ones(1)]])
    monkeypatch.setattr(rewrite, "_outputs", lambda graph, size: next(answers))
    add_uint8_input(model_dir)
    assert load_manifest(model_dir).vectors_sha256 is None
    assert load_manifest(model_dir).catalog_key == sha256_of(path) != old.catalog_key
    # a pixels-in graph without the constants is refused, not silently left as it was
    model.graph.ClearField("initializer")
    onnx.save(model, str(path))
    old.model_copy(update={"sha256": sha256_of(path)}).write(model_dir)
    with pytest.raises(ValueError, match="lacks"):
        add_uint8_input(model_dir)


def test_stage_statistics_outputs_are_each_stages_channel_mean_and_std(punks, nouns, tmp_path):
    """`nftlens stage-stats` adds per-stage channel statistics that equal the trained network's own stages
    (torch forward hooks), and leaves every existing output as it was."""
    import shutil

    import torch

    from app.inference import OnnxModel
    from app.manifest import load_manifest, sha256_of
    from tests.tiny_model import export_tiny_model
    from training.models import create_net
    from training.stagestats import add_stage_statistics

    float_dir = export_tiny_model(tmp_path / "float", [punks.root, nouns.root])
    staged = tmp_path / "staged"
    shutil.copytree(float_dir, staged)
    assert add_stage_statistics(staged) == ["stage0", "stage1", "stage2", "stage3"]
    assert add_stage_statistics(staged) == ["stage0", "stage1", "stage2", "stage3"]  # idempotent
    m = load_manifest(staged)
    assert m.sha256 == sha256_of(staged / m.onnx_file)
    assert m.training["stage_statistics_from"]["sha256"] == load_manifest(float_dir).sha256
    assert m.catalog_key == load_manifest(float_dir).sha256  # same vectors: catalogs stay valid

    files = [punks.image_path(r).read_bytes() for r in punks.rows[:4]]
    files += [nouns.image_path(r).read_bytes() for r in nouns.rows[:4]]
    x = np.stack([load_tensor(f, m.preprocessing) for f in files])
    cpu = ["CPUExecutionProvider"]
    before, after = OnnxModel(float_dir, cpu).run(x), OnnxModel(staged, cpu).run(x)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)

    ckpt = torch.load(tmp_path / "float" / "run" / "best.pt", weights_only=False)
    net = create_net("resnet18", len(ckpt["labels"]), instance_dim=ckpt["instance_dim"])
    net.load_state_dict(ckpt["model"])
    net.eval()
    feats = []
    stages = [getattr(net.backbone, f"layer{i}") for i in range(1, 5)]
    hooks = [s.register_forward_hook(lambda _m, _i, o: feats.append(o)) for s in stages]
    with torch.no_grad():
        net.forward_all(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    for i, f in enumerate(feats):
        want = torch.cat([f.mean((2, 3)), f.std((2, 3), unbiased=False)], 1).numpy()
        np.testing.assert_allclose(after[f"stage{i}"], want, atol=1e-4, rtol=1e-3, err_msg=f"stage{i}")


def test_pixels_survive_normalising_and_back():
    from app.preprocessing import NormalizeConfig, normalize, to_pixels

    px = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x = np.stack([normalize(p, NormalizeConfig()) for p in px])
    np.testing.assert_array_equal(to_pixels(x, NormalizeConfig()), px)
