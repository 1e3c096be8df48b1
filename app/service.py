"""The request pipeline, LitServe-style: decode → preprocess → batch → predict → unbatch → encode.

`Service` owns the model, the micro-batcher, the catalog and two thread pools that keep blocking work off
the event loop: one decodes and preprocesses images, the other does catalog I/O and searches, so a slow
search never delays `/classify`. The routers only translate HTTP.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from app.batching import MicroBatcher
from app.catalog import Catalog, SearchFilter, best_per_token, open_catalog
from app.config import Settings
from app.errors import ConflictError, OverloadedError
from app.explain import Heatmap, class_heatmap, heatmap, occlusion_inputs
from app.fingerprint import pixel_fingerprint
from app.imaging import decode_image
from app.inference import GpuOptions, OnnxModel, Outputs, logits_of
from app.keypoints import FeatureCache
from app.metrics import Metrics
from app.openset import OpenSetScorer, softmax
from app.preprocessing import decode_and_preprocess, preprocess_batch
from app.threadnames import name_this_thread
from app.verify import Check, catalog_lookup, is_copy, rank_by_checks
from app.views import dihedral_view, dihedral_views


@dataclass
class Prediction:
    """One image's model outputs: calibrated probabilities, raw logits and both embeddings."""

    probabilities: np.ndarray
    embedding: np.ndarray
    logits: np.ndarray
    instance: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""  # exact-copy fingerprint of the decoded pixels (when asked for)
    input: np.ndarray | None = None  # the float32 tensor when predicted with the fingerprint (views)
    image: np.ndarray | None = None  # the decoded RGB (kept with the fingerprint, for the copy views)
    unknown_score: float | None = None  # the open-set score, computed with the batch


def open_model(s: Settings) -> OnnxModel:
    """The served model, with the providers and GPU options of the settings."""
    gpu = GpuOptions(s.gpu_device_id, s.gpu_cudnn_algo_search, s.trt_fp16, s.trt_engine_cache, s.max_batch)
    threads = s.per_worker(s.intra_op_threads)
    return OnnxModel(s.model_dir, s.providers, s.require_gpu, threads, gpu=gpu, spinning=s.intra_op_spinning)


def unbatched_prediction(model: OnnxModel, out: Outputs, timings: dict | None = None) -> Prediction:
    """One image's row of the ONNX outputs -> Prediction (temperature-scaled when the manifest says so)."""
    m = model.manifest
    logits = logits_of(out)
    probs = out["probabilities"]
    if m.calibration is not None and "logits" in out:
        probs = softmax(logits[None], m.calibration.temperature)[0]
    score = out.get("unknown_score")
    return Prediction(
        probs,
        out["embedding"],
        logits,
        out.get("instance"),
        timings or {},
        unknown_score=None if score is None else float(score),
    )


