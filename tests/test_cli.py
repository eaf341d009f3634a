"""The ``processor`` command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from processor.sandbox import write_events_export
from tests.conftest import free_port

PROCESSOR = str(Path(sys.executable).parent / "processor")


def processor(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BUTTONDOWN_", "PROCESSOR_", "REDIS_URL", "SENTRY_"))
    }
    base.update(env)
    return subprocess.run(
        [PROCESSOR, *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=300,
    )


def last_json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return parsed


def tagged(summary: dict[str, Any]) -> int:
    """Return the events the deliverability plugin acts on in a run."""
    types = summary["event_types"]
    return int(types.get("bounced", 0) + types.get("complained", 0))


NO_API_KEY = (
    "setup failed: ConfigurationError: BUTTONDOWN_API_KEY is not set; copy the "
    "key from Buttondown's settings page (Settings > API) into "
    "BUTTONDOWN_API_KEY, or run with --sandbox to use the local sandbox API."
)


def test_run_sandbox_json(tmp_path: Path) -> None:
    result = processor(
        "run",
        "--sandbox",
        "--events",
        "300",
        "--json",
        cwd=tmp_path,
        PROCESSOR_POLL_MIN_DELAY="0.1",
    )

    assert result.returncode == 0, result.stderr
    summary = last_json(result)
    assert summary["status"] == "succeeded"
    assert summary["events"] == 300
    assert summary["rejected"] == 0
    assert summary["plugins"] == {
        "archive": {"handled": 300, "failed": 0},
        "deliverability": {"handled": tagged(summary), "failed": 0},
        "summary": {"handled": 300, "failed": 0},
    }
    assert str(summary["run_id"]).startswith("run_")
    assert str(summary["export_id"]).startswith("exp_")


def test_run_sandbox_readable_summary(tmp_path: Path) -> None:
    result = processor(
        "run",
        "--sandbox",
        "--events",
        "50",
        cwd=tmp_path,
        PROCESSOR_POLL_MIN_DELAY="0.1",
    )

    assert result.returncode == 0, result.stderr
    assert "succeeded" in result.stdout
    assert "50 (0 rows rejected)" in result.stdout
    assert "archive: 50 handled, 0 failed" in result.stdout


def test_runs_show_reads_earlier_run(tmp_path: Path) -> None:
    first = processor(
        "run",
        "--sandbox",
        "--events",
        "20",
        "--json",
        cwd=tmp_path,
        PROCESSOR_POLL_MIN_DELAY="0.1",
    )
    run_id = str(last_json(first)["run_id"])

    listed = processor("runs", "--json", cwd=tmp_path)
    shown = processor("runs", "show", run_id, "--json", cwd=tmp_path)

    assert listed.returncode == 0, listed.stderr
    assert [run["run_id"] for run in json.loads(listed.stdout)] == [run_id]
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["events"] == 20


def test_runs_show_unknown_id(tmp_path: Path) -> None:
    result = processor("runs", "show", "run_20200101T000000_000000", cwd=tmp_path)

    assert result.returncode == 1
    assert "no run has the id" in result.stderr


def test_replay_local_file(tmp_path: Path) -> None:
    export = tmp_path / "export.zip"
    write_events_export(export, count=120, seed=7)

    result = processor(
        "replay",
        str(export),
        "--json",
        cwd=tmp_path,
        PROCESSOR_ARCHIVE_DIR=str(tmp_path / "archive"),
    )

    assert result.returncode == 0, result.stderr
    summary = last_json(result)
    assert summary["status"] == "succeeded"
    assert summary["export_id"] is None
    assert summary["events"] == 120
    assert summary["plugins"] == {
        "archive": {"handled": 120, "failed": 0},
        "deliverability": {
            "handled": 0,
            "failed": tagged(summary),
            "error": NO_API_KEY,
        },
        "summary": {"handled": 120, "failed": 0},
    }


def test_replay_unreadable_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "export.zip"
    path.write_bytes(b"\x00\x01 not an export")

    result = processor("replay", str(path), "--json", cwd=tmp_path)

    assert result.returncode == 1
    summary = last_json(result)
    assert summary["status"] == "failed"
    assert "binary data" in str(summary["error"])


def test_run_without_api_key_explains(tmp_path: Path) -> None:
    result = processor("run", cwd=tmp_path)

    assert result.returncode == 2
    assert "BUTTONDOWN_API_KEY is not set" in result.stderr


def test_invalid_setting_exits_2(tmp_path: Path) -> None:
    result = processor(
        "run", "--sandbox", cwd=tmp_path, PROCESSOR_POLL_MIN_DELAY="soon"
    )

    assert result.returncode == 2
    assert "PROCESSOR_POLL_MIN_DELAY is 'soon'" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_log_level_exits_2(tmp_path: Path) -> None:
    result = processor("runs", cwd=tmp_path, PROCESSOR_LOG_LEVEL="basic_format")

    assert result.returncode == 2
    assert "log level 'BASIC_FORMAT'" in result.stderr
    assert "Traceback" not in result.stderr


def test_state_dir_not_directory_exits_2(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file")

    result = processor("runs", cwd=tmp_path, PROCESSOR_STATE_DIR="state/sub")

    assert result.returncode == 2
    assert "set PROCESSOR_STATE_DIR to a writable directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_redis_explained(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    result = processor("runs", cwd=tmp_path, REDIS_URL=url)

    assert result.returncode == 1
    assert "Redis at REDIS_URL is unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_runs_show_malformed_id(tmp_path: Path) -> None:
    result = processor("runs", "show", "nope", cwd=tmp_path)

    assert result.returncode == 1
    assert "no run has the id 'nope'" in result.stderr


def test_sandbox_busy_port_explained(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = processor("sandbox", "--port", str(port), cwd=tmp_path)

    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_damaged_zip_dispatches_nothing(tmp_path: Path) -> None:
    export = tmp_path / "export.zip"
    write_events_export(export, count=5000, seed=1)
    data = bytearray(export.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\x00" * 16
    export.write_bytes(bytes(data))

    result = processor("replay", str(export), "--json", cwd=tmp_path)

    summary = last_json(result)
    assert result.returncode == 1
    assert summary["status"] == "failed"
    assert "damaged" in str(summary["error"])
    assert summary["events"] == 0
    assert summary["plugins"] == {
        "archive": {"handled": 0, "failed": 0},
        "deliverability": {"handled": 0, "failed": 0, "error": NO_API_KEY},
        "summary": {"handled": 0, "failed": 0},
    }
    archived = list((tmp_path / ".processor" / "archive").glob("*.jsonl"))
    assert all(path.stat().st_size == 0 for path in archived)


def test_plugin_setup_failure_visible(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("file")
    export = tmp_path / "export.zip"
    write_events_export(export, count=30, seed=1)

    result = processor(
        "replay",
        str(export),
        "--json",
        cwd=tmp_path,
        PROCESSOR_ARCHIVE_DIR=str(tmp_path / "not-a-dir"),
    )

    summary = last_json(result)
    plugin = summary["plugins"]["archive"]  # type: ignore[index]
    assert summary["events"] == 30
    assert plugin["handled"] == 0
    assert plugin["failed"] == 30
    assert "setup failed" in plugin["error"]


def start_slow_run(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BUTTONDOWN_", "PROCESSOR_", "REDIS_URL", "SENTRY_"))
    }
    env.update(PROCESSOR_POLL_MIN_DELAY="30", PROCESSOR_POLL_MAX_DELAY="60")
    command = [PROCESSOR, "run", "--sandbox", "--events", "10", "--json", *args]
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_stops_run_with_summary(tmp_path: Path) -> None:
    process = start_slow_run(tmp_path)
    deadline = time.monotonic() + 30
    while not list((tmp_path / ".processor" / "runs").glob("run_*.json")):
        assert time.monotonic() < deadline, "the run was never recorded"
        time.sleep(0.1)
    time.sleep(0.5)

    process.send_signal(signal.SIGINT)
    try:
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        process.communicate()
    summary = json.loads(stdout.splitlines()[-1])

    assert process.returncode == 130
    assert summary["status"] == "failed"
    assert "Interrupted by Ctrl-C" in summary["error"]


def test_timeout_stops_run_with_summary(tmp_path: Path) -> None:
    process = start_slow_run(tmp_path, "--timeout", "1")
    try:
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        process.communicate()
    summary = json.loads(stdout.splitlines()[-1])

    assert process.returncode == 1
    assert summary["status"] == "failed"
    assert "No result within 1 seconds" in summary["error"]


def test_runs_show_readable_record(tmp_path: Path) -> None:
    first = processor("run", "--sandbox", "--events", "20", "--json", cwd=tmp_path)
    run_id = str(last_json(first)["run_id"])

    shown = processor("runs", "show", run_id, cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    assert f"Run {run_id} succeeded." in shown.stdout
    assert "attempts   " in shown.stdout
    assert "polls" in shown.stdout
    assert "created    " in shown.stdout
