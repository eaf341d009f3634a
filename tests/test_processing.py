"""Checkpoints and resume in process_file, with the archive plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from processor_archive import ArchiveHandler

from processor import processing
from processor.events import Event
from processor.plugins import Checkpoint, Dispatcher, Handler, Plugin, RunInfo
from processor.processing import Summary, process_file
from processor.sandbox import write_events_export


class Crash(BaseException):
    """Stands in for kill -9: nothing after it runs."""


class CrashAt(Handler):
    name = "crash"

    def __init__(self, at: int) -> None:
        self.at = at
        self.seen = 0

    def handle(self, event: Event) -> None:
        self.seen += 1
        if self.seen == self.at:
            raise Crash


def archived_ids(directory: Path) -> list[str]:
    return [
        json.loads(line)["id"]
        for path in sorted(directory.glob("events-*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def crash_then_resume(export: Path, crash_at: int) -> None:
    """Crash on the ``crash_at``-th commit, before it is stored, then resume.

    A plugin's own exception is only its failure, so the crash comes from
    the commit, as a kill -9 between writing events and committing would.
    """
    committed: list[dict[str, Checkpoint]] = []

    def commit(summary: Summary) -> None:
        if len(committed) + 1 >= crash_at:
            raise Crash
        committed.append(summary.checkpoints)

    first = Dispatcher([Plugin("archive", None, None, handler=ArchiveHandler())])
    with pytest.raises(Crash):
        process_file(export, first, RunInfo(run_id="run_1"), commit)

    checkpoints = [points for points in committed if points]
    last = checkpoints[-1] if checkpoints else None
    second = Dispatcher(
        [Plugin("archive", None, None, handler=ArchiveHandler())], resume=last
    )
    process_file(export, second, RunInfo(run_id="run_1"), lambda summary: None)


@pytest.mark.parametrize("crash_at", [2, 3])
def test_resume_archives_each_event_once(
    crash_at: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCESSOR_ARCHIVE_DIR", str(tmp_path / "archive"))
    monkeypatch.setattr(processing, "PROGRESS_INTERVAL", 0.0)
    export = tmp_path / "export.zip"
    write_events_export(export, count=3000, seed=3)

    crash_then_resume(export, crash_at)
    ids = archived_ids(tmp_path / "archive")

    assert len(ids) == 3000
    assert len(set(ids)) == 3000


def test_first_checkpoint_before_any_event(tmp_path: Path) -> None:
    export = tmp_path / "export.zip"
    write_events_export(export, count=10, seed=3)
    committed: list[Summary] = []
    handler = CrashAt(at=0)
    dispatcher = Dispatcher([Plugin("crash", None, None, handler=handler)])

    process_file(export, dispatcher, RunInfo(run_id="run_1"), committed.append)

    assert committed[0].checkpoints["crash"].position == 0
    assert committed[0].events == 0
