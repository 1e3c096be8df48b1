"""Dynamic micro-batching: concurrent requests are grouped into one ONNX Runtime call.

One inference thread owns the queue. Whenever it is free it takes everything queued (up to `max_batch`),
and waits (at most `max_wait_ms`) only for images it knows are on their way: requests that `expect`
announced while they decode. With nothing coming it runs at once. Collecting on the inference thread
itself, instead of in an event-loop task, means a finished batch is followed by the next one without a
round trip through the event loop: under load the thread never idles while requests wait (measured in
`reports/bench/PROFILE.md`). Results go back to the event loop in one callback per batch.

Overload is bounded: at most `max_queue` images wait; past that `submit` raises `OverloadedError` at once
(503 + Retry-After), and a request whose result is not ready within `timeout_s` gets one too. The thread is
supervised: if its loop ever fails it is restarted, and `healthy` is False until it runs again (so
`/ready` fails instead of requests hanging).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from app.errors import OverloadedError
from app.threadnames import name_this_thread

BatchFn = Callable[[np.ndarray], dict[str, np.ndarray]]  # [N,...] input -> {output: [N,...]}
log = logging.getLogger("uvicorn.error")
RESTART_DELAY_S = 0.1


@dataclass(slots=True)
class _Job:
    x: np.ndarray  # one input [3,S,S], or a whole batch [N,3,S,S] when `whole`
    future: asyncio.Future  # on the event loop of the request that waits for it
    whole: bool = False


@dataclass(slots=True)
class Arrival:
    """An image announced by `MicroBatcher.expect`; `submit` marks it arrived as it queues it."""

    arrived: bool = False


def _deliver(jobs: list[_Job], results: list) -> None:
    """On the event loop: hand each job its result (or exception), skipping those that timed out."""
    for job, result in zip(jobs, results, strict=True):
        if job.future.done():
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)


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
        self._queue: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._coming = 0  # images announced by `expect` and not queued yet
        self._thread: threading.Thread | None = None
        self._running = False  # the thread's loop is serving (False while it restarts)
        self._stopping = False
        self.restarts = 0
        self._last_batch_s = 0.05  # running estimate of one batch's time, for Retry-After

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def healthy(self) -> bool:
        """The inference thread's loop is running."""
        return self._running and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._supervise, name="ort", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 5
        while not self._running and time.monotonic() < deadline:
            time.sleep(0.001)

    async def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
        jobs = self._drain()
        self._answer(jobs, [OverloadedError("the service is stopping", 1)] * len(jobs))

    def retry_after_s(self) -> int:
        """Seconds a shed request should wait: the time to drain the queue, at least 1."""
        batches = self.queue_depth / max(1, self.max_batch) + 1
        return max(1, round(batches * self._last_batch_s + 0.5))

    @contextlib.contextmanager
    def expect(self) -> Iterator[Arrival]:
        """Announce an image on its way (being decoded): a forming batch may wait for it until it is passed
        to `submit` with the yielded `Arrival`, or until the block ends (say, the image did not decode)."""
        arrival = Arrival()
        with self._cv:
            self._coming += 1
        try:
            yield arrival
        finally:
            with self._cv:
                if not arrival.arrived:
                    self._coming -= 1
                    self._cv.notify()

    async def submit(self, x: np.ndarray, arrival: Arrival | None = None) -> dict[str, np.ndarray]:
        """One preprocessed input [3,S,S] -> {output: its row} (unbatched); `arrival`: its announcement.
        Raises OverloadedError when the queue is full or the result misses the deadline."""
        if len(self._queue) >= self.max_queue:
            raise OverloadedError(
                f"{len(self._queue)} images are waiting for inference (the limit is {self.max_queue})",
                self.retry_after_s(),
            )
        return await self._enqueue(_Job(x, asyncio.get_running_loop().create_future()), arrival)

    async def run_now(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a whole batch on the inference thread, on its own (views, occlusions, batching disabled)."""
        return await self._enqueue(_Job(batch, asyncio.get_running_loop().create_future(), whole=True))

    # -- event-loop side -----------------------------------------------------------------------------
    async def _enqueue(self, job: _Job, arrival: Arrival | None = None) -> dict[str, np.ndarray]:
        if not self.healthy:
            raise OverloadedError("the inference thread is restarting", 1)
        with self._cv:
            if self._stopping:
                raise OverloadedError("the service is stopping", 1)
            self._queue.append(job)
            if arrival is not None and not arrival.arrived:  # queued and no longer coming, atomically
                arrival.arrived = True
                self._coming -= 1
            self._cv.notify()
        timer = job.future.get_loop().call_later(self.timeout_s, self._expire, job)
        try:
            return await job.future
        finally:
            timer.cancel()

    def _expire(self, job: _Job) -> None:
        if not job.future.done():  # the thread skips it if it has not started it yet
            job.future.set_exception(
                OverloadedError(f"no inference result within {self.timeout_s:g} s", self.retry_after_s())
            )

    # -- inference thread ----------------------------------------------------------------------------
    def _supervise(self) -> None:
        """Run the batching loop; restart it whenever it fails, until `stop`."""
        name_this_thread("nftlens-infer")
        while not self._stopping:
            try:
                self._running = True
                self._serve()
            except Exception:
                self._running = False
                log.exception("the batching loop died; restarting it")
                self.restarts += 1
                time.sleep(RESTART_DELAY_S)
        self._running = False

    def _drain(self) -> list[_Job]:
        with self._cv:
            jobs = list(self._queue)
            self._queue.clear()
        return jobs

    def _collect(self) -> list[_Job]:
        """The next batch (empty when stopping): a whole-batch job alone, or the queued single images plus
        the announced ones that arrive within `max_wait`."""
        with self._cv:
            while not self._queue and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return []
            if self._queue[0].whole:
                return [self._queue.popleft()]
            deadline = time.monotonic() + self.max_wait
            while self._coming > 0 and self._singles_queued() < self.max_batch:
                if self._singles_queued() < len(self._queue):
                    break  # a whole batch queued behind: the announced images would queue after it
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cv.wait(remaining):
                    break
            n = self._singles_queued()
            return [self._queue.popleft() for _ in range(min(n, self.max_batch))]

    def _singles_queued(self) -> int:
        n = 0
        for job in self._queue:
            if job.whole:
                break
            n += 1
        return n

    def _serve(self) -> None:
        while not self._stopping:
            jobs = [j for j in self._collect() if not j.future.done()]  # skip the timed-out ones
            if jobs:
                self._answer(jobs, self._results(jobs))

    def _results(self, jobs: list[_Job]) -> list:
        """Each job's outputs, or for all of them the exception that failed their batch: a failed batch
        fails its requests, never the loop (which would strand the jobs it holds)."""
        t0 = time.perf_counter()
        try:
            batch = jobs[0].x if jobs[0].whole else np.stack([j.x for j in jobs])
            outputs = self._run(batch)
            if jobs[0].whole:
                results: list = [outputs]
            else:
                results = [{name: out[i] for name, out in outputs.items()} for i in range(len(jobs))]
        except Exception as exc:
            return [exc] * len(jobs)
        seconds = time.perf_counter() - t0
        self._last_batch_s = 0.8 * self._last_batch_s + 0.2 * seconds
        if self._on_batch:
            try:
                self._on_batch(len(batch), seconds)
            except Exception:
                log.exception("the batch observer failed")
        return results

    @staticmethod
    def _answer(jobs: list[_Job], results: list) -> None:
        """Hand the results to each job's event loop, one callback per loop."""
        for loop in {j.future.get_loop() for j in jobs}:
            mine = [(j, r) for j, r in zip(jobs, results, strict=True) if j.future.get_loop() is loop]
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting
                loop.call_soon_threadsafe(_deliver, [j for j, _ in mine], [r for _, r in mine])