EXPLAIN_SLOTS = 4  # explanations in flight at once: each is a whole batch of occluded inputs; more get 503


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.model: OnnxModel | None = None
        self.catalog: Catalog | None = None
        self.batcher: MicroBatcher | None = None
        self.openset: OpenSetScorer | None = None
        self.pool = ThreadPoolExecutor(
            max_workers=settings.per_worker(settings.preprocess_threads),
            thread_name_prefix="prep",
            initializer=name_this_thread,
            initargs=("nftlens-decode",),
        )
        self.catalog_pool = ThreadPoolExecutor(
            max_workers=settings.catalog_threads,
            thread_name_prefix="catalog",
            initializer=name_this_thread,
            initargs=("nftlens-catalog",),
        )
        self.features = FeatureCache(  # candidates' keypoints, kept between queries
            settings.copy_features_cache,
            lambda hit: self.metrics.copy_features.labels("hit" if hit else "miss").inc(),
        )
        self.started = False
        self._explaining = 0

    @property
    def ready(self) -> bool:
        """Started, and the batching loop is running (it is restarted if it dies)."""
        return self.started and self.batcher is not None and self.batcher.healthy

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Verify + load the model, warm it up, open the catalog; only then mark ready."""
        s = self.settings
        loop = asyncio.get_running_loop()
        threadpool_limits(s.blas_threads, user_api="blas")  # process-wide: every thread's matmuls
        self.model = await loop.run_in_executor(self.pool, lambda: open_model(s))
        await loop.run_in_executor(self.pool, self.model.warm_up, (1, min(8, s.max_batch)))
        m = self.model.manifest
        if m.unknown is not None:
            self.openset = OpenSetScorer(m.unknown, s.model_dir)
        self.catalog = await loop.run_in_executor(
            self.catalog_pool,
            lambda: open_catalog(
                s.catalog,
                m.embedding_dim,
                self.model_key,
                s.faiss_index,
                m.instance_dim,
                self.model_label,
                s.faiss_ef_search,
            ),
        )
        self.metrics.catalog_size.set(self.catalog.count())
        self.batcher = MicroBatcher(
            self._infer, s.max_batch, s.max_wait_ms, self._observe_batch, s.max_queue, s.request_timeout_s
        )
        self.batcher.start()
        self.started = True

    async def stop(self) -> None:
        self.started = False
        if self.batcher:
            await self.batcher.stop()
        if self.catalog:
            self.catalog.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.catalog_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def model_key(self) -> str:
        """The catalog's key for this model's vectors: the ONNX file's sha256 (content, not name), or that of
        the graph it only added outputs to (same vectors)."""
        return self.model.manifest.catalog_key

    @property
    def model_label(self) -> str:
        """name@version, for people."""
        m = self.model.manifest
        return f"{m.name}@{m.version}"

    # -- pipeline ------------------------------------------------------------------------------------
    def _infer(self, batch: np.ndarray) -> Outputs:
        """The predict hook: one ONNX call, then what is computed per batch rather than per request (the
        open-set score), on the inference thread instead of the event loop."""
        out = self.model.run(batch)
        if self.openset is not None:
            out["unknown_score"] = self.openset.score(out)
        return out

    def _instances(self, images: list[np.ndarray]) -> np.ndarray:
        """Decoded images -> their instance vectors [N, D], in one ONNX call on the calling thread (the
        copy search's crop completions, app/verify.py: few and rare, so not through the batcher)."""
        cfg = self.model.manifest.preprocessing
        return self.model.run(preprocess_batch(images, cfg))["instance"]

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.inference.observe(seconds)
        self.metrics.queue_depth.set(self.batcher.queue_depth if self.batcher else 0)

    async def blocking(self, fn, *args):
        """Run blocking image work (decoding, preprocessing) on the image pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def in_catalog(self, fn, *args):
        """Run catalog I/O or a search on the catalog pool."""
        return await asyncio.get_running_loop().run_in_executor(self.catalog_pool, fn, *args)

    def _prepare(
        self, data: bytes, fingerprint: bool, timings: dict, native: bool = False
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """(decoded RGB, network input, pixel fingerprint if asked for). The input is the float32 [3,S,S]
        tensor that views and occlusions are made from, or with `native` the graph's own input (uint8
        pixels for a uint8_nhwc model: no normalising here)."""
        m = self.model.manifest
        fmt = m.input_format if native else "float32_nchw"
        rgb, x = decode_and_preprocess(data, m.preprocessing, self.settings.max_pixels, timings, fmt)
        return rgb, x, pixel_fingerprint(rgb) if fingerprint else ""

    async def predict(self, data: bytes, fingerprint: bool = False) -> Prediction:
        """Bytes -> every model output for one image, through the shared preprocessing and the batcher
        (and the pixel fingerprint, with `fingerprint`)."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        with self.batcher.expect() as arrival:  # a forming batch may wait for this image while it decodes
            # the copy path makes views from the tensor; a plain prediction needs only the native input
            rgb, x, fp = await self.blocking(self._prepare, data, fingerprint, timings, not fingerprint)
            t1 = time.perf_counter()
            if self.settings.batching:
                self.metrics.queue_depth.set(self.batcher.queue_depth + 1)
                out = await self.batcher.submit(self.model.native(x), arrival)
            else:
                out = {k: v[0] for k, v in (await self.batcher.run_now(x[None])).items()}
        timings["inference"] = (time.perf_counter() - t1) * 1000
        timings["total"] = (time.perf_counter() - t0) * 1000
        pred = unbatched_prediction(self.model, out, {k: round(v, 3) for k, v in timings.items()})
        pred.fingerprint, pred.input = fp, x
        pred.image = rgb if fingerprint else None
        return pred

    def top_k(self, probs: np.ndarray, k: int) -> list[dict]:
        order = np.argsort(-probs)[:k]
        return [{"label": self.model.labels[i], "probability": float(probs[i])} for i in order]

    def unknown(self, pred: Prediction) -> dict | None:
        """The open-set verdict for one prediction (None when the model ships no detector)."""
        if self.openset is None:
            return None
        return self.openset.verdict(pred.unknown_score)

    # -- copies --------------------------------------------------------------------------------------
    def require_copies(self) -> None:
        """Raise 409 unless the model has an instance head and a calibrated copy threshold."""
        m = self.model.manifest
        if not m.instance_dim or m.copies is None:
            raise ConflictError(
                f"model {self.model_label} has no instance embedding or copy threshold: serve a model "
                "exported with an instance head (the default model has one)"
            )

    async def copy_query(
        self, data: bytes, pred: Prediction | None = None
    ) -> tuple[np.ndarray, str, np.ndarray]:
        """The query's instance vectors [V, D], pixel fingerprint and decoded RGB: from `pred` when given
        (predicted with its fingerprint: the image is not decoded again), and, when the copy verdict was
        calibrated on more views than the image itself (`CopyDetector.views`), all of them run through the
        batcher together."""
        view_set = self.model.manifest.copies.views
        if view_set.count == 1:
            pred = pred or await self.predict(data, fingerprint=True)
            return pred.instance[None], pred.fingerprint, pred.image
        if pred is not None:
            rgb, x, fp = pred.image, pred.input, pred.fingerprint
        else:
            rgb, x, fp = await self.blocking(self._prepare, data, True, {})
        views = await self.blocking(view_set.inputs, rgb, x, self.model.manifest.preprocessing)
        if self.settings.batching:
            outs = await asyncio.gather(*(self.batcher.submit(v) for v in self.model.native(views)))
            return np.stack([o["instance"] for o in outs]), fp, rgb
        return (await self.batcher.run_now(views))["instance"], fp, rgb

    def copies(
        self,
        instances: np.ndarray,
        k: int,
        flt: SearchFilter,
        fingerprint: str = "",
        query_rgb: np.ndarray | None = None,
    ) -> dict:
        """The `copies` block: exact pixel matches first (score 1, `exact`), then the best instance-space
        matches over the query's views (each token keeps its best score), with the calibrated verdict.
        Given the decoded query, the best `copy_verify_k` candidates are checked against it and re-ranked
        (app/verify.py: `layout` for sprites, `keypoints` for paintings); a check over its collection's
        calibrated minimum makes a copy too. Blocking: run it on the pool."""
        detector = self.model.manifest.copies
        verify_k = self.settings.copy_verify_k if query_rgb is not None else 0
        exact = self.catalog.find_exact(fingerprint, flt)[:k] if fingerprint else []
        exact_keys = {(h.collection, h.token_id) for h in exact}
        searched = (
            h
            for v in np.atleast_2d(instances)
            for h in self.catalog.search(v, max(k, verify_k), flt, space="instance")
        )
        fuzzy = [h for h in best_per_token(searched) if (h.collection, h.token_id) not in exact_keys]
        fuzzy = fuzzy[: max(k, verify_k)]
        checks = [Check()] * len(fuzzy)
        if verify_k:
            bg = self.model.manifest.preprocessing.background_rgb
            more = catalog_lookup(self.catalog, self._instances, instances, verify_k, flt, bg, exact_keys)
            fuzzy, checks = rank_by_checks(
                self.catalog,
                fuzzy,
                query_rgb,
                bg,
                self.settings.copy_keypoints,
                more,
                self.features,
                detector.overlay_rule,
            )
        ranked = [(h, Check(), True) for h in exact] + [
            (h, c, is_copy(detector, h.collection, h.score, c)) for h, c in zip(fuzzy, checks, strict=True)
        ]
        matches = [
            {
                "collection": h.collection,
                "token_id": h.token_id,
                "score": round(h.score, 6),
                "threshold": round(detector.threshold_for(h.collection), 6),
                "exact": (h.collection, h.token_id) in exact_keys,
                "is_copy": called,
                "layout": None if c.layout is None else round(c.layout, 4),
                "lossless": c.lossless,
                "keypoints": c.keypoints,
                "colours": None if c.colours is None else round(c.colours, 4),
                "overlay": None if c.overlay is None else round(c.overlay, 4),
                "metadata": h.metadata,
            }
            for h, c, called in ranked[:k]
        ]
        return {  # any candidate looked at: an exact match, a score over its threshold, a check over its minimum
            "is_copy": any(called for _, _, called in ranked),
            "threshold": matches[0]["threshold"] if matches else round(detector.threshold, 6),
            "matches": matches,
        }

    # -- explanations --------------------------------------------------------------------------------
    def _occlusions(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Bytes -> (decoded RGB, the occluded network inputs [1 + P, 3, S, S], the unoccluded first)."""
        cfg = self.model.manifest.preprocessing
        rgb = decode_image(data, cfg.background_rgb, self.settings.max_pixels)
        return rgb, occlusion_inputs(rgb, cfg)

    async def _best_view(self, x: np.ndarray, reference: np.ndarray) -> tuple[int, np.ndarray]:
        """The dihedral view of input `x` whose instance vector is closest to `reference`, and that vector
        (view 0 when the copy verdict does not use views)."""
        copies = self.model.manifest.copies
        if copies is None or not copies.dihedral:
            return 0, (await self.batcher.run_now(x[None]))["instance"][0]
        views = (await self.batcher.run_now(dihedral_views(x)))["instance"]
        view = int(np.argmax(views @ reference))
        return view, views[view]

    async def matching_instance(self, data: bytes, reference: np.ndarray) -> np.ndarray:
        """The image's instance vector in the view that best matches `reference`."""
        _, x, _ = await self.blocking(self._prepare, data, False, {})
        return (await self._best_view(x, reference))[1]

    @contextmanager
    def explain_slot(self):
        """Hold one of EXPLAIN_SLOTS while explaining; raise OverloadedError (503) when none is free, so a
        burst of heatmaps cannot queue unbounded work in front of /classify."""
        if self._explaining >= EXPLAIN_SLOTS:
            raise OverloadedError(
                f"{EXPLAIN_SLOTS} explanations are already being computed", self.batcher.retry_after_s()
            )
        self._explaining += 1
        try:
            yield
        finally:
            self._explaining -= 1

    async def explain(
        self, data: bytes, label: int | None = None, original: np.ndarray | None = None
    ) -> tuple[np.ndarray, Heatmap, int | None]:
        """The occlusion heatmap of one image: for the class `label` (its calibrated log-odds; None: the
        predicted class), or, given an `original`'s instance vector, for the copy score against it (in the
        dihedral view that matches it best). Returns (decoded RGB, heatmap, the label explained)."""
        rgb, batch = await self.blocking(self._occlusions, data)
        if original is not None:
            view, _ = await self._best_view(batch[0], original)
            batch = np.ascontiguousarray(dihedral_view(batch, view))
            scores = (await self.batcher.run_now(batch))["instance"] @ original
            return rgb, heatmap(scores, batch.shape[-1]), None
        calibration = self.model.manifest.calibration
        logits = logits_of(await self.batcher.run_now(batch))
        heat, label = class_heatmap(
            logits, batch.shape[-1], calibration.temperature if calibration else 1.0, label
        )
        return rgb, heat, label
