"""uvicorn's httptools protocol with what it lacks: a cap on request head bytes and a deadline for the head,
the set of requests in flight, for the batcher, and infer requests answered from the parser's callbacks.

llhttp (via httptools) accepts headers of any size and waits forever for the end of a head, so one client could
hold hundreds of MB in a header or keep a connection open byte by byte. h11 has a size cap but is ~30% slower.
"""

from __future__ import annotations

import asyncio
import json
import weakref

from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 10.0
# scope["extensions"][REQUEST_TASKS]: the server's set of unfinished request tasks, started or not, so the app can
# tell a request that is alone in the server (and need not wait for a batch to form) from one with company.
REQUEST_TASKS = "mlsd.request_tasks"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Answers 431 when a request line + headers exceed MAX_HEAD_BYTES, 408 when they take HEAD_TIMEOUT_S."""

    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = HEAD_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, f"request line and headers exceed {self.max_head_bytes} bytes")
            elif self._head_timer is None and self._head_bytes:  # a head that came whole needs no timer
                self._head_timer = self.loop.call_later(
                    self.head_timeout_s, self._refuse, 408, "request head not received in time"
                )

    def on_headers_complete(self) -> None:
        self._end_head()
        self.scope.setdefault("extensions", {})[REQUEST_TASKS] = self.tasks  # type: ignore[typeddict-item]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def _end_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int, reason: str) -> None:
        self._end_head()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": reason}).encode()
        phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, phrase, len(body))
            + body
        )
        self.transport.close()


class InferProtocol(BoundedHttpToolsProtocol):
    """Answers an infer request that is alone in the server without an ASGI task: the app's `answer_now` runs the
    model and the answer is written from here. Everything else (other routes, big or slow bodies, company, client
    errors) goes through the ASGI app as before.

    A request with a small declared body is held (no task) until its body is parsed, which most clients send
    right behind the head; a body not complete within `hold_body_s` goes to the ASGI app, which reads the rest
    under its own deadline. Alone means what it means for the batcher: the requests the loop completed in one
    iteration are looked at together in the next (when their ASGI tasks would have started); one, with no task in
    flight, is answered on the spot; several start their tasks and share batches. What this saves per request is
    the task, the ASGI messages and uvicorn's response path: on a 2-core VM the Python around one image costs a
    good part of the model's own time (README, Benchmarks)."""

    hold_body_s = 1.0
    hold_body_bytes = 64 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._held: tuple[RequestResponseCycle, ASGIApp] | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self._reading = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGIApp) -> None:
        if getattr(app, "answer_now", None) is None or not self._small(cycle):
            super()._start_asgi_task(cycle, app)
        elif cycle.more_body:
            self._held = (cycle, app)
            if not self._reading:  # a pipelined request started between reads: nothing else would time it
                self._hold_timer = self.loop.call_later(self.hold_body_s, self._stream_held)
        else:
            self._collect(cycle, app)  # a pipelined request, its body already read

    def _small(self, cycle: RequestResponseCycle) -> bool:
        if not cycle.keep_alive or cycle.waiting_for_100_continue:
            return False
        length = next((v for k, v in cycle.scope["headers"] if k == b"content-length"), None)
        return length is not None and length.isdigit() and int(length) <= self.hold_body_bytes

    def data_received(self, data: bytes) -> None:
        self._reading = True
        try:
            super().data_received(data)
        finally:
            self._reading = False
        if self._held is not None and self._hold_timer is None:
            self._hold_timer = self.loop.call_later(self.hold_body_s, self._stream_held)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        held = self._release()
        if held is not None:
            self._collect(*held)

    def connection_lost(self, exc: Exception | None) -> None:
        held = self._release()
        super().connection_lost(exc)
        if held is not None:  # its task sees the disconnect and counts it
            super()._start_asgi_task(*held)

    def _stream_held(self) -> None:
        self._hold_timer = None
        held = self._release()
        if held is not None:
            super()._start_asgi_task(*held)

    def _release(self) -> tuple[RequestResponseCycle, ASGIApp] | None:
        held, self._held = self._held, None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        return held

    def _collect(self, cycle: RequestResponseCycle, app: ASGIApp) -> None:
        ready = _READY.get(self.server_state)
        if ready is None:
            ready = _READY[self.server_state] = []
            self.loop.call_soon(_answer_ready, self.server_state, self.tasks)
        ready.append((self, cycle, app))

    def _answer_or_start(self, cycle: RequestResponseCycle, app: ASGIApp, alone: bool) -> None:
        answer = None
        if alone and not self.transport.is_closing():
            answer = app.answer_now(cycle.scope, cycle.body)  # type: ignore[attr-defined]
        if answer is None:
            super()._start_asgi_task(cycle, app)
            return
        head = [STATUS_LINE[answer.status_code]]
        for name, value in (*self.server_state.default_headers, *answer.headers):
            head += [name, b": ", value, b"\r\n"]
        head += [b"\r\n", answer.body]
        self.transport.write(b"".join(head))
        cycle.response_started = cycle.response_complete = True
        if not cycle.keep_alive:  # the server began shutting down meanwhile (uvicorn's `shutdown`)
            self.transport.close()
        cycle.on_response()


# Per server: the infer requests read in this loop iteration, looked at together in the next.
_READY: weakref.WeakKeyDictionary[object, list[tuple[InferProtocol, RequestResponseCycle, ASGIApp]]] = (
    weakref.WeakKeyDictionary()
)


def _answer_ready(server_state: object, tasks: set[asyncio.Task]) -> None:
    ready = _READY.pop(server_state)
    alone = len(ready) == 1 and not tasks
    for protocol, cycle, app in ready:
        protocol._answer_or_start(cycle, app, alone)
