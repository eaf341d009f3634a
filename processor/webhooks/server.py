"""Serving the webhook application with uvicorn, with limits on connections.

uvicorn 0.55 closes a keep-alive connection that sends nothing after a
response, but not one that never completes a request's headers, whether
it sends nothing or trickles them a byte at a time. ``HeaderDeadlineProtocol``
closes a connection whose request headers have not arrived
``HEADER_TIMEOUT`` seconds after it opened or after its last response.
With ``max_connections`` set, uvicorn responds to requests with 503 once that
many connections are open. When the process runs out of file descriptors,
asyncio logs every failed accept with a traceback, so ``AcceptErrorFilter``
lets one such record through per minute.

NOTE: many clients that each hold a connection can still use up the file
descriptors or the connection limit. A reverse proxy or a platform router
in front of the server bounds that.
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from processor.webhooks.app import WebhookApp

logger = logging.getLogger(__name__)

# Seconds a connection has to send a request's headers, after it opens and
# after each response.
HEADER_TIMEOUT = 10.0
ACCEPT_ERROR_INTERVAL = 60.0


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing connections with no request in time."""

    header_timeout = HEADER_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start_deadline(None)

    def on_response_complete(self) -> None:
        finished = self.cycle
        # uvicorn starts the cycle of a pipelined request in this call.
        super().on_response_complete()
        self._start_deadline(finished)

    def connection_lost(self, exc: Exception | None) -> None:
        # A pending timer would keep this protocol and its buffers alive.
        self._cancel_deadline()
        super().connection_lost(exc)

    def _start_deadline(self, finished: object) -> None:
        """Close the connection in ``header_timeout`` seconds unless a request
        after the ``finished`` one (None before the first) has begun."""
        self._cancel_deadline()
        self._deadline = self.loop.call_later(
            self.header_timeout, self._close_without_request, finished
        )

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close_without_request(self, finished: object) -> None:
        self._deadline = None
        # uvicorn sets a new ``cycle`` once a request's headers are complete.
        if self.cycle is finished and not self.transport.is_closing():
            self.transport.close()


class AcceptErrorFilter(logging.Filter):
    """Lets one asyncio "accept failed" record through per interval.

    The record that passes counts the records dropped since the last one.
    """

    def __init__(self, interval: float = ACCEPT_ERROR_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self.last = float("-inf")
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "socket.accept() out of system resource" not in str(record.msg):
            return True
        now = time.monotonic()
        if now - self.last < self.interval:
            self.dropped += 1
            return False

        if self.dropped:
            record.msg = f"{record.msg} ({self.dropped} like it dropped)"
        self.last = now
        self.dropped = 0
        return True


def serve(
    app: WebhookApp,
    host: str,
    port: int,
    *,
    max_connections: int | None = None,
    header_timeout: float = HEADER_TIMEOUT,
) -> None:
    """Serve ``app`` on ``host`` and ``port`` until SIGINT or SIGTERM."""
    logging.getLogger("asyncio").addFilter(AcceptErrorFilter())
    protocol = type(
        "HeaderDeadlineProtocol",
        (HeaderDeadlineProtocol,),
        {"header_timeout": header_timeout},
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        lifespan="off",
        limit_concurrency=max_connections,
        # The app logs one line per delivery; uvicorn's access log would repeat it.
        access_log=False,
        log_config=None,
        server_header=False,
    )
    uvicorn.Server(config).run()
