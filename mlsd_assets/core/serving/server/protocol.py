"""uvicorn's httptools protocol with what it lacks: a cap on request head bytes and a deadline for the head,
and the set of requests in flight, for the batcher.

llhttp (via httptools) accepts headers of any size and waits forever for the end of a head, so one client could
hold hundreds of MB in a header or keep a connection open byte by byte. h11 has a size cap but is ~30% slower.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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
