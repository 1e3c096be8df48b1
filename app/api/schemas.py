"""The HTTP contract: response models, the one error body, and which error codes each route declares.

These models are what `/openapi.json` promises; the routes answer through them, so the document cannot
drift from the responses.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

from app.manifest import ModelManifest

# Letters, digits, `_`, `-` and `.`, not starting with a dot (so `.` and `..` are never names: they would
# be path segments no client can address).
NAME_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$"
NAME_RULE = "1-128 of A-Z a-z 0-9 _ - . not starting with a dot"
ERROR_STATUSES: dict[int, str] = {
    400: "invalid_image, malformed_body or invalid_cursor: bytes the schema cannot judge were wrong",
    401: "unauthorized: the write needs a valid X-API-Key header",
    404: "not_found: no such token or collection",
    409: "conflict: the token was embedded by another model, was stored without its image, or the model "
    "has no copy head",
    413: "too_large: body bytes, image pixels, metadata bytes or file count over the limit",
    415: "unsupported_media_type: not an image type the service decodes",
    422: "invalid_parameters: a parameter or form field is missing or invalid",
    503: "not_ready (loading, or the batching loop restarting) or overloaded (queue full, deadline passed); "
    "retry after Retry-After seconds",
}
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(..., description="machine-readable code, e.g. invalid_image (see the README's table)")
    detail: Any = Field(
        ..., description="what went wrong, for people; a list of {loc, msg} for bad parameters"
    )


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its `$defs` inlined, for request bodies documented by hand."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(schema)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entry declaring `statuses` as ErrorBody answers (503s carry Retry-After)."""
    return {
        s: {
            "model": ErrorBody,
            "description": ERROR_STATUSES[s],
            **({"headers": RETRY_AFTER} if s == 503 else {}),
        }
        for s in statuses
    }


IMAGE_ERRORS = (400, 413, 415, 422, 503)  # routes that read an uploaded image


class TokenRef(BaseModel):
    collection: str
    token_id: str


class TokenMetadata(BaseModel):
    """What PUT accepts as a token's metadata: every field optional (omit it rather than send null); other
    keys are ignored."""

    name: str = ""
    image_url: str = ""
    # one JSON type list, not anyOf: a client generator (and Schemathesis) reads it as one field
    attributes: Annotated[dict[str, Any] | list[Any], WithJsonSchema({"type": ["object", "array"]})] = Field(
        default_factory=dict
    )

    def stored(self) -> dict:
        """The fields that were given, as stored and returned."""
        return self.model_dump(exclude_defaults=True)


class BulkTokenSpec(BaseModel):
    """One entry of bulk PUT /tokens' `tokens` field."""

    collection: str = Field(..., pattern=NAME_PATTERN)
    token_id: str = Field(..., pattern=NAME_PATTERN)
    metadata: TokenMetadata = Field(default_factory=TokenMetadata)


class TokenOut(TokenRef):
    metadata: dict[str, Any]
    model: str = Field(..., description="name@version of the model that embedded it")
    model_sha256: str = Field(
        ..., description="the catalog's key: sha256 of that model's ONNX file, or its `vectors_sha256`"
    )
    created_at: str
    updated_at: str
    vector: list[float] | None = Field(None, description="the collection embedding (only with vector=true)")


class TokenPage(BaseModel):
    tokens: list[TokenOut]
    next_cursor: str | None = Field(
        ..., description="pass back as `cursor` for the next page; null at the end"
    )


class CollectionCount(BaseModel):
    name: str
    tokens: int


class Collections(BaseModel):
    collections: list[CollectionCount]


class TokenDeleted(TokenRef):
    deleted: bool


class CollectionDeleted(BaseModel):
    collection: str
    deleted: int = Field(..., description="how many tokens were deleted")


class BulkItemWritten(BaseModel):
    index: int = Field(..., description="position of the file in the request")
    filename: str
    status: Literal[200]
    token: TokenOut


class BulkItemFailed(ErrorBody):
    index: int
    filename: str | None = Field(None, description="absent for a `tokens` entry without a file")
    status: int = Field(..., description="the HTTP status this item alone would have got")
    collection: str | None = None
    token_id: str | None = None


class BulkPut(BaseModel):
    written: int
    results: list[BulkItemWritten | BulkItemFailed]


class LabelProbability(BaseModel):
    label: str
    probability: float


class ModelRef(BaseModel):
    name: str
    version: str


