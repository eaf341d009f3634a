"""The actors that act on accepted webhook deliveries, on the workers.

    webhook(delivery...)     route one delivery by its event type:
      email.sent             join or open a slot per run delay
        -> scheduled_run(slot_id)   start the slot's run once it is due
      export.completed       poll the waiting run's export now
      export.failed          fail the waiting run with the reason

The web process only records a delivery and enqueues ``webhook``, so that it
responds to Buttondown within milliseconds. Each actor is safe to run twice for
the same message, because dramatiq delivers at least once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
import redis

from processor import state
from processor.actors import QUEUE_NAME, PipelineActors
from processor.config import Settings
from processor.state import Run, RunStore
from processor.webhooks.deliveries import EMAIL_SENT, EXPORT_COMPLETED, EXPORT_FAILED
from processor.webhooks.schedule import Schedule, format_delay

logger = logging.getLogger(__name__)

# A fire message waits at most this long before it checks its slot again,
# so no message sits in a worker's delay queue for days, and a due time that
# moved later is honoured.
MAX_FIRE_DELAY = 3600.0

# Run statuses that an export.failed delivery may end: the run has not
# downloaded its file yet.
BEFORE_DOWNLOAD = (state.QUEUED, state.EXPORTING, state.WAITING)


class WebhookActors:
    """Declares the webhook actors on ``broker``, next to the pipeline's."""

    def __init__(
        self,
        broker: dramatiq.Broker,
        settings: Settings,
        store: RunStore,
        pipeline: PipelineActors,
        client: redis.Redis,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        # A slot due while another run is in flight checks again this often.
        self.recheck_delay = settings.poll_max_delay
        self.schedule = Schedule(
            client,
            settings.webhook_run_delays,
            settings.webhook_coalesce_window,
            settings.webhook_dedupe_window,
        )
        options: dict[str, Any] = {
            "broker": broker,
            "queue_name": QUEUE_NAME,
            "max_retries": 5,
            "min_backoff": 1000,
            "max_backoff": 60_000,
        }
        self.route = dramatiq.actor(actor_name="processor.webhook", **options)(
            self._route
        )
        self.fire = dramatiq.actor(actor_name="processor.scheduled_run", **options)(
            self._fire
        )

    def send_fire(self, slot_id: str, delay: float) -> None:
        """Enqueue the fire message of slot ``slot_id`` in ``delay`` seconds."""
        delay = min(max(delay, 0.0), MAX_FIRE_DELAY)
        self.fire.send_with_options(args=(slot_id,), delay=int(delay * 1000))

    def _route(
        self,
        delivery_id: str,
        event_type: str,
        received_at: float,
        subject: str | None,
        detail: str | None,
    ) -> None:
        if event_type == EMAIL_SENT:
            self._schedule_runs(delivery_id, received_at, subject)
        elif event_type == EXPORT_COMPLETED and subject is not None:
            self._export_completed(delivery_id, subject)
        elif event_type == EXPORT_FAILED and subject is not None:
            self._export_failed(delivery_id, subject, detail)
        else:
            logger.warning(
                "Webhook delivery %s (%s) has nothing to route; dropped.",
                delivery_id,
                event_type,
            )

    def _schedule_runs(
        self, delivery_id: str, received_at: float, email_id: str | None
    ) -> None:
        joined = self.schedule.join(delivery_id, received_at)
        # A redelivered message sends the fire messages of the slots its
        # first attempt opened again, in case that attempt died before it
        # sent them. A slot fires once however many messages it gets.
        for slot in joined.opened:
            self.send_fire(slot.slot_id, slot.due - time.time())

        if not joined.first_time:
            logger.info(
                "Webhook delivery %s was scheduled before; sent the fire "
                "messages of its %d unfired slots again.",
                delivery_id,
                len(joined.opened),
            )
            return
        delays = ", ".join(format_delay(delay) for delay in self.schedule.delays)
        logger.info(
            "Webhook delivery %s (email.sent, email %s) scheduled runs %s after "
            "the send, opening %d new slots.",
            delivery_id,
            email_id or "unknown",
            delays,
            len(joined.opened),
        )

    def _fire(self, slot_id: str) -> None:
        decision = self.schedule.fire(slot_id)
        if decision.action == "wait":
            self.send_fire(slot_id, decision.wait)
            return
        if decision.action != "start" or decision.slot is None:
            logger.debug("Fire message for slot %s dropped: no such slot.", slot_id)
            return

        slot = decision.slot
        deliveries = "delivery" if slot.deliveries == 1 else "deliveries"
        started_by = (
            f"webhook email.sent: {format_delay(slot.delay)} after the send, "
            f"{slot.deliveries} {deliveries}"
        )
        run = self.pipeline.start_run(run_id=slot.run_id, started_by=started_by)
        if run.run_id == slot.run_id:
            self.schedule.started(slot_id)
            logger.info("Slot %s started run %s (%s).", slot_id, run.run_id, started_by)
            return

        if run.created_at.timestamp() >= slot.due:
            # That run requested its export after the slot was due, so it
            # has every event the slot's run would have.
            self.schedule.started(slot_id)
            logger.info(
                "Slot %s is covered by run %s, started after the slot was due.",
                slot_id,
                run.run_id,
            )
            return

        # The run in flight requested its export before this slot was due,
        # so it lacks the events since; the slot's own run starts after it.
        if not self.schedule.postpone(slot_id, time.time() + self.recheck_delay):
            logger.debug("Slot %s is checked by another fire message.", slot_id)
            return
        logger.info(
            "Slot %s is due while run %s is in flight; starting its run %s once "
            "that one finishes.",
            slot_id,
            run.run_id,
            slot.run_id,
        )
        self.send_fire(slot_id, self.recheck_delay)

    def _export_completed(self, delivery_id: str, export_id: str) -> None:
        run = self._waiting_run(delivery_id, export_id, "export.completed")
        if run is None:
            return
        if run.status != state.WAITING:
            logger.info(
                "Webhook delivery %s: export %s completed while run %s is %s; "
                "nothing to do.",
                delivery_id,
                export_id,
                run.run_id,
                run.status,
            )
            return

        # The poll with the chain's current attempt number checks the export
        # at once and hands the run to processing. The delayed copy of that
        # poll is then dropped as stale when it arrives.
        self.pipeline.poll.send(run.run_id, run.poll_attempt)
        logger.info(
            "Webhook delivery %s: export %s completed; run %s polls it now.",
            delivery_id,
            export_id,
            run.run_id,
        )

    def _export_failed(
        self, delivery_id: str, export_id: str, reason: str | None
    ) -> None:
        run = self._waiting_run(delivery_id, export_id, "export.failed")
        if run is None:
            return

        message = (
            f"Buttondown reported export {export_id} as failed in webhook "
            f"delivery {delivery_id}"
        )
        message += f": {reason}" if reason else "."
        status = run.status

        def change(current: Run) -> None:
            nonlocal status
            status = current.status
            if status in BEFORE_DOWNLOAD:
                current.fail(message)

        self.store.update(run.run_id, change)
        if status in BEFORE_DOWNLOAD:
            logger.error("Run %s failed: %s", run.run_id, message)
        else:
            logger.warning(
                "Webhook delivery %s: export %s failed, but run %s is %s; "
                "left as it is.",
                delivery_id,
                export_id,
                run.run_id,
                status,
            )

    def _waiting_run(
        self, delivery_id: str, export_id: str, event_type: str
    ) -> Run | None:
        run = self.store.run_for_export(export_id)
        if run is None:
            logger.info(
                "Webhook delivery %s (%s): no run waits on export %s; ignored.",
                delivery_id,
                event_type,
                export_id,
            )
        return run
