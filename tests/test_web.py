"""``processor web`` over real HTTP on 127.0.0.1, with a real redis-server.

The server runs as the Procfile's ``web`` process. Tests that follow a
delivery to its run also start the Procfile's worker and a sandbox API.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis

from processor.sandbox import SandboxServer
from processor.state import FAILED, SUCCEEDED, WAITING, RedisRunStore, Run
from processor.webhooks import sign
from tests.conftest import RedisProcess, free_port
from tests.test_redis_pipeline import (
    BIN,
    process_env,
    procfile_command,
    running_worker,
)

KEY = "whsec_test_signing_key"
WEBHOOK = "/webhooks/buttondown"
QUEUED_MESSAGES = "dramatiq:processor.msgs"


def base_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return process_env(
        redis_url,
        tmp_path,
        BUTTONDOWN_WEBHOOK_SIGNING_KEY=KEY,
        PROCESSOR_DISABLED_PLUGINS="deliverability",
        PROCESSOR_WEBHOOK_RUN_DELAYS="1s,5s",
    )


class Web:
    """A running ``processor web`` and the log it writes."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def post(
        self,
        delivery: dict[str, Any] | bytes,
        signature: str | None = "sign",
        key: str = KEY,
    ) -> httpx.Response:
        body = (
            delivery if isinstance(delivery, bytes) else msgspec.json.encode(delivery)
        )
        headers = {"Content-Type": "application/json"}
        if signature == "sign":
            headers["X-Buttondown-Signature"] = sign(body, key)
        elif signature is not None:
            headers["X-Buttondown-Signature"] = signature
        return httpx.post(self.url + WEBHOOK, content=body, headers=headers, timeout=30)

    def log_text(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def running_web(
    env: dict[str, str], cwd: Path, *args: str, healthy: bool = True
) -> Iterator[Web]:
    """Run the Procfile's web process on a free loopback port."""
    port = free_port()
    log_path = cwd / "web.log"
    log = log_path.open("wb")
    command = [*procfile_command("web"), "--host", "127.0.0.1", *args]
    process = subprocess.Popen(
        command,
        env={**env, "PORT": str(port)},
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_web(url, process, log_path, healthy)
        yield Web(url, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for_web(
    url: str, process: subprocess.Popen[bytes], log: Path, healthy: bool
) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"processor web exited at start:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(url + "/healthz", timeout=5)
            if response.status_code == 200 or not healthy:
                return
        time.sleep(0.1)
    pytest.fail(f"processor web did not answer within 20 seconds:\n{log.read_text()}")


def email_sent(number: int) -> dict[str, Any]:
    return {
        "id": f"ext_evt_sent{number:03d}",
        "event_type": "email.sent",
        "data": {"email_id": f"em_{number:03d}"},
    }


def queued(redis_url: str) -> int:
    """Return the messages waiting in the processor's queue."""
    return int(redis.Redis.from_url(redis_url).hlen(QUEUED_MESSAGES))


def wait_until(check: Callable[[], Any], timeout: float, description: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:g} s waiting for {description}")


def processor_json(env: dict[str, str], cwd: Path, *args: str) -> Any:
    result = subprocess.run(
        [str(BIN / "processor"), *args, "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return base_env(redis_url, tmp_path)


@pytest.fixture
def web(env: dict[str, str], tmp_path: Path) -> Iterator[Web]:
    with running_web(env, tmp_path) as server:
        yield server


# Verification and input checks


def test_signed_delivery_accepted(web: Web, redis_url: str) -> None:
    response = web.post(email_sent(1))

    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "id": "ext_evt_sent001"}
    assert queued(redis_url) == 1


def test_wrong_signature_rejected(web: Web, redis_url: str) -> None:
    response = web.post(email_sent(1), key="not the signing key")

    assert response.status_code == 401
    assert response.json() == {"error": "signature does not match the body"}
    assert queued(redis_url) == 0


def test_body_changed_after_signing_rejected(web: Web, redis_url: str) -> None:
    body = msgspec.json.encode(email_sent(1))
    signature = sign(body, KEY)
    changed = body.replace(b"em_001", b"em_002")

    response = web.post(changed, signature=signature)

    assert response.status_code == 401
    assert queued(redis_url) == 0


@pytest.mark.parametrize("signature", [None, "sha256=abc", "md5=" + "0" * 64])
def test_missing_or_malformed_signature_rejected(
    web: Web, redis_url: str, signature: str | None
) -> None:
    response = web.post(email_sent(1), signature=signature)

    assert response.status_code == 401
    assert queued(redis_url) == 0


def test_non_ascii_signature_header_rejected(web: Web, redis_url: str) -> None:
    body = msgspec.json.encode(email_sent(1))
    digest = sign(body, KEY).encode()
    host, port = web.url.removeprefix("http://").split(":")
    request = (
        b"POST " + WEBHOOK.encode() + b" HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"X-Buttondown-Signature: " + digest[:-2] + b"\xc3\xa9\r\n"
        b"Connection: close\r\n\r\n" + body
    )

    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk

    assert reply.startswith(b"HTTP/1.1 401 ")
    assert b"not ASCII" in reply
    assert queued(redis_url) == 0


def test_replayed_delivery_does_nothing(web: Web, redis_url: str) -> None:
    first = web.post(email_sent(1))
    replay = web.post(email_sent(1))

    assert first.status_code == 202
    assert replay.status_code == 200
    assert replay.json() == {"status": "duplicate", "id": "ext_evt_sent001"}
    assert queued(redis_url) == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"<html>not json</html>", 400),
        (b'{"id": "ext_evt_1", "event_type": "email.sent"}', 422),
        (b'{"event_type": "email.sent", "data": {}}', 422),
        (b'["ext_evt_1", "email.sent", {}]', 422),
    ],
)
def test_invalid_body_rejected(
    web: Web, redis_url: str, body: bytes, status: int
) -> None:
    response = web.post(body)

    assert response.status_code == status
    assert response.json()["error"]
    assert queued(redis_url) == 0


def test_twenty_megabyte_body_rejected(web: Web, redis_url: str) -> None:
    body = b'{"id": "ext_evt_big", "event_type": "email.sent", "data": {"x": "'
    body += b"a" * (20 * 1024 * 1024) + b'"}}'

    declared = web.post(body)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1024 * 1024):
            yield body[start : start + 1024 * 1024]

    streamed = httpx.post(
        web.url + WEBHOOK,
        content=chunks(),
        headers={"X-Buttondown-Signature": sign(body, KEY)},
        timeout=30,
    )

    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert "10,485,760" in streamed.json()["error"]
    assert queued(redis_url) == 0
    assert httpx.get(web.url + "/healthz").status_code == 200


