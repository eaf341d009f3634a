"""The deliverability plugin: tags subscribers who bounce or complain.

For each ``bounced`` or ``complained`` event it adds a tag to the subscriber
through Buttondown's API (``PATCH /v1/subscribers/{id_or_email}``), so that
the newsletter can segment, review or remove them. The tags are ``bounced``
and ``complained``, set by ``bounced_tag`` and ``complained_tag`` in the
plugin's configuration (``PROCESSOR_PLUGIN_DELIVERABILITY_BOUNCED_TAG``).

It uses the processor's API settings (``BUTTONDOWN_API_KEY`` and
``BUTTONDOWN_API_URL``; ``processor run --sandbox`` points them at the
sandbox). Adding a tag twice changes nothing, so an event handed over again
after a crash is harmless, and each subscriber is tagged once per run.

Buttondown allows 600 requests a minute, and each tag takes two (a GET for
the current tags, a PATCH with the new list). A spent rate-limit window or a
transient API error raises ``RetryLater`` with the wait. The dispatcher
retries a short wait, and puts an event whose wait is longer than its
backoff's maximum on the dead-letter list at once, for ``processor
dead-letters retry deliverability`` once the window resets. A subscriber the
API does not know goes there too.
"""

from __future__ import annotations

import logging
from typing import Any

from processor.api import ExportsClient
from processor.api.ratelimit import RateLimitTracker
from processor.config import Settings
from processor.errors import RateLimited, TransientApiError
from processor.events import Event
from processor.plugins import Handler, RetryLater, RunInfo

logger = logging.getLogger(__name__)


class DeliverabilityHandler(Handler):
    """Tags the subscriber behind each bounce and complaint."""

    name = "deliverability"
    event_types = frozenset({"bounced", "complained"})

    def __init__(self) -> None:
        self.client: ExportsClient | None = None
        self.tags = {"bounced": "bounced", "complained": "complained"}
        self.tagged = 0
        self.done: set[tuple[str, str]] = set()

    def setup(self, run: RunInfo) -> None:
        settings = Settings.from_env()
        self.client = ExportsClient.from_settings(
            settings, RateLimitTracker(max_wait=settings.max_retry_after)
        )
        self.tags = {
            "bounced": str(run.config.get("bounced_tag", "bounced")),
            "complained": str(run.config.get("complained_tag", "complained")),
        }
        self.tagged = 0
        self.done = {(key, tag) for key, tag in run.resume or []}

    def handle(self, event: Event) -> None:
        assert self.client is not None, "setup() must run before handle()"
        subscriber = event.subscriber_id or event.subscriber_email
        if not subscriber:
            raise ValueError(f"event {event.id} names no subscriber to tag")
        tag = self.tags[event.event_type]
        if (subscriber, tag) in self.done:
            return

        self._wait_for_window(self.client.rate_limits.wait_time())
        try:
            current = self.client.get_subscriber(subscriber)
            if tag not in current.tags:
                self.client.set_subscriber_tags(subscriber, [*current.tags, tag])
                self.tagged += 1
        except RateLimited as error:
            raise RetryLater(str(error), after=error.retry_after) from error
        except TransientApiError as error:
            raise RetryLater(str(error)) from error
        self.done.add((subscriber, tag))

    def _wait_for_window(self, wait: float) -> None:
        if wait > 0:
            raise RetryLater(
                f"Buttondown's rate limit is spent for the next {wait:.0f} s. If "
                "this event reaches the dead-letter list, run `processor "
                "dead-letters retry deliverability` after the window resets.",
                after=wait,
            )

    def checkpoint(self) -> Any:
        return [list(pair) for pair in sorted(self.done)]

    def teardown(self) -> None:
        if self.client is not None:
            self.client.close()
            logger.info("Deliverability plugin tagged %d subscribers.", self.tagged)
