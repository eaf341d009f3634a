"""Tests of the sandbox's fault injection over real HTTP on loopback."""

from __future__ import annotations

import gzip
import io
import logging
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import processor.sandbox.faults
from processor.sandbox import FAULTS, SandboxServer, write_events_export
from processor.sandbox.faults import (
    APP_PAGE_HTML,
    BAD_GATEWAY_HTML,
    SERVICE_UNAVAILABLE_HTML,
)

API_KEY = "sandbox-test-key"
EVENTS = 40
SLOW_SECONDS = 0.5
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
EXPIRED_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
)


@contextmanager
def running(
    *faults: str, **settings: Any
) -> Iterator[tuple[SandboxServer, httpx.Client]]:
    settings = {"events": EVENTS, "api_key": API_KEY, **settings}
    headers = {"Authorization": f"Token {API_KEY}"}
    with (
        SandboxServer(faults=faults, slow_seconds=SLOW_SECONDS, **settings) as server,
        httpx.Client(base_url=server.api_url, headers=headers) as client,
    ):
        yield server, client


def create(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/exports", json={"collections": ["events"]})
    assert response.status_code == 201, response.text
    export: dict[str, Any] = response.json()
    return export


def download_path(export: dict[str, Any]) -> str:
    return f"/downloads/{export['id']}/export.zip"


def read_until_closed(url: str) -> tuple[bytes, int]:
    """Return the body bytes received before the server closed, and Content-Length."""
    received = bytearray()
    with httpx.stream("GET", url) as response:
        length = int(response.headers["Content-Length"])
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                received += chunk
    return bytes(received), length


def expected_zip(tmp_path: Path, sequence: int) -> bytes:
    """Return the ZIP bytes of the n-th export of a server with seed 0."""
    path = tmp_path / f"expected-{sequence}.zip"
    write_events_export(path, EVENTS, sequence)
    return path.read_bytes()


def call_until_valid(send: Callable[[], httpx.Response]) -> dict[str, Any]:
    """Retry an API call until it returns an export object with a status.

    Retries without waiting, so Retry-After and X-RateLimit-Reset are ignored
    to keep the test fast.
    """
    for _ in range(40):
        try:
            response = send()
        except httpx.TimeoutException:
            continue
        if response.status_code not in (200, 201):
            continue

        try:
            body = response.json()
        except ValueError:
            continue
        if isinstance(body, dict) and "id" in body and "status" in body:
            export: dict[str, Any] = body
            return export
    raise AssertionError("the API call did not succeed in 40 attempts")


def download_retrying(retrieve: Callable[[], dict[str, Any]]) -> bytes:
    """Poll until ready, then download, getting a new URL after a 403."""
    url = None
    for _ in range(40):
        if url is None:
            export = retrieve()
            if export["status"] not in ("ready", "completed"):
                continue
            url = export["url"]

        try:
            status, content = read_with_deadline(url, 0.6)
        except (httpx.TransportError, TimeoutError):
            continue
        if status == 403:
            url = None
            continue

        assert status == 200, status
        if is_damaged_zip(content):
            continue
        return content
    raise AssertionError("the download did not succeed in 40 attempts")


def is_damaged_zip(content: bytes) -> bool:
    """Return whether ``content`` is a ZIP whose member fails its CRC-32."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return archive.testzip() is not None
    except zipfile.BadZipFile:
        return True


def read_with_deadline(url: str, seconds: float) -> tuple[int, bytes]:
    """Return the status and decoded body, or raise TimeoutError after ``seconds``."""
    deadline = time.monotonic() + seconds
    body = bytearray()
    with (
        httpx.Client(follow_redirects=True, timeout=1) as client,
        client.stream("GET", url) as response,
    ):
        for chunk in response.iter_bytes():
            body += chunk
            if time.monotonic() > deadline:
                raise TimeoutError(f"the download took over {seconds} s")
    return response.status_code, bytes(body)


def test_faults_names_in_order() -> None:
    assert FAULTS == (
        "rate-limit",
        "rate-limit-date",
        "rate-limit-bad",
        "server-errors",
        "conflict",
        "invalid-json",
        "timeout",
        "low-remaining",
        "legacy-status",
        "unknown-status",
        "truncate",
        "trickle",
        "expire",
        "gzip",
        "redirect",
        "corrupt",
    )
    assert processor.sandbox.faults.FAULTS is FAULTS


@pytest.mark.parametrize("name", ["nope", "all", "RATE-LIMIT"])
def test_unknown_fault_value_error(name: str) -> None:
    with pytest.raises(ValueError, match=f"'{name}'") as error:
        SandboxServer(faults=["rate-limit", name])

    assert ", ".join(FAULTS) in str(error.value)


def test_fault_string_value_error() -> None:
    with pytest.raises(ValueError, match="collection of fault names"):
        SandboxServer(faults="gzip")


def test_negative_slow_seconds_value_error() -> None:
    with pytest.raises(ValueError, match="slow_seconds"):
        SandboxServer(slow_seconds=-1)


def test_rate_limit_twice() -> None:
    with running("rate-limit") as (server, client):
        body = {"collections": ["events"]}
        responses = [client.post("/exports", json=body) for _ in range(3)]
        page = client.get("/exports").json()

    for response in responses[:2]:
        assert response.status_code == 429
        assert response.json() == {
            "detail": "Request was throttled. Expected available in 1 second."
        }
        assert response.headers["Retry-After"] == "1"
        for name in RATE_LIMIT_HEADERS:
            assert name in response.headers
    assert responses[2].status_code == 201
    assert "Retry-After" not in responses[2].headers
    assert page["count"] == 1
    assert server.fault_log == [("rate-limit", "POST", "/v1/exports")] * 2


def test_rate_limit_date_ahead() -> None:
    with running("rate-limit-date") as (server, client):
        before = time.time()
        first = client.get("/exports")
        after = time.time()
        second = client.get("/exports")

    retry_at = parsedate_to_datetime(first.headers["Retry-After"]).timestamp()

    assert first.status_code == 429
    assert first.json() == {
        "detail": "Request was throttled. Expected available in 2 seconds."
    }
    assert first.headers["Retry-After"].endswith(" GMT")
    assert retry_at >= before + 2
    assert retry_at <= after + 3
    for name in RATE_LIMIT_HEADERS:
        assert name in first.headers
    assert second.status_code == 200
    assert server.fault_log == [("rate-limit-date", "GET", "/v1/exports")]


def test_rate_limit_bad_cycle() -> None:
    with running("rate-limit-bad") as (server, client):
        responses = [client.get("/exports") for _ in range(5)]

    retry_after = [response.headers.get("Retry-After") for response in responses]

    assert [response.status_code for response in responses] == [429] * 4 + [200]
    assert retry_after[0] is None
    assert retry_after[1] == "-5"
    assert retry_after[2] is not None
    assert parsedate_to_datetime(retry_after[2]).timestamp() < time.time()
    assert retry_after[3] == "soon"
    assert retry_after[4] is None
    for response in responses[:4]:
        assert response.json() == {"detail": "Request was throttled."}
        for name in RATE_LIMIT_HEADERS:
            assert name in response.headers
    assert server.fault_log == [("rate-limit-bad", "GET", "/v1/exports")] * 4


def test_server_errors_burst() -> None:
    with running("server-errors") as (server, client):
        responses = [client.get("/exports") for _ in range(4)]

    internal, gateway, unavailable, normal = responses

    assert [response.status_code for response in responses] == [500, 502, 503, 200]
    assert internal.json() == {"detail": "Internal server error"}
    assert internal.headers["Content-Type"] == "application/json"
    assert gateway.text == BAD_GATEWAY_HTML
    assert gateway.headers["Content-Type"] == "text/html; charset=utf-8"
    assert unavailable.text == SERVICE_UNAVAILABLE_HTML
    assert unavailable.headers["Content-Type"] == "text/html; charset=utf-8"
    for name in RATE_LIMIT_HEADERS:
        assert name in internal.headers
        assert name in gateway.headers
        assert name not in unavailable.headers
    assert normal.json()["count"] == 0
    assert server.fault_log == [("server-errors", "GET", "/v1/exports")] * 3


def test_conflict_empty_body() -> None:
    with running("conflict") as (server, client):
        body = {"collections": ["events"]}
        responses = [client.post("/exports", json=body) for _ in range(3)]
        page = client.get("/exports").json()

    for response in responses[:2]:
        assert response.status_code == 409
        assert response.content == b""
        assert response.headers["Content-Length"] == "0"
        assert "Content-Type" not in response.headers
        for name in RATE_LIMIT_HEADERS:
            assert name in response.headers
    assert responses[2].status_code == 201
    assert page["count"] == 1
    assert server.fault_log == [("conflict", "POST", "/v1/exports")] * 2


def test_invalid_json_cycle() -> None:
    with running("invalid-json") as (server, client):
        page = client.get("/exports")
        empty = client.get("/exports")
        export = create(client)
        path = f"/exports/{export['id']}"
        statusless = client.get(path)
        normal = client.get(path)

    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.text == APP_PAGE_HTML
    assert empty.status_code == 200
    assert empty.json() == {}
    assert statusless.status_code == 200
    assert statusless.json() == {
        key: value for key, value in export.items() if key != "status"
    }
    assert normal.json()["status"] == "in_progress"
    assert server.fault_log == [
        ("invalid-json", "GET", "/v1/exports"),
        ("invalid-json", "GET", "/v1/exports"),
        ("invalid-json", "GET", f"/v1{path}"),
    ]


def test_invalid_json_skips_unknown_export() -> None:
    with running("invalid-json") as (server, client):
        client.get("/exports")
        client.get("/exports")
        response = client.get("/exports/exp_00000000000000000000000000")

    assert response.status_code == 404
    assert len(server.fault_log) == 2


def test_timeout_once() -> None:
    with running("timeout") as (server, client):
        with pytest.raises(httpx.ReadTimeout):
            client.get("/exports", timeout=0.1)
        started = time.monotonic()
        after = client.get("/exports")
        elapsed = time.monotonic() - started

    assert after.status_code == 200
    assert elapsed < SLOW_SECONDS
    assert server.fault_log == [("timeout", "GET", "/v1/exports")]


def test_timeout_delays_response() -> None:
    with running("timeout") as (server, client):
        started = time.monotonic()
        export = create(client)
        elapsed = time.monotonic() - started
        page = client.get("/exports").json()

    assert elapsed >= SLOW_SECONDS
    assert page["results"][0]["id"] == export["id"]
    assert server.fault_log == [("timeout", "POST", "/v1/exports")]


def test_low_remaining_twice() -> None:
    with running("low-remaining") as (server, client):
        before = int(time.time())
        responses = [client.get("/exports") for _ in range(3)]

    for response in responses[:2]:
        reset = int(response.headers["X-RateLimit-Reset"])
        assert response.status_code == 200
        assert response.json()["count"] == 0
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert response.headers["X-RateLimit-Limit"] == "600"
        assert before + 2 <= reset <= before + 3
    assert responses[2].headers["X-RateLimit-Remaining"] != "0"
    assert server.fault_log == [("low-remaining", "GET", "/v1/exports")] * 2


def test_legacy_status_completed() -> None:
    with running("legacy-status", polls_to_ready=1) as (server, client):
        export = create(client)
        path = f"/exports/{export['id']}"
        first = client.get(path).json()
        second = client.get(path).json()
        page = client.get("/exports").json()

    assert export["status"] == "not_started"
    assert first["status"] == "completed"
    assert first["url"] is not None
    assert second["status"] == "completed"
    assert page["results"][0]["status"] == "completed"
    assert server.fault_log == [
        ("legacy-status", "GET", f"/v1{path}"),
        ("legacy-status", "GET", f"/v1{path}"),
        ("legacy-status", "GET", "/v1/exports"),
    ]


def test_unknown_status_once_per_export() -> None:
    with running("unknown-status") as (server, client):
        first = create(client)
        first_statuses = [
            client.get(f"/exports/{first['id']}").json()["status"] for _ in range(3)
        ]
        second = create(client)
        second_status = client.get(f"/exports/{second['id']}").json()["status"]

    assert first_statuses == ["exporting_in_background", "ready", "ready"]
    assert second_status == "exporting_in_background"
    assert server.fault_log == [
        ("unknown-status", "GET", f"/v1/exports/{first['id']}"),
        ("unknown-status", "GET", f"/v1/exports/{second['id']}"),
    ]


def test_unknown_status_ready_at_first_retrieve() -> None:
    with running("unknown-status", polls_to_ready=1) as (server, client):
        export = create(client)
        retrieves = [client.get(f"/exports/{export['id']}").json() for _ in range(2)]

    assert retrieves[0]["status"] == "exporting_in_background"
    assert retrieves[1]["status"] == "ready"
    assert retrieves[1]["url"] is not None
    assert len(server.fault_log) == 1


def test_truncate_then_complete() -> None:
    with running("truncate", polls_to_ready=0) as (server, client):
        export = create(client)
        received, length = read_until_closed(export["url"])
        complete = httpx.get(export["url"])

    assert len(received) == length // 2
    assert complete.status_code == 200
    assert len(complete.content) == length
    assert received == complete.content[: length // 2]
    assert server.fault_log == [("truncate", "GET", download_path(export))]


def test_corrupt_then_clean() -> None:
    with running("corrupt", polls_to_ready=0) as (server, client):
        export = create(client)
        damaged = httpx.get(export["url"])
        clean = httpx.get(export["url"])

    assert damaged.status_code == 200
    assert len(damaged.content) == len(clean.content)
    differing = [
        index
        for index, (left, right) in enumerate(
            zip(damaged.content, clean.content, strict=True)
        )
        if left != right
    ]
    assert differing == [len(clean.content) // 2]
    assert server.fault_log == [("corrupt", "GET", download_path(export))]


def test_truncate_per_export() -> None:
    with running("truncate", polls_to_ready=0) as (server, client):
        exports = [create(client) for _ in range(2)]
        for export in exports:
            read_until_closed(export["url"])
            httpx.get(export["url"]).raise_for_status()

    assert server.fault_log == [
        ("truncate", "GET", download_path(exports[0])),
        ("truncate", "GET", download_path(exports[1])),
    ]


def test_trickle_then_complete() -> None:
    with running("trickle", polls_to_ready=0) as (server, client):
        export = create(client)
        received = bytearray()
        started = time.monotonic()
        with httpx.stream("GET", export["url"]) as response:
            length = int(response.headers["Content-Length"])
            for chunk in response.iter_raw():
                received += chunk
                if time.monotonic() - started >= 1:
                    break
        complete = httpx.get(export["url"])

    assert response.status_code == 200
    assert 2 <= len(received) <= 6
    assert complete.status_code == 200
    assert len(complete.content) == length
    assert bytes(received) == complete.content[: len(received)]
    assert server.fault_log == [("trickle", "GET", download_path(export))]


def test_expire_then_fresh_url() -> None:
    with running("expire", polls_to_ready=1) as (server, client):
        export = create(client)
        path = f"/exports/{export['id']}"
        ready = client.get(path).json()
        expired = httpx.get(ready["url"])
        expired_again = httpx.get(ready["url"])
        fresh = client.get(path).json()
        fresher = client.get(path).json()
        listed = client.get("/exports").json()["results"][0]
        downloaded = httpx.get(fresh["url"])

    assert expired.status_code == 403
    assert expired.text == EXPIRED_BODY
    assert expired.headers["Content-Type"] == "application/xml"
    assert expired_again.status_code == 403
    assert fresh["url"] != ready["url"]
    assert fresher["url"] != fresh["url"]
    assert listed["url"] not in (ready["url"], fresh["url"], fresher["url"])
    assert re.search(r"[?&]X-Amz-Date=\d{8}T\d{6}Z&", fresh["url"])
    assert downloaded.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(downloaded.content)).namelist() == ["events.csv"]
    assert server.fault_log == [("expire", "GET", download_path(export))] * 2


def test_expire_urls_before_first_download() -> None:
    with running("expire", polls_to_ready=1) as (server, client):
        export = create(client)
        path = f"/exports/{export['id']}"
        ready = client.get(path).json()
        before_download = client.get(path).json()
        expired = httpx.get(before_download["url"])
        after_download = client.get(path).json()
        downloaded = httpx.get(after_download["url"])
        first_url = httpx.get(ready["url"])

    assert before_download["url"] != ready["url"]
    assert expired.status_code == 403
    assert expired.text == EXPIRED_BODY
    assert downloaded.status_code == 200
    assert first_url.status_code == 403
    assert server.fault_log == [("expire", "GET", download_path(export))] * 2


def test_expire_first_url_at_creation() -> None:
    with running("expire", polls_to_ready=0) as (server, client):
        export = create(client)
        expired = httpx.get(export["url"])
        fresh = client.get(f"/exports/{export['id']}").json()
        downloaded = httpx.get(fresh["url"])

    assert expired.status_code == 403
    assert downloaded.status_code == 200
    assert len(server.fault_log) == 1


def test_gzip_same_zip(tmp_path: Path) -> None:
    with running("gzip", polls_to_ready=0) as (server, client):
        export = create(client)
        identity = {"Accept-Encoding": "identity"}
        with httpx.stream("GET", export["url"], headers=identity) as response:
            raw = b"".join(response.iter_raw())
        decoded = httpx.get(export["url"])

    expected = expected_zip(tmp_path, 1)

    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Type"] == "application/zip"
    assert int(response.headers["Content-Length"]) == len(raw)
    assert gzip.decompress(raw) == expected
    assert decoded.content == expected
    assert server.fault_log == [("gzip", "GET", download_path(export))] * 2


def test_redirect_followed(tmp_path: Path) -> None:
    with running("redirect", polls_to_ready=0) as (server, client):
        export = create(client)
        redirect = httpx.get(export["url"])
        followed = httpx.get(export["url"], follow_redirects=True)

    location = httpx.URL(redirect.headers["Location"])

    assert redirect.status_code == 302
    assert redirect.content == b""
    assert location.host == "127.0.0.1"
    assert location.port == server.port
    assert location.path == f"/storage/{export['id']}/export.zip"
    assert location.query == httpx.URL(export["url"]).query
    assert followed.status_code == 200
    assert [item.status_code for item in followed.history] == [302]
    assert followed.content == expected_zip(tmp_path, 1)
    assert server.fault_log == [("redirect", "GET", download_path(export))] * 2


def test_storage_404_without_redirect() -> None:
    with running(polls_to_ready=0) as (_server, client):
        url = create(client)["url"].replace("/downloads/", "/storage/")
        response = httpx.get(url)

    assert response.status_code == 404
    assert b"NoSuchKey" in response.content


def test_redirect_then_truncate() -> None:
    with running("truncate", "redirect", polls_to_ready=0) as (server, client):
        export = create(client)
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(export["url"], follow_redirects=True)
        complete = httpx.get(export["url"], follow_redirects=True)

    storage_path = f"/storage/{export['id']}/export.zip"

    assert complete.status_code == 200
    assert server.fault_log == [
        ("redirect", "GET", download_path(export)),
        ("truncate", "GET", storage_path),
        ("redirect", "GET", download_path(export)),
    ]


def test_reencoded_url_signature_403() -> None:
    with running(polls_to_ready=0) as (_server, client):
        url = create(client)["url"]
        reencoded = url.replace("%2F", "/")
        rejected = httpx.get(reencoded)
        accepted = httpx.get(url)

    assert "X-Amz-Credential=SANDBOX%2F" in url
    assert reencoded != url
    assert rejected.status_code == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in rejected.content
    assert accepted.status_code == 200


def test_reordered_query_signature_403() -> None:
    with running(polls_to_ready=0) as (_server, client):
        url = httpx.URL(create(client)["url"])
        items = url.query.decode().split("&")
        reordered = url.copy_with(query="&".join(reversed(items)).encode())
        response = httpx.get(reordered)

    assert response.status_code == 403
    assert b"SignatureDoesNotMatch" in response.content


def test_faults_spaced_and_never_shared() -> None:
    faults = ("rate-limit", "server-errors", "conflict", "low-remaining")
    with running(*faults) as (server, client):
        responses = [client.get("/exports") for _ in range(17)]

    statuses = [response.status_code for response in responses]
    remaining = [
        response.headers.get("X-RateLimit-Remaining") for response in responses
    ]
    names = [name for name, _, _ in server.fault_log]
    zero_remaining = [index for index, value in enumerate(remaining) if value == "0"]

    # A clean request follows each fault, and the 5xx burst stays together.
    assert statuses == [
        *(429, 200, 429, 200),
        *(500, 502, 503, 200),
        *(409, 200, 409, 200),
        *(200, 200, 200, 200, 200),
    ]
    assert zero_remaining == [12, 14]
    assert names == [
        "rate-limit",
        "rate-limit",
        "server-errors",
        "server-errors",
        "server-errors",
        "conflict",
        "conflict",
        "low-remaining",
        "low-remaining",
    ]


def test_legacy_status_then_low_remaining() -> None:
    faults = ("low-remaining", "legacy-status")
    with running(*faults, polls_to_ready=1) as (server, client):
        export = create(client)
        path = f"/exports/{export['id']}"
        first = client.get(path)
        second = client.get(path)

    # The request after a fault gets no API fault, so legacy-status takes
    # the first retrieve and low-remaining the second.
    assert first.headers["X-RateLimit-Remaining"] != "0"
    assert first.json()["status"] == "completed"
    assert second.headers["X-RateLimit-Remaining"] == "0"
    assert second.json()["status"] == "ready"
    assert server.fault_log == [
        ("low-remaining", "POST", "/v1/exports"),
        ("legacy-status", "GET", f"/v1{path}"),
        ("low-remaining", "GET", f"/v1{path}"),
    ]


def test_requests_counts_api_and_downloads() -> None:
    with running("redirect", polls_to_ready=0) as (server, client):
        export = create(client)
        client.get("/exports")
        httpx.get(export["url"], follow_redirects=True).raise_for_status()
        count = server.requests

    assert count == 4


def test_fault_log_is_copy() -> None:
    with running("rate-limit") as (server, client):
        client.get("/exports")
        log = server.fault_log
        log.clear()

    assert server.fault_log == [("rate-limit", "GET", "/v1/exports")]


def test_fault_logged_without_query(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="processor.sandbox")
    with running("expire", "redirect", polls_to_ready=0) as (_server, client):
        export = create(client)
        httpx.get(export["url"])
        fresh = client.get(f"/exports/{export['id']}").json()
        httpx.get(fresh["url"])

    messages = [
        record.getMessage()
        for record in caplog.records
        if record.name == "processor.sandbox.faults"
    ]

    assert messages == [
        f"Injected fault expire into GET {download_path(export)}.",
        f"Injected fault redirect into GET {download_path(export)}.",
    ]
    assert not any("X-Amz" in record.getMessage() for record in caplog.records)


def test_all_faults_client_finishes() -> None:
    # The first retrieve gets invalid-json and is not processed, the next gets
    # low-remaining, and legacy-status takes every ready retrieve. So
    # unknown-status fires only if a second processed retrieve is in progress.
    body = {"collections": ["events"]}
    with running(*FAULTS, polls_to_ready=3 + len(FAULTS)) as (server, client):
        export = call_until_valid(
            lambda: client.post("/exports", json=body, timeout=0.2)
        )
        content = download_retrying(
            lambda: call_until_valid(
                lambda: client.get(f"/exports/{export['id']}", timeout=0.2)
            )
        )

    archive = zipfile.ZipFile(io.BytesIO(content))
    rows = archive.read("events.csv").decode().splitlines()
    fired = {name for name, _, _ in server.fault_log}

    assert len(rows) == EVENTS + 1
    assert fired == set(FAULTS)
