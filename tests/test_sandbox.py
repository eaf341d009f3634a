"""Tests of the sandbox Exports API over real HTTP on loopback."""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import re
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from processor.events import EVENT_COLUMNS
from processor.sandbox import SandboxServer, write_events_export
from processor.sandbox.generate import (
    EVENT_TYPE_WEIGHTS,
    iter_event_rows,
    write_events_csv,
)
from processor.webhooks import sign

API_KEY = "sandbox-test-key"
EVENTS = 40
SEED = 7
HEADER = "id,token,email_id,subscriber__email,event_type,timestamp,metadata"
TYPEID = re.compile(r"exp_[0-7][0-9a-hjkmnp-tv-z]{25}")
EVENT_ID = re.compile(r"ext_evt_[0-7][0-9a-hjkmnp-tv-z]{25}")


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(
        events=EVENTS, api_key=API_KEY, page_size=2, seed=SEED
    ) as sandbox:
        yield sandbox


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Token {API_KEY}"}
    with httpx.Client(base_url=server.api_url, headers=headers) as api:
        yield api


def create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/exports", json={"collections": ["events"], **body})
    assert response.status_code == 201, response.text
    export: dict[str, Any] = response.json()
    return export


def poll_until_ready(client: httpx.Client, export_id: str) -> dict[str, Any]:
    for _ in range(10):
        export: dict[str, Any] = client.get(f"/exports/{export_id}").json()
        if export["status"] == "ready":
            return export
    raise AssertionError(f"export {export_id} was not ready after 10 retrieves")


def download(url: str) -> zipfile.ZipFile:
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    return zipfile.ZipFile(io.BytesIO(response.content))


def read_csv(archive: zipfile.ZipFile, member: str) -> list[list[str]]:
    text = archive.read(member).decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))


def test_create_returns_typeid(client: httpx.Client) -> None:
    response = client.post("/exports", json={"collections": ["events"]})
    export = response.json()

    assert response.status_code == 201
    assert TYPEID.fullmatch(export["id"])
    assert export["status"] == "not_started"
    assert export["format"] == "csv"
    assert export["collections"] == ["events"]
    assert export["url"] is None
    assert export["completion_date"] is None
    assert export["parameters"] is None
    assert export["columns"] is None
    assert datetime.fromisoformat(export["creation_date"]).tzinfo is not None


def test_create_echoes_request(client: httpx.Client) -> None:
    parameters = {"date": ["2024-12-03", None]}
    export = create(
        client, format="json", parameters=parameters, columns=["id", "event_type"]
    )

    assert export["format"] == "json"
    assert export["parameters"] == parameters
    assert export["columns"] == ["id", "event_type"]


@pytest.mark.parametrize(
    ("body", "error_type", "loc"),
    [
        (b"[]", "model_attributes_type", ["body", "payload"]),
        (b"{", "json_invalid", ["body", "payload"]),
        (b"", "missing", ["body", "payload"]),
        (b"{}", "missing", ["body", "payload", "collections"]),
        (
            b'{"collections": ["events"], "extra": 1}',
            "extra_forbidden",
            ["body", "payload", "extra"],
        ),
        (b'{"collections": "events"}', "list_type", ["body", "payload", "collections"]),
        (b'{"collections": ["nope"]}', "enum", ["body", "payload", "collections", 0]),
        (
            b'{"collections": ["events"], "format": "xml"}',
            "enum",
            ["body", "payload", "format"],
        ),
        (
            b'{"collections": ["events"], "parameters": []}',
            "dict_type",
            ["body", "payload", "parameters"],
        ),
        (
            b'{"collections": ["events"], "columns": "id"}',
            "list_type",
            ["body", "payload", "columns"],
        ),
        (
            b'{"collections": ["events"], "columns": [1]}',
            "string_type",
            ["body", "payload", "columns", 0],
        ),
    ],
)
def test_create_422_shape(
    client: httpx.Client, body: bytes, error_type: str, loc: list[str | int]
) -> None:
    response = client.post(
        "/exports", content=body, headers={"Content-Type": "application/json"}
    )
    detail = response.json()["detail"]

    assert response.status_code == 422
    assert isinstance(detail, list)
    assert len(detail) == 1
    assert detail[0]["type"] == error_type
    assert detail[0]["loc"] == loc
    assert isinstance(detail[0]["msg"], str)
    assert detail[0]["msg"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"collections": []}, "collection_empty_invalid"),
        ({"collections": ["events"], "columns": []}, "columns_empty_invalid"),
        ({"collections": ["events"], "columns": ["id", "nope"]}, "columns_invalid"),
    ],
)
def test_create_400_codes(
    client: httpx.Client, body: dict[str, Any], code: str
) -> None:
    response = client.post("/exports", json=body)

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert response.json()["detail"]


