"""Finding runs whose messages were lost, and driving them again.

A run moves only when a message for it is processed. If that message is
lost, for example because a retry could not be enqueued while Redis dropped
the connection, the run sits in one state forever. ``sweep`` finds runs
that have not changed for ``stuck_after`` seconds and sends their next
message again. A run driven again ``max_redrives`` times without moving on
is marked failed.

Sending a message for a run that is in fact still alive is harmless: the
step's lease and the poll chain's attempt number drop the extra copy.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from processor import state
from processor.actors import PipelineActors
from processor.state import Run, RunStore
from processor.webhooks.actors import WebhookActors

logger = logging.getLogger(__name__)

# Runs examined per sweep, newest first.
SWEEP_LIMIT = 1000


def sweep(
    store: RunStore,
    actors: PipelineActors,
    stuck_after: float,
    max_redrives: int = 3,
) -> list[str]:
    """Drive again, or fail, every stuck run; return their run ids."""
    cutoff = state.utc_now() - timedelta(seconds=stuck_after)
    handled = []

    for run in store.recent(SWEEP_LIMIT):
        if run.finished or run.updated_at > cutoff or run.lease_until > time.time():
            continue

        if run.redrives >= max_redrives:
            _give_up(store, run, stuck_after)
        else:
            _redrive(store, actors, run)
        handled.append(run.run_id)

    return handled


def _give_up(store: RunStore, run: Run, stuck_after: float) -> None:
    reason = (
        f"Run stuck in {run.status} for over {stuck_after:g} seconds after "
        f"{run.redrives} attempts to drive it again; giving up."
    )
    logger.error("Run %s failed: %s", run.run_id, reason)
    store.update(run.run_id, lambda current: current.fail(reason))


def _redrive(store: RunStore, actors: PipelineActors, run: Run) -> None:
    def count(current: Run) -> None:
        current.redrives += 1

    store.update(run.run_id, count)
    logger.warning(
        "Run %s has been %s since %s; sending its next message again.",
        run.run_id,
        run.status,
        run.updated_at.isoformat(timespec="seconds"),
    )

    if run.status in (state.QUEUED, state.EXPORTING):
        actors.trigger.send(run.run_id)
    elif run.status == state.WAITING:
        actors.poll.send(run.run_id, run.poll_attempt)
    elif run.status == state.PROCESSING:
        actors.process.send(run.run_id)


def sweep_slots(webhooks: WebhookActors, grace: float) -> list[str]:
    """Send the fire message again for every slot overdue by ``grace`` seconds.

    A slot fires once, whatever the number of fire messages, so a copy for a
    slot whose message is only late does no harm.
    """
    overdue = webhooks.schedule.overdue(grace)
    for slot_id in overdue:
        logger.warning(
            "Scheduled run of slot %s is overdue; sending it again.", slot_id
        )
        webhooks.send_fire(slot_id, 0)
    return overdue
