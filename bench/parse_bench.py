"""Benchmark the events parser against three baselines on the same file.

Generates an events export ZIP with the sandbox's generator (the dashboard's
columns, timestamps and dict-literal metadata) and measures, each in a fresh
Python process so that peak RSS belongs to one parser alone:

- naive: ``csv.DictReader``, ``ast.literal_eval`` on metadata and
  ``datetime.fromisoformat`` on timestamps, one row at a time;
- pandas: ``pandas.read_csv`` of the ZIP, which parses no metadata at all;
- inflate: inflating the ZIP member and counting lines, the floor for any
  parser;
- processor: ``processor.processing.process_file``, which checks the ZIP
  whole, yields typed events and dispatches them to a no-op plugin.

It prints events per second, peak RSS and the ratios of the processor to
each baseline, then the processor's peak RSS on a larger file. The exit
status is 0 when every target is met, 1 when one is missed and 2 when a
measurement fails.

    python bench/parse_bench.py                      # 1,000,000 and 5,000,000
    python bench/parse_bench.py --events 200000 --large 0 --skip-pandas
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEED = 20240313

# Targets: the processor at least this many times faster than the naive
# parser, faster than pandas, and within this peak RSS at every size.
TARGET_NAIVE_RATIO = 10.0
TARGET_RSS_MIB = 64.0

BASELINES = ("naive", "pandas", "inflate")


class BenchmarkError(Exception):
    """A measurement failed or disagrees with the others; exit status 2."""


def measure_naive(path: Path) -> int:
    import ast
    import csv
    import io
    import zipfile
    from datetime import datetime

    count = 0
    with zipfile.ZipFile(path) as archive, archive.open("events.csv") as member:
        text = io.TextIOWrapper(member, encoding="utf-8", newline="")
        for row in csv.DictReader(text):
            row["timestamp"] = datetime.fromisoformat(row["timestamp"])  # type: ignore[assignment]
            row["metadata"] = ast.literal_eval(row["metadata"])
            count += 1
    return count


def measure_pandas(path: Path) -> int:
    import pandas

    frame = pandas.read_csv(path)
    return len(frame)


def measure_inflate(path: Path) -> int:
    import zipfile

    lines = 0
    with zipfile.ZipFile(path) as archive, archive.open("events.csv") as member:
        while block := member.read(1024 * 1024):
            lines += block.count(b"\n")
    # The header is a line but not an event.
    return lines - 1


def measure_processor(path: Path) -> int:
    from processor.events import Event
    from processor.plugins import Dispatcher, Handler, Plugin, RunInfo
    from processor.processing import process_file

    class NoOp(Handler):
        name = "noop"

        def handle(self, event: Event) -> None:
            pass

    plugin = Plugin(name="noop", distribution=None, version=None, handler=NoOp())
    summary = process_file(path, Dispatcher([plugin]), RunInfo(run_id="bench"))
    if summary.rejected:
        raise BenchmarkError(f"the processor rejected {summary.rejected} rows")
    return summary.events


MEASURES = {
    "naive": measure_naive,
    "pandas": measure_pandas,
    "inflate": measure_inflate,
    "processor": measure_processor,
}


def child(name: str, path: Path) -> None:
    """Run one measurement and print it as JSON, in this process alone."""
    started = time.perf_counter()
    events = MEASURES[name](path)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"events": events, "seconds": seconds, "rss_kib": peak_kib}))


def run_child(name: str, path: Path, python: str) -> dict[str, Any]:
    command = [python, __file__, "--child", name, str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchmarkError(f"{name} failed:\n{result.stderr}")
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def measure(name: str, path: Path, python: str, repeat: int) -> dict[str, Any]:
    """Return the run with the median time of ``repeat`` runs of ``name``."""
    runs = [run_child(name, path, python) for _ in range(repeat)]
    median = statistics.median_low(run["seconds"] for run in runs)
    chosen = next(run for run in runs if run["seconds"] == median)
    chosen["rate"] = chosen["events"] / chosen["seconds"]
    chosen["rss_mib"] = chosen["rss_kib"] / 1024
    return chosen


def export_file(directory: Path, events: int) -> Path:
    """Return a generated export of ``events`` events, reusing one on disk."""
    sys.path.insert(0, str(ROOT))
    from processor.sandbox.generate import write_events_export

    path = directory / f"events-{events}-{SEED}.zip"
    if not path.exists():
        print(f"Generating {events:,} events into {path} ...", flush=True)
        partial = path.with_suffix(".partial")
        write_events_export(partial, events, SEED)
        partial.rename(path)
    return path


def has_pandas(python: str) -> bool:
    result = subprocess.run(
        [python, "-c", "import pandas"], capture_output=True, check=False
    )
    return result.returncode == 0


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def main() -> int:
    try:
        return benchmark()
    except BenchmarkError as error:
        print(f"Benchmark failed: {error}", file=sys.stderr)
        return 2


def benchmark() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--large",
        type=int,
        default=5_000_000,
        help="events in the file for the second RSS measurement; 0 skips it",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per measure")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".data")
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--child", nargs=2, metavar=("NAME", "FILE"))
    options = parser.parse_args()

    if options.child:
        child(options.child[0], Path(options.child[1]))
        return 0

    options.workdir.mkdir(parents=True, exist_ok=True)
    path = export_file(options.workdir, options.events)
    print(f"Machine: {describe_machine()}")
    print(f"File: {path.name}, {path.stat().st_size / 1e6:.1f} MB\n")

    names = ["processor", *BASELINES]
    if options.skip_pandas or not has_pandas(options.python):
        print("pandas: skipped (not installed, or --skip-pandas)\n")
        names.remove("pandas")

    results = {
        name: measure(name, path, options.python, options.repeat) for name in names
    }
    mine = results["processor"]
    for name, result in results.items():
        if result["events"] != mine["events"]:
            raise BenchmarkError(
                f"{name} read {result['events']:,} events, the processor "
                f"{mine['events']:,}"
            )

    print(
        f"{'parser':<10} {'events/s':>12} {'seconds':>8} {'peak RSS':>10}  processor is"
    )
    for name, result in results.items():
        ratio = "" if name == "processor" else f"{mine['rate'] / result['rate']:.2f}x"
        print(
            f"{name:<10} {result['rate']:>12,.0f} {result['seconds']:>8.2f} "
            f"{result['rss_mib']:>7.1f} MiB  {ratio}"
        )

    rss = {options.events: mine["rss_mib"]}
    if options.large:
        large_path = export_file(options.workdir, options.large)
        large = measure("processor", large_path, options.python, 1)
        rss[options.large] = large["rss_mib"]
        print(
            f"\nprocessor at {options.large:,} events: {large['rate']:,.0f} events/s, "
            f"peak RSS {large['rss_mib']:.1f} MiB"
        )

    print("\nTargets:")
    naive_ratio = mine["rate"] / results["naive"]["rate"]
    checks = [
        (
            f"processor >= {TARGET_NAIVE_RATIO:g}x naive",
            naive_ratio >= TARGET_NAIVE_RATIO,
            f"{naive_ratio:.2f}x",
        )
    ]
    if "pandas" in results:
        pandas_ratio = mine["rate"] / results["pandas"]["rate"]
        checks.append(
            ("processor faster than pandas", pandas_ratio > 1, f"{pandas_ratio:.2f}x")
        )
    for events, mib in rss.items():
        checks.append(
            (
                f"processor peak RSS <= {TARGET_RSS_MIB:g} MiB at {events:,} events",
                mib <= TARGET_RSS_MIB,
                f"{mib:.1f} MiB",
            )
        )
    for label, passed, value in checks:
        print(f"  {'met    ' if passed else 'MISSED '} {label}: {value}")
    return 0 if all(passed for _, passed, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
