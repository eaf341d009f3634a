"""In-memory export records of the sandbox, with their status steps and files.

An export moves one status per retrieve: ``not_started`` when created,
``in_progress`` after the first retrieve and ``ready`` at retrieve number
``polls_to_ready`` (at creation when that is 0). With ``ready_after`` set,
an export turns ready that many seconds after creation instead, whatever
the retrieves, and ``on_finished`` is called with it, as Buttondown sends
its ``export.completed`` webhook. When it turns ready, the
store writes ``<data_dir>/<export id>.zip`` with ``write_export``, seeded
with ``seed * 1_000_000 + n`` for the n-th export created (n counts from 1).
If the file cannot be written, the status becomes ``error``.

NOTE: the retrieve that turns an export ready writes the file before it
responds, so it takes time in proportion to ``events``. Give clients a read
timeout to match when an export has millions of events.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from processor.sandbox.generate import encode_typeid, uuid7_int, write_export

logger = logging.getLogger(__name__)


class Export(msgspec.Struct):
    """Export object as the API returns it."""

    id: str
    creation_date: str
    collections: list[str]
    parameters: dict[str, Any] | None
    format: str
    columns: list[str] | None
    url: str | None = None
    completion_date: str | None = None
    status: str = "not_started"


@dataclasses.dataclass
class _Record:
    export: Export
    sequence: int
    retrieves: int = 0
    file_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class ExportStore:
    """Thread-safe store of the exports created on one sandbox server.

    ``download_url`` builds the URL of a ready export's file from its id.
    Methods return copies of the stored exports.
    """

    def __init__(
        self,
        *,
        events: int,
        seed: int,
        polls_to_ready: int,
        data_dir: Path,
        download_url: Callable[[str], str],
        ready_after: float | None = None,
        on_finished: Callable[[Export], None] | None = None,
    ) -> None:
        self.events = events
        self.ready_after = ready_after
        self.on_finished = on_finished
        self._timers: list[threading.Timer] = []
        self.seed = seed
        self.polls_to_ready = polls_to_ready
        self.data_dir = data_dir
        self.download_url = download_url
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}

    def create(self, request: dict[str, Any]) -> Export:
        """Add an export for a validated create request and return it."""
        now = time.time()
        export = Export(
            id=encode_typeid("exp", uuid7_int(int(now * 1000), secrets.randbits(74))),
            creation_date=_isoformat(now),
            collections=list(request["collections"]),
            parameters=request.get("parameters"),
            format=request.get("format", "csv"),
            columns=request.get("columns"),
        )

        with self._lock:
            record = _Record(export, sequence=len(self._records) + 1)
            self._records[export.id] = record
        logger.info("Created export %s of %s.", export.id, export.collections)

        if self.ready_after is not None:
            timer = threading.Timer(self.ready_after, self._finish, args=(record,))
            timer.daemon = True
            with self._lock:
                self._timers.append(timer)
            timer.start()
        elif self.polls_to_ready == 0:
            self._make_ready(record)
        return self._snapshot(record)

    def cancel_timers(self) -> None:
        """Stop the timers of exports that have not turned ready yet."""
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()

    def retrieve(self, export_id: str) -> Export | None:
        """Advance the export's status by one step and return it, or None."""
        with self._lock:
            record = self._records.get(export_id)
            if record is None:
                return None

            record.retrieves += 1
            due = self.ready_after is None and record.retrieves >= self.polls_to_ready
            if not due and record.export.status == "not_started":
                record.export.status = "in_progress"

        if due:
            self._make_ready(record)
        return self._snapshot(record)

    def peek(self, export_id: str) -> Export | None:
        """Return the export without advancing its status, or None."""
        with self._lock:
            record = self._records.get(export_id)
            if record is None:
                return None
            return msgspec.structs.replace(record.export)

    def page(self, number: int, size: int) -> tuple[int, list[Export]]:
        """Return the export count and page ``number`` (from 1), newest first."""
        with self._lock:
            records = list(reversed(self._records.values()))
            selected = records[(number - 1) * size : number * size]
            exports = [msgspec.structs.replace(item.export) for item in selected]
        return len(records), exports

    def file_path(self, export_id: str) -> Path:
        """Return where the export's ZIP file is, or will be, written."""
        return self.data_dir / f"{export_id}.zip"

    def _snapshot(self, record: _Record) -> Export:
        with self._lock:
            return msgspec.structs.replace(record.export)

    def _finish(self, record: _Record) -> None:
        self._make_ready(record)
        if self.on_finished is not None:
            self.on_finished(self._snapshot(record))

    def _make_ready(self, record: _Record) -> None:
        # The file lock makes concurrent retrieves write the file once, while
        # the store lock stays free for other requests during the write.
        with record.file_lock:
            export = record.export
            if export.status in ("ready", "error"):
                return

            path = self.file_path(export.id)
            seed = self.seed * 1_000_000 + record.sequence
            columns = export.columns if export.collections == ["events"] else None
            try:
                write_export(
                    path, export.collections, self.events, seed, export.format, columns
                )
            except OSError:
                logger.exception("Failed to write export %s to %s.", export.id, path)
                with self._lock:
                    export.status = "error"
                return

            with self._lock:
                export.url = self.download_url(export.id)
                export.completion_date = _isoformat(time.time())
                export.status = "ready"

        logger.info(
            "Export %s is ready: %d events in %s.", export.id, self.events, path
        )


def _isoformat(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat().replace("+00:00", "Z")
