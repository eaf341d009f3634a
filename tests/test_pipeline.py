"""The whole pipeline on the embedded broker, against the sandbox API."""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from processor import processing
from processor.app import App
from processor.config import Settings
from processor.events import Event
from processor.parser import ParseStats
from processor.sandbox import SandboxServer
from processor.state import FAILED, PROCESSING, SUCCEEDED, WAITING


@pytest.fixture
def archive_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    directory = tmp_path / "archive"
    monkeypatch.setenv("PROCESSOR_ARCHIVE_DIR", str(directory))
    return directory


def archived_lines(directory: Path) -> list[dict[str, object]]:
    lines = []
    for path in sorted(directory.glob("events-*.jsonl")):
        lines.extend(json.loads(line) for line in path.read_text().splitlines())
    return lines


def run_once(settings: Settings) -> tuple[str, App]:
    app = App(settings)
    app.start_embedded_worker()
    run = app.actors.start_run()
    return run.run_id, app


def test_embedded_run_succeeds(settings: Settings, archive_dir: Path) -> None:
    run_id, app = run_once(settings)
    with app:
        run = app.wait(run_id, timeout=60)

    assert run.status == SUCCEEDED
    assert run.export_id is not None
    assert run.events == 250
    assert run.rejected == 0
    assert run.plugins["archive"].handled == 250
    assert run.plugins["archive"].failed == 0
    assert run.polls >= 2
    assert sum(run.event_types.values()) == 250


def test_archive_holds_each_event_once(settings: Settings, archive_dir: Path) -> None:
    run_id, app = run_once(settings)
    with app:
        run = app.wait(run_id, timeout=60)

    lines = archived_lines(archive_dir)
    ids = [line["id"] for line in lines]

    assert len(lines) == 250
    assert len(set(ids)) == 250
    assert {line["run_id"] for line in lines} == {run_id}
    assert {line["export_id"] for line in lines} == {run.export_id}
    assert set(lines[0]) == {
        "id",
        "token",
        "email_id",
        "subscriber_email",
        "subscriber_id",
        "event_type",
        "timestamp",
        "metadata",
        "run_id",
        "export_id",
    }


def test_run_record_readable_later(settings: Settings, archive_dir: Path) -> None:
    run_id, app = run_once(settings)
    with app:
        app.wait(run_id, timeout=60)

    later = App(settings)
    try:
        run = later.store.get(run_id)
    finally:
        later.close()

    assert run is not None
    assert run.status == SUCCEEDED
    assert run.events == 250


def test_wrong_api_key_fails_run(
    tmp_path: Path, settings: Settings, archive_dir: Path
) -> None:
    with SandboxServer(events=10, api_key="right-key") as server:
        wrong = settings.replace(api_url=server.api_url, api_key="wrong-key")
        run_id, app = run_once(wrong)
        with app:
            run = app.wait(run_id, timeout=60)

    assert run.status == FAILED
    assert run.error is not None
    assert "403" in run.error
    assert "wrong-key" not in msgspec.json.encode(run).decode()


def test_deadline_fails_run(settings: Settings, archive_dir: Path) -> None:
    with SandboxServer(events=10, polls_to_ready=1000) as server:
        slow = settings.replace(api_url=server.api_url, poll_deadline=0.5)
        run_id, app = run_once(slow)
        with app:
            run = app.wait(run_id, timeout=60)

    assert run.status == FAILED
    assert run.error is not None
    assert "not ready after 0.5 seconds" in run.error


def test_unexpected_error_mid_file_dispatches_once(
    settings: Settings,
    archive_dir: Path,
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_iter_events = processing.iter_events

    def failing_iter_events(
        path: Path, stats: ParseStats, **options: Any
    ) -> Iterator[Event]:
        for count, event in enumerate(real_iter_events(path, stats, **options)):
            if count == 100:
                raise RuntimeError("disk went away")
            yield event

    monkeypatch.setattr(processing, "iter_events", failing_iter_events)
    run_id, app = run_once(settings)
    with app:
        run = app.wait(run_id, timeout=60)

    assert run.status == FAILED
    assert run.error is not None
    assert "unexpected RuntimeError: disk went away" in run.error
    assert run.plugins["archive"].handled == 100
    assert len(archived_lines(archive_dir)) == 100
    assert sandbox.requests <= 6


def wait_for_status(app: App, run_id: str, status: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        run = app.store.get(run_id)
        assert run is not None
        if run.status == status:
            return
        assert time.monotonic() < deadline, f"run is still {run.status}"
        time.sleep(0.01)


def test_duplicate_messages_one_download(settings: Settings, archive_dir: Path) -> None:
    # The redirect fault fires on every download, so its log counts them.
    with SandboxServer(events=250, polls_to_ready=4, faults=["redirect"]) as server:
        slow_polls = settings.replace(
            api_url=server.api_url, poll_min_delay=0.3, poll_max_delay=0.3
        )
        app = App(slow_polls)
        app.start_embedded_worker()
        with app:
            run_id = app.actors.start_run().run_id
            wait_for_status(app, run_id, WAITING)
            for attempt in (0, 0, 1, 1, 2):
                app.actors.poll.send(run_id, attempt)
            wait_for_status(app, run_id, PROCESSING)
            for _ in range(3):
                app.actors.process.send(run_id)
            run = app.wait(run_id, timeout=60)
        downloads = [entry for entry in server.fault_log if entry[0] == "redirect"]

    assert run.status == SUCCEEDED
    assert run.events == 250
    assert len(downloads) == 1
    assert len(archived_lines(archive_dir)) == 250


def test_two_start_runs_share_one_run(settings: Settings, archive_dir: Path) -> None:
    app = App(settings)
    with app:
        first = app.actors.start_run()
        second = app.actors.start_run()
        app.start_embedded_worker()
        run = app.wait(first.run_id, timeout=60)

    assert second.run_id == first.run_id
    assert run.status == SUCCEEDED
    assert len(archived_lines(archive_dir)) == 250
