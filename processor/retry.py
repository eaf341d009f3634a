"""Delays between attempts: status polls, retries and rate-limit waits.

Every delay here becomes the ``delay`` of a dramatiq message, so nothing in
the processor sleeps in a worker thread.
"""

from __future__ import annotations

import random

from processor.config import Settings
from processor.errors import RateLimited


def backoff(attempt: int, minimum: float, maximum: float) -> float:
    """Return the seconds to wait before attempt number ``attempt`` (from 0).

    The delay doubles with each attempt from ``minimum`` up to ``maximum``,
    and is drawn from the upper half of that value so that many runs started
    together do not retry in step.
    """
    ceiling = min(maximum, minimum * 2 ** min(attempt, 32))
    return random.uniform(max(minimum, ceiling / 2), ceiling)


def retry_delay(error: Exception, retries: int, settings: Settings) -> float:
    """Return the seconds to wait before retrying after ``error``.

    ``retries`` counts the consecutive failures so far, from 1. A 429 waits
    as its ``Retry-After`` asked, up to ``PROCESSOR_MAX_RETRY_AFTER``; any
    other fault, and a 429 without a usable ``Retry-After``, backs off
    exponentially.
    """
    if isinstance(error, RateLimited) and error.retry_after is not None:
        return min(error.retry_after, settings.max_retry_after)

    return backoff(retries - 1, settings.retry_min_delay, settings.retry_max_delay)
