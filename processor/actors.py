"""The pipeline's dramatiq actors: trigger, poll and process.

    trigger(run_id)         request an events export, record its id
      -> poll(run_id, n)    check the export; while it is not finished, send
                            itself again after a growing, jittered delay
        -> process(run_id)  download the file, parse it, dispatch the events

Every wait is a delayed message, so no worker thread sleeps while an export
is being prepared or while the API rate-limits requests. A transient fault (a
429, a 5xx, a timeout, a cut download) sends the same message again after a
backoff, up to ``PROCESSOR_MAX_RETRIES`` consecutive failures. A permanent
fault, or one retry too many, marks the run failed with the reason.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import redis

from processor import state
from processor.api import ExportsClient
from processor.api.models import ERROR, READY
from processor.api.ratelimit import RateLimitTracker
from processor.config import Settings
from processor.download import DownloadLimits, download
from processor.errors import (
    ApiError,
    DamagedFile,
    DownloadExpired,
    ExportNotFound,
    IncompleteDownload,
    ProcessorError,
    RunStopped,
    TransientApiError,
)
from processor.plugins import RunInfo
from processor.plugins.wiring import build_dispatcher
from processor.processing import Summary, process_file
from processor.retry import backoff
from processor.state import Run, RunStore
from processor.steps import StepBase

logger = logging.getLogger(__name__)

QUEUE_NAME = "processor"
# A whole file is parsed inside one message; dramatiq's default limit of ten
# minutes would cut exports of millions of events short.
PROCESS_TIME_LIMIT_MS = 6 * 60 * 60 * 1000

# Seconds a processing step's lease lasts past its last progress update.
PROCESS_LEASE_SECONDS = 300

# Faults that a later attempt of the same step may not hit.
RETRYABLE = (TransientApiError, IncompleteDownload, DownloadExpired)


class PipelineActors(StepBase):
    """Declares the pipeline's actors on ``broker``, with the settings and store."""

    def __init__(
        self, broker: dramatiq.Broker, settings: Settings, store: RunStore
    ) -> None:
        self.settings = settings
        self.store = store
        # One window per process: the API reports the account's window on
        # every response, whichever thread made the request.
        self.rate_limits = RateLimitTracker(max_wait=settings.max_retry_after)

        # dramatiq's own retries only catch what the actors do not handle,
        # such as a lost Redis connection while a record is written.
        options: dict[str, Any] = {
            "broker": broker,
            "queue_name": QUEUE_NAME,
            "max_retries": 3,
            "min_backoff": 1000,
            "max_backoff": 60_000,
            "on_retry_exhausted": "processor.retries_exhausted",
        }
        declare = dramatiq.actor
        self.trigger = declare(actor_name="processor.trigger", **options)(self._trigger)
        self.poll = declare(actor_name="processor.poll", **options)(self._poll)
        self.process = declare(
            actor_name="processor.process",
            time_limit=PROCESS_TIME_LIMIT_MS,
            **options,
        )(self._process)
        self.retries_exhausted = declare(
            actor_name="processor.retries_exhausted",
            broker=broker,
            queue_name=QUEUE_NAME,
            max_retries=3,
        )(self._retries_exhausted)

    def start_run(
        self,
        parameters: dict[str, Any] | None = None,
        *,
        run_id: str | None = None,
        started_by: str | None = None,
    ) -> Run:
        """Record a new run and enqueue its trigger message.

        While a run for the same newsletter, collection and parameters is
        unfinished, that run is returned instead and nothing is enqueued. So
        is a run that already has the id ``run_id``, which makes a retried
        call with the same ``run_id`` start one run at most.
        """
        key = state.flight_key(self.settings.newsletter_id, "events", parameters)
        candidate = Run(
            run_id=run_id or state.new_run_id(),
            parameters=parameters,
            started_by=started_by,
        )
        run = self.store.create_single(candidate, key)
        if run is not candidate:
            logger.info(
                "Run %s is already in flight for the same export; not starting "
                "another.",
                run.run_id,
            )
            return run

        self.trigger.send(run.run_id)
        logger.info("Run %s queued.", run.run_id)
        return run

    def _client(self) -> ExportsClient:
        return ExportsClient.from_settings(self.settings, self.rate_limits)

    def _trigger(self, run_id: str) -> None:
        def resend(delay: float) -> None:
            self.trigger.send_with_options(args=(run_id,), delay=_ms(delay))

        def accepts(run: Run) -> bool:
            return run.status in (state.QUEUED, state.EXPORTING)

        claim = self._claim(run_id, "Trigger", accepts, self._api_lease(), resend)
        if claim is None:
            return
        run, token = claim
        try:
            if self._throttled(run_id, token, resend):
                return

            self._set(run_id, status=state.EXPORTING)
            try:
                with self._client() as client:
                    export = client.create_export(["events"], parameters=run.parameters)
            except RETRYABLE as error:
                self._retry_later(run_id, token, error, resend)
                return
            except ProcessorError as error:
                self._fail(run_id, f"Creating the events export failed: {error}")
                return

            self._set(
                run_id,
                status=state.WAITING,
                export_id=export.id,
                export_status=export.status,
                retries=0,
            )
            logger.info(
                "Run %s requested export %s (status %s).",
                run_id,
                export.id,
                export.status,
            )
            self._send_poll(run_id, token, 0)
            self._link_export(run_id, export.id)
        except BaseException:
            # An unexpected error leaves the lease free for the retry.
            self._release_quietly(run_id, token)
            raise

    def _link_export(self, run_id: str, export_id: str) -> None:
        # The link lets an export.completed webhook find the run; without it
        # the poll chain still finishes the run, only later.
        try:
            self.store.link_export(export_id, run_id)
        except redis.RedisError as error:
            logger.warning(
                "Run %s: linking export %s to the run failed (%s); webhooks "
                "about the export will not find the run.",
                run_id,
                export_id,
                error,
            )

    def _poll(self, run_id: str, attempt: int) -> None:
        def resend(delay: float) -> None:
            self.poll.send_with_options(args=(run_id, attempt), delay=_ms(delay))

        def accepts(run: Run) -> bool:
            # Only the poll the chain expects next goes on, so a duplicated
            # or redelivered older poll cannot start a second chain.
            return (
                run.status == state.WAITING
                and run.export_id is not None
                and run.poll_attempt == attempt
            )

        what = f"Poll {attempt}"
        claim = self._claim(run_id, what, accepts, self._api_lease(), resend)
        if claim is None:
            return
        run, token = claim
        try:
            assert run.export_id is not None

            waited = state.utc_now() - run.created_at
            if waited > timedelta(seconds=self.settings.poll_deadline):
                self._fail(
                    run_id,
                    f"Export {run.export_id} not ready after "
                    f"{self.settings.poll_deadline:g} "
                    f"seconds (last status {run.export_status!r}); raise "
                    "PROCESSOR_POLL_DEADLINE if exports of this size take longer.",
                )
                return

            if self._throttled(run_id, token, resend):
                return

            try:
                with self._client() as client:
                    export = client.get_export(run.export_id)
            except RETRYABLE as error:
                self._retry_later(run_id, token, error, resend)
                return
            except ExportNotFound:
                self._fail(
                    run_id,
                    f"Export {run.export_id} was not found (404); it may have been "
                    "deleted. Start a new run.",
                )
                return
            except ApiError as error:
                self._fail(run_id, f"Checking export {run.export_id} failed: {error}")
                return

            self._record_poll(run, export.status)
            if export.state == READY and export.url:
                self._hand_off(run_id, token)
            elif export.state == ERROR:
                self._fail(
                    run_id,
                    f"Buttondown reported export {export.id} as failed "
                    f"(status {export.status!r}).",
                )
            else:
                if not export.is_known_status:
                    logger.warning(
                        "Export %s of run %s has the unknown status %r; polling on.",
                        export.id,
                        run_id,
                        export.status,
                    )
                self._send_poll(run_id, token, attempt + 1)
        except BaseException:
            # An unexpected error leaves the lease free for the retry.
            self._release_quietly(run_id, token)
            raise

    def _record_poll(self, run: Run, export_status: str) -> None:
        def change(current: Run) -> None:
            current.polls += 1
            current.retries = 0
            current.export_status = export_status

        self.store.update(run.run_id, change)
        if export_status != run.export_status:
            logger.info(
                "Export %s of run %s is now %s.",
                run.export_id,
                run.run_id,
                export_status,
            )
        else:
            logger.debug(
                "Export %s of run %s is still %s.",
                run.export_id,
                run.run_id,
                export_status,
            )

    def _hand_off(self, run_id: str, token: str) -> None:
        moved = False

        def change(run: Run) -> None:
            nonlocal moved
            moved = run.status == state.WAITING and run.lease == token
            if moved:
                run.status = state.PROCESSING
                run.release(token)

        self.store.update(run_id, change)
        if moved:
            self.process.send(run_id)

    def _send_poll(self, run_id: str, token: str, attempt: int) -> None:
        """Move the poll chain to ``attempt`` and enqueue that poll.

        The chain moves only while ``token`` holds the lease, so of two
        copies of one poll, only one sends the next.
        """
        moved = False

        def change(run: Run) -> None:
            nonlocal moved
            moved = run.lease == token
            if moved:
                run.poll_attempt = attempt
                run.release(token)

        self.store.update(run_id, change)
        if not moved:
            logger.info("Run %s: another worker took over the poll chain.", run_id)
            return

        delay = backoff(
            attempt, self.settings.poll_min_delay, self.settings.poll_max_delay
        )
        logger.debug("Run %s polls again in %.1f seconds.", run_id, delay)
        self.poll.send_with_options(args=(run_id, attempt), delay=_ms(delay))

    def _process(self, run_id: str) -> None:
        def resend(delay: float) -> None:
            self.process.send_with_options(args=(run_id,), delay=_ms(delay))

        def accepts(run: Run) -> bool:
            return run.status == state.PROCESSING and run.export_id is not None

        # The lease covers the whole download; while parsing, each progress
        # update extends it.
        lease = self.settings.download_deadline + self._process_lease()
        claim = self._claim(run_id, "Process", accepts, lease, resend)
        if claim is None:
            return
        run, token = claim
        try:
            if run.checkpoints:
                done = min(point.position for point in run.checkpoints.values())
                logger.info(
                    "Run %s resumes processing after its checkpoint at event %d.",
                    run_id,
                    done,
                )
            assert run.export_id is not None

            if self._throttled(run_id, token, resend):
                return

            try:
                path = self._fetch_file(run_id, run.export_id)
            except RETRYABLE as error:
                self._retry_later(run_id, token, error, resend)
                return
            except ProcessorError as error:
                self._fail(run_id, f"Fetching export {run.export_id} failed: {error}")
                return

            # Once events reach the plugins the step is never retried, so a fault
            # in the middle of the file fails the run instead of handing the
            # events before it to the plugins again.
            # NOTE: a new run of the same export still hands them over again.
            try:
                summary = process_file(
                    path,
                    build_dispatcher(self.settings, resume=run.checkpoints),
                    RunInfo(run_id=run_id, export_id=run.export_id),
                    on_progress=lambda progress: self._record_counts(
                        run_id, token, progress
                    ),
                    limits=self.settings.parse_limits,
                    rejects_path=self.settings.rejects_path(run_id),
                )
            except RunStopped as stopped:
                logger.info("Run %s stopped while processing: %s", run_id, stopped)
                return
            except DamagedFile as error:
                # A cut or corrupt file is found before its first event, so
                # downloading it again hands nothing to the plugins twice.
                if error.events == 0:
                    self._retry_later(run_id, token, error, resend)
                else:
                    self._fail(
                        run_id, f"Parsing export {run.export_id} failed: {error}"
                    )
                return
            except ProcessorError as error:
                self._fail(run_id, f"Parsing export {run.export_id} failed: {error}")
                return
            except Exception as error:
                logger.exception(
                    "Run %s hit an unexpected error while processing export %s.",
                    run_id,
                    run.export_id,
                )
                self._fail(
                    run_id,
                    f"Processing export {run.export_id} stopped on an unexpected "
                    f"{type(error).__name__}: {self._scrub(str(error))}. The worker "
                    "log has the traceback.",
                )
                return
            finally:
                path.unlink(missing_ok=True)

            def finish(current: Run) -> None:
                current.record_counts(summary)
                current.retries = 0
                current.succeed()

            self.store.update(run_id, finish)
            logger.info(
                "Run %s succeeded: %d events, %d rejected.",
                run_id,
                summary.events,
                summary.rejected,
            )
        except BaseException:
            # An unexpected error leaves the lease free for the retry.
            self._release_quietly(run_id, token)
            raise

    def _process_lease(self) -> float:
        # A lease that outlives PROCESSOR_STUCK_AFTER would make the watchdog
        # wait for it after a crash.
        return min(PROCESS_LEASE_SECONDS, self.settings.stuck_after)

    def _fetch_file(self, run_id: str, export_id: str) -> Path:
        """Download the export's file, with one fresh URL if the first expired."""
        limits = DownloadLimits(
            timeouts=self.settings.http_timeouts(),
            deadline=self.settings.download_deadline,
            max_bytes=self.settings.max_download_bytes,
        )
        directory = self.settings.state_dir / "downloads"
        # Files of this run left by a crashed attempt; this step holds the
        # run's lease, so no other attempt is writing them.
        for stale in directory.glob(f"{run_id}-*"):
            stale.unlink(missing_ok=True)

        with self._client() as client:
            url = _download_url(client, export_id)
            try:
                return download(url, directory, limits, prefix=f"{run_id}-")
            except DownloadExpired as error:
                logger.info(
                    "Run %s: %s Fetching export %s again for a fresh URL.",
                    run_id,
                    error,
                    export_id,
                )

            url = _download_url(client, export_id)
            return download(url, directory, limits, prefix=f"{run_id}-")

    def _record_counts(self, run_id: str, token: str, summary: Summary) -> None:
        def change(run: Run) -> None:
            run.record_counts(summary)
            if run.lease == token:
                run.lease_until = time.time() + self._process_lease()

        run = self.store.update(run_id, change)
        if run.status != state.PROCESSING:
            raise RunStopped(f"the run is now {run.status}: {run.error}")

    def _retries_exhausted(
        self, message: dict[str, Any], retry_info: dict[str, Any]
    ) -> None:
        args = message.get("args") or [None]
        run_id = str(args[0])
        run = self.store.get(run_id)
        if run is None or run.finished:
            return

        self._fail(
            run_id,
            f"{message.get('actor_name')} failed {retry_info.get('retries')} times "
            "with an unexpected error; see the worker log for the traceback.",
        )


def _download_url(client: ExportsClient, export_id: str) -> str:
    export = client.get_export(export_id)
    if not export.url:
        raise IncompleteDownload(
            f"export {export_id} has no download URL yet (status {export.status!r})."
        )
    return export.url


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))
