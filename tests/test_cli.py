"""The ``processor`` command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from processor.sandbox import write_events_export

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
    assert summary["plugins"] == {"archive": {"handled": 300, "failed": 0}}
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
    assert "50 (0 rejected)" in result.stdout
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
    assert summary["plugins"] == {"archive": {"handled": 120, "failed": 0}}


def test_replay_unreadable_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "export.zip"
    path.write_bytes(b"\x00\x01 not an export")

    result = processor("replay", str(path), "--json", cwd=tmp_path)

    assert result.returncode == 1
    summary = last_json(result)
    assert summary["status"] == "failed"
    assert "neither a ZIP" in str(summary["error"])


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
