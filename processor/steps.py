"""Shared mechanics of the pipeline's steps: leases, retries and failure.

Each actor step holds the run's lease while it works, so that a duplicated
or redelivered message does not do the same work twice. A step ends by
moving the run on, scheduling a retry, or failing the run, and each of
those releases the lease in the same update.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

from processor import state
from processor.api.ratelimit import RateLimitTracker
from processor.config import Settings
from processor.errors import ProcessorError
from processor.redact import scrub_credentials
from processor.retry import retry_delay
from processor.state import Run, RunStore

logger = logging.getLogger(__name__)

Resend = Callable[[float], None]


class StepBase:
    """Base of the actors: the settings, the store and the lease mechanics."""

    settings: Settings
    store: RunStore
    rate_limits: RateLimitTracker

    def _claim(
        self,
        run_id: str,
        what: str,
        accepts: Callable[[Run], bool],
        seconds: float,
        resend: Resend,
    ) -> tuple[Run, str] | None:
        """Take the run's lease for one step, or return None to drop it.

        A message the run no longer expects (a stale or duplicated copy) is
        dropped. A message whose run is leased to another copy is sent again
        for when that lease runs out, because the holder may have died.
        """
        token = secrets.token_hex(8)
        outcome = "stale"
        wait = 0.0

        def change(run: Run) -> None:
            nonlocal outcome, wait
            if not accepts(run):
                outcome = "stale"
                return
            wait = run.claim(token, seconds)
            outcome = "busy" if wait else "claimed"

        try:
            run = self.store.update(run_id, change)
        except state.RunNotFound:
            logger.warning("%s for run %s dropped: no such run.", what, run_id)
            return None

        if outcome == "stale":
            logger.debug("%s for run %s dropped: it is %s.", what, run_id, run.status)
            return None
        if outcome == "busy":
            logger.info(
                "%s for run %s is running elsewhere; checking again in %.0f seconds.",
                what,
                run_id,
                wait + 1,
            )
            resend(wait + 1)
            return None
        return run, token

    def _api_lease(self) -> float:
        # Long enough for a connect and a slow response, with room to spare.
        return self.settings.connect_timeout + 3 * self.settings.http_timeout + 10

    def _release(self, run_id: str, token: str) -> None:
        self.store.update(run_id, lambda run: run.release(token))

    def _release_quietly(self, run_id: str, token: str) -> None:
        # The error being raised matters more; a lease left behind expires.
        with contextlib.suppress(Exception):
            self._release(run_id, token)

    def _throttled(self, run_id: str, token: str, resend: Resend) -> bool:
        wait = self.rate_limits.wait_time()
        if wait <= 0:
            return False

        self._release(run_id, token)
        wait = min(wait, self.settings.max_retry_after)
        logger.info(
            "Run %s waits %.1f seconds for the API's rate-limit window.", run_id, wait
        )
        resend(wait)
        return True

    def _retry_later(
        self, run_id: str, token: str, error: ProcessorError, resend: Resend
    ) -> None:
        def count(run: Run) -> None:
            run.retries += 1
            run.error = str(error)
            run.release(token)

        run = self.store.update(run_id, count)
        limit = self.settings.max_retries
        if run.retries > limit:
            self._fail(
                run_id,
                f"Gave up after {limit} retries; the last error was: {error}",
            )
            return

        delay = retry_delay(error, run.retries, self.settings)
        logger.warning(
            "Run %s: %s Retrying in %.1f seconds (retry %d of %d).",
            run_id,
            error,
            delay,
            run.retries,
            limit,
        )
        resend(delay)

    def _set(self, run_id: str, **fields: Any) -> None:
        def change(run: Run) -> None:
            for name, value in fields.items():
                setattr(run, name, value)

        self.store.update(run_id, change)

    def _fail(self, run_id: str, reason: str) -> None:
        logger.error("Run %s failed: %s", run_id, reason)
        self.store.update(run_id, lambda run: run.fail(reason))

    def _scrub(self, text: str) -> str:
        known = (self.settings.api_key,) if self.settings.api_key else ()
        return scrub_credentials(text, known)
