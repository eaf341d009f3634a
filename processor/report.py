"""Output of ``processor run`` and ``processor replay``: the summary and progress."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import msgspec

from processor.events import KNOWN_EVENT_TYPES
from processor.state import Run


def summary_fields(run: Run) -> dict[str, Any]:
    """Return the JSON summary of a run, the last line of ``--json`` output."""
    return {
        "run_id": run.run_id,
        "export_id": run.export_id,
        "status": run.status,
        "events": run.events,
        "rejected": run.rejected,
        "rejects_file": run.rejects_file,
        "event_types": dict(sorted(run.event_types.items())),
        "unknown_event_types": dict(sorted(unknown_types(run).items())),
        "plugins": {
            name: msgspec.structs.asdict(counts)
            if counts.error
            else {"handled": counts.handled, "failed": counts.failed}
            for name, counts in sorted(run.plugins.items())
        },
        "error": run.error if run.status == "failed" else None,
        "started_by": run.started_by,
        "polls": run.polls,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def unknown_types(run: Run) -> dict[str, int]:
    """Return the counts of the run's event types outside the known list."""
    return {
        name: count
        for name, count in run.event_types.items()
        if name not in KNOWN_EVENT_TYPES
    }


def summary_json(run: Run) -> str:
    """Return the JSON summary of a run on one line."""
    return msgspec.json.encode(summary_fields(run)).decode()


def summary_text(run: Run) -> str:
    """Return a readable multi-line summary of a run."""
    lines = [f"Run {run.run_id} {run.status}."]
    if run.export_id:
        lines.append(f"  export     {run.export_id}")
    lines.append(f"  events     {run.events:,} ({run.rejected:,} rows rejected)")
    if run.rejects_file:
        lines.append(f"  rejects    {run.rejects_file}")

    if run.event_types:
        by_type = ", ".join(
            f"{name} {count:,}"
            for name, count in sorted(
                run.event_types.items(), key=lambda item: -item[1]
            )
        )
        lines.append(f"  by type    {by_type}")

    unknown = unknown_types(run)
    if unknown:
        names = ", ".join(sorted(unknown))
        lines.append(f"  unknown    {names} (passed to plugins as given)")

    if run.plugins:
        for name, counts in sorted(run.plugins.items()):
            line = (
                f"  plugin     {name}: {counts.handled:,} handled, "
                f"{counts.failed:,} failed"
            )
            if counts.error:
                line += f" ({counts.error})"
            lines.append(line)
    elif run.status == "succeeded":
        lines.append("  plugins    none loaded")
    else:
        lines.append("  plugins    not run")

    if run.finished_at:
        seconds = (run.finished_at - run.created_at).total_seconds()
        lines.append(f"  took       {seconds:.1f} s")
    if run.status == "failed" and run.error:
        lines.append(f"  error      {run.error}")
    return "\n".join(lines)


def record_text(run: Run) -> str:
    """Return the summary plus the attempts and timestamps, for ``runs show``."""
    lines = [summary_text(run)]
    lines.append(
        f"  attempts   {run.polls} polls, {run.retries} retries in a row, "
        f"{run.redrives} watchdog re-drives"
    )
    if run.started_by:
        lines.append(f"  started by {run.started_by}")
    lines.append(f"  created    {run.created_at.isoformat(timespec='seconds')}")
    lines.append(f"  updated    {run.updated_at.isoformat(timespec='seconds')}")
    if run.error and run.status != "failed":
        lines.append(f"  last error {run.error}")
    return "\n".join(lines)


class Progress:
    """A one-line status on a terminal, rewritten in place; silent elsewhere."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._started: float | None = None
        self._width = 0

    def show_run(self, run: Run) -> None:
        """Show what ``run`` is doing now."""
        if run.status == "processing":
            self.show_events(run.events)
        elif run.export_id:
            self._write(
                f"Waiting for export {run.export_id}: {run.export_status} "
                f"(poll {run.polls})"
            )
        else:
            self._write(f"Run {run.run_id}: {run.status}")

    def show_events(self, events: int) -> None:
        """Show the events processed so far and the rate since the first call."""
        now = time.monotonic()
        if self._started is None:
            self._started = now
        elapsed = now - self._started
        rate = events / elapsed if elapsed > 0 else 0.0
        self._write(f"Processing: {events:,} events, {rate:,.0f} events/s")

    def finish(self) -> None:
        """End the status line so that later output starts on a new line."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def _write(self, text: str) -> None:
        if not self.enabled:
            return
        padding = " " * max(0, self._width - len(text))
        self.stream.write("\r" + text + padding)
        self.stream.flush()
        self._width = len(text)
