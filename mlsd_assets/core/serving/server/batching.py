"""Dynamic batching on the event loop: the requests that arrive together are coalesced into one ORT call.

The model runs inline on the event-loop thread, with no hand-over to a worker thread: on a loaded 2-core machine
each thread hop (queue put, worker wake-up, call back into the loop) cost more than the whole HTTP path. Batches
still form, because a request does not run the model when it is parsed; it queues, and the queue is drained by a
callback scheduled behind every request the loop has already read (or after `max_queue_delay_us`). A request
larger than `max_batch_size` is cut into chunks queued one after another, so health checks and small requests
are answered between the chunks of a 1024-image batch instead of after all of it. A request the server knows to be
the only one in flight (`alone`) runs at once, in its own task: the queue's two loop iterations would only wait
for company that cannot come.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("mlsd_server")


@dataclass(frozen=True)
class BatchingConfig:
    """`enabled=False`: one ORT call per request chunk (no coalescing)."""

    enabled: bool = True
    max_batch_size: int = 16  # per ORT call; also the chunk size of big requests (the longest a small one waits)
    max_queue_delay_us: int = 0  # 0: take what the loop has read by then (batches form under load)


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


Observer = Callable[[int, float, list[float]], None]  # (batch images, ORT seconds, queue seconds per job)


class Batcher:
    """`await infer(images)` returns that request's own logits; one ORT call at a time, on the loop's thread."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], config: BatchingConfig, observe: Observer) -> None:
        self._run = run
        self.config = config
        self._observe = observe
        self._queue: deque[_Job] = deque()
        self._queued_images = 0
        self._drain_handle: asyncio.Handle | asyncio.TimerHandle | None = None

    async def infer(self, images: np.ndarray, alone: bool = False) -> np.ndarray:
        """Chunks of at most max_batch_size queue one at a time: other requests interleave between them.
        `alone`: no other request is in flight, so one chunk runs now unless a queue delay asks to wait."""
        size = self.config.max_batch_size
        if alone and len(images) <= size and not self._queue and not self.config.max_queue_delay_us:
            try:
                return self._timed(images, [time.perf_counter()])
            except Exception:
                log.exception("inference failed on a request of %d images", len(images))
                raise
        if len(images) <= size:
            return await self._submit(images)
        return np.concatenate([await self._submit(images[lo : lo + size]) for lo in range(0, len(images), size)])

    def _submit(self, images: np.ndarray) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        job = _Job(images, loop.create_future())
        self._queue.append(job)
        self._queued_images += len(images)
        full = self._queued_images >= self.config.max_batch_size or not self.config.enabled
        if self._drain_handle is None or (full and isinstance(self._drain_handle, asyncio.TimerHandle)):
            if self._drain_handle is not None:
                self._drain_handle.cancel()
            delay = 0 if full else self.config.max_queue_delay_us / 1e6
            self._drain_handle = loop.call_later(delay, self._drain) if delay else loop.call_soon(self._drain)
        return job.future

    def _batch(self) -> list[_Job]:
        """The oldest job, then as many following ones as fit max_batch_size (none with batching off)."""
        jobs = [self._queue.popleft()]
        count = len(jobs[0].images)
        while self.config.enabled and self._queue and count + len(self._queue[0].images) <= self.config.max_batch_size:
            jobs.append(self._queue.popleft())
            count += len(jobs[-1].images)
        self._queued_images -= count
        return [j for j in jobs if not j.future.done()]  # skip requests whose client went away

    def _drain(self) -> None:
        """One ORT call. What is left queued goes in a later callback, behind the answers of this batch and the
        I/O the loop has read meanwhile."""
        self._drain_handle = None
        jobs = self._batch()
        try:
            if jobs:
                self._run_batch(jobs)
        finally:
            if self._queue and self._drain_handle is None:
                self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)

    def _timed(self, batch: np.ndarray, queued_at: list[float]) -> np.ndarray:
        """One ORT call, observed: its images, its seconds, and how long each request in it waited."""
        start = time.perf_counter()
        logits = self._run(batch)
        self._observe(len(batch), time.perf_counter() - start, [start - t for t in queued_at])
        return logits

    def _run_batch(self, jobs: list[_Job]) -> None:
        try:
            batch = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
            logits = self._timed(batch, [j.queued_at for j in jobs])
        except Exception as exc:  # delivered to each waiting request, which answers 500 with the reason
            log.exception("inference failed on a batch of %d requests", len(jobs))
            for job in jobs:
                job.future.set_exception(exc)
            return
        lo = 0
        for job in jobs:
            hi = lo + len(job.images)
            job.future.set_result(logits[lo:hi])
            lo = hi
