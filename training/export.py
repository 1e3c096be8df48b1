"""Export a checkpoint to ONNX (probabilities + embedding), verify it, and write the manifest."""

from __future__ import annotations

import contextlib
import json
import platform
import shlex
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml

from app.manifest import ONNX_FILE, ModelManifest, sha256_of
from app.preprocessing import PreprocessConfig, load_tensor
from training.models import ExportHead, NftNet, create_net, embedding_dim
from training.train import REFIT_FILE

OPSET = 17


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree beyond the tolerances."""


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "timm", "onnx", "onnxruntime", "numpy", "opencv-python-headless", "pillow"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def load_checkpoint(path: str | Path) -> tuple[NftNet, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = create_net(ckpt["arch"], len(ckpt["labels"]), "none", ckpt.get("instance_dim", 0))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def parity_check(
    wrapped: torch.nn.Module, onnx_path: Path, images: list[Path], cfg: PreprocessConfig
) -> dict[str, float]:
    """Compare torch and ONNX Runtime on real images: max |Δprob| <= 1e-4 and, for every embedding output,
    min cosine >= 0.9999."""
    batch = np.stack([load_tensor(p.read_bytes(), cfg) for p in images])
    names = wrapped.output_names
    with torch.no_grad():
        torch_out = dict(zip(names, (t.numpy() for t in wrapped(torch.from_numpy(batch))), strict=True))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_out = dict(zip(names, sess.run(names, {"input": batch}), strict=True))

    def min_cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())

    result = {
        "images": len(images),
        "max_abs_prob_diff": float(np.abs(torch_out["probabilities"] - ort_out["probabilities"]).max()),
        "min_embedding_cosine": min_cos(torch_out["embedding"], ort_out["embedding"]),
    }
    if "instance" in names:
        result["min_instance_cosine"] = min_cos(torch_out["instance"], ort_out["instance"])
    if result["max_abs_prob_diff"] > 1e-4 or min(v for k, v in result.items() if "cosine" in k) < 0.9999:
        raise ParityError(f"torch vs ONNX Runtime disagree: {result}")
    return result


def reproduce_command(checkpoint: Path, out_dir: Path) -> str:
    """The commands that rebuild this model: every training stage from its run's saved config (a run that
    starts from `file:RUN/best.pt` of another run is preceded by that run; a `refit-head` run by the run it
    refitted), then export."""
    export_cmd = f"nftlens export {shlex.quote(str(checkpoint))} --out {shlex.quote(str(out_dir))}"
    return " && ".join([*training_stages(Path(checkpoint)), export_cmd])


def training_stages(checkpoint: Path) -> list[str]:
    """The training commands that produced `checkpoint`, first stage first."""
    stages, run, seen = [], checkpoint.parent, set()
    refit = run / REFIT_FILE
    if refit.is_file():
        r = json.loads(refit.read_text())
        return [
            *training_stages(Path(r["from"])),
            f"nftlens refit-head {shlex.quote(r['from'])} --out {shlex.quote(str(run))} "
            f"--epochs {r['epochs']} --lr {r['lr']}",
        ]
    while (run / "config.yaml").is_file() and run not in seen:
        seen.add(run)
        stages.insert(0, f"nftlens train --config {shlex.quote(str(run / 'config.yaml'))}")
        pretrained = str(yaml.safe_load((run / "config.yaml").read_text()).get("pretrained", ""))
        if not pretrained.startswith("file:"):
            break
        run = Path(pretrained.removeprefix("file:")).parent
    return stages


def export(
    checkpoint: str | Path, out_dir: str | Path, parity_images: list[Path], command: str | None = None
) -> ModelManifest:
    """Write model.onnx + model.json into `out_dir` and return the manifest."""
    model, ckpt = load_checkpoint(checkpoint)
    cfg = PreprocessConfig.model_validate(ckpt["config"]["preprocess"])
    size = cfg.resize.size
    wrapped = ExportHead(model).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_FILE
    outputs = wrapped.output_names
    torch.onnx.export(
        wrapped,
        (torch.zeros(2, 3, size, size),),
        str(onnx_path),
        opset_version=OPSET,
        dynamo=False,
        input_names=["input"],
        output_names=outputs,
        dynamic_axes={"input": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
    )
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
    parity = parity_check(wrapped, onnx_path, parity_images, cfg)
    emb_dim = embedding_dim(model, size)
    train_cfg = ckpt["config"]
    manifest = ModelManifest(
        name=train_cfg["name"],
        version=train_cfg["version"],
        architecture=ckpt["arch"],
        labels=ckpt["labels"],
        input_size=size,
        outputs=outputs,
        embedding_dim=emb_dim,
        instance_dim=ckpt.get("instance_dim", 0),
        preprocessing=cfg,
        sha256=sha256_of(onnx_path),
        data_cards=ckpt.get("data_cards", []),
        metrics={"val": {k: ckpt["val"][k] for k in ("accuracy", "macro_f1")}, "export_parity": parity},
        training={"config": train_cfg, "best_epoch": ckpt["epoch"] + 1, "opset": OPSET},
        command=command or reproduce_command(Path(checkpoint), out_dir),
        library_versions=library_versions(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    manifest.write(out_dir)
    return manifest
