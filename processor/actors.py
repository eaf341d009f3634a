"""The pipeline's dramatiq actors: trigger, poll and process.

    trigger(run_id)         request an events export, record its id
      -> poll(run_id, n)    check the export; while it is not finished, send
                            itself again after a growing, jittered delay
        -> process(run_id)  download the file, parse it, dispatch the events

Every wait is a delayed message, so no worker thread sleeps while an export
is being prepared. A fault that a later attempt may not hit (a 5xx, a
timeout, a cut download) is raised so that dramatiq retries the message with
backoff. When the retries run out, or on a permanent fault, the run is
marked failed with the reason.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

import dramatiq

from processor import state
from processor.api import ExportsClient
from processor.api.models import ERROR, READY
from processor.config import Settings
from processor.download import download
from processor.errors import ApiError, DownloadError, ProcessorError, TransientApiError
from processor.plugins import Dispatcher, RunInfo, load_plugins
from processor.processing import Summary, process_file
from processor.state import Run, RunStore

logger = logging.getLogger(__name__)

QUEUE_NAME = "processor"
# A whole file is parsed inside one message; dramatiq's default limit of ten
# minutes would cut exports of millions of events short.
PROCESS_TIME_LIMIT_MS = 6 * 60 * 60 * 1000


def poll_delay(attempt: int, minimum: float, maximum: float) -> float:
    """Return the seconds to wait before poll number ``attempt`` (from 0).

    The delay doubles with each attempt from ``minimum`` up to ``maximum``,
    and is drawn from the upper half of that value so that many runs started
    together do not poll in step.
    """
    ceiling = min(maximum, minimum * 2 ** min(attempt, 32))
    return random.uniform(max(minimum, ceiling / 2), ceiling)


class PipelineActors:
    """Declares the pipeline's actors on ``broker``, with the settings and store."""

    def __init__(
        self, broker: dramatiq.Broker, settings: Settings, store: RunStore
    ) -> None:
        self.settings = settings
        self.store = store

        options: dict[str, Any] = {
            "broker": broker,
            "queue_name": QUEUE_NAME,
            "min_backoff": 1000,
            "max_backoff": 60_000,
            "on_retry_exhausted": "processor.retries_exhausted",
        }
        declare = dramatiq.actor
        self.trigger = declare(
            actor_name="processor.trigger", max_retries=5, **options
        )(self._trigger)
        self.poll = declare(actor_name="processor.poll", max_retries=5, **options)(
            self._poll
        )
        self.process = declare(
            actor_name="processor.process",
            max_retries=3,
            time_limit=PROCESS_TIME_LIMIT_MS,
            **options,
        )(self._process)
        self.retries_exhausted = declare(
            actor_name="processor.retries_exhausted",
            broker=broker,
            queue_name=QUEUE_NAME,
            max_retries=3,
        )(self._retries_exhausted)

    def start_run(self, parameters: dict[str, Any] | None = None) -> Run:
        """Record a new run and enqueue its trigger message."""
        run = Run(run_id=state.new_run_id(), parameters=parameters)
        self.store.create(run)
        self.trigger.send(run.run_id)
        logger.info("Run %s queued.", run.run_id)
        return run

    def _client(self) -> ExportsClient:
        return ExportsClient.from_settings(self.settings)

    def _trigger(self, run_id: str) -> None:
        run = self.store.get(run_id)
        if run is None or run.status not in (state.QUEUED, state.EXPORTING):
            logger.info(
                "Trigger for run %s skipped: it is %s.", run_id, run and run.status
            )
            return

        self._set(run_id, status=state.EXPORTING)
        try:
            with self._client() as client:
                export = client.create_export(["events"], parameters=run.parameters)
        except TransientApiError as error:
            self._note_error(run_id, error)
            raise
        except ProcessorError as error:
            self._fail(run_id, f"Creating the events export failed: {error}")
            return

        self._set(
            run_id,
            status=state.WAITING,
            export_id=export.id,
            export_status=export.status,
        )
        logger.info(
            "Run %s requested export %s (status %s).", run_id, export.id, export.status
        )
        self._send_poll(run_id, 0)

    def _poll(self, run_id: str, attempt: int) -> None:
        run = self.store.get(run_id)
        if run is None or run.status != state.WAITING or run.export_id is None:
            logger.debug(
                "Poll %d for run %s skipped: it is %s.",
                attempt,
                run_id,
                run and run.status,
            )
            return

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

        try:
            with self._client() as client:
                export = client.get_export(run.export_id)
        except TransientApiError as error:
            self._note_error(run_id, error)
            raise
        except ApiError as error:
            self._fail(run_id, f"Checking export {run.export_id} failed: {error}")
            return

        self._record_poll(run, export.status)
        if export.state == READY and export.url:
            self._hand_off(run_id)
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
            self._send_poll(run_id, attempt + 1)

    def _record_poll(self, run: Run, export_status: str) -> None:
        def change(current: Run) -> None:
            current.polls += 1
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

    def _hand_off(self, run_id: str) -> None:
        moved = False

        def change(run: Run) -> None:
            nonlocal moved
            moved = run.status == state.WAITING
            if moved:
                run.status = state.PROCESSING

        self.store.update(run_id, change)
        if moved:
            self.process.send(run_id)

    def _send_poll(self, run_id: str, attempt: int) -> None:
        delay = poll_delay(
            attempt, self.settings.poll_min_delay, self.settings.poll_max_delay
        )
        logger.debug("Run %s polls again in %.1f seconds.", run_id, delay)
        self.poll.send_with_options(args=(run_id, attempt), delay=int(delay * 1000))

    def _process(self, run_id: str) -> None:
        run = self.store.get(run_id)
        if run is None or run.status != state.PROCESSING or run.export_id is None:
            logger.info(
                "Process for run %s skipped: it is %s.", run_id, run and run.status
            )
            return

        try:
            with self._client() as client:
                export = client.get_export(run.export_id)
            if not export.url:
                raise DownloadError(
                    f"export {export.id} is ready but has no download URL"
                )
            path = download(
                export.url,
                self.settings.state_dir / "downloads",
                timeout=self.settings.http_timeout,
            )
        except (TransientApiError, DownloadError) as error:
            self._note_error(run_id, error)
            raise
        except ProcessorError as error:
            self._fail(run_id, f"Fetching export {run.export_id} failed: {error}")
            return

        # NOTE: a retry after a failure in the middle of the file hands the
        # events before the failure to the plugins a second time.
        try:
            summary = process_file(
                path,
                Dispatcher(load_plugins()),
                RunInfo(run_id=run_id, export_id=run.export_id),
                on_progress=lambda progress: self._record_counts(run_id, progress),
            )
        except ProcessorError as error:
            self._fail(run_id, f"Parsing export {run.export_id} failed: {error}")
            return
        finally:
            path.unlink(missing_ok=True)

        def finish(current: Run) -> None:
            _copy_counts(current, summary)
            current.succeed()

        self.store.update(run_id, finish)
        logger.info(
            "Run %s succeeded: %d events, %d rejected.",
            run_id,
            summary.events,
            summary.rejected,
        )

    def _record_counts(self, run_id: str, summary: Summary) -> None:
        self.store.update(run_id, lambda run: _copy_counts(run, summary))

    def _retries_exhausted(
        self, message: dict[str, Any], retry_info: dict[str, Any]
    ) -> None:
        args = message.get("args") or [None]
        run_id = str(args[0])
        run = self.store.get(run_id)
        if run is None or run.finished:
            return

        reason = run.error or "an unknown error"
        self._fail(
            run_id,
            f"{message.get('actor_name')} gave up after "
            f"{retry_info.get('retries')} retries; "
            f"the last error was: {reason}",
        )

    def _set(self, run_id: str, **fields: Any) -> None:
        def change(run: Run) -> None:
            for name, value in fields.items():
                setattr(run, name, value)

        self.store.update(run_id, change)

    def _note_error(self, run_id: str, error: Exception) -> None:
        logger.warning("Run %s hit a retryable error: %s", run_id, error)
        self._set(run_id, error=str(error))

    def _fail(self, run_id: str, reason: str) -> None:
        logger.error("Run %s failed: %s", run_id, reason)
        self.store.update(run_id, lambda run: run.fail(reason))


def _copy_counts(run: Run, summary: Summary) -> None:
    run.events = summary.events
    run.rejected = summary.rejected
    run.event_types = summary.event_types
    run.plugins = summary.plugins
