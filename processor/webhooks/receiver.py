"""The receiving end of webhook deliveries: verify, record, enqueue.

``Receiver.receive`` does the whole job of one request in a few Redis
round trips, so the web server can respond within milliseconds:

1. check the signature against the raw body;
2. decode the body and check ``id``, ``event_type`` and ``data``;
3. claim the delivery id with ``SET NX``, so a replayed delivery is
   gets 200 and does nothing;
4. enqueue the ``webhook`` actor for the types the workers act on;
5. mark the id accepted for ``PROCESSOR_WEBHOOK_DEDUPE_WINDOW`` seconds.

The claim is first written as ``pending`` with a short expiry. If Redis
fails before the message is enqueued, the claim is removed (or expires),
the request gets 503, and Buttondown's retry of the same id is accepted.
"""

from __future__ import annotations

import contextlib
import logging
import time

import dramatiq
import msgspec
import redis

from processor.config import Settings
from processor.errors import BrokerUnavailable
from processor.webhooks import deliveries
from processor.webhooks.deliveries import Delivery
from processor.webhooks.signature import verify

logger = logging.getLogger(__name__)

DELIVERY_PREFIX = "processor:webhook:delivery:"
TYPES_KEY = "processor:webhook:types"
OUTCOMES_KEY = "processor:webhook:outcomes"

# Seconds a claim stays pending while its message is enqueued. Buttondown's
# next retry comes about 5 minutes later, after a failed claim expired.
PENDING_SECONDS = 60

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
IGNORED = "ignored"


class Receipt(msgspec.Struct, frozen=True):
    """The outcome of one request: its status, outcome and delivery."""

    status: int
    outcome: str
    delivery_id: str | None = None
    event_type: str | None = None
    reason: str | None = None


class Receiver:
    """Verifies, records and enqueues webhook deliveries.

    ``signing_key`` None accepts unsigned deliveries; the web command allows
    that only with ``--allow-unsigned``.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        route: dramatiq.Actor[..., None],
        signing_key: str | None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.route = route
        self.signing_key = signing_key

    def receive(self, body: bytes | bytearray, signature: bytes | None) -> Receipt:
        """Handle one delivery; raise ``WebhookError`` for a 4xx or 503."""
        if self.signing_key is not None:
            verify(body, signature, self.signing_key)
        delivery = deliveries.parse_delivery(body)
        received_at = time.time()

        ignored = self._ignored_because(delivery)
        try:
            claimed = self._claim(delivery.id)
            if not claimed:
                return self._repeated(delivery)
            if ignored is None:
                self._enqueue(delivery, received_at)
        except BrokerUnavailable as error:
            error.delivery_id = delivery.id
            error.event_type = delivery.event_type
            raise
        self._mark_accepted(delivery)

        if ignored is not None:
            self.count(IGNORED)
            return Receipt(200, IGNORED, delivery.id, delivery.event_type, ignored)
        self.count(ACCEPTED)
        return Receipt(202, ACCEPTED, delivery.id, delivery.event_type)

    def count(self, outcome: str) -> None:
        """Add one to the count of ``outcome``; a Redis error is only logged."""
        try:
            self.client.hincrby(OUTCOMES_KEY, outcome, 1)
        except redis.RedisError as error:
            logger.debug("Counting webhook outcome %s failed: %s", outcome, error)

    def healthy(self) -> bool:
        """Return whether Redis responds, so deliveries can be recorded."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def _ignored_because(self, delivery: Delivery) -> str | None:
        """Return why the workers have nothing to do for ``delivery``, or None."""
        expected = self.settings.newsletter_id
        newsletter = deliveries.newsletter_id(delivery.data)
        if expected and newsletter and newsletter != expected:
            return f"for newsletter {newsletter}, not {expected}"

        if delivery.event_type not in deliveries.ROUTED_TYPES:
            return f"{delivery.event_type} starts no work"
        is_export = delivery.event_type.startswith("export.")
        if is_export and deliveries.export_id(delivery.data) is None:
            return "no export id in data"
        return None

    def _repeated(self, delivery: Delivery) -> Receipt:
        """Return the receipt of a delivery whose id was claimed before.

        A claim still pending belongs to a copy in progress, or to one that
        failed with a 503 while Redis was failing. This copy gets a 503 too,
        so Buttondown sends it again instead of losing it.
        """
        key = f"{DELIVERY_PREFIX}{delivery.id}"
        try:
            state = self.client.get(key)
        except redis.RedisError as error:
            logger.warning("Reading webhook delivery %s failed: %s", delivery.id, error)
            raise BrokerUnavailable() from None
        if state != ACCEPTED.encode():
            raise BrokerUnavailable("delivery in progress; retry later")

        self.count(DUPLICATE)
        return Receipt(200, DUPLICATE, delivery.id, delivery.event_type)

    def _claim(self, delivery_id: str) -> bool:
        try:
            return bool(
                self.client.set(
                    f"{DELIVERY_PREFIX}{delivery_id}",
                    "pending",
                    nx=True,
                    ex=PENDING_SECONDS,
                )
            )
        except redis.RedisError as error:
            logger.warning(
                "Recording webhook delivery %s failed: %s", delivery_id, error
            )
            raise BrokerUnavailable() from None

    def _enqueue(self, delivery: Delivery, received_at: float) -> None:
        data = delivery.data
        if delivery.event_type == deliveries.EMAIL_SENT:
            subject = deliveries.email_id(data)
            detail = None
        else:
            subject = deliveries.export_id(data)
            detail = deliveries.failure_reason(data)

        try:
            self.route.send(
                delivery.id, delivery.event_type, received_at, subject, detail
            )
        except (redis.RedisError, dramatiq.errors.BrokerError) as error:
            logger.warning(
                "Enqueueing webhook delivery %s failed: %s", delivery.id, error
            )
            self._release(delivery.id)
            raise BrokerUnavailable() from None

    def _mark_accepted(self, delivery: Delivery) -> None:
        # The message is enqueued, so a failure here must not turn into a
        # 503: Buttondown would send the delivery again once the claim expires.
        try:
            with self.client.pipeline() as pipe:
                pipe.set(
                    f"{DELIVERY_PREFIX}{delivery.id}",
                    ACCEPTED,
                    ex=int(self.settings.webhook_dedupe_window),
                )
                pipe.hincrby(TYPES_KEY, delivery.event_type, 1)
                pipe.execute()
        except redis.RedisError as error:
            logger.warning(
                "Marking webhook delivery %s accepted failed: %s; a retry of it "
                "after %d seconds would be handled again.",
                delivery.id,
                error,
                PENDING_SECONDS,
            )

    def _release(self, delivery_id: str) -> None:
        # If Redis fails here too, the pending claim expires by itself.
        with contextlib.suppress(redis.RedisError):
            self.client.delete(f"{DELIVERY_PREFIX}{delivery_id}")
