"""The benchmarks run end to end on small inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "parse_bench.py"
WEBHOOK_BENCH = BENCH.with_name("webhook_bench.py")


def test_benchmark_small_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--events",
            "3000",
            "--large",
            "5000",
            "--skip-pandas",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    # Exit status 1 means a target was missed, which a file this small may do.
    assert result.returncode in (0, 1), result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("processor ") for line in lines)
    assert any(line.startswith("naive ") for line in lines)
    assert any(line.startswith("inflate ") for line in lines)
    assert "processor at 5,000 events" in result.stdout
    assert "peak RSS <= 64 MiB at 5,000 events" in result.stdout


def test_webhook_benchmark_small_run() -> None:
    result = subprocess.run(
        [sys.executable, str(WEBHOOK_BENCH), "--requests", "40", "--clients", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for case in ("healthz", "accepted", "duplicate", "rejected", "large (1 MiB)"):
        assert any(line.startswith(case) for line in lines), case
    assert "deliveries/s" in lines[-1]
