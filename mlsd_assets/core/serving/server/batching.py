"""Dynamic batching: requests from the event loop coalesced into one ORT call on a worker thread.

The event loop never runs the model, so health checks and small requests stay fast while a big batch runs. A
request larger than `max_batch_size` is cut into chunks that queue one after another, so a client sending
1024-image batches back to back shares the worker with everyone else instead of holding it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("mlsd_server")


@dataclass(frozen=True)
class BatchingConfig:
    """`enabled=False`: one ORT call per request chunk (no coalescing), still off the event loop."""

    enabled: bool = True
    max_batch_size: int = 16  # per ORT call; also the chunk size of big requests (the longest a small one waits)
    max_queue_delay_us: int = 0  # 0: take what is queued when the worker is free (batches form under load)


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)


Observer = Callable[[int, float, list[float]], None]  # (batch images, ORT seconds, queue seconds per job)


class Batcher:
    """One worker thread owns the ORT session; `await infer(images)` returns that request's own logits."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], config: BatchingConfig, observe: Observer) -> None:
        self._run = run
        self.config = config
        self._observe = observe
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._carry: _Job | None = None  # a job that did not fit the last batch: it opens the next one
        self._thread = threading.Thread(target=self._work, name="mlsd-inference", daemon=True)
        self._thread.start()

    async def infer(self, images: np.ndarray) -> np.ndarray:
        """Chunks of at most max_batch_size queue one at a time: other requests interleave between them."""
        size = self.config.max_batch_size
        if len(images) <= size:
            return await self._submit(images)
        return np.concatenate([await self._submit(images[lo : lo + size]) for lo in range(0, len(images), size)])

    def _submit(self, images: np.ndarray) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        job = _Job(images, loop.create_future(), loop)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _collect(self, first: _Job) -> list[_Job]:
        jobs, count = [first], len(first.images)
        if not self.config.enabled:
            return jobs
        deadline = time.perf_counter() + self.config.max_queue_delay_us / 1e6
        while count < self.config.max_batch_size:
            try:
                wait = deadline - time.perf_counter()
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # close(): finish this batch, then stop
                self._queue.put(None)
                break
            if count + len(job.images) > self.config.max_batch_size:
                self._carry = job
                break
            jobs.append(job)
            count += len(job.images)
        return jobs

    def _work(self) -> None:
        while True:
            first, self._carry = self._carry or self._queue.get(), None
            if first is None:
                return
            jobs = [j for j in self._collect(first) if not j.future.cancelled()]
            if not jobs:
                continue
            start = time.perf_counter()
            try:
                batch = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
                logits = self._run(batch)
            except Exception as exc:  # delivered to each waiting request, which answers 500 with the reason
                log.exception("inference failed on a batch of %d requests", len(jobs))
                for job in jobs:
                    job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
                continue
            seconds = time.perf_counter() - start
            self._observe(len(batch), seconds, [start - j.queued_at for j in jobs])
            lo = 0
            for job in jobs:
                hi = lo + len(job.images)
                job.loop.call_soon_threadsafe(_settle, job.future, logits[lo:hi], None)
                lo = hi


def _settle(future: asyncio.Future, result: np.ndarray | None, exc: BaseException | None) -> None:
    if future.done():  # the client went away while its request waited
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
