"""The micro-batcher's collection rule: wait only for images announced as on their way."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from app.batching import MicroBatcher


def _batch_sizes(scenario: Callable[[MicroBatcher], Awaitable[None]], max_wait_ms: float = 2000) -> list[int]:
    """Run `scenario` against a started batcher computing y = x + 1; the sizes of the batches it ran."""
    sizes: list[int] = []

    async def main() -> None:
        b = MicroBatcher(
            lambda x: {"y": x + 1},
            max_batch=8,
            max_wait_ms=max_wait_ms,
            on_batch=lambda n, _: sizes.append(n),
        )
        b.start()
        try:
            await scenario(b)
        finally:
            await b.stop()

    asyncio.run(main())
    return sizes


def test_an_announced_image_joins_the_forming_batch():
    async def scenario(b: MicroBatcher) -> None:
        with b.expect() as arrival:  # this one is "decoding" while the first is submitted
            first = asyncio.create_task(b.submit(np.zeros(2, np.float32)))
            await asyncio.sleep(0.05)
            assert not first.done()  # the batch waits for the announced image
            second = await b.submit(np.ones(2, np.float32), arrival)
        assert (await first)["y"].tolist() == [1, 1] and second["y"].tolist() == [2, 2]

    assert _batch_sizes(scenario) == [2]


def test_with_nothing_announced_a_batch_runs_at_once():
    async def scenario(b: MicroBatcher) -> None:  # a 2 s window, which nothing may use
        await b.submit(np.zeros(2, np.float32))
        await b.submit(np.zeros(2, np.float32))
        queued = [b.submit(np.zeros(2, np.float32)) for _ in range(3)]
        await asyncio.gather(*queued)  # queued together: one batch

    assert _batch_sizes(scenario) == [1, 1, 3]


def test_a_failed_announcement_does_not_hold_the_batch():
    async def scenario(b: MicroBatcher) -> None:
        first = asyncio.create_task(b.submit(np.zeros(2, np.float32)))
        try:
            with b.expect():
                await asyncio.sleep(0.02)
                raise ValueError("this image did not decode")
        except ValueError:
            pass
        await first

    assert _batch_sizes(scenario) == [1]


def test_whole_batches_run_alone_and_in_order():
    async def scenario(b: MicroBatcher) -> None:
        outs = await asyncio.gather(
            b.submit(np.zeros(2, np.float32)),
            b.run_now(np.zeros((5, 2), np.float32)),
            b.submit(np.zeros(2, np.float32)),
        )
        assert outs[1]["y"].shape == (5, 2) and outs[0]["y"].shape == (2,)

    assert _batch_sizes(scenario, max_wait_ms=0) == [1, 5, 1]


def test_a_batch_that_cannot_be_stacked_fails_its_requests_not_the_loop():
    async def scenario(b: MicroBatcher) -> None:
        with b.expect() as arrival:  # the second joins the first's batch, and their shapes differ
            first = asyncio.create_task(b.submit(np.zeros(2, np.float32)))
            await asyncio.sleep(0.02)
            second = asyncio.create_task(b.submit(np.zeros(3, np.float32), arrival))
            outcomes = await asyncio.gather(first, second, return_exceptions=True)
        assert all(isinstance(o, ValueError) for o in outcomes), outcomes
        assert b.healthy and b.restarts == 0
        assert (await b.submit(np.zeros(2, np.float32)))["y"].tolist() == [1, 1]

    assert _batch_sizes(scenario) == [1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are set with Linux's prctl")
def test_the_service_threads_carry_their_names_for_the_operating_system(model_dir):
    """`top -H`, py-spy and `benchmarks.profile threads` tell the inference, decoding and catalog threads
    apart by the names the kernel holds for them."""
    from app.config import Settings
    from app.service import Service

    def os_name(native_id: int | None = None) -> str:
        return Path(f"/proc/self/task/{native_id or threading.get_native_id()}/comm").read_text().strip()

    service = Service(Settings(model_dir=str(model_dir)))
    try:
        assert service.pool.submit(os_name).result() == "nftlens-decode"
        assert service.catalog_pool.submit(os_name).result() == "nftlens-catalog"
    finally:
        service.pool.shutdown()
        service.catalog_pool.shutdown()
    batcher = MicroBatcher(lambda x: {"y": x})
    batcher.start()
    try:
        assert os_name(batcher._thread.native_id) == "nftlens-infer"
    finally:
        asyncio.run(batcher.stop())
