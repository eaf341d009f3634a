"""The pipeline on a real redis-server, with the worker from the Procfile."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from processor.app import App
from processor.config import Settings
from processor.sandbox import SandboxServer
from tests.conftest import free_port, wait_for_redis
from tests.test_cli import tagged

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def procfile_command(process: str) -> list[str]:
    """Return the command of ``process`` in the repository's Procfile."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            return shlex.split(command)
    raise AssertionError(f"the Procfile has no {process!r} process")


def process_env(redis_url: str, tmp_path: Path, **variables: str) -> dict[str, str]:
    """Return this process's environment without the processor's variables,
    plus the Redis URL, state directories under ``tmp_path`` and ``variables``.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BUTTONDOWN_", "PROCESSOR_", "REDIS_URL", "SENTRY_"))
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        REDIS_URL=redis_url,
        BUTTONDOWN_API_KEY="test-key",
        PROCESSOR_STATE_DIR=str(tmp_path / "state"),
        PROCESSOR_ARCHIVE_DIR=str(tmp_path / "archive"),
        **variables,
    )
    return env


@pytest.fixture
def worker_env(
    redis_url: str, sandbox: SandboxServer, tmp_path: Path
) -> dict[str, str]:
    return process_env(
        redis_url,
        tmp_path,
        BUTTONDOWN_API_URL=sandbox.api_url,
        PROCESSOR_POLL_MIN_DELAY="0.1",
        PROCESSOR_POLL_MAX_DELAY="0.5",
    )


@contextlib.contextmanager
def running_worker(env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run the Procfile's worker until the block ends, logging to worker.log."""
    log = (cwd / "worker.log").open("wb")
    process = subprocess.Popen(
        procfile_command("worker"),
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in the background until the block ends."""
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def worker(
    worker_env: dict[str, str], tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with running_worker(worker_env, tmp_path) as process:
        yield process


def test_procfile_worker_runs_pipeline(
    worker: subprocess.Popen[bytes], worker_env: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(BIN / "processor"), "run", "--json", "--timeout", "120"],
        env=worker_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr + (tmp_path / "worker.log").read_text()
    summary = json.loads(result.stdout.splitlines()[-1])

    assert summary["status"] == "succeeded"
    assert summary["events"] == 250
    assert summary["rejected"] == 0
    assert summary["plugins"] == {
        "archive": {"handled": 250, "failed": 0},
        "deliverability": {"handled": tagged(summary), "failed": 0},
        "summary": {"handled": 250, "failed": 0},
    }
    assert summary["export_id"].startswith("exp_")

    archived = (tmp_path / "archive").glob("events-*.jsonl")
    assert sum(len(path.read_text().splitlines()) for path in archived) == 250


def test_worker_refuses_missing_redis_url(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    del worker_env["REDIS_URL"]
    result = subprocess.run(
        [sys.executable, "-c", "import processor.worker"],
        env=worker_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "REDIS_URL is not set" in result.stderr


def trigger_run(env: dict[str, str], cwd: Path) -> str:
    """Run `processor trigger --json` and return the run id it prints."""
    result = subprocess.run(
        [str(BIN / "processor"), "trigger", "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    run_id: str = json.loads(result.stdout.splitlines()[-1])["run_id"]
    return run_id


def wait_for_run(run_id: str, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Poll `processor runs show` until the run finishes or two minutes pass."""
    return wait_for_status(run_id, "succeeded", env, cwd, also="failed")


def wait_for_status(
    run_id: str, status: str, env: dict[str, str], cwd: Path, also: str = ""
) -> dict[str, Any]:
    """Poll `processor runs show` until the run reaches ``status`` (or ``also``)."""
    deadline = time.monotonic() + 120
    while True:
        shown = subprocess.run(
            [str(BIN / "processor"), "runs", "show", run_id, "--json"],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        record: dict[str, Any] = json.loads(shown.stdout)
        if record["status"] in (status, also):
            return record
        assert time.monotonic() < deadline, f"run {run_id} is still {record['status']}"
        time.sleep(0.5)


def test_trigger_then_worker_completes(
    worker: subprocess.Popen[bytes], worker_env: dict[str, str], tmp_path: Path
) -> None:
    str(BIN / "processor")
    run_id = trigger_run(worker_env, tmp_path)

    record = wait_for_run(run_id, worker_env, tmp_path)

    assert record["status"] == "succeeded", record["error"]
    assert record["events"] == 250
    assert record["plugins"]["archive"]["handled"] == 250


def test_trigger_needs_redis(worker_env: dict[str, str], tmp_path: Path) -> None:
    del worker_env["REDIS_URL"]
    result = subprocess.run(
        [str(BIN / "processor"), "trigger"],
        env=worker_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "needs the Redis broker" in result.stderr


def test_two_triggers_at_once_one_export(
    worker_env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    command = [str(BIN / "processor"), "trigger", "--json"]
    triggers = [
        subprocess.Popen(
            command,
            env=worker_env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=60) for process in triggers]
    run_ids = {json.loads(stdout.splitlines()[-1])["run_id"] for stdout, _ in outputs}

    assert len(run_ids) == 1, run_ids
    with running_worker(worker_env, tmp_path):
        record = wait_for_run(run_ids.pop(), worker_env, tmp_path)
    exports = httpx.get(
        f"{sandbox.api_url}/exports", headers={"Authorization": "Token test-key"}
    ).json()

    assert record["status"] == "succeeded"
    assert exports["count"] == 1


def test_worker_killed_while_poll_pending(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    worker_env.update(
        PROCESSOR_POLL_MIN_DELAY="3",
        PROCESSOR_POLL_MAX_DELAY="3",
        PROCESSOR_STUCK_AFTER="2",
    )
    processor = str(BIN / "processor")
    run_id = trigger_run(worker_env, tmp_path)

    # kill -9 every process of the first worker once the poll is pending.
    first = subprocess.Popen(
        procfile_command("worker"),
        env=worker_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_status(run_id, "waiting", worker_env, tmp_path)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)

    with running_worker(worker_env, tmp_path):
        time.sleep(3)
        watchdog = subprocess.run(
            [processor, "watchdog", "--once"],
            env=worker_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        record = wait_for_run(run_id, worker_env, tmp_path)

    ids = [
        json.loads(line)["id"]
        for path in (tmp_path / "archive").glob("events-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert watchdog.returncode == 0, watchdog.stderr
    assert record["status"] == "succeeded", record["error"]
    assert len(ids) == 250
    assert len(set(ids)) == 250


def test_sigterm_finishes_in_flight_run(
    worker_env: dict[str, str], tmp_path: Path, sentry_ingest: tuple[str, list[bytes]]
) -> None:
    dsn, reports = sentry_ingest
    events = 200_000
    with SandboxServer(events=events) as big:
        worker_env.update(BUTTONDOWN_API_URL=big.api_url, SENTRY_DSN=dsn)
        str(BIN / "processor")
        run_id = trigger_run(worker_env, tmp_path)

        with running_worker(worker_env, tmp_path) as worker:
            record = wait_for_status(run_id, "processing", worker_env, tmp_path)
            while record["events"] == 0:
                record = wait_for_status(run_id, "processing", worker_env, tmp_path)
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=120)

        record = wait_for_run(run_id, worker_env, tmp_path)

    lines = sum(
        len(path.read_text().splitlines())
        for path in (tmp_path / "archive").glob("events-*.jsonl")
    )
    assert worker.returncode == 0
    assert record["status"] == "succeeded", record["error"]
    assert record["retries"] == 0
    assert lines == events
    assert reports == []


@pytest.mark.parametrize("moment", ["download", "parsing"])
def test_worker_killed_while_processing(
    moment: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    events = 300_000
    with SandboxServer(events=events) as big:
        worker_env.update(
            BUTTONDOWN_API_URL=big.api_url,
            PROCESSOR_STUCK_AFTER="2",
            PROCESSOR_DOWNLOAD_DEADLINE="20",
            # The sandbox's rate limit makes the deliverability plugin wait
            # up to 10 s within a batch, longer than the 2 s stuck limit.
            PROCESSOR_DISABLED_PLUGINS="deliverability",
        )
        processor = str(BIN / "processor")
        run_id = trigger_run(worker_env, tmp_path)

        first = subprocess.Popen(
            procfile_command("worker"),
            env=worker_env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        record = wait_for_status(run_id, "processing", worker_env, tmp_path)
        while moment == "parsing" and record["events"] < 20_000:
            record = wait_for_status(run_id, "processing", worker_env, tmp_path)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)

        watchdog = [processor, "watchdog", "--interval", "1"]
        with (
            running_worker(worker_env, tmp_path),
            running(watchdog, worker_env, tmp_path),
        ):
            record = wait_for_run(run_id, worker_env, tmp_path)

    ids = [
        json.loads(line)["id"]
        for path in (tmp_path / "archive").glob("events-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert record["status"] == "succeeded", record["error"]
    assert record["plugins"]["archive"]["handled"] == events
    assert len(ids) == events
    assert len(set(ids)) == events


def test_duplicate_polls_on_redis_one_download(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    # The redirect fault fires on every download, so its log counts them.
    with SandboxServer(events=250, polls_to_ready=3, faults=["redirect"]) as server:
        worker_env.update(
            BUTTONDOWN_API_URL=server.api_url,
            PROCESSOR_POLL_MIN_DELAY="1",
            PROCESSOR_POLL_MAX_DELAY="1",
        )
        with running_worker(worker_env, tmp_path):
            str(BIN / "processor")
            run_id = trigger_run(worker_env, tmp_path)
            wait_for_status(run_id, "waiting", worker_env, tmp_path)

            settings = Settings.from_env(worker_env)
            with App(settings) as app:
                for attempt in (0, 0, 0, 1, 1):
                    app.actors.poll.send(run_id, attempt)
            record = wait_for_run(run_id, worker_env, tmp_path)
        downloads = [entry for entry in server.fault_log if entry[0] == "redirect"]

    lines = sum(
        len(path.read_text().splitlines())
        for path in (tmp_path / "archive").glob("events-*.jsonl")
    )
    assert record["status"] == "succeeded", record["error"]
    assert len(downloads) == 1
    assert lines == 250


def test_redis_restart_with_poll_pending(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    # A Redis that operators run keeps its data on disk across restarts.
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    command = [
        shutil.which("redis-server") or "redis-server",
        *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(data)),
        *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
    ]
    url = f"redis://127.0.0.1:{port}/0"
    worker_env.update(
        REDIS_URL=url,
        PROCESSOR_POLL_MIN_DELAY="4",
        PROCESSOR_POLL_MAX_DELAY="4",
        PROCESSOR_STUCK_AFTER="6",
    )

    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        wait_for_redis(url, server)
        processor = str(BIN / "processor")
        watchdog = [processor, "watchdog", "--interval", "1"]
        # The Procfile runs the watchdog beside the workers: a delayed message
        # that a worker held in memory can be lost when Redis goes away.
        with (
            running_worker(worker_env, tmp_path),
            running(watchdog, worker_env, tmp_path),
        ):
            run_id = trigger_run(worker_env, tmp_path)
            wait_for_status(run_id, "waiting", worker_env, tmp_path)

            server.terminate()
            server.wait(timeout=30)
            server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            wait_for_redis(url, server)

            record = wait_for_run(run_id, worker_env, tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert record["status"] == "succeeded", record["error"]
    assert record["events"] == 250
