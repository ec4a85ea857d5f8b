"""Dynamic batching: the requests that arrive together are coalesced into one ORT call.

Batches form on the event loop: a request does not run the model when it is parsed; it queues, and the queue is
drained by a callback scheduled behind every request the loop has already read (or after `max_queue_delay_us`).
A request larger than `max_batch_size` is cut into chunks, as many queued at a time as there are workers (the
next as soon as one is answered: a slow chunk does not hold the other worker idle), so health checks and small
requests are answered between the chunks of a 1024-image batch instead of after all of it.

Where a batch runs: with `workers` > 1 (default: one per core) each batch goes to a worker thread that runs a
single-threaded ORT call, up to `workers` batches at once; on 2 cores two such calls side by side classify
1.1-1.5x the images per second of one call on two intra-op threads (the smaller the batch, the larger the gain),
and the event loop keeps reading requests meanwhile. With one worker, or a predictor without a single-thread
entry point, batches run on the loop's thread as one ORT call on all intra-op threads. A request the server knows
to be the only one in flight (`alone`) runs at once on the loop's thread with all intra-op threads: no queue, no
thread hop, the lowest latency for one image.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("mlsd_server")


@dataclass(frozen=True)
class BatchingConfig:
    """`enabled=False`: one ORT call per request chunk (no coalescing)."""

    enabled: bool = True
    max_batch_size: int = 16  # per ORT call; also the chunk size of big requests (the longest a small one waits)
    max_queue_delay_us: int = 0  # 0: take what the loop has read by then (batches form under load)
    workers: int = 0  # batches run at once, each single-threaded (0: one per core; 1: on the loop's thread)


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


def batch_workers(config: BatchingConfig) -> int:
    """How many batches run at once: `config.workers`, or one per core this process may use."""
    return config.workers or len(os.sched_getaffinity(0))


Observer = Callable[[int, float, list[float]], None]  # (batch images, ORT seconds, queue seconds per job)


class Batcher:
    """`await infer(images)` returns that request's own logits. `run` is the ORT call on all intra-op threads;
    `run_single` (optional) the same model on one thread, for the worker threads."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        config: BatchingConfig,
        observe: Observer,
        run_single: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self._run = run
        self.config = config
        self._observe = observe
        self._queue: deque[_Job] = deque()
        self._queued_images = 0
        self._drain_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        workers = batch_workers(config)
        self._run_single = run_single if workers > 1 else None
        self.workers = workers if self._run_single else 1  # batches at once
        self._pool = ThreadPoolExecutor(self.workers, "mlsd-ort") if self._run_single else None
        self._busy = 0  # batches running on the workers

    async def infer(self, images: np.ndarray, alone: bool = False) -> np.ndarray:
        """Chunks of at most max_batch_size queue a few at a time (as many as there are workers): other requests
        interleave between them. `alone`: no other request is in flight, so one chunk runs now unless a queue
        delay asks to wait."""
        size = self.config.max_batch_size
        if alone and self.can_run_now(images):
            return self.run_now(images)
        if len(images) <= size:
            return await self._submit(images)
        slots = asyncio.Semaphore(self.workers if self._pool else 1)  # chunks of this request queued at once

        async def chunk(lo: int) -> np.ndarray:
            async with slots:  # the next chunk queues as soon as one is answered, not when a round is
                return await self._submit(images[lo : lo + size])

        return np.concatenate(await asyncio.gather(*(chunk(lo) for lo in range(0, len(images), size))))

    def can_run_now(self, images: np.ndarray) -> bool:
        """Whether a request alone in the server may skip the queue: nothing queued or running, one chunk, and
        no queue delay that asks it to wait for company."""
        idle = not self._queue and not self._busy
        return idle and len(images) <= self.config.max_batch_size and not self.config.max_queue_delay_us

    def run_now(self, images: np.ndarray) -> np.ndarray:
        """The model on `images` on the loop's thread with all intra-op threads (see `can_run_now`)."""
        try:
            return self._timed(self._run, images, [time.perf_counter()], on_loop=True)
        except Exception:
            log.exception("inference failed on a request of %d images", len(images))
            raise

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
        """Start batches: on the free workers, or one on this thread. What is left queued goes in a later
        callback, behind the answers of this batch and the I/O the loop has read meanwhile."""
        self._drain_handle = None
        try:
            if self._pool is None:
                jobs = self._batch()
                if jobs:
                    self._run_batch(jobs)
            else:
                while self._queue and self._busy < self.workers:
                    jobs = self._batch()
                    if jobs:
                        self._start(jobs)
        finally:
            if self._queue and self._drain_handle is None and (self._pool is None or self._busy < self.workers):
                self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)

    def _timed(
        self, run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, queued_at: list[float], on_loop: bool
    ) -> np.ndarray:
        """One ORT call, observed: its images, its seconds, and how long each request in it waited. On the loop's
        thread the observation waits for the next loop iteration, after the answers' bytes have been written
        (uvloop sends what was written at the end of an iteration): no client waits for the metrics."""
        start = time.perf_counter()
        logits = run(batch)
        figures = (len(batch), time.perf_counter() - start, [start - t for t in queued_at])
        if on_loop:
            asyncio.get_running_loop().call_soon(self._observe, *figures)
        else:
            self._observe(*figures)
        return logits

    def _call(self, run: Callable[[np.ndarray], np.ndarray], jobs: list[_Job], on_loop: bool) -> np.ndarray:
        """The jobs' images as one batch through `run`, observed (on the loop's thread or on a worker)."""
        batch = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
        return self._timed(run, batch, [j.queued_at for j in jobs], on_loop)

    def _run_batch(self, jobs: list[_Job]) -> None:
        try:
            logits = self._call(self._run, jobs, on_loop=True)
        except Exception as exc:  # delivered to each waiting request, which answers 500 with the reason
            self._fail(jobs, exc)
            return
        self._answer(jobs, logits)

    def _start(self, jobs: list[_Job]) -> None:
        """The batch on a worker thread; its answers, or its error, come back through the loop (`_finish`)."""
        self._busy += 1
        done = asyncio.get_running_loop().run_in_executor(self._pool, self._call, self._run_single, jobs, False)
        done.add_done_callback(lambda future: self._finish(jobs, future))

    def _finish(self, jobs: list[_Job], done: asyncio.Future) -> None:
        self._busy -= 1
        if done.exception() is not None:
            self._fail(jobs, done.exception())
        else:
            self._answer(jobs, done.result())
        if self._queue and self._drain_handle is None:
            self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)

    @staticmethod
    def _fail(jobs: list[_Job], exc: BaseException) -> None:
        log.error("inference failed on a batch of %d requests", len(jobs), exc_info=exc)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)

    @staticmethod
    def _answer(jobs: list[_Job], logits: np.ndarray) -> None:
        lo = 0
        for job in jobs:
            hi = lo + len(job.images)
            if not job.future.done():  # a request cancelled while its batch ran
                job.future.set_result(logits[lo:hi])
            lo = hi
