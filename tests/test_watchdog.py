"""The watchdog: stuck runs are driven again, or failed after a few tries."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from processor.app import App
from processor.config import Settings
from processor.state import FAILED, SUCCEEDED, WAITING, Run, new_run_id
from processor.watchdog import sweep


@pytest.fixture
def archive_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    directory = tmp_path / "archive"
    monkeypatch.setenv("PROCESSOR_ARCHIVE_DIR", str(directory))
    return directory


def age(app: App, run_id: str, seconds: float) -> None:
    def change(run: Run) -> None:
        run.lease = None
        run.lease_until = 0.0

    app.store.update(run_id, change)
    run = app.store.get(run_id)
    assert run is not None
    run.updated_at -= timedelta(seconds=seconds)
    app.store.create(run)


def test_lost_poll_driven_again(settings: Settings, archive_dir: Path) -> None:
    slow = settings.replace(poll_min_delay=60, poll_max_delay=60)
    with App(slow) as app:
        app.start_embedded_worker()
        run_id = app.actors.start_run().run_id
        deadline = time.monotonic() + 30
        while (run := app.store.get(run_id)) is None or run.status != WAITING:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        # The pending poll message is lost, as when Redis drops it, and the
        # polls from here on come fast.
        app.broker.flush_all()
        app.actors.settings = settings
        age(app, run_id, 120)
        stuck = sweep(app.store, app.actors, stuck_after=60)
        finished = app.wait(run_id, timeout=60)

    assert stuck == [run_id]
    assert finished.status == SUCCEEDED
    assert finished.redrives == 1
    assert finished.events == 250


def test_gives_up_after_max_redrives(settings: Settings) -> None:
    with App(settings) as app:
        run = Run(run_id=new_run_id(), status=WAITING, export_id="exp_1", redrives=3)
        app.store.create(run)
        age(app, run.run_id, 120)

        stuck = sweep(app.store, app.actors, stuck_after=60, max_redrives=3)
        failed = app.store.get(run.run_id)

    assert stuck == [run.run_id]
    assert failed is not None
    assert failed.status == FAILED
    assert failed.error is not None
    assert "stuck in waiting" in failed.error


def test_recent_and_leased_runs_left_alone(settings: Settings) -> None:
    with App(settings) as app:
        recent = Run(run_id=new_run_id(), status=WAITING, export_id="exp_1")
        app.store.create(recent)
        leased = Run(run_id="run_20990101T000000_aaaaaa", status=WAITING)
        app.store.create(leased)
        age(app, leased.run_id, 120)
        app.store.update(leased.run_id, lambda run: run.claim("holder", 600))

        stuck = sweep(app.store, app.actors, stuck_after=60)

    assert stuck == []
