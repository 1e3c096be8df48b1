"""All service settings in one place. Every field can be set by an env var `NFTLENS_<FIELD>`."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NFTLENS_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    host: str = Field("127.0.0.1", description="bind address for `nftlens serve`")
    port: int = Field(8000, ge=0, le=65535, description="port for `nftlens serve`")
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="server processes behind the port; one acceptor hands each new connection to the "
        "worker with the fewest open ones (app/supervisor.py); each has its own model session and catalog "
        "indexes, kept consistent by the catalog's change log. 0: one per core up to 4 on CPU, 1 with a GPU "
        "(`nftlens bench tuning` measured 2 workers fastest on 2 cores)",
    )
    model_dir: str = Field("models/default", description="folder holding model.onnx + model.json")
    catalog: str = Field(
        "catalog/catalog.db", description="SQLite file of the embedded catalog (FAISS in memory)"
    )
    faiss_index: Literal["auto", "flat", "hnsw"] = Field(
        "auto",
        description="exact inner product (flat), HNSW (approximate), or auto: flat up to 50,000 vectors "
        "per space, HNSW above (chosen by `nftlens bench catalog`)",
    )
    faiss_ef_search: int = Field(
        64, ge=8, le=4096, description="HNSW search breadth: higher is more exact and slower"
    )
    catalog_threads: int = Field(
        2, ge=1, description="threads for catalog reads, writes and searches (apart from image decoding)"
    )
    providers: list[str] = Field(
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime providers in order of preference (JSON list); unavailable ones are skipped with a warning",
    )
    require_gpu: bool = Field(False, description="fail start-up instead of falling back to CPU")
    gpu_device_id: int = Field(0, ge=0, description="CUDA / TensorRT device")
    gpu_cudnn_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        "EXHAUSTIVE", description="cuDNN convolution algorithm search (once per batch bucket)"
    )
    trt_fp16: bool = Field(True, description="TensorRT: allow fp16 kernels")
    trt_engine_cache: str = Field(
        "", description="TensorRT: folder caching built engines across restarts (empty: rebuild each start)"
    )
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per worker (0: the worker's share of the cores)"
    )
    intra_op_spinning: bool = Field(
        False,
        description="let idle ONNX Runtime threads spin (lower latency alone, but they take the cores that "
        "decode requests; `nftlens bench peers` measured it off)",
    )
    blas_threads: int = Field(
        1,
        ge=1,
        description="threads numpy's BLAS may use (the open-set score's matmuls); OpenBLAS's idle threads "
        "spin and took most of a core under load (reports/bench/PROFILE.md)",
    )
    fast_lane: bool = Field(
        True,
        description="answer plain POST /classify requests in front of FastAPI's routing (same contract; "
        "off: every request takes the FastAPI route)",
    )
    batching: bool = Field(True, description="dynamic micro-batching of concurrent requests")
    max_batch: int = Field(16, ge=1, description="largest batch one ONNX call runs")
    max_wait_ms: float = Field(
        5.0, ge=0, description="how long the first request in a batch waits for company"
    )
    max_queue: int = Field(
        256, ge=1, description="images waiting for inference before new requests get 503 + Retry-After"
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="deadline for one request's inference; past it the request gets 503"
    )
    preprocess_threads: int = Field(
        0,
        ge=0,
        description="threads per worker decoding and preprocessing images off the event loop (0: the "
        "worker's share of the cores)",
    )
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="largest accepted request body (413 above)"
    )
    max_pixels: int = Field(40_000_000, ge=1, description="largest decoded image, width x height (413 above)")
    copy_verify_k: int = Field(
        50,
        ge=0,
        le=1000,
        description="copy search: how many instance-space candidates are checked against the query "
        "(app/verify.py), re-ranked before the best k are returned, and called copies at their collection's "
        "check minimum (model.json); 0: the instance-space order and the score alone",
    )
    copy_keypoints: bool = Field(
        True,
        description="copy search: align painted candidates by SIFT keypoints (app/keypoints.py; a few ms "
        "each) for their colour check (app/agreement.py); off: a painting is compared stretched over each "
        "candidate only (a crop, shift or turn is not found)",
    )
    copy_features_cache: int = Field(
        1024,
        ge=0,
        description="copy search: catalogued paintings whose keypoint features each worker keeps between "
        "queries (least recently used dropped; up to ~66 KB each); 0: computed for every query",
    )
    max_batch_files: int = Field(64, ge=1, description="most files in one /classify/batch or PUT /tokens")
    max_metadata_bytes: int = Field(
        16 * 1024, ge=2, description="largest token metadata, as JSON (413 above)"
    )
    api_key: str | None = Field(
        None,
        description="when set, every write (PUT/DELETE /tokens, DELETE /collections) needs header X-API-Key with this value",
    )
    log_level: str = Field("info", description="uvicorn/app log level")

    def worker_count(self) -> int:
        """`workers`, with 0 resolved: one per core (at most 4) on CPU, one when a GPU provider is usable
        (one CUDA context, and the GPU batches better than processes would)."""
        if self.workers:
            return self.workers
        import onnxruntime as ort

        from app.inference import GPU_PROVIDERS

        if set(self.providers) & set(ort.get_available_providers()) & set(GPU_PROVIDERS):
            return 1
        return min(cpu_cores(), MAX_AUTO_WORKERS)

    def per_worker(self, threads: int) -> int:
        """A thread count per worker, with 0 resolved to the worker's share of the cores (at least 1), so
        the workers' budgets add up to the machine rather than each taking all of it. `nftlens serve`
        resolves `workers` before it starts them; a process started otherwise (`create_app()` under
        another server, the tests) with `workers=0` counts as one process and takes every core."""
        return threads or max(1, cpu_cores() // (self.workers or 1))


MAX_AUTO_WORKERS = 4  # each worker holds its own model session and catalog indexes in memory


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
