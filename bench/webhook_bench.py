"""Benchmark the response time of ``processor web`` for webhook deliveries.

Starts its own redis-server and ``processor web`` on free loopback ports,
then times requests over one keep-alive connection:

- healthz: ``GET /healthz``, one Redis PING per request, the baseline for
  an HTTP round trip through the server that also reaches Redis;
- accepted: a signed ``email.sent`` delivery with a new id, which is
  verified, decoded, claimed, enqueued and marked accepted;
- duplicate: the same delivery again, which gets 200 from its claim;
- rejected: a delivery with a wrong signature, which never reaches Redis;
- large: accepted deliveries with a ``data`` field of about 1 MiB.

It prints the median, 95th and 99th percentile latency of each, their
ratio to the baseline's median, and the throughput of accepted deliveries
from several concurrent clients. No worker runs, so the enqueued messages
stay in Redis.

    python bench/webhook_bench.py
    python bench/webhook_bench.py --requests 500 --clients 8
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec

from processor.webhooks import sign

KEY = "whsec_benchmark"
WEBHOOK = "/webhooks/buttondown"


class BenchmarkError(Exception):
    """A server did not start or a request got an unexpected status."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(check: Callable[[], bool], server: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise BenchmarkError(f"{server} did not start within 20 seconds")


@contextmanager
def running_servers(directory: Path) -> Iterator[str]:
    """Run redis-server and ``processor web``; yield the web server's URL."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise BenchmarkError("redis-server is not installed")
    redis_port, web_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    redis_command = [redis_server, "--bind", "127.0.0.1", "--port", str(redis_port)]
    redis_command += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "BUTTONDOWN_WEBHOOK_SIGNING_KEY": KEY,
        "PROCESSOR_LOG_LEVEL": "WARNING",
    }
    processor = Path(sys.executable).parent / "processor"
    web_command = [str(processor), "web", "--port", str(web_port)]
    url = f"http://127.0.0.1:{web_port}"

    with open(directory / "web.log", "wb") as log:
        redis_process = subprocess.Popen(redis_command, stdout=subprocess.DEVNULL)
        web_process = subprocess.Popen(web_command, env=env, stdout=log, stderr=log)
        try:
            wait_until_up(
                lambda: httpx.get(url + "/healthz").status_code == 200,
                f"processor web (log in {directory / 'web.log'})",
            )
            yield url
        finally:
            web_process.terminate()
            web_process.wait(timeout=10)
            redis_process.terminate()
            redis_process.wait(timeout=10)


def delivery(number: int, padding: int = 0) -> bytes:
    data: dict[str, object] = {"email_id": f"em_{number}"}
    if padding:
        data["html"] = "x" * padding
    return msgspec.json.encode(
        {"id": f"ext_evt_bench{number:08d}", "event_type": "email.sent", "data": data}
    )


def timed(requests: list[Callable[[], httpx.Response]], status: int) -> list[float]:
    """Send ``requests`` one after another; return each latency in ms."""
    latencies = []
    for send in requests:
        started = time.perf_counter()
        response = send()
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code != status:
            raise BenchmarkError(
                f"expected {status}, got {response.status_code}: {response.text}"
            )
    return latencies


def post(
    client: httpx.Client, body: bytes, key: str = KEY
) -> Callable[[], httpx.Response]:
    headers = {"X-Buttondown-Signature": sign(body, key)}
    return lambda: client.post(WEBHOOK, content=body, headers=headers)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def throughput(url: str, first: int, count: int, clients: int) -> float:
    """Return accepted deliveries per second from ``clients`` at once."""
    per_client = count // clients

    def run(client_number: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            start = first + client_number * per_client
            bodies = [delivery(number) for number in range(start, start + per_client)]
            timed([post(client, body) for body in bodies], 202)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(run, range(clients)))
    return per_client * clients / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per case")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    options = parser.parse_args()
    count = options.requests

    with (
        tempfile.TemporaryDirectory() as directory,
        running_servers(Path(directory)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        timed([lambda: client.get("/healthz")] * 200, 200)
        cases = {
            "healthz": timed([lambda: client.get("/healthz")] * count, 200),
            "accepted": timed([post(client, delivery(n)) for n in range(count)], 202),
            "duplicate": timed([post(client, delivery(0))] * count, 200),
            "rejected": timed([post(client, delivery(0), "wrong")] * count, 401),
        }
        large = [delivery(count + n, padding=1024 * 1024) for n in range(count // 20)]
        cases["large (1 MiB)"] = timed([post(client, body) for body in large], 202)
        rate = throughput(url, 10 * count, count, options.clients)

    print(
        f"processor web on {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {count} requests a case"
    )
    baseline = statistics.median(cases["healthz"])
    print(f"{'case':<14}{'median ms':>10}{'p95 ms':>9}{'p99 ms':>9}{'x healthz':>11}")
    for name, latencies in cases.items():
        median = statistics.median(latencies)
        print(
            f"{name:<14}{median:>10.2f}{percentile(latencies, 0.95):>9.2f}"
            f"{percentile(latencies, 0.99):>9.2f}{median / baseline:>11.2f}"
        )
    print(f"accepted with {options.clients} clients at once: {rate:,.0f} deliveries/s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        sys.exit(2)
