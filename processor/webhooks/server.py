"""Serving the webhook application with uvicorn, with limits on connections.

uvicorn closes a keep-alive connection that idles after a response, but not
one that never completes its first request's headers (uvicorn 0.55). So
``HeaderDeadlineProtocol`` closes a connection whose request line and
headers have not arrived ``HEADER_TIMEOUT`` seconds after it opened. With
``limit_concurrency``, requests beyond ``max_connections`` open connections
get 503 at once. When the process runs out of file descriptors, asyncio
logs every failed accept with a traceback; ``AcceptErrorFilter`` lets one
such record through per minute.

NOTE: a client that sends a first request in time can still hold its
connection open by trickling the headers of a second one. A reverse proxy
or a platform router in front of the server bounds that.
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from processor.webhooks.app import WebhookApp

logger = logging.getLogger(__name__)

# Seconds a new connection has to send its first request's headers.
HEADER_TIMEOUT = 10.0
# Open connections beyond which requests get 503.
MAX_CONNECTIONS = 1000
ACCEPT_ERROR_INTERVAL = 60.0


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing connections with no request in time."""

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self.loop.call_later(self.header_timeout, self._close_without_request)

    def _close_without_request(self) -> None:
        # uvicorn sets ``cycle``, typed as never None, once a request's
        # headers are complete.
        cycle: object | None = self.cycle
        if cycle is None and not self.transport.is_closing():
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
    max_connections: int = MAX_CONNECTIONS,
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
