"""Dynamic batching that forms a batch when the model is free to run it.

:class:`DynamicBatcher` queues requests while the model runs and hands the model everything that
has accumulated (up to ``max_batch_size``) as soon as it is free. A batch is closed when it is full
or when its oldest request has waited ``wait_s``: a request that finds the model idle waits at most
``wait_s`` for company, and requests that queued behind a running batch for longer than that go in
at once. This is the batching of Triton's dynamic batcher
(``max_queue_delay`` counted from the oldest queued request), written here on asyncio.

Why not ``@serve.batch``: since Ray made batches concurrent (``max_concurrent_batches``,
ray-project/ray#53096; Ray 2.60 here), its loop closes a batch ``batch_wait_timeout_s`` after the
batch's first request arrives and queues the closed batch behind the semaphore of running ones.
When requests arrive further apart than that timeout, as from clients that each wait for their
answer while the model is busy, every batch holds one request and the batches queue up behind
each other: in the Serve benchmark at 16 clients, 343 of 346 batches held one request while 15
requests waited in the replica. Here the batch is closed when the model takes it, so the queue
becomes the batch.

Decisions made here:

- One batch runs at a time per batcher (a replica's model is one device; two concurrent batches
  would share it at no gain).
- A request whose caller went away (cancelled future) is dropped when the batch is formed and never
  takes a slot.
- An exception from ``run`` fails the requests of that batch only; isolating a bad request inside
  a batch is the runner's job (:class:`serve.generation.Generator` retries them alone).
- ``max_batch_size`` and ``wait_s`` are plain attributes: set them on a running batcher and the
  next batch follows them (Serve's ``reconfigure``); a batch already filling keeps the deadline it
  computed until the next request arrives.
- The worker runs in a fresh ``contextvars`` context: it serves every request, so it must not carry
  the first request's Serve request context (its id in log lines, its trace).
- Should the worker itself end (its task cancelled, ``run`` raising a ``BaseException`` such as
  ``CancelledError`` at shutdown), every request still waiting gets that error instead of hanging;
  the next :meth:`submit` starts a new worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float


class DynamicBatcher(Generic[T, R]):
    """Runs ``run(items) -> results`` on batches of submitted items (see the module docstring)."""

    def __init__(
        self, run: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch_size: int, wait_s: float
    ) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and wait_s >= 0, got {max_batch_size}, {wait_s}")
        self.run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        """How many batches of each size have run (for the replica's stats and the benchmark)."""
        self._pending: collections.deque[_Pending[T, R]] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """``item``'s result, from the next batch the model runs."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = contextvars.Context().run(loop.create_task, self._serve(), name="dynamic-batcher")
            self._worker.add_done_callback(self._worker_ended)
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append(_Pending(item, future, time.monotonic()))
        assert self._arrived is not None
        self._arrived.set()
        return await future

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (callers still waiting)."""
        return sum(not p.future.cancelled() for p in self._pending)

    def _drop_cancelled(self) -> None:
        while self._pending and self._pending[0].future.cancelled():
            self._pending.popleft()

    async def _fill(self) -> None:
        """Wait until the batch is full or its oldest request has waited ``wait_s``."""
        assert self._arrived is not None
        while True:
            self._drop_cancelled()
            if not self._pending or self.queued >= self.max_batch_size:
                return
            left = self._pending[0].arrived + self.wait_s - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return

    def _worker_ended(self, worker: asyncio.Task[None]) -> None:
        error: BaseException = (
            asyncio.CancelledError() if worker.cancelled() else worker.exception() or RuntimeError("ended")
        )
        waiting = list(self._pending)
        self._pending.clear()
        _fail(waiting, error)

    def _take(self) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        while self._pending and len(batch) < self.max_batch_size:
            pending = self._pending.popleft()
            if not pending.future.cancelled():
                batch.append(pending)
        return batch

    async def _serve(self) -> None:
        assert self._arrived is not None
        while True:
            self._drop_cancelled()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._fill()
            batch = self._take()
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1
            try:
                results = await self.run([p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
            except Exception as err:  # noqa: BLE001 - the batch's requests get the error, the loop goes on
                _fail(batch, err)
                continue
            except BaseException as err:  # the worker is ending (cancelled): nobody may hang
                _fail(batch, err)
                raise
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)


def _fail(batch: Sequence[_Pending[Any, Any]], error: BaseException) -> None:
    for p in batch:
        if p.future.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            p.future.cancel()
        else:
            p.future.set_exception(error)
