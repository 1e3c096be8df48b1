"""The model manifest (`model.json` beside `model.onnx`): everything serving needs, verified at load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import ModelIntegrityError
from app.preprocessing import PreprocessConfig

MANIFEST_FILE = "model.json"
ONNX_FILE = "model.onnx"


class UnknownDetector(BaseModel):
    """Open-set check: `score = 1 - max probability`; above `threshold` the image is called unknown."""

    method: str = "max_probability"
    threshold: float = Field(
        ..., ge=0, le=1, description="calibrated on validation to keep `target_tpr` of known images"
    )
    target_tpr: float = 0.95


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    schema_version: int = 1
    name: str
    version: str
    architecture: str
    labels: list[str] = Field(..., min_length=2)
    input_size: int
    input_name: str = "input"
    outputs: list[str] = ["probabilities", "embedding"]
    embedding_dim: int
    preprocessing: PreprocessConfig
    onnx_file: str = ONNX_FILE
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    unknown: UnknownDetector | None = None
    data_cards: list[dict] = []
    metrics: dict = {}
    robustness: dict = {}
    training: dict = {}
    command: str = ""
    library_versions: dict[str, str] = {}
    created_at: str = ""

    @model_validator(mode="after")
    def _input_size_matches(self) -> ModelManifest:
        if self.preprocessing.resize.size != self.input_size:
            raise ValueError(
                f"input_size {self.input_size} != preprocessing.resize.size {self.preprocessing.resize.size}"
            )
        return self

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(model_dir: str | Path, verify: bool = True) -> ModelManifest:
    """Read `model.json`; with `verify`, refuse it unless model.onnx exists and its sha256 matches."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelIntegrityError(
            f"{path} not found: export a model with `nftlens export` or run `make model`"
        )
    try:
        manifest = ModelManifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelIntegrityError(f"{path} is not a valid model manifest: {exc}") from exc
    if verify:
        onnx_path = model_dir / manifest.onnx_file
        if not onnx_path.is_file():
            raise ModelIntegrityError(f"{onnx_path} not found")
        actual = sha256_of(onnx_path)
        if actual != manifest.sha256:
            raise ModelIntegrityError(
                f"{onnx_path} sha256 {actual[:12]}… does not match the manifest's {manifest.sha256[:12]}…: refusing to load"
            )
    return manifest
