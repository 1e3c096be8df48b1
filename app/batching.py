"""Dynamic micro-batching: concurrent requests are grouped into one ONNX Runtime call.

The first request in an empty queue waits at most `max_wait_ms` for others, up to `max_batch` items; the
batch runs on a dedicated thread so the event loop never blocks on inference.

Overload is bounded: at most `max_queue` images wait; past that `submit` raises `OverloadedError` at once
(503 + Retry-After), and a request whose result is not ready within `timeout_s` gets one too. The loop is
supervised: if it ever dies it is restarted, and `healthy` is False until it runs again (so `/ready`
fails instead of requests hanging).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.errors import OverloadedError

BatchFn = Callable[[np.ndarray], dict[str, np.ndarray]]  # [N,...] input -> {output: [N,...]}
log = logging.getLogger("uvicorn.error")


class MicroBatcher:
    def __init__(
        self,
        run: BatchFn,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
        max_queue: int = 256,
        timeout_s: float = 30.0,
    ):
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self._task: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        self.restarts = 0
        self._stopping = False
        self._last_batch_s = 0.05  # running estimate of one batch's time, for Retry-After

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def healthy(self) -> bool:
        """The batching loop is running."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop())
        self._supervisor = loop.create_task(self._supervise())

    async def _supervise(self) -> None:
        """Restart the batching loop whenever it ends for any reason but a stop."""
        while True:
            try:
                await self._task
            except asyncio.CancelledError:
                if self._stopping or not self._task.cancelled():
                    raise  # our own stop, or the supervisor itself is cancelled
                log.error("the batching loop was cancelled; restarting it")
            except Exception:
                log.exception("the batching loop died; restarting it")
            else:
                log.error("the batching loop ended; restarting it")
            self.restarts += 1
            await asyncio.sleep(0.1)
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._supervisor, self._task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._executor.shutdown(wait=False, cancel_futures=True)

    def retry_after_s(self) -> int:
        """Seconds a shed request should wait: the time to drain the queue, at least 1."""
        batches = self.queue_depth / max(1, self.max_batch) + 1
        return max(1, round(batches * self._last_batch_s + 0.5))

    async def submit(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One preprocessed input [3,S,S] -> {output: its row} (unbatched). Raises OverloadedError when the
        queue is full or the result misses the deadline."""
        if self._queue.qsize() >= self.max_queue:
            raise OverloadedError(
                f"{self._queue.qsize()} images are waiting for inference (the limit is {self.max_queue})",
                self.retry_after_s(),
            )
        if not self.healthy:
            raise OverloadedError("the batching loop is restarting", 1)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((x, fut))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
        except TimeoutError as exc:
            fut.cancel()  # the loop skips cancelled items
            raise OverloadedError(
                f"no inference result within {self.timeout_s:g} s", self.retry_after_s()
            ) from exc

    async def run_now(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch directly on the inference thread (batching disabled)."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        out = await loop.run_in_executor(self._executor, self._run, batch)
        seconds = time.perf_counter() - t0
        self._last_batch_s = 0.8 * self._last_batch_s + 0.2 * seconds
        if self._on_batch:
            self._on_batch(len(batch), seconds)
        return out

    async def _collect(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        items = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(items) < self.max_batch:
            timeout = deadline - loop.time()
            if timeout <= 0:
                while len(items) < self.max_batch and not self._queue.empty():
                    items.append(self._queue.get_nowait())
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                break
        return items

    async def _loop(self) -> None:
        while True:
            items = await self._collect()
            live = [(x, f) for x, f in items if not f.done()]
            if not live:
                continue
            try:
                outputs = await self.run_now(np.stack([x for x, _ in live]))
            except Exception as exc:  # a failed batch fails its requests, not the loop
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for i, (_, f) in enumerate(live):
                if not f.done():
                    f.set_result({name: out[i] for name, out in outputs.items()})