def test_columns_of_other_collections_accepted(client: httpx.Client) -> None:
    export = create(client, collections=["subscribers"], columns=["email"])

    assert export["columns"] == ["email"]


def test_auth_missing_token_401(server: SandboxServer) -> None:
    response = httpx.get(f"{server.api_url}/exports")

    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response.json()["detail"]


def test_auth_malformed_header_401(server: SandboxServer) -> None:
    for value in (f"Bearer {API_KEY}", "Token", "Basic dXNlcjpwYXNz"):
        response = httpx.get(
            f"{server.api_url}/exports", headers={"Authorization": value}
        )

        assert response.status_code == 401, value
        assert response.json()["code"] == "unauthorized"


def test_auth_wrong_key_403(server: SandboxServer) -> None:
    response = httpx.get(
        f"{server.api_url}/exports", headers={"Authorization": "Token wrong"}
    )

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert response.json()["detail"]


def test_auth_any_key_without_api_key() -> None:
    with SandboxServer(events=1) as sandbox:
        response = httpx.get(
            f"{sandbox.api_url}/exports", headers={"Authorization": "Token anything"}
        )

    assert response.status_code == 200


def test_rate_limit_headers(client: httpx.Client) -> None:
    first = client.get("/exports")
    second = client.get("/exports")

    assert first.headers["X-RateLimit-Limit"] == "600"
    assert int(first.headers["X-RateLimit-Remaining"]) < 600
    remaining_step = int(first.headers["X-RateLimit-Remaining"]) - int(
        second.headers["X-RateLimit-Remaining"]
    )
    assert remaining_step == 1
    assert int(first.headers["X-RateLimit-Reset"]) > datetime.now().timestamp()


def test_status_progression(client: httpx.Client) -> None:
    export = create(client)

    statuses = [client.get(f"/exports/{export['id']}").json() for _ in range(3)]

    assert [item["status"] for item in statuses] == ["in_progress", "ready", "ready"]
    assert statuses[0]["url"] is None
    assert statuses[1]["url"].startswith("http://127.0.0.1:")
    assert statuses[1]["completion_date"] is not None
    assert statuses[2]["url"] == statuses[1]["url"]


def test_status_ready_at_creation() -> None:
    with (
        SandboxServer(events=3, polls_to_ready=0) as sandbox,
        httpx.Client(
            base_url=sandbox.api_url, headers={"Authorization": "Token x"}
        ) as api,
    ):
        export = create(api)

    assert export["status"] == "ready"
    assert export["url"] is not None


def test_download_rows(client: httpx.Client) -> None:
    export = poll_until_ready(client, create(client)["id"])

    response = httpx.get(export["url"])
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    rows = read_csv(archive, "events.csv")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert archive.namelist() == ["events.csv"]
    assert archive.read("events.csv").decode().splitlines()[0] == HEADER
    assert len(rows) == EVENTS + 1
    assert all(EVENT_ID.fullmatch(row[0]) for row in rows[1:])


def test_download_matches_documented_seed(client: httpx.Client, tmp_path: Path) -> None:
    export = poll_until_ready(client, create(client)["id"])
    expected = tmp_path / "expected.zip"
    write_events_export(expected, EVENTS, SEED * 1_000_000 + 1)

    response = httpx.get(export["url"])

    assert response.content == expected.read_bytes()


def test_download_json_format(client: httpx.Client) -> None:
    export = poll_until_ready(client, create(client, format="json")["id"])

    archive = download(export["url"])
    rows = json.loads(archive.read("events.json"))

    assert archive.namelist() == ["events.json"]
    assert len(rows) == EVENTS
    assert list(rows[0]) == list(EVENT_COLUMNS)


def test_download_selected_columns(client: httpx.Client) -> None:
    export = create(client, columns=["event_type", "id"])
    export = poll_until_ready(client, export["id"])

    rows = read_csv(download(export["url"]), "events.csv")

    assert rows[0] == ["event_type", "id"]
    assert len(rows) == EVENTS + 1


def test_download_other_collections(client: httpx.Client) -> None:
    export = create(client, collections=["subscribers", "events"])
    export = poll_until_ready(client, export["id"])

    archive = download(export["url"])

    assert archive.namelist() == ["subscribers.csv", "events.csv"]
    assert read_csv(archive, "subscribers.csv") == [["id"]]
    assert len(read_csv(archive, "events.csv")) == EVENTS + 1


def test_download_with_authorization_400(client: httpx.Client) -> None:
    export = poll_until_ready(client, create(client)["id"])

    response = client.get(export["url"])

    assert response.status_code == 400
    assert b"InvalidArgument" in response.content


