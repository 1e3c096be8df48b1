"""Prometheus metrics, one registry per app instance.

With several worker processes, `nftlens serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before it
starts them: every process then writes its samples there, and `/metrics` answers the sum over all of them,
whichever worker takes the scrape (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import contextlib
import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def forget_process(pid: int | None) -> None:
    """Drop a gone worker's live gauges from `/metrics` (multiprocess mode; a no-op with one process)."""
    if pid is not None and os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid)


LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "nftlens_requests_total", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "nftlens_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.errors = Counter("nftlens_errors_total", "error responses by error code", ["error"], registry=r)
        self.batch_size = Histogram(
            "nftlens_batch_size", "images per ONNX Runtime call", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "nftlens_inference_seconds", "ONNX Runtime call duration", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "nftlens_queue_depth", "inputs waiting for a batch", registry=r, multiprocess_mode="livesum"
        )
        self.copy_features = Counter(
            "nftlens_copy_features_total",
            "painted candidates' keypoint features, read from the features cache (hit) or computed (miss)",
            ["result"],
            registry=r,
        )
        self.catalog_size = Gauge(
            "nftlens_catalog_tokens", "tokens in the catalog", registry=r, multiprocess_mode="mostrecent"
        )

    def exposition(self) -> bytes:
        """The text format: this process's registry, or every worker's samples in multiprocess mode."""
        folder = os.environ.get(MULTIPROC_ENV)
        if not folder:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, folder)
        return generate_latest(registry)


class ObserveRequests:
    """Pure ASGI middleware counting requests and their latency per route template (no per-request
    task or body wrapping, unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - t0)
