"""The micro-batcher's collection rule: wait only for images announced as on their way."""

from __future__ import annotations

import asyncio

import numpy as np

from app.batching import MicroBatcher


def _batcher(sizes: list[int], max_wait_ms: float = 2000) -> MicroBatcher:
    return MicroBatcher(
        lambda x: {"y": x + 1}, max_batch=8, max_wait_ms=max_wait_ms, on_batch=lambda n, _: sizes.append(n)
    )


def test_an_announced_image_joins_the_forming_batch():
    sizes: list[int] = []

    async def scenario() -> None:
        b = _batcher(sizes)
        b.start()
        with b.expect() as arrival:  # this one is "decoding" while the first is submitted
            first = asyncio.create_task(b.submit(np.zeros(2, np.float32)))
            await asyncio.sleep(0.05)
            assert not first.done()  # the batch waits for the announced image
            second = await b.submit(np.ones(2, np.float32), arrival)
        assert (await first)["y"].tolist() == [1, 1] and second["y"].tolist() == [2, 2]
        await b.stop()

    asyncio.run(scenario())
    assert sizes == [2]


def test_with_nothing_announced_a_batch_runs_at_once():
    sizes: list[int] = []

    async def scenario() -> None:
        b = _batcher(sizes)  # a 2 s window, which nothing may use
        b.start()
        await b.submit(np.zeros(2, np.float32))
        await b.submit(np.zeros(2, np.float32))
        queued = [b.submit(np.zeros(2, np.float32)) for _ in range(3)]
        await asyncio.gather(*queued)  # queued together: one batch
        await b.stop()

    asyncio.run(scenario())
    assert sizes == [1, 1, 3]


def test_a_failed_announcement_does_not_hold_the_batch():
    sizes: list[int] = []

    async def scenario() -> None:
        b = _batcher(sizes)
        b.start()
        first = asyncio.create_task(b.submit(np.zeros(2, np.float32)))
        try:
            with b.expect():
                await asyncio.sleep(0.02)
                raise ValueError("this image did not decode")
        except ValueError:
            pass
        await first
        await b.stop()

    asyncio.run(scenario())
    assert sizes == [1]


def test_whole_batches_run_alone_and_in_order():
    sizes: list[int] = []

    async def scenario() -> None:
        b = _batcher(sizes, max_wait_ms=0)
        b.start()
        outs = await asyncio.gather(
            b.submit(np.zeros(2, np.float32)),
            b.run_now(np.zeros((5, 2), np.float32)),
            b.submit(np.zeros(2, np.float32)),
        )
        assert outs[1]["y"].shape == (5, 2) and outs[0]["y"].shape == (2,)
        await b.stop()

    asyncio.run(scenario())
    assert sizes == [1, 5, 1]


def test_a_batch_that_cannot_be_stacked_fails_its_requests_not_the_loop():
    sizes: list[int] = []

    async def scenario() -> None:
        b = _batcher(sizes)
        b.start()
        with b.expect() as arrival:  # the second joins the first's batch, and their shapes differ
            first = asyncio.create_task(b.submit(np.zeros(2, np.float32)))
            await asyncio.sleep(0.02)
            second = asyncio.create_task(b.submit(np.zeros(3, np.float32), arrival))
            outcomes = await asyncio.gather(first, second, return_exceptions=True)
        assert all(isinstance(o, ValueError) for o in outcomes), outcomes
        assert b.healthy and b.restarts == 0
        assert (await b.submit(np.zeros(2, np.float32)))["y"].tolist() == [1, 1]
        await b.stop()

    asyncio.run(scenario())
    assert sizes == [1]