def test_download_tampered_signature_403(client: httpx.Client) -> None:
    export = poll_until_ready(client, create(client)["id"])
    url = httpx.URL(export["url"])
    signature = url.params["X-Amz-Signature"]
    tampered = "0" if signature[0] != "0" else "1"

    response = httpx.get(
        url.copy_set_param("X-Amz-Signature", tampered + signature[1:])
    )

    assert response.status_code == 403
    assert b"SignatureDoesNotMatch" in response.content


def test_download_missing_signature_403(client: httpx.Client) -> None:
    export = poll_until_ready(client, create(client)["id"])
    url = httpx.URL(export["url"]).copy_remove_param("X-Amz-Signature")

    response = httpx.get(url)

    assert response.status_code == 403
    assert b"AccessDenied" in response.content


def test_download_other_export_signature_403(client: httpx.Client) -> None:
    first = poll_until_ready(client, create(client)["id"])
    second = poll_until_ready(client, create(client)["id"])
    signature = httpx.URL(first["url"]).params["X-Amz-Signature"]

    response = httpx.get(
        httpx.URL(second["url"]).copy_set_param("X-Amz-Signature", signature)
    )

    assert response.status_code == 403


def test_list_follows_next(client: httpx.Client) -> None:
    created = [create(client)["id"] for _ in range(5)]

    seen: list[str] = []
    counts: list[int] = []
    url: str | None = "/exports"
    while url is not None:
        page = client.get(url).json()
        seen += [export["id"] for export in page["results"]]
        counts.append(page["count"])
        url = page["next"]

    assert seen == list(reversed(created))
    assert counts == [5, 5, 5]


def test_list_page_links(server: SandboxServer, client: httpx.Client) -> None:
    for _ in range(3):
        create(client)

    first = client.get("/exports").json()
    second = client.get("/exports", params={"page": 2}).json()

    assert first["previous"] is None
    assert first["next"] == f"{server.api_url}/exports?page=2"
    assert second["previous"] == f"{server.api_url}/exports?page=1"
    assert second["next"] is None
    assert len(second["results"]) == 1


def test_list_empty(client: httpx.Client) -> None:
    page = client.get("/exports").json()

    assert page == {"results": [], "count": 0, "next": None, "previous": None}


@pytest.mark.parametrize("number", ["0", "2", "-1"])
def test_list_invalid_page_404(client: httpx.Client, number: str) -> None:
    create(client)

    response = client.get("/exports", params={"page": number})

    assert response.status_code == 404
    assert response.json() == {"detail": "Invalid page."}


def test_list_non_integer_page_422(client: httpx.Client) -> None:
    response = client.get("/exports", params={"page": "two"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "page"]


def test_retrieve_unknown_id_404(client: httpx.Client) -> None:
    response = client.get("/exports/exp_00000000000000000000000000")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_unknown_path_404(client: httpx.Client) -> None:
    api_response = client.get("/emails")
    root_response = client.get("/../")

    assert api_response.status_code == 404
    assert api_response.json() == {"detail": "Not found."}
    assert root_response.status_code == 404


def test_method_not_allowed_405(client: httpx.Client) -> None:
    export = create(client)

    put_response = client.put("/exports", json={})
    delete_response = client.delete(f"/exports/{export['id']}")

    assert put_response.status_code == 405
    assert put_response.headers["Allow"] == "GET, POST"
    assert delete_response.status_code == 405
    assert delete_response.headers["Allow"] == "GET"


def test_request_log_not_on_stderr(
    client: httpx.Client,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="processor.sandbox")
    export = poll_until_ready(client, create(client)["id"])
    httpx.get(export["url"]).raise_for_status()

    messages = [record.getMessage() for record in caplog.records]

    assert capsys.readouterr().err == ""
    assert any("POST /v1/exports -> 201" in message for message in messages)
    assert not any("X-Amz-Signature" in message for message in messages)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "::", "example.com"])
def test_server_rejects_non_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        SandboxServer(host=host)


def test_server_stop_removes_temp_dir() -> None:
    sandbox = SandboxServer(events=1)
    sandbox.start()
    data_dir = sandbox.data_dir

    sandbox.stop()

    assert not data_dir.exists()


def test_server_keeps_given_data_dir(tmp_path: Path) -> None:
    with (
        SandboxServer(events=2, polls_to_ready=0, data_dir=tmp_path) as sandbox,
        httpx.Client(
            base_url=sandbox.api_url, headers={"Authorization": "Token x"}
        ) as api,
    ):
        export = create(api)

    assert (tmp_path / f"{export['id']}.zip").is_file()


def test_generator_same_seed_same_bytes() -> None:
    first = io.StringIO(newline="")
    second = io.StringIO(newline="")
    other = io.StringIO(newline="")

    write_events_csv(first, 500, 3)
    write_events_csv(second, 500, 3)
    write_events_csv(other, 500, 4)

    assert first.getvalue() == second.getvalue()
    assert first.getvalue() != other.getvalue()


