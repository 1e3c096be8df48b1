"""The request pipeline, LitServe-style: decode → preprocess → batch → predict → unbatch → encode.

`Service` owns the model, the micro-batcher, the catalog and the thread pool that keeps blocking work
(decoding, preprocessing, catalog I/O) off the event loop. The routers only translate HTTP.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app.batching import MicroBatcher
from app.catalog import Catalog, open_catalog
from app.config import Settings
from app.inference import OnnxModel
from app.metrics import Metrics
from app.preprocessing import load_tensor


@dataclass
class Prediction:
    probabilities: np.ndarray
    embedding: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.model: OnnxModel | None = None
        self.catalog: Catalog | None = None
        self.batcher: MicroBatcher | None = None
        self.pool = ThreadPoolExecutor(max_workers=settings.preprocess_threads, thread_name_prefix="prep")
        self.ready = False

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Verify + load the model, warm it up, open the catalog; only then mark ready."""
        s = self.settings
        loop = asyncio.get_running_loop()
        self.model = await loop.run_in_executor(
            self.pool, lambda: OnnxModel(s.model_dir, s.providers, s.require_gpu, s.intra_op_threads)
        )
        await loop.run_in_executor(self.pool, self.model.warm_up, (1, min(8, s.max_batch)))
        m = self.model.manifest
        self.catalog = await loop.run_in_executor(
            self.pool, lambda: open_catalog(s.catalog, m.embedding_dim, self.model_key, s.faiss_index)
        )
        self.metrics.catalog_size.set(self.catalog.count())
        self.batcher = MicroBatcher(self._infer, s.max_batch, s.max_wait_ms, self._observe_batch)
        self.batcher.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self.batcher:
            await self.batcher.stop()
        if self.catalog:
            self.catalog.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def model_key(self) -> str:
        m = self.model.manifest
        return f"{m.name}@{m.version}"

    # -- pipeline ------------------------------------------------------------------------------------
    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model.run(batch)

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.inference.observe(seconds)
        self.metrics.queue_depth.set(self.batcher.queue_depth if self.batcher else 0)

    async def blocking(self, fn, *args):
        """Run blocking work (catalog I/O, decoding) on the worker pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def predict(self, data: bytes) -> Prediction:
        """Bytes -> probabilities + embedding, through the shared preprocessing and the batcher."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        cfg = self.model.manifest.preprocessing
        x = await self.blocking(load_tensor, data, cfg, self.settings.max_pixels, timings)
        t1 = time.perf_counter()
        if self.settings.batching:
            self.metrics.queue_depth.set(self.batcher.queue_depth + 1)
            probs, emb = await self.batcher.submit(x)
        else:
            p, e = await self.batcher.run_now(x[None])
            probs, emb = p[0], e[0]
        timings["inference"] = (time.perf_counter() - t1) * 1000
        timings["total"] = (time.perf_counter() - t0) * 1000
        return Prediction(probs, emb, {k: round(v, 3) for k, v in timings.items()})

    def top_k(self, probs: np.ndarray, k: int) -> list[dict]:
        order = np.argsort(-probs)[:k]
        return [{"label": self.model.labels[i], "probability": float(probs[i])} for i in order]

    def unknown(self, probs: np.ndarray) -> dict | None:
        det = self.model.manifest.unknown
        if det is None:
            return None
        score = float(1 - probs.max())
        return {"score": score, "threshold": det.threshold, "is_unknown": score > det.threshold}
