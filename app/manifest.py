"""The model manifest (`model.json` beside `model.onnx`): everything serving needs, verified at load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.agreement import OverlayRule
from app.denoiser import load_denoiser
from app.errors import ModelIntegrityError
from app.preprocessing import InputFormat, PreprocessConfig
from app.views import ViewSet

MANIFEST_FILE = "model.json"
ONNX_FILE = "model.onnx"


class UnknownDetector(BaseModel):
    """Open-set check: a score per image (higher = less like any known collection); above `threshold` the
    image is called unknown. See `app.openset` for the methods."""

    method: Literal["max_probability", "energy", "mahalanobis", "knn", "multilayer"] = "max_probability"
    layers: list[str] = Field(
        [],
        description="multilayer: the outputs it scores (`embedding`, `stageI`), chosen at calibration",
    )
    threshold: float = Field(..., description="chosen on validation images of the known collections")
    target_tpr: float = Field(
        0.95, description="share of known validation images kept known at `threshold` (1 - the promise)"
    )
    temperature: float = Field(1.0, gt=0, description="logit temperature (max_probability, energy)")
    k: int = Field(10, ge=1, description="knn: distance to the k-th nearest reference embedding")
    stats_file: str | None = Field(
        None, description="sidecar .npz beside model.onnx (class means, precision, references)"
    )
    stats_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    validation: dict = Field({}, description="figures on validation data when the threshold was chosen")


class Calibration(BaseModel):
    """Temperature scaling: served probabilities are softmax(logits / temperature)."""

    method: Literal["temperature"] = "temperature"
    temperature: float = Field(1.0, gt=0)
    fitted_on: str = ""
    ece_before: float | None = None
    ece_after: float | None = None


class CopyDetector(BaseModel):
    """Copy verdict: a catalog token whose instance-space cosine to the query reaches the threshold of its
    collection (`per_collection`, else the global `threshold`) is a copy, and so is a checked candidate
    whose direct check reaches its collection's `colours_min`, `overlay_min` or `layout_min`."""

    threshold: float = Field(
        ...,
        ge=-1,
        le=1.01,
        description="for collections without their own (a hair above 1: nothing is a copy)",
    )
    per_collection: dict[str, float] = Field(
        {}, description="thresholds calibrated per collection (pixel art needs stricter ones than paintings)"
    )
    dihedral: bool = Field(
        False, description="queries are embedded in 8 views (rotations x mirror); each token keeps its best"
    )
    peel: bool = Field(
        False, description="one more query view: the image inside its uniform frame or canvas, if any"
    )
    deskew: bool = Field(False, description="one more query view: the image turned upright, if it is skewed")
    background: bool = Field(
        False, description="one more query view: the image on the model's alpha background (see app/views.py)"
    )
    hues: int = Field(
        0, ge=0, le=11, description="this many more query views: the image with its hues turned evenly round"
    )
    colours_min: dict[str, float] = Field(
        {},
        description="per collection: a checked painted candidate whose figure the aligned query shows in its "
        "colours (up to one global hue/saturation/brightness change) at this share or more is a copy whatever "
        "its score (app/agreement.py; none: never decides)",
    )
    overlay_min: dict[str, float] = Field(
        {},
        description="per collection: a checked painted candidate whose colour agreement, with one small "
        "region that no other candidate shows forgiven (a pasted badge, logo or emoji: app/agreement.py: "
        "overlay), reaches this share is a copy whatever its score (none: never decides)",
    )
    overlay_witness: Literal["together", "one"] = Field(
        "together",
        description="who must show a pasted-on region's pixels for `overlay` not to forgive it: the other "
        "candidates together (the first rule, which the `overlay_min` of models calibrated before it was "
        "chosen assume) or one of them (app/agreement.py: overlay)",
    )
    overlay_beyond: float | None = Field(
        None,
        ge=0,
        le=1,
        description="a pasted-on region is forgiven only when, outside it, the query shows at most this share "
        "of the figure beyond it (over the candidate's background, neither background shown; app/agreement.py: "
        "overlay); none: not looked at (models calibrated before it was chosen)",
    )
    overlay_lines: bool = Field(
        False,
        description="regions that line up as a line of text in one colour (a caption's letters) are one "
        "pasted-on region for `overlay` (app/agreement.py: text_lines); false: each region on its own (models "
        "calibrated before it was chosen)",
    )
    overlay_compact: bool = Field(
        False,
        description="a compact pasted-on region (a sticker, badge or emoji: app/agreement.py: compact) may cover "
        "up to `COMPACT_MAX` of the figure for `overlay`; false: every region `OVERLAY_MAX` (models calibrated "
        "before it was chosen)",
    )
    layout_min: dict[str, float] = Field(
        {},
        description="per collection: a checked sprite candidate whose layout agreement reaches this is a copy "
        "whatever its score (none: its layout never decides)",
    )
    margins: dict[str, float] = Field(
        {},
        description="by check kind (colours: paintings, layout: sprites, none): how many tail scales of the "
        "distinct validation tokens' values each cut was raised above them, chosen by cross-fitting; overlay: "
        "the paintings' overlay cut alone, where it was lowered below theirs within a share of the budget "
        "(training/calibrate.py: choose_margins, overlay_margin)",
    )
    crossfit_false_copy: dict[str, float] = Field(
        {},
        description="by check kind: the false-copy rate expected on new distinct tokens, (k+1)/(n+1) of the "
        "validation tokens each judged by cuts chosen without it",
    )
    crossfit_called: dict[str, list[int]] = Field(
        {},
        description="by check kind: [k, n], the validation tokens the cross-fit called copies and those it "
        "judged (their exact 95 % interval: `calibration.json`, `crossfit_interval_95`)",
    )
    precision: float | None = Field(None, description="on the held-out calibration pairs")
    recall: float | None = Field(None, description="on the held-out calibration pairs")
    target: str = ""
    calibrated_on: str = ""

    @property
    def views(self) -> ViewSet:
        """The views a query is embedded in, as calibrated."""
        return ViewSet(
            dihedral=self.dihedral,
            peel=self.peel,
            deskew=self.deskew,
            background=self.background,
            hues=self.hues,
        )

    @property
    def overlay_rule(self) -> OverlayRule:
        """How `overlay` forgives a pasted-on region, as calibrated (app/agreement.py)."""
        return OverlayRule(
            self.overlay_witness, self.overlay_beyond, self.overlay_lines, self.overlay_compact
        )

    def threshold_for(self, collection: str) -> float:
        """The threshold a match from `collection` must reach."""
        return self.per_collection.get(collection, self.threshold)

    @property
    def check_minima(self) -> dict[str, dict[str, float]]:
        """Each direct check's per-collection minima, by check (app/verify.py: `Check`'s fields)."""
        return {"colours": self.colours_min, "overlay": self.overlay_min, "layout": self.layout_min}

    def confirmed(
        self, collection: str, layout: float | None, colours: float | None, overlay: float | None = None
    ) -> bool:
        """Whether a candidate's direct check alone makes it a copy (its collection's calibrated minimum)."""
        return self.confirming(collection, layout, colours, overlay) is not None

    def confirming(
        self, collection: str, layout: float | None, colours: float | None, overlay: float | None = None
    ) -> str | None:
        """The direct check (a `check_minima` key) whose value reaches its collection's minimum, the first
        in `check_minima`'s order; None when none does."""
        values = {"layout": layout, "colours": colours, "overlay": overlay}
        return next(
            (
                kind
                for kind, minima in self.check_minima.items()
                if values[kind] is not None
                and minima.get(collection) is not None
                and values[kind] >= minima[collection]
            ),
            None,
        )


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    schema_version: int = 1
    name: str
    version: str
    architecture: str
    labels: list[str] = Field(..., min_length=2)
    input_size: int
    input_name: str = "input"
    input_format: InputFormat = Field(
        "float32_nchw",
        description="what the graph takes: float32_nchw, the normalised [N,3,S,S] tensors training uses; "
        "uint8_nhwc, the resized pixels [N,S,S,3], cast and normalised inside the graph with the "
        "manifest's mean/std (4x fewer bytes in, no numpy normalising per request)",
    )
    outputs: list[str] = ["probabilities", "embedding"]
    embedding_dim: int
    instance_dim: int = Field(0, description="size of the `instance` output (0: the model has none)")
    preprocessing: PreprocessConfig
    onnx_file: str = ONNX_FILE
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    vectors_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of an earlier graph whose embeddings this one gives bit for bit (a rewrite that "
        "only added outputs or re-laid constants): catalog vectors made by it stay valid",
    )
    unknown: UnknownDetector | None = None
    calibration: Calibration | None = None
    copies: CopyDetector | None = None
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
        if self.instance_dim and "instance" not in self.outputs:
            raise ValueError("instance_dim is set but the outputs list no `instance`")
        if self.unknown is not None and self.unknown.method == "multilayer":
            missing = [name for name in self.unknown.layers if name not in self.outputs]
            if not self.unknown.layers or missing:
                raise ValueError(
                    f"unknown.method multilayer needs layers among the outputs (layers "
                    f"{self.unknown.layers}, missing {missing}); run `nftlens stage-stats` and calibrate"
                )
        return self

    @property
    def catalog_key(self) -> str:
        """The key of this model's vectors in a catalog: the graph that first gave these embeddings."""
        return self.vectors_sha256 or self.sha256

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
    """Read `model.json`; with `verify`, refuse it unless model.onnx exists and its sha256 matches, and
    likewise the learned denoiser its preprocessing names (which is then registered for `preprocess`)."""
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
        verify_file(model_dir / manifest.onnx_file, manifest.sha256)
        denoise = manifest.preprocessing.denoise
        if denoise.method == "autoencoder":
            load_denoiser(model_dir / (denoise.model_file or ""), denoise.model_sha256)
    return manifest


def verify_file(path: Path, expected: str | None) -> None:
    """Refuse a file the manifest names unless it exists and its sha256 is the recorded one."""
    if not path.is_file():
        raise ModelIntegrityError(f"{path} not found")
    actual = sha256_of(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"{path} sha256 {actual[:12]}… does not match the manifest's {(expected or 'none')[:12]}…: refusing to load"
        )