def test_other_event_types_ignored_and_counted(
    web: Web, env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    response = web.post(
        {"id": "ext_evt_sub1", "event_type": "subscriber.created", "data": {}}
    )
    report = processor_json(env, tmp_path, "webhooks")

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert queued(redis_url) == 0
    assert report["outcomes"] == {"ignored": 1}
    assert report["event_types"] == {"subscriber.created": 1}


def test_log_line_per_delivery_without_key(web: Web) -> None:
    web.post(email_sent(1))
    web.post(email_sent(2), key="wrong")

    log = web.log_text()

    assert (
        "delivery_id=ext_evt_sent001 event_type=email.sent outcome=accepted "
        "status=202" in log
    )
    assert "outcome=rejected status=401" in log
    assert KEY not in log


def test_routes_and_methods(web: Web) -> None:
    assert httpx.get(web.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(web.url + WEBHOOK).status_code == 405
    assert httpx.post(web.url + "/healthz").status_code == 405
    not_found = httpx.get(web.url + "/other")
    assert not_found.status_code == 404
    assert not_found.headers["connection"] == "close"


# Start-up


def test_web_refuses_to_start_without_key(env: dict[str, str], tmp_path: Path) -> None:
    del env["BUTTONDOWN_WEBHOOK_SIGNING_KEY"]

    result = subprocess.run(
        procfile_command("web"),
        env={**env, "PORT": str(free_port())},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "BUTTONDOWN_WEBHOOK_SIGNING_KEY is not set" in result.stderr
    assert "--allow-unsigned" in result.stderr


def test_allow_unsigned_accepts_unsigned(
    env: dict[str, str], tmp_path: Path, redis_url: str
) -> None:
    del env["BUTTONDOWN_WEBHOOK_SIGNING_KEY"]

    with running_web(env, tmp_path, "--allow-unsigned") as server:
        response = server.post(email_sent(1), signature=None)
        log = server.log_text()

    assert response.status_code == 202
    assert queued(redis_url) == 1
    assert "Accepting unsigned webhook deliveries" in log


# Redis unreachable


def test_broker_down_answers_503_and_loses_nothing(tmp_path: Path) -> None:
    own_redis = RedisProcess(tmp_path)
    own_redis.start()
    env = base_env(own_redis.url, tmp_path)
    try:
        with running_web(env, tmp_path, healthy=False) as server:
            own_redis.stop()
            started = time.monotonic()
            down = server.post(email_sent(1))
            took = time.monotonic() - started
            health = httpx.get(server.url + "/healthz", timeout=30)

            own_redis.start()
            retried = server.post(email_sent(1))
            waiting = queued(own_redis.url)
    finally:
        own_redis.stop()

    assert down.status_code == 503
    assert down.headers["retry-after"] == "60"
    assert took < 10
    assert health.status_code == 503
    assert retried.status_code == 202
    assert waiting == 1


# Routing to runs, with a worker and the sandbox


def runs_in(redis_url: str) -> list[Run]:
    return RedisRunStore(redis.Redis.from_url(redis_url)).recent(100)


def test_burst_yields_one_run_per_delay(
    web: Web, env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    env["PROCESSOR_WEBHOOK_RUN_DELAYS"] = "3s,8s"
    with SandboxServer(events=200, polls_to_ready=1) as sandbox:
        env["BUTTONDOWN_API_URL"] = sandbox.api_url
        env["PROCESSOR_POLL_MIN_DELAY"] = "0.1"
        env["PROCESSOR_POLL_MAX_DELAY"] = "0.5"

        with running_worker(env, tmp_path):
            with ThreadPoolExecutor(max_workers=10) as pool:
                responses = list(pool.map(web.post, [email_sent(n) for n in range(50)]))

            def all_scheduled() -> list[dict[str, Any]]:
                slots = processor_json(env, tmp_path, "webhooks")["scheduled"]
                total = sum(slot["deliveries"] for slot in slots)
                return slots if total == 100 else []

            scheduled = wait_until(all_scheduled, 3, "50 deliveries in the slots")

            def two_finished() -> bool:
                runs = runs_in(redis_url)
                return len(runs) == 2 and all(run.finished for run in runs)

            wait_until(two_finished, 60, "two finished runs")
            time.sleep(2)
            runs = runs_in(redis_url)

    assert [response.status_code for response in responses] == [202] * 50
    assert [slot["delay"] for slot in scheduled] == [3.0, 8.0]
    assert [slot["deliveries"] for slot in scheduled] == [50, 50]
    assert len(runs) == 2
    assert [run.status for run in runs] == [SUCCEEDED, SUCCEEDED]
    assert sorted(run.started_by or "" for run in runs) == [
        "webhook email.sent: 3s after the send, 50 deliveries",
        "webhook email.sent: 8s after the send, 50 deliveries",
    ]


def test_export_completed_cuts_polling_short(
    web: Web, env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    # Without the webhook, the first poll would come 30 seconds after the
    # export was requested.
    env["PROCESSOR_POLL_MIN_DELAY"] = "30"
    env["PROCESSOR_POLL_MAX_DELAY"] = "60"
    with SandboxServer(
        events=200,
        ready_after=1.0,
        webhook_url=web.url + WEBHOOK,
        webhook_key=KEY,
    ) as sandbox:
        env["BUTTONDOWN_API_URL"] = sandbox.api_url
        with running_worker(env, tmp_path):
            started = time.monotonic()
            run_id = processor_json(env, tmp_path, "trigger")["run_id"]
            store = RedisRunStore(redis.Redis.from_url(redis_url))

            def finished() -> Run | None:
                run = store.get(run_id)
                return run if run is not None and run.finished else None

            run = wait_until(finished, 25, "the run to finish")
            took = time.monotonic() - started

    assert run.status == SUCCEEDED
    assert run.events == 200
    assert run.polls == 1
    assert took < 20
    assert "event_type=export.completed outcome=accepted" in web.log_text()


def test_export_failed_fails_waiting_run(
    web: Web, env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    with SandboxServer(events=200, ready_after=600) as sandbox:
        env["BUTTONDOWN_API_URL"] = sandbox.api_url
        env["PROCESSOR_POLL_MIN_DELAY"] = "30"
        with running_worker(env, tmp_path):
            run_id = processor_json(env, tmp_path, "trigger")["run_id"]
            store = RedisRunStore(redis.Redis.from_url(redis_url))

            def waiting() -> Run | None:
                run = store.get(run_id)
                return run if run is not None and run.status == WAITING else None

            export_id = wait_until(waiting, 20, "the run to wait").export_id
            response = web.post(
                {
                    "id": "ext_evt_failed1",
                    "event_type": "export.failed",
                    "data": {"export_id": export_id, "error": "storage quota hit"},
                }
            )

            def failed() -> Run | None:
                run = store.get(run_id)
                return run if run is not None and run.status == FAILED else None

            run = wait_until(failed, 20, "the run to fail")

    assert response.status_code == 202
    assert run.error == (
        f"Buttondown reported export {export_id} as failed in webhook delivery "
        "ext_evt_failed1: storage quota hit"
    )


def test_export_completed_for_unknown_export_ignored(
    web: Web, env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    response = web.post(
        {
            "id": "ext_evt_done1",
            "event_type": "export.completed",
            "data": {"export_id": "exp_not_ours"},
        }
    )
    with running_worker(env, tmp_path):
        wait_until(lambda: queued(redis_url) == 0, 20, "the worker to take it")
        time.sleep(1)

    assert response.status_code == 202
    assert runs_in(redis_url) == []
    assert (
        "no run waits on export exp_not_ours" in (tmp_path / "worker.log").read_text()
    )


def test_connection_without_request_closed(env: dict[str, str], tmp_path: Path) -> None:
    with running_web(env, tmp_path, "--header-timeout", "0.5") as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as idle:
            started = time.monotonic()
            idle_received = idle.recv(1024)
            idle_waited = time.monotonic() - started

        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            # The headers and the body of the response may arrive apart.
            first = b""
            while not first.endswith(b'{"status":"ok"}'):
                chunk = slow.recv(65536)
                assert chunk, f"connection closed after {first!r}"
                first += chunk
            slow.sendall(b"POST /webhooks/buttondown HTTP/1.1\r\n")
            started = time.monotonic()
            slow_received = slow.recv(1024)
            slow_waited = time.monotonic() - started
        response = server.post(email_sent(1))

    assert idle_received == b""
    assert idle_waited < 5
    assert first.startswith(b"HTTP/1.1 200 ")
    assert slow_received == b""
    assert slow_waited < 5
    assert response.status_code == 202


def test_pipelined_request_not_cut_off(env: dict[str, str], tmp_path: Path) -> None:
    body = msgspec.json.encode(email_sent(1))
    second = (
        b"POST /webhooks/buttondown HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"X-Buttondown-Signature: " + sign(body, KEY).encode() + b"\r\n\r\n"
    )
    first = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    with running_web(env, tmp_path, "--header-timeout", "0.5") as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(first + second + body[:10])
            time.sleep(1.5)
            client.sendall(body[10:])
            replies = b""
            while replies.count(b"HTTP/1.1 ") < 2 and (chunk := client.recv(65536)):
                replies += chunk

    assert replies.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 202 " in replies