class UnknownVerdict(BaseModel):
    method: str
    score: float
    threshold: float
    is_unknown: bool


class CopyMatch(TokenRef):
    score: float
    threshold: float = Field(
        ..., description="its collection's score threshold (above 1: there only a direct check decides)"
    )
    exact: bool = Field(..., description="the same pixels (fingerprint match)")
    is_copy: bool
    layout: float | None = Field(
        None,
        description="pixel-art candidates: share of the token's pixels whose colour layout and palette the "
        "image shows (0-1; one global colour change allowed); candidates at 0.9 or above are ranked first "
        "(app/sprites.py)",
    )
    lossless: bool = Field(
        False,
        description="pixel-art candidates: the image shows the token's own pixel grid (its native size or a "
        "nearest upscale), so its layout alone decides `is_copy`: at its collection's `layout_min` in "
        "model.json a copy, below it none, whatever the score",
    )
    keypoints: int | None = Field(
        None,
        description="painted candidates: SIFT matches with the image that one similarity transform explains; "
        "candidates with 20 or more are ranked next (app/keypoints.py)",
    )
    colours: float | None = Field(
        None,
        description="painted candidates: share of the token's figure that the image, aligned (by the keypoints, "
        "or stretched over it), shows in the token's colours up to one global hue/saturation/brightness change "
        "(0-1, app/agreement.py); at its collection's `colours_min` in model.json the match is a copy",
    )
    overlay: float | None = Field(
        None,
        description="painted candidates: `colours` with the one small region where they disagree forgiven, "
        "when no other candidate shows the image's pixels there (a pasted badge, logo or emoji; 0-1, "
        "app/agreement.py: overlay); at its collection's `overlay_min` in model.json the match is a copy",
    )
    metadata: dict[str, Any]


class CopiesBlock(BaseModel):
    is_copy: bool
    threshold: float = Field(..., description="the best match's collection threshold")
    matches: list[CopyMatch]


class Classification(BaseModel):
    model: ModelRef
    predictions: list[LabelProbability] = Field(..., description="calibrated probabilities, best first")
    provider: str = Field(..., description="the ONNX Runtime provider that ran")
    timings_ms: dict[str, float]
    unknown: UnknownVerdict | None = Field(None, description="when the model ships an open-set detector")
    embedding: list[float] | None = Field(None, description="L2-normalised (with embedding=true)")
    copies: CopiesBlock | None = Field(None, description="with copies=true")


class BatchItemClassified(Classification):
    filename: str
    status: Literal[200]


class BatchItemFailed(ErrorBody):
    filename: str
    status: int


class BatchClassification(BaseModel):
    results: list[BatchItemClassified | BatchItemFailed]


class CopiesAnswer(CopiesBlock):
    model: str
    query: TokenRef | None = Field(None, description="the stored token searched from (GET)")


class SimilarHit(TokenRef):
    score: float = Field(..., description="cosine similarity")
    metadata: dict[str, Any]


class SimilarToToken(BaseModel):
    query: TokenRef
    model: str
    results: list[SimilarHit]


class SimilarToImage(BaseModel):
    model: str
    timings_ms: dict[str, float]
    results: list[SimilarHit]


class Health(BaseModel):
    status: str


class CatalogCounts(BaseModel):
    tokens: int
    stale: int = Field(..., description="tokens embedded by another model (run `nftlens catalog reindex`)")


class Readiness(BaseModel):
    ready: bool
    pid: int | None = Field(None, description="the worker process that answered (with NFTLENS_WORKERS > 1)")
    model: str | None = None
    provider: str | None = None
    catalog: CatalogCounts | None = None
    detail: str | None = Field(None, description="why not ready")


class ModelInfo(ModelManifest):
    provider: str


class Explanation(BaseModel):
    """POST /explain with format=json: the occlusion grid behind one decision."""

    model: str
    kind: Literal["class", "copy"] = Field(..., description="class: a label's probability; copy: a match")
    target: str = Field(..., description="the label, or collection/token_id of the original")
    side: Literal["query", "original"] = Field(..., description="whose image the heatmap is on")
    score: float = Field(..., description="the decision's score on the whole image")
    input_size: int = Field(..., description="side of the network input the patches are laid on")
    patch: int = Field(..., description="occluder side, network-input pixels")
    stride: int = Field(..., description="step between occluders")
    grid: list[list[float]] = Field(..., description="score drop when each patch is occluded, row by row")
    timings_ms: dict[str, float]
