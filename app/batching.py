"""Dynamic micro-batching: concurrent requests are grouped into one ONNX Runtime call.

The first request in an empty queue waits at most `max_wait_ms` for others, up to `max_batch` items; the
batch runs on a dedicated thread so the event loop never blocks on inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BatchFn = Callable[[np.ndarray], dict[str, np.ndarray]]  # [N,...] input -> {output: [N,...]}


class MicroBatcher:
    def __init__(
        self,
        run: BatchFn,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self._task: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One preprocessed input [3,S,S] -> {output: its row} (unbatched)."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((x, fut))
        return await fut

    async def run_now(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch directly on the inference thread (batching disabled)."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        out = await loop.run_in_executor(self._executor, self._run, batch)
        if self._on_batch:
            self._on_batch(len(batch), time.perf_counter() - t0)
        return out

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
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
            live = [(x, f) for x, f in items if not f.cancelled()]
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
