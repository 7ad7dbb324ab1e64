"""The replica's dynamic batcher, on asyncio alone: batches form when the model is free."""

from __future__ import annotations

import asyncio
import contextvars
import time

import pytest

from serve.batcher import DynamicBatcher


class _Model:
    """A model that takes ``seconds`` per batch, records each batch and answers ``item * 10``."""

    def __init__(self, seconds: float = 0.05, fail_on: object = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise ValueError("the model failed")
        return [i * 10 for i in items]


def test_requests_that_queue_behind_a_running_batch_form_the_next_batch():
    """Closed-loop clients, each arriving after the previous batch closed: the second batch holds all
    that queued while the first ran (``@serve.batch`` of Ray 2.60 would run them one by one)."""

    async def main():
        model = _Model(seconds=0.4)
        batcher = DynamicBatcher(model, max_batch_size=16, wait_s=0.01)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.03)  # the first batch is running
        later = []
        for i in range(1, 6):  # arrive 20 ms apart, each longer after the last than the wait
            later.append(asyncio.create_task(batcher.submit(i)))
            await asyncio.sleep(0.02)
        results = await asyncio.gather(first, *later)
        return model.batches, results, batcher.batch_sizes

    batches, results, sizes = asyncio.run(main())
    assert batches == [[0], [1, 2, 3, 4, 5]]
    assert results == [0, 10, 20, 30, 40, 50]
    assert sizes == {1: 1, 5: 1}


def test_an_idle_model_waits_for_company_at_most_wait_s():
    async def main():
        model = _Model(seconds=0.0)
        batcher = DynamicBatcher(model, max_batch_size=4, wait_s=0.2)
        start = time.monotonic()
        lone = await batcher.submit(7)
        waited = time.monotonic() - start
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(4)]  # fills the batch at once
        start = time.monotonic()
        await asyncio.gather(*tasks)
        full = time.monotonic() - start
        return lone, waited, full, model.batches

    lone, waited, full, batches = asyncio.run(main())
    assert lone == 70
    assert 0.2 <= waited < 1.0
    assert full < 0.15, "a full batch must not wait"
    assert batches == [[7], [0, 1, 2, 3]]


def test_batches_respect_max_batch_size_in_arrival_order():
    async def main():
        model = _Model(seconds=0.02)
        batcher = DynamicBatcher(model, max_batch_size=3, wait_s=0.0)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
        return model.batches, results

    batches, results = asyncio.run(main())
    assert [len(b) for b in batches] == [3, 3, 2]
    assert [i for b in batches for i in b] == list(range(8))
    assert results == [i * 10 for i in range(8)]


def test_a_cancelled_request_never_takes_a_batch_slot():
    async def main():
        model = _Model(seconds=0.05)
        batcher = DynamicBatcher(model, max_batch_size=2, wait_s=0.0)
        busy = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(batcher.submit(1))
        kept = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0.005)
        gone.cancel()
        await asyncio.gather(busy, *kept)
        return model.batches, gone.cancelled()

    batches, cancelled = asyncio.run(main())
    assert cancelled
    assert batches == [[0], [2, 3]]


def test_a_caller_gone_while_its_batch_runs_leaves_the_others_their_answers():
    async def main():
        model = _Model(seconds=0.1)
        batcher = DynamicBatcher(model, max_batch_size=4, wait_s=0.0)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.03)  # all three are in the running batch
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return model.batches, done, await batcher.submit(5)

    batches, done, after = asyncio.run(main())
    assert batches[0] == [0, 1, 2]
    assert done[0] == 0 and isinstance(done[1], asyncio.CancelledError) and done[2] == 20
    assert after == 50


def test_a_worker_that_ends_fails_every_waiting_request_instead_of_hanging():
    """``run`` raising ``CancelledError`` (a replica shutting down) ends the worker: its batch and the
    requests queued behind it are cancelled, not left waiting; the next request starts a new one."""
    calls = []

    async def run(items):
        calls.append(list(items))
        if len(calls) == 1:
            await asyncio.sleep(0.05)
            raise asyncio.CancelledError
        return [i * 10 for i in items]

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=1, wait_s=0.0)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2.0)
        return done, await asyncio.wait_for(batcher.submit(7), 2.0)

    done, after = asyncio.run(main())
    assert all(isinstance(d, asyncio.CancelledError) for d in done), done
    assert after == 70


def test_the_worker_does_not_carry_the_first_requests_context():
    """Serve keeps a request's id in a context variable: the shared worker must not log every batch
    under the request that happened to start it."""
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")
    seen = []

    async def run(items):
        seen.append(request_id.get())
        return items

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=1, wait_s=0.0)

        async def as_request(rid, item):
            request_id.set(rid)
            return await batcher.submit(item)

        return await asyncio.gather(as_request("req-1", 1), as_request("req-2", 2))

    assert asyncio.run(main()) == [1, 2]
    assert seen == ["none", "none"]


def test_a_failing_batch_fails_its_own_requests_only_and_the_batcher_goes_on():
    async def main():
        model = _Model(seconds=0.02, fail_on=1)
        batcher = DynamicBatcher(model, max_batch_size=2, wait_s=0.0)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
        after = await batcher.submit(9)
        return outcomes, after

    outcomes, after = asyncio.run(main())
    assert isinstance(outcomes[0], ValueError) and isinstance(outcomes[1], ValueError)
    assert outcomes[2:] == [20, 30]
    assert after == 90


def test_a_wrong_number_of_results_is_an_error_not_a_misassignment():
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def main():
        batcher = DynamicBatcher(short, max_batch_size=2, wait_s=0.0)
        return await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, RuntimeError) and "got 1 results" in str(o) for o in outcomes)


def test_new_settings_apply_to_the_next_batch():
    async def main():
        model = _Model(seconds=0.01)
        batcher = DynamicBatcher(model, max_batch_size=1, wait_s=0.0)
        await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        batcher.max_batch_size = 8
        await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        return model.batches

    assert asyncio.run(main()) == [[0], [1], [2], [0, 1, 2]]


def test_a_shorter_wait_applies_from_the_next_batch():
    async def main():
        model = _Model(seconds=0.0)
        batcher = DynamicBatcher(model, max_batch_size=4, wait_s=0.3)
        start = time.monotonic()
        await batcher.submit(1)
        slow = time.monotonic() - start
        batcher.wait_s = 0.0
        start = time.monotonic()
        await batcher.submit(2)
        return slow, time.monotonic() - start

    slow, fast = asyncio.run(main())
    assert slow >= 0.3 and fast < 0.2


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(_Model(), max_batch_size=0, wait_s=0.0)
    with pytest.raises(ValueError, match="wait_s"):
        DynamicBatcher(_Model(), max_batch_size=1, wait_s=-1.0)
