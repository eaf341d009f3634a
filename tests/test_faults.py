"""The pipeline through every fault the API and the storage host can throw.

Each test runs a whole run on the embedded broker against a sandbox that
injects faults. The run must succeed with every event handled exactly once,
or fail fast with the reason, and stay within a bounded number of requests.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.app import App
from processor.config import Settings
from processor.sandbox import FAULTS, SandboxServer, polls_to_ready_for
from processor.state import FAILED, SUCCEEDED, Run
from tests.httpstub import Canned, serve

EVENTS = 120

# Besides one retrieve per poll, a clean run makes 1 create, 1 retrieve for
# the URL and 1 download. Each fired fault costs one more request, or two
# for an expired URL (the refused download and a fresh retrieve). A run that
# needs more than this many spare requests is retrying in a loop.
SPARE_REQUESTS = 10


@pytest.fixture
def archive_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    directory = tmp_path / "archive"
    monkeypatch.setenv("PROCESSOR_ARCHIVE_DIR", str(directory))
    return directory


@pytest.fixture
def fast(tmp_path: Path) -> Settings:
    """Settings with short delays and timeouts, pointing nowhere yet."""
    return Settings(
        api_key="test-key",
        state_dir=tmp_path / "state",
        poll_min_delay=0.05,
        poll_max_delay=0.2,
        poll_deadline=60,
        http_timeout=1.0,
        connect_timeout=1.0,
        download_deadline=1.5,
        retry_min_delay=0.05,
        retry_max_delay=0.2,
        max_retry_after=3,
        # With every fault enabled, the processing step meets four download
        # faults and the API faults of its retrieves in a row.
        max_retries=12,
    )


def run_against(api_url: str, settings: Settings) -> Run:
    with App(settings.replace(api_url=api_url)) as app:
        app.start_embedded_worker()
        started = app.actors.start_run()
        return app.wait(started.run_id, timeout=90)


def archived_ids(directory: Path) -> list[str]:
    ids = []
    for path in directory.glob("events-*.jsonl"):
        ids.extend(json.loads(line)["id"] for line in path.read_text().splitlines())
    return ids


@pytest.fixture
def faulty(request: pytest.FixtureRequest) -> Iterator[SandboxServer]:
    faults = request.param if isinstance(request.param, list) else [request.param]
    polls = polls_to_ready_for(faults)
    with SandboxServer(
        events=EVENTS, faults=faults, slow_seconds=2, polls_to_ready=polls
    ) as server:
        yield server


@pytest.mark.parametrize("faulty", [*FAULTS, list(FAULTS)], indirect=True)
def test_transient_fault_survived(
    faulty: SandboxServer, fast: Settings, archive_dir: Path
) -> None:
    run = run_against(faulty.api_url, fast)
    ids = archived_ids(archive_dir)

    assert run.status == SUCCEEDED, run.error
    assert run.events == EVENTS
    assert run.plugins["archive"].handled == EVENTS
    assert len(ids) == EVENTS
    assert len(set(ids)) == EVENTS
    assert {name for name, _, _ in faulty.fault_log} == set(faulty.faults)
    budget = polls_to_ready_for(faulty.faults) + 2 * len(faulty.fault_log)
    assert faulty.requests <= budget + SPARE_REQUESTS


@pytest.mark.parametrize("faulty", ["rate-limit"], indirect=True)
def test_rate_limit_waits_as_asked(
    faulty: SandboxServer, fast: Settings, archive_dir: Path
) -> None:
    run = run_against(faulty.api_url, fast)

    assert run.status == SUCCEEDED
    assert run.finished_at is not None
    # Two 429s each asked for one second.
    assert (run.finished_at - run.created_at).total_seconds() >= 2


@pytest.mark.parametrize("faulty", ["low-remaining"], indirect=True)
def test_low_remaining_slows_down(
    faulty: SandboxServer,
    fast: Settings,
    archive_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="processor")

    run = run_against(faulty.api_url, fast)

    assert run.status == SUCCEEDED
    assert "rate-limit window" in caplog.text


@pytest.mark.parametrize("faulty", ["server-errors"], indirect=True)
def test_retries_bounded_then_fail(
    faulty: SandboxServer, fast: Settings, archive_dir: Path
) -> None:
    run = run_against(faulty.api_url, fast.replace(max_retries=1))

    assert run.status == FAILED
    assert run.error is not None
    assert "Gave up after 1 retries" in run.error
    assert "returned 50" in run.error
    assert faulty.requests == 2


@pytest.mark.parametrize("faulty", ["unknown-status"], indirect=True)
def test_unknown_status_logged(
    faulty: SandboxServer,
    fast: Settings,
    archive_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = run_against(faulty.api_url, fast)

    assert run.status == SUCCEEDED
    assert "unknown status 'exporting_in_background'" in caplog.text


def test_wrong_key_fails_without_retry(fast: Settings, archive_dir: Path) -> None:
    with SandboxServer(events=EVENTS, api_key="right-key") as server:
        run = run_against(server.api_url, fast.replace(api_key="wrong-key"))
        requests = server.requests

    assert run.status == FAILED
    assert run.error is not None
    assert "403" in run.error
    assert "BUTTONDOWN_API_KEY" in run.error
    assert "wrong-key" not in run.error
    assert requests == 1


def stub_export(status: str = "not_started", url: str | None = None) -> bytes:
    body = {"id": "exp_1", "status": status, "url": url, "collections": ["events"]}
    return json.dumps(body).encode()


def test_create_400_shows_code(fast: Settings, archive_dir: Path) -> None:
    body = b'{"code": "columns_invalid", "detail": "Unknown column: color."}'
    with serve({"/v1/exports": Canned(status=400, body=body)}) as stub:
        run = run_against(f"{stub.url}/v1", fast)

    assert run.status == FAILED
    assert run.error is not None
    assert "columns_invalid" in run.error
    assert "Unknown column: color." in run.error
    assert len(stub.requests) == 1


def test_known_export_404_names_id(fast: Settings, archive_dir: Path) -> None:
    routes = {
        "/v1/exports": Canned(status=201, body=stub_export()),
        "/v1/exports/exp_1": Canned(status=404, body=b'{"detail": "Not found."}'),
    }
    with serve(routes) as stub:
        run = run_against(f"{stub.url}/v1", fast)

    assert run.status == FAILED
    assert run.error is not None
    assert "Export exp_1 was not found" in run.error
    assert len(stub.requests) == 2


def test_export_error_status_fails(fast: Settings, archive_dir: Path) -> None:
    routes = {
        "/v1/exports": Canned(status=201, body=stub_export()),
        "/v1/exports/exp_1": Canned(body=stub_export("error")),
    }
    with serve(routes) as stub:
        run = run_against(f"{stub.url}/v1", fast)

    assert run.status == FAILED
    assert run.error is not None
    assert "reported export exp_1 as failed" in run.error


def test_s3_url_rejected(fast: Settings, archive_dir: Path) -> None:
    routes = {
        "/v1/exports": Canned(status=201, body=stub_export()),
        "/v1/exports/exp_1": Canned(
            body=stub_export("completed", "s3://buttondown/path-to-export")
        ),
    }
    with serve(routes) as stub:
        run = run_against(f"{stub.url}/v1", fast)

    assert run.status == FAILED
    assert run.error is not None
    assert "only https URLs" in run.error


def test_expired_url_refetched_then_gives_up(fast: Settings, archive_dir: Path) -> None:
    routes: dict[str, Canned] = {
        "/v1/exports": Canned(status=201, body=stub_export()),
        "/gone.zip?X-Amz-Signature=old": Canned(status=403, body=b"<Error/>"),
    }
    with serve(routes) as stub:
        url = f"{stub.url}/gone.zip?X-Amz-Signature=old"
        routes["/v1/exports/exp_1"] = Canned(body=stub_export("ready", url))
        run = run_against(f"{stub.url}/v1", fast.replace(max_retries=2))
        downloads = [path for _, path, _ in stub.requests if path.startswith("/gone")]

    assert run.status == FAILED
    assert run.error is not None
    assert "expired" in run.error
    assert "old" not in run.error
    # Each of the three attempts fetched a fresh URL once.
    assert len(downloads) == 6


def test_download_size_limit_fails(fast: Settings, archive_dir: Path) -> None:
    with SandboxServer(events=EVENTS) as server:
        run = run_against(server.api_url, fast.replace(max_download_bytes=100))

    assert run.status == FAILED
    assert run.error is not None
    assert "PROCESSOR_MAX_DOWNLOAD_BYTES" in run.error


def test_secrets_absent_from_logs(
    fast: Settings, archive_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "bd_live_9f8e7d6c5b4a"
    with SandboxServer(events=EVENTS, faults=list(FAULTS), slow_seconds=2) as server:
        run = run_against(server.api_url, fast.replace(api_key=secret))

    logged = caplog.text + "".join(
        str(record.exc_info[1]) for record in caplog.records if record.exc_info
    )
    assert run.status == SUCCEEDED
    assert secret not in logged
    assert "X-Amz-Signature=[Filtered]" in logged
    assert re.search(r"X-Amz-Signature=(?!\[Filtered\])", logged) is None
    assert re.search(r"X-Amz-Credential=(?!\[Filtered\])", logged) is None


def test_huge_retry_after_capped(fast: Settings, archive_dir: Path) -> None:
    throttled = Canned(
        status=429,
        body=b'{"detail": "Slow down."}',
        headers={"Content-Type": "application/json", "Retry-After": "100000"},
    )
    started = time.monotonic()
    with serve({"/v1/exports": throttled}) as stub:
        settings = fast.replace(max_retry_after=0.2, max_retries=3)
        run = run_against(f"{stub.url}/v1", settings)
        requests = len(stub.requests)

    assert run.status == FAILED
    assert run.error is not None
    assert "Gave up after 3 retries" in run.error
    assert "429" in run.error
    assert requests == 4
    assert time.monotonic() - started < 30
