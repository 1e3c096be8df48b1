"""All service settings in one place. Every field can be set by an env var `NFTLENS_<FIELD>`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NFTLENS_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    host: str = Field("127.0.0.1", description="bind address for `nftlens serve`")
    port: int = Field(8000, description="port for `nftlens serve`")
    model_dir: str = Field("models/default", description="folder holding model.onnx + model.json")
    catalog: str = Field(
        "catalog/catalog.db", description="SQLite file of the embedded catalog (FAISS in memory)"
    )
    faiss_index: Literal["flat", "hnsw"] = Field(
        "flat", description="exact inner product, or HNSW (approximate) for large catalogs"
    )
    providers: list[str] = Field(
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime providers in order of preference (JSON list); unavailable ones are skipped with a warning",
    )
    require_gpu: bool = Field(False, description="fail start-up instead of falling back to CPU")
    intra_op_threads: int = Field(0, description="ONNX Runtime intra-op threads (0 = one per core)")
    batching: bool = Field(True, description="dynamic micro-batching of concurrent requests")
    max_batch: int = Field(16, ge=1, description="largest batch one ONNX call runs")
    max_wait_ms: float = Field(
        5.0, ge=0, description="how long the first request in a batch waits for company"
    )
    preprocess_threads: int = Field(
        4, ge=1, description="threads decoding and preprocessing images off the event loop"
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, description="largest accepted request body (413 above)")
    max_pixels: int = Field(40_000_000, description="largest decoded image, width x height (413 above)")
    max_batch_files: int = Field(64, description="most files in one /classify/batch request")
    api_key: str | None = Field(
        None, description="when set, PUT/DELETE /tokens need header X-API-Key with this value"
    )
    log_level: str = Field("info", description="uvicorn/app log level")
