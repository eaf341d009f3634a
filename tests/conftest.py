"""Shared fixtures: a clean environment, the sandbox API and a real Redis."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from processor.config import Settings
from processor.sandbox import SandboxServer

# Variables that would point a test at a real account, broker or Sentry.
_ISOLATED_PREFIXES = ("BUTTONDOWN_", "PROCESSOR_", "REDIS_URL", "SENTRY_")


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Remove the processor's variables and run each test in its own directory."""
    for name in list(os.environ):
        if name.startswith(_ISOLATED_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A sandbox API on a free loopback port, serving exports of 250 events."""
    with SandboxServer(events=250, polls_to_ready=2) as server:
        yield server


@pytest.fixture
def settings(sandbox: SandboxServer, tmp_path: Path) -> Settings:
    """Settings pointing at the sandbox, with short poll delays."""
    return Settings(
        api_key="test-key",
        api_url=sandbox.api_url,
        state_dir=tmp_path / "state",
        poll_min_delay=0.05,
        poll_max_delay=0.2,
        poll_deadline=60,
        http_timeout=10,
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisProcess:
    """A redis-server on a loopback port that a test can stop and start again.

    It keeps no data on disk, so a restart starts empty.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed; install it "
                "(Debian: apt-get install redis-server)."
            )
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for_redis(self.url, self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port; yields its URL.

    A missing redis-server fails the test instead of skipping it, because the
    Redis mode is what operators run.
    """
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def wait_for_redis(url: str, process: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited with code {process.returncode} at start")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
    pytest.fail(f"redis-server did not answer on {url} within 10 seconds")


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session's Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield redis_server
    client.close()


@pytest.fixture
def sentry_ingest() -> Iterator[tuple[str, list[bytes]]]:
    """A stand-in for Sentry's ingest endpoint; yields a DSN and the bodies."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            bodies.append(body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://publickey@127.0.0.1:{server.server_address[1]}/1", bodies
    finally:
        server.shutdown()
        server.server_close()
