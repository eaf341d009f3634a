"""Parse an export file and hand its events to the plugins.

The process actor and ``processor replay`` both call ``process_file``, so a
downloaded export and a local file go through the same steps.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec

from processor.parser import ParseStats, iter_events
from processor.plugins import Checkpoint, Dispatcher, PluginCounts, RunInfo

logger = logging.getLogger(__name__)

# Seconds between progress callbacks (and checkpoints) while parsing.
PROGRESS_INTERVAL = 0.5


class Summary(msgspec.Struct, kw_only=True):
    """Counts of one pass over an export file."""

    events: int = 0
    rejected: int = 0
    event_types: dict[str, int] = msgspec.field(default_factory=dict)
    plugins: dict[str, PluginCounts] = msgspec.field(default_factory=dict)
    checkpoints: dict[str, Checkpoint] = msgspec.field(default_factory=dict)


ProgressCallback = Callable[[Summary], None]


def process_file(
    path: Path,
    dispatcher: Dispatcher,
    run: RunInfo,
    on_progress: ProgressCallback | None = None,
) -> Summary:
    """Parse ``path`` and dispatch each event; return the counts.

    Raises ``ParseError`` when the file cannot be read at all, and passes on
    whatever ``on_progress`` raises, which is how a caller stops a run.
    Handlers are set up before the first event and torn down after the
    last, also when parsing stops with an error.
    """
    stats = ParseStats()
    event_types: Counter[str] = Counter()
    next_report = time.monotonic() + PROGRESS_INTERVAL

    dispatcher.setup(run)
    try:
        if on_progress is not None:
            # A checkpoint before the first event: a crash before the next
            # one resumes here, so a plugin can undo what it wrote meanwhile.
            summary = _summary(stats, event_types, dispatcher)
            summary.checkpoints = dispatcher.checkpoint()
            on_progress(summary)

        for event in iter_events(path, stats):
            event_types[event.event_type] += 1
            dispatcher.dispatch(event)

            if on_progress is not None and time.monotonic() >= next_report:
                summary = _summary(stats, event_types, dispatcher)
                summary.checkpoints = dispatcher.checkpoint()
                on_progress(summary)
                next_report = time.monotonic() + PROGRESS_INTERVAL
    except BaseException:
        # Record what was dispatched before the fault, so the run's counts
        # match what the plugins saw.
        if on_progress is not None:
            with contextlib.suppress(Exception):
                on_progress(_summary(stats, event_types, dispatcher))
        raise
    finally:
        dispatcher.teardown()

    summary = _summary(stats, event_types, dispatcher)
    logger.info(
        "Processed %d events (%d rejected) from %s for run %s.",
        summary.events,
        summary.rejected,
        path.name,
        run.run_id,
    )
    return summary


def _summary(
    stats: ParseStats, event_types: Counter[str], dispatcher: Dispatcher
) -> Summary:
    return Summary(
        events=stats.events,
        rejected=stats.rejected,
        event_types=dict(event_types),
        plugins={
            name: msgspec.structs.replace(counts)
            for name, counts in dispatcher.counts.items()
        },
    )
