"""The learned denoiser (`denoise.method: autoencoder`): an ONNX Runtime session, never torch.

A fully convolutional residual autoencoder (trained by `nftlens train-denoiser`) maps float32 RGB NCHW in
[0, 1] to the same. `Denoiser` wraps it for the uint8 HxWx3 step of the preprocessing contract.

Sessions live in a registry keyed by the ONNX file's sha256, which is what a `DenoiseConfig` names: a
manifest loader (`app.manifest.load_manifest`) or a tool (`load_denoiser_dir`) verifies the file and
registers it once, and `app.preprocessing.denoise` looks it up by sha256, so training and serving run the
same session on the same pixels. Nothing here resolves paths at preprocess time.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from app.errors import ModelIntegrityError

if TYPE_CHECKING:
    from app.preprocessing import DenoiseConfig

DENOISER_MANIFEST = "denoiser.json"
DENOISER_ONNX = "denoiser.onnx"
MULTIPLE = 4  # two stride-2 downsamplings: H and W are edge-padded up to a multiple of this


class DenoiserManifest(BaseModel):
    """`denoiser.json` beside the ONNX file: what it is, what it was trained on and how well it did."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str = "nftlens-denoiser"
    onnx_file: str = DENOISER_ONNX
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    input: str = "float32 RGB NCHW in [0, 1], any H and W (the service edge-pads to a multiple of 4)"
    degradations: dict = {}
    training: dict = {}
    val: dict = {}
    command: str = ""


class Denoiser:
    """One verified ONNX denoiser: uint8 HxWx3 RGB in, uint8 HxWx3 RGB out (same size)."""

    def __init__(self, path: Path, sha256: str, threads: int = 1):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # a preprocessing step: the classifier owns the other cores
        opts.inter_op_num_threads = 1
        self.path, self.sha256 = Path(path), sha256
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        ph, pw = -h % MULTIPLE, -w % MULTIPLE
        x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
        if ph or pw:
            x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="edge")
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        (y,) = self.session.run(None, {self.input_name: x})
        y = y[0, :, :h, :w].transpose(1, 2, 0)
        return np.ascontiguousarray(np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8))


_LOADED: dict[str, Denoiser] = {}
_LOCK = threading.Lock()


def load_denoiser(path: str | Path, sha256: str | None) -> Denoiser:
    """Verify `path` against `sha256` (missing file or mismatch: ModelIntegrityError) and register it;
    a file whose sha256 is already registered reuses that session."""
    from app.manifest import verify_file  # lazy: app.manifest imports app.preprocessing, which imports us

    verify_file(Path(path), sha256)
    with _LOCK:
        if sha256 not in _LOADED:
            _LOADED[sha256] = Denoiser(Path(path), sha256)
        return _LOADED[sha256]


def load_denoiser_dir(folder: str | Path) -> tuple[DenoiserManifest, Denoiser]:
    """Read `denoiser.json` in `folder`, verify its ONNX file and register it."""
    path = Path(folder) / DENOISER_MANIFEST
    if not path.is_file():
        raise ModelIntegrityError(f"{path} not found: train one with `nftlens train-denoiser`")
    manifest = DenoiserManifest.model_validate(json.loads(path.read_text()))
    return manifest, load_denoiser(Path(folder) / manifest.onnx_file, manifest.sha256)


def autoencoder_config(folder: str | Path, model_dir: str | Path | None = None) -> DenoiseConfig:
    """Verify and register the denoiser in `folder`; the `DenoiseConfig` naming it, its file relative to
    `model_dir` (the classifier folder whose manifest will carry it; default: as given)."""
    from app.preprocessing import DenoiseConfig  # lazy: app.preprocessing imports this module

    manifest, _ = load_denoiser_dir(folder)
    path = Path(folder) / manifest.onnx_file
    rel = os.path.relpath(path.resolve(), Path(model_dir).resolve()) if model_dir else str(path)
    return DenoiseConfig(method="autoencoder", model_file=rel, model_sha256=manifest.sha256)


def denoiser_for(sha256: str | None) -> Denoiser:
    """The registered denoiser with this sha256; refuses one nobody loaded and verified."""
    try:
        return _LOADED[sha256 or ""]
    except KeyError:
        raise ModelIntegrityError(
            f"denoiser {(sha256 or 'none')[:12]}… is not loaded: load the model manifest that names it "
            "(app.manifest.load_manifest) or call app.denoiser.load_denoiser(path, sha256)"
        ) from None
