"""The ASGI application behind ``processor web``.

Routes:

    POST /webhooks/buttondown   receive one delivery (``Receiver.receive``)
    GET  /healthz               200 while Redis responds, else 503

The body is read here, up to ``MAX_BODY_BYTES``; everything else runs in a
worker thread, so hashing or decoding a large body never stalls other
requests. Each delivery gets one log line with its id, type, outcome,
status and duration, and never the signing key or the body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import msgspec

from processor.errors import BrokerUnavailable, WebhookError, WebhookRejected
from processor.webhooks.receiver import Receipt, Receiver
from processor.webhooks.signature import SIGNATURE_HEADER

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/buttondown"
HEALTH_PATH = "/healthz"

# Buttondown sends payloads of up to 10 MB; 10 MiB leaves room for all of them.
MAX_BODY_BYTES = 10 * 1024 * 1024
# Bytes of request bodies held in memory at once, across all requests. The
# first SMALL_BODY_BYTES of each body count against the small pool and the
# rest against the large one, so that clients stalling large bodies cannot
# hold up the small deliveries Buttondown sends. The large pool has room
# for 12 bodies of the largest size, the small one for 1,024 small bodies.
SMALL_BODY_BYTES = 64 * 1024
MAX_SMALL_BUFFERED = 1024 * SMALL_BODY_BYTES
MAX_LARGE_BUFFERED = 12 * MAX_BODY_BYTES
# Seconds a client has to send the whole body.
BODY_TIMEOUT = 30.0
# Seconds after which Buttondown may send a delivery again after a 503.
RETRY_AFTER_SECONDS = 60
# Threads that verify, record and enqueue deliveries.
RECEIVER_THREADS = 32

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SIGNATURE_NAME = SIGNATURE_HEADER.lower().encode()

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the body was complete."""


class BodyBudget:
    """Bytes of request bodies held in memory, in a small and a large pool.

    Only the event loop's thread uses it, so it needs no lock.
    """

    def __init__(
        self,
        small_limit: int = MAX_SMALL_BUFFERED,
        large_limit: int = MAX_LARGE_BUFFERED,
        small_size: int = SMALL_BODY_BYTES,
    ) -> None:
        self.small_limit = small_limit
        self.large_limit = large_limit
        self.small_size = small_size
        self.small = 0
        self.large = 0

    def take(self, already_read: int, size: int) -> bool:
        """Add ``size`` bytes to a body of ``already_read`` bytes.

        Returns whether they fit in the pools. Nothing is added when they
        do not.
        """
        small, large = self._split(already_read, size)
        if self.small + small > self.small_limit:
            return False
        if self.large + large > self.large_limit:
            return False
        self.small += small
        self.large += large
        return True

    def give_back(self, size: int) -> None:
        """Release the ``size`` bytes of a finished body."""
        small, large = self._split(0, size)
        self.small -= small
        self.large -= large

    def _split(self, already_read: int, size: int) -> tuple[int, int]:
        small = max(0, min(size, self.small_size - already_read))
        return small, size - small


