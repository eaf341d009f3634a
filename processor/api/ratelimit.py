"""Reading Buttondown's rate-limit headers.

Buttondown allows 600 requests a minute per account and reports the window
on every response: ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (Unix seconds). A 429 carries ``Retry-After``.
``RateLimitTracker`` remembers the latest report so that the actors can
delay their next request before the limit is hit, instead of after.
"""

from __future__ import annotations

import email.utils
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

# Requests kept in reserve: with this many or fewer left in the window, the
# next request waits for the window to reset.
RESERVE = 2


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Return the seconds a ``Retry-After`` value requests, or ``None``.

    The value is a number of seconds or an HTTP date. ``None`` comes back
    for a missing, negative, past or unparseable value, so that the caller
    falls back to its own backoff.
    """
    if value is None:
        return None

    text = value.strip()
    # isdigit() alone accepts superscripts such as '²', which float() rejects.
    if text.isascii() and text.isdigit():
        return float(text)

    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None

    seconds = moment.timestamp() - now
    if seconds <= 0 or math.isnan(seconds):
        return None
    return seconds


class RateLimitTracker:
    """The latest rate-limit window seen on any response, shared by threads.

    The window belongs to the account, so what one response reports is true
    for every worker thread of the process.
    """

    def __init__(
        self, clock: Callable[[], float] = time.time, max_wait: float = 300.0
    ) -> None:
        self._clock = clock
        self.max_wait = max_wait
        self._lock = threading.Lock()
        self._remaining: int | None = None
        self._reset_at: float | None = None
        self._blocked_until = 0.0

    def observe(self, headers: Mapping[str, str]) -> None:
        """Record the ``X-RateLimit-*`` headers of a response."""
        remaining = _int_header(headers, "X-RateLimit-Remaining")
        reset_at = _int_header(headers, "X-RateLimit-Reset")
        if remaining is None or reset_at is None:
            return

        with self._lock:
            self._remaining = remaining
            self._reset_at = float(reset_at)

    def block_for(self, seconds: float) -> None:
        """Hold every request for ``seconds``, at most ``max_wait``, as after a 429."""
        seconds = min(seconds, self.max_wait)
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    def wait_time(self) -> float:
        """Return the seconds to wait before the next request (0 for none).

        The wait is at most ``max_wait``, so a reset time far in the future
        cannot stall requests for long. A low remaining count causes one
        wait only: the request after it goes out and brings fresh headers.
        """
        now = self._clock()
        with self._lock:
            wait = max(0.0, self._blocked_until - now)
            low = self._remaining is not None and self._remaining <= RESERVE
            if low and self._reset_at is not None and self._reset_at > now:
                wait = max(wait, self._reset_at - now)
                self._remaining = None
        return min(wait, self.max_wait)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        logger.debug("Ignoring the unparseable header %s: %r", name, value)
        return None