def test_generator_zip_same_bytes(tmp_path: Path) -> None:
    write_events_export(tmp_path / "a.zip", 200, 5)
    write_events_export(tmp_path / "b.zip", 200, 5)

    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_generator_rows_parse() -> None:
    stream = io.StringIO(newline="")
    write_events_csv(stream, 2_000, 11)
    stream.seek(0)

    rows = list(csv.DictReader(stream))

    assert len(rows) == 2_000
    assert rows == list(iter_event_rows(2_000, 11))
    for row in rows:
        assert isinstance(ast.literal_eval(row["metadata"]), dict), row
        assert datetime.fromisoformat(row["timestamp"]).tzinfo is not None, row
        assert " " in row["timestamp"], row
        assert row["event_type"] in EVENT_TYPE_WEIGHTS, row
        assert EVENT_ID.fullmatch(row["id"]), row


def test_generator_ids_unique() -> None:
    rows = list(iter_event_rows(20_000, 2))

    assert len({row["id"] for row in rows}) == len(rows)
    assert len({row["token"] for row in rows}) == len(rows)


def test_generator_timestamps_ordered() -> None:
    times = [
        datetime.fromisoformat(row["timestamp"]) for row in iter_event_rows(5_000, 9)
    ]

    assert times == sorted(times)


def test_generator_metadata_by_type() -> None:
    rows = list(iter_event_rows(5_000, 1))
    metadata = {row["event_type"]: ast.literal_eval(row["metadata"]) for row in rows}

    assert set(metadata["opened"]) == {"country", "client_os", "client_name"}
    assert set(metadata["clicked"]) == {"country", "client_os", "client_name", "url"}
    assert set(metadata["bounced"]) == {"reason"}
    assert metadata["delivered"] == {}


def test_generator_type_mix() -> None:
    counts: dict[str, int] = {}
    for row in iter_event_rows(10_000, 4):
        counts[row["event_type"]] = counts.get(row["event_type"], 0) + 1

    assert set(counts) == set(EVENT_TYPE_WEIGHTS)
    assert max(counts, key=counts.__getitem__) == "delivered"
    assert counts["opened"] > counts["clicked"] > counts["bounced"]


def test_generator_escaping_exercised() -> None:
    values = [row["metadata"] for row in iter_event_rows(2_000, 6)]

    assert any("," in ast.literal_eval(value).get("country", "") for value in values)
    assert any("'" in ast.literal_eval(value).get("country", "") for value in values)
    assert any(
        '"' in ast.literal_eval(value).get("client_name", "") for value in values
    )


def test_generator_email_ids_few() -> None:
    rows = list(iter_event_rows(1_000, 8))

    assert len({row["email_id"] for row in rows}) == 5
    assert all(row["subscriber__email"].startswith("reader") for row in rows)
    assert all(row["subscriber__email"].endswith("@example.com") for row in rows)


def test_generator_rejects_unknown_column() -> None:
    with pytest.raises(ValueError, match="columns"):
        write_events_csv(io.StringIO(), 1, 1, columns=["nope"])


def test_ready_after_sends_signed_webhook() -> None:
    received: list[tuple[bytes, str]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers["X-Buttondown-Signature"]))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        with (
            SandboxServer(
                events=5, ready_after=0.2, webhook_url=url, webhook_key="key"
            ) as server,
            httpx.Client(
                base_url=server.api_url, headers={"Authorization": "Token k"}
            ) as api,
        ):
            export = api.post("/exports", json={"collections": ["events"]}).json()
            status_at_once = api.get(f"/exports/{export['id']}").json()["status"]
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
            status_later = api.get(f"/exports/{export['id']}").json()["status"]
    finally:
        receiver.shutdown()
        receiver.server_close()

    assert status_at_once in ("not_started", "in_progress")
    assert status_later == "ready"
    assert len(received) == 1
    body, signature = received[0]
    delivery = json.loads(body)
    assert delivery["event_type"] == "export.completed"
    assert delivery["data"]["export_id"] == export["id"]
    assert delivery["id"].startswith("ext_evt_")
    assert signature == sign(body, "key")


@pytest.mark.parametrize(
    ("url", "ready_after", "key", "message"),
    [
        ("http://10.0.0.1/hook", 1.0, "k", "loopback"),
        ("https://127.0.0.1/hook", 1.0, "k", "loopback"),
        ("http://127.0.0.1/hook", None, "k", "ready_after"),
        ("http://127.0.0.1/hook", 1.0, None, "webhook_key"),
    ],
)
def test_webhook_options_checked(
    url: str, ready_after: float | None, key: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SandboxServer(webhook_url=url, ready_after=ready_after, webhook_key=key)