class Body:
    """A request body as it is read: its bytes, and whether all arrived."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.complete = False


class WebhookApp:
    """ASGI application that receives Buttondown's webhook deliveries."""

    def __init__(
        self,
        receiver: Receiver,
        max_body: int = MAX_BODY_BYTES,
        body_timeout: float = BODY_TIMEOUT,
        budget: BodyBudget | None = None,
    ) -> None:
        self.receiver = receiver
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.budget = budget or BodyBudget()
        # Its own threads, so that requests waiting on a slow Redis do not
        # take the threads of asyncio's default executor.
        self.executor = ThreadPoolExecutor(
            max_workers=RECEIVER_THREADS, thread_name_prefix="webhook"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return

        # Responses that leave a body unread close the connection, so that
        # uvicorn does not go on reading it.
        path, method = scope["path"], scope["method"]
        if path == WEBHOOK_PATH:
            if method != "POST":
                await _respond(
                    send, 405, {"error": "use POST"}, allow="POST", connection="close"
                )
                return
            await self._deliver(scope, receive, send)
        elif path == HEALTH_PATH:
            if method not in ("GET", "HEAD"):
                await _respond(
                    send,
                    405,
                    {"error": "use GET"},
                    allow="GET, HEAD",
                    connection="close",
                )
                return
            await self._health(send)
        else:
            await _respond(send, 404, {"error": "not found"}, connection="close")

    async def _deliver(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        body = Body()
        try:
            await self._read_body(scope, receive, body)
            signature = _signature_header(scope)
            receipt = await self._in_thread(self.receiver.receive, body.data, signature)
        except ClientDisconnected:
            _log(Receipt(499, "disconnected"), started)
            return
        except WebhookError as error:
            # Rejections are not counted in Redis, so that a flood of bad
            # requests costs no Redis round trips; their log lines remain.
            receipt = Receipt(
                error.status,
                "unavailable" if error.status == 503 else "rejected",
                error.delivery_id,
                error.event_type,
                error.reason,
            )
        except Exception:
            logger.exception("Webhook delivery failed with an unexpected error.")
            receipt = Receipt(500, "error", reason="internal error")
        finally:
            self.budget.give_back(len(body.data))

        _log(receipt, started)
        headers = _headers(receipt)
        if not body.complete:
            # The rest of the body is not read, so the connection cannot be
            # reused, and a client trickling it must not keep it open.
            headers["connection"] = "close"
        await _respond(send, receipt.status, _response_body(receipt), **headers)

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, function, *args)

    async def _read_body(self, scope: Scope, receive: Receive, body: Body) -> None:
        """Read the request body into ``body``, within the budget.

        Raises ``BrokerUnavailable`` (503) when the body does not fit in the
        budget, so that a flood of bodies gets responses Buttondown retries instead of
        filling memory.
        """
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            raise _too_large(self.max_body)

        more = True
        deadline = time.monotonic() + self.body_timeout
        while more:
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0))
            except TimeoutError:
                raise WebhookRejected(
                    408, f"body not received within {self.body_timeout:g} seconds"
                ) from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnected

            chunk = message.get("body", b"")
            if len(body.data) + len(chunk) > self.max_body:
                raise _too_large(self.max_body)
            if not self.budget.take(len(body.data), len(chunk)):
                raise BrokerUnavailable("server busy; retry later")
            body.data += chunk
            more = message.get("more_body", False)
        body.complete = True

    async def _health(self, send: Send) -> None:
        if await self._in_thread(self.receiver.healthy):
            await _respond(send, 200, {"status": "ok"})
        else:
            await _respond(
                send, 503, {"status": "unavailable", "error": "Redis is unreachable"}
            )


def _signature_header(scope: Scope) -> bytes | None:
    values = [value for name, value in scope["headers"] if name == _SIGNATURE_NAME]
    if len(values) > 1:
        raise WebhookRejected(401, f"more than one {SIGNATURE_HEADER} header")
    return values[0] if values else None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise WebhookRejected(400, "invalid Content-Length") from None
    return None


def _too_large(limit: int) -> WebhookRejected:
    return WebhookRejected(413, f"body larger than {limit:,} bytes")


def _response_body(receipt: Receipt) -> dict[str, Any]:
    if receipt.status >= 400:
        return {"error": receipt.reason}
    body: dict[str, Any] = {"status": receipt.outcome, "id": receipt.delivery_id}
    if receipt.reason:
        body["reason"] = receipt.reason
    return body


def _headers(receipt: Receipt) -> dict[str, str]:
    if receipt.status == 503:
        return {"retry_after": str(RETRY_AFTER_SECONDS)}
    return {}


def _log(receipt: Receipt, started: float) -> None:
    milliseconds = (time.perf_counter() - started) * 1000
    fields: dict[str, Any] = {
        "delivery_id": receipt.delivery_id or "-",
        "event_type": receipt.event_type or "-",
        "outcome": receipt.outcome,
        "status": receipt.status,
        "duration_ms": round(milliseconds, 1),
    }
    text = " ".join(f"{name}={value}" for name, value in fields.items())
    if receipt.reason:
        fields["reason"] = receipt.reason
        text += f' reason="{receipt.reason}"'
    level = logging.WARNING if receipt.status >= 400 else logging.INFO
    logger.log(level, "Webhook delivery: %s", text, extra={"webhook": fields})


async def _respond(
    send: Send, status: int, body: dict[str, Any], **headers: str
) -> None:
    payload = msgspec.json.encode(body)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [
        (name.replace("_", "-").encode(), value.encode())
        for name, value in headers.items()
    ]
    await send(
        {"type": "http.response.start", "status": status, "headers": raw_headers}
    )
    await send({"type": "http.response.body", "body": payload})
