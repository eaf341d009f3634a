from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import processor_archive
import pytest
from processor_archive import ArchiveHandler

from processor.events import Event
from processor.plugins import RunInfo, load_plugins


def make_event(event_id: str, timestamp: datetime) -> Event:
    return Event(
        id=event_id,
        token="tok",
        email_id="em_1",
        subscriber_email="reader@example.com",
        event_type="clicked",
        timestamp=timestamp,
        metadata={"url": "https://example.com/a,b", "client_name": "Gmail"},
    )


@pytest.fixture
def archive_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    directory = tmp_path / "archive"
    monkeypatch.setenv("PROCESSOR_ARCHIVE_DIR", str(directory))
    return directory


def read_lines(directory: Path) -> dict[str, list[dict[str, object]]]:
    return {
        path.name: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(directory.iterdir())
    }


def test_one_line_per_event(archive_dir: Path) -> None:
    handler = ArchiveHandler()
    handler.setup(RunInfo(run_id="run_1", export_id="exp_1"))
    for n in range(3):
        handler.handle(
            make_event(f"ext_evt_{n}", datetime(2024, 3, 13, 0, n, tzinfo=UTC))
        )
    handler.teardown()

    files = read_lines(archive_dir)

    assert list(files) == ["events-2024-03-13.run_1.jsonl"]
    assert [line["id"] for line in files["events-2024-03-13.run_1.jsonl"]] == [
        "ext_evt_0",
        "ext_evt_1",
        "ext_evt_2",
    ]


def test_line_has_event_fields(archive_dir: Path) -> None:
    handler = ArchiveHandler()
    handler.setup(RunInfo(run_id="run_1", export_id="exp_1"))
    handler.handle(
        make_event("ext_evt_1", datetime(2024, 3, 13, 0, 16, 58, tzinfo=UTC))
    )
    handler.teardown()

    [line] = read_lines(archive_dir)["events-2024-03-13.run_1.jsonl"]

    assert line == {
        "id": "ext_evt_1",
        "token": "tok",
        "email_id": "em_1",
        "subscriber_email": "reader@example.com",
        "subscriber_id": None,
        "event_type": "clicked",
        "timestamp": "2024-03-13T00:16:58+00:00",
        "metadata": {"url": "https://example.com/a,b", "client_name": "Gmail"},
        "run_id": "run_1",
        "export_id": "exp_1",
    }


def test_partitioned_by_utc_day(archive_dir: Path) -> None:
    plus_two = timezone(timedelta(hours=2))
    handler = ArchiveHandler()
    handler.setup(RunInfo(run_id="run_1"))
    handler.handle(make_event("late", datetime(2024, 3, 13, 23, 30, tzinfo=UTC)))
    handler.handle(
        make_event("early_local", datetime(2024, 3, 14, 1, 0, tzinfo=plus_two))
    )
    handler.handle(make_event("next_day", datetime(2024, 3, 14, 0, 0, tzinfo=UTC)))
    handler.teardown()

    files = read_lines(archive_dir)

    assert [line["id"] for line in files["events-2024-03-13.run_1.jsonl"]] == [
        "late",
        "early_local",
    ]
    assert [line["id"] for line in files["events-2024-03-14.run_1.jsonl"]] == [
        "next_day"
    ]


def test_runs_write_separate_files(archive_dir: Path) -> None:
    for run_id in ("run_1", "run_2"):
        handler = ArchiveHandler()
        handler.setup(RunInfo(run_id=run_id))
        handler.handle(make_event(f"evt_{run_id}", datetime(2024, 3, 13, tzinfo=UTC)))
        handler.teardown()

    files = read_lines(archive_dir)

    assert sorted(files) == [
        "events-2024-03-13.run_1.jsonl",
        "events-2024-03-13.run_2.jsonl",
    ]


def test_resume_rewinds_to_checkpoint(archive_dir: Path) -> None:
    day = datetime(2024, 3, 13, tzinfo=UTC)
    first = ArchiveHandler()
    first.setup(RunInfo(run_id="run_1"))
    for n in range(3):
        first.handle(make_event(f"evt_{n}", day))
    state = first.checkpoint()
    # Written after the checkpoint, then the process dies: no teardown.
    first.handle(make_event("evt_3", day))
    first.handle(make_event("evt_next_day", day + timedelta(days=1)))
    for file in first._files.values():
        file.close()

    second = ArchiveHandler()
    second.setup(RunInfo(run_id="run_1", resume=state))
    second.handle(make_event("evt_3", day))
    second.teardown()
    files = read_lines(archive_dir)

    assert list(files) == ["events-2024-03-13.run_1.jsonl"]
    assert [line["id"] for line in files["events-2024-03-13.run_1.jsonl"]] == [
        "evt_0",
        "evt_1",
        "evt_2",
        "evt_3",
    ]


def test_registered_as_entry_point() -> None:
    plugins = {plugin.name: plugin for plugin in load_plugins()}

    assert plugins["archive"].distribution == "processor-archive"
    assert isinstance(plugins["archive"].handler, ArchiveHandler)
    assert plugins["archive"].error is None


def test_many_days_keep_few_files_open(
    archive_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor_archive, "MAX_OPEN_FILES", 3)
    handler = ArchiveHandler()
    handler.setup(RunInfo(run_id="run_1"))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for n in range(20):
        handler.handle(make_event(f"evt_{n}", start + timedelta(days=n % 10)))
        assert len(handler._files) <= 3
    handler.teardown()

    files = read_lines(archive_dir)

    assert len(files) == 10
    assert sum(len(lines) for lines in files.values()) == 20
