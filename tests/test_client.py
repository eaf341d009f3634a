"""The Exports API client over real HTTP: the sandbox, and canned responses."""

from __future__ import annotations

import time

import httpx
import pytest

from processor.api import Export, ExportsClient
from processor.api.client import MAX_BODY_BYTES
from processor.errors import (
    ApiError,
    ApiUnreachable,
    AuthenticationFailed,
    Conflict,
    ExportNotFound,
    InvalidResponse,
    RateLimited,
    RequestRejected,
    ServerError,
    TransientApiError,
)
from processor.sandbox import SandboxServer
from tests.httpstub import Canned, serve

EXPORT = (
    b'{"id": "exp_1", "creation_date": "2019-08-24T14:15:22Z", '
    b'"status": "%s", "url": null}'
)
OLD_SAMPLE = (
    b'{"id": "497f6eca-6276-4993-bfeb-53cbbbba6f08", '
    b'"url": "s3://buttondown/path-to-export", "status": "completed", '
    b'"creation_date": "2019-08-24T14:15:22Z", '
    b'"completion_date": "2019-08-24T15:15:22Z"}'
)
HTML = {"Content-Type": "text/html"}


def get_canned(canned: Canned, export_id: str = "exp_1") -> Export:
    """Serve ``canned`` for one export and retrieve it with the client."""
    with (
        serve({f"/v1/exports/{export_id}": canned}) as stub,
        client_for(f"{stub.url}/v1") as client,
    ):
        return client.get_export(export_id)


def client_for(
    url: str, api_key: str = "test-key", api_version: str | None = None
) -> ExportsClient:
    return ExportsClient(
        api_url=url, api_key=api_key, api_version=api_version, timeout=5
    )


def test_create_export(sandbox: SandboxServer) -> None:
    with client_for(sandbox.api_url) as client:
        export = client.create_export(
            ["events"], parameters={"date": ["2024-12-03", None]}
        )

    assert export.id.startswith("exp_")
    assert export.status == "not_started"
    assert export.collections == ["events"]
    assert export.parameters == {"date": ["2024-12-03", None]}
    assert export.url is None


def test_get_export_until_ready(sandbox: SandboxServer) -> None:
    with client_for(sandbox.api_url) as client:
        created = client.create_export(["events"])
        statuses = [client.get_export(created.id).state for _ in range(2)]
        ready = client.get_export(created.id)

    assert statuses == ["in_progress", "ready"]
    assert ready.url is not None
    assert ready.completion_date is not None


def test_list_follows_next_pages() -> None:
    with (
        SandboxServer(events=1, page_size=2) as server,
        client_for(server.api_url) as client,
    ):
        created = {client.create_export(["events"]).id for _ in range(5)}
        listed = [export.id for export in client.list_exports()]

    assert len(listed) == 5
    assert set(listed) == created


def test_unknown_export_raises_404(sandbox: SandboxServer) -> None:
    with client_for(sandbox.api_url) as client, pytest.raises(ApiError) as caught:
        client.get_export("exp_unknown")

    assert caught.value.status == 404
    assert not isinstance(caught.value, TransientApiError)


def test_empty_collections_code(sandbox: SandboxServer) -> None:
    with client_for(sandbox.api_url) as client, pytest.raises(ApiError) as caught:
        client.create_export([])

    assert caught.value.status == 400
    assert caught.value.code == "collection_empty_invalid"
    assert "collection_empty_invalid" in str(caught.value)


def test_validation_error_shows_loc_and_msg(sandbox: SandboxServer) -> None:
    with client_for(sandbox.api_url) as client, pytest.raises(ApiError) as caught:
        client.create_export(["events"], export_format="xml")

    assert caught.value.status == 422
    assert "format" in str(caught.value)


def test_wrong_key_message_has_no_key() -> None:
    with (
        SandboxServer(events=1, api_key="right-key") as server,
        client_for(server.api_url, api_key="wrong-secret-key") as client,
        pytest.raises(ApiError) as caught,
    ):
        client.create_export(["events"])

    assert caught.value.status == 403
    assert "BUTTONDOWN_API_KEY" in str(caught.value)
    assert "wrong-secret-key" not in str(caught.value)


def test_sends_token_and_version_headers() -> None:
    with (
        serve({"/v1/exports/exp_1": Canned(body=EXPORT % b"ready")}) as stub,
        client_for(f"{stub.url}/v1", api_version="2026-04-01") as client,
    ):
        client.get_export("exp_1")

    _, _, headers = stub.requests[0]
    assert headers["Authorization"] == "Token test-key"
    assert headers["X-API-Version"] == "2026-04-01"


def test_completed_read_as_ready() -> None:
    export = get_canned(Canned(body=EXPORT % b"completed"))

    assert export.status == "completed"
    assert export.state == "ready"
    assert export.is_known_status


def test_unknown_status_kept() -> None:
    export = get_canned(Canned(body=EXPORT % b"queued_for_later"))

    assert export.state == "queued_for_later"
    assert not export.is_known_status


def test_old_sample_without_collections() -> None:
    export = get_canned(Canned(body=OLD_SAMPLE), export_id="old")

    assert export.collections == []
    assert export.state == "ready"


def test_server_error_is_transient() -> None:
    canned = Canned(status=503, body=b"<html>busy</html>", headers=HTML)
    with pytest.raises(TransientApiError) as caught:
        get_canned(canned)

    assert caught.value.status == 503
    assert "busy" in str(caught.value)


def test_html_200_is_transient_with_excerpt() -> None:
    with pytest.raises(TransientApiError) as caught:
        get_canned(Canned(body=b"<html>maintenance</html>", headers=HTML))

    assert "maintenance" in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_empty_object_200_is_transient() -> None:
    with pytest.raises(TransientApiError):
        get_canned(Canned(body=b"{}"))


def test_connection_refused_is_transient() -> None:
    with serve({}) as stub:
        url = stub.url
    with client_for(f"{url}/v1") as client, pytest.raises(TransientApiError):
        client.get_export("exp_1")


def test_next_link_to_other_host_refused() -> None:
    page = (
        b'{"results": [], "count": 3, '
        b'"next": "http://attacker.invalid/v1/exports?page=2"}'
    )
    refused = pytest.raises(ApiError, match="refusing to send the API key")
    with (
        serve({"/v1/exports": Canned(body=page)}) as stub,
        client_for(f"{stub.url}/v1") as client,
        refused,
    ):
        list(client.list_exports())

    assert len(stub.requests) == 1


@pytest.mark.parametrize(
    ("status", "body", "error_class"),
    [
        (400, b'{"code": "columns_invalid", "detail": "bad"}', RequestRejected),
        (401, b'{"detail": "Invalid token."}', AuthenticationFailed),
        (403, b'{"code": "forbidden", "detail": "No."}', AuthenticationFailed),
        (404, b'{"detail": "Not found."}', ExportNotFound),
        (409, b"", Conflict),
        (
            422,
            b'{"detail": [{"type": "x", "loc": ["body"], "msg": "bad"}]}',
            RequestRejected,
        ),
        (429, b'{"detail": "Slow down."}', RateLimited),
        (500, b'{"detail": "Internal server error"}', ServerError),
        (502, b"<html>Bad gateway</html>", ServerError),
    ],
)
def test_status_maps_to_error_class(
    status: int, body: bytes, error_class: type[ApiError]
) -> None:
    with pytest.raises(error_class) as caught:
        get_canned(Canned(status=status, body=body))

    assert caught.value.status == status
    assert caught.value.path == "/v1/exports/exp_1"
    assert caught.value.method == "GET"


def test_permanent_errors_not_transient() -> None:
    for error_class in (RequestRejected, AuthenticationFailed, ExportNotFound):
        assert not issubclass(error_class, TransientApiError)


def test_conflict_message_says_empty_body() -> None:
    with pytest.raises(Conflict, match="409 with an empty body"):
        get_canned(Canned(status=409, body=b""))


def test_unauthorized_message_names_variable() -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        get_canned(Canned(status=401, body=b'{"detail": "Invalid token."}'))

    assert "BUTTONDOWN_API_KEY" in str(caught.value)
    assert "test-key" not in str(caught.value)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("3", 3.0), ("-5", None), ("soon", None), (None, None)],
)
def test_rate_limited_reads_retry_after(
    retry_after: str | None, expected: float | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after

    with pytest.raises(RateLimited) as caught:
        get_canned(Canned(status=429, body=b'{"detail": "Slow"}', headers=headers))

    assert caught.value.retry_after == expected


def test_rate_limit_headers_tracked() -> None:
    reset = str(int(time.time()) + 30)
    headers = {
        "Content-Type": "application/json",
        "X-RateLimit-Limit": "600",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": reset,
    }
    canned = Canned(body=EXPORT % b"ready", headers=headers)
    with (
        serve({"/v1/exports/exp_1": canned}) as stub,
        client_for(f"{stub.url}/v1") as client,
    ):
        client.get_export("exp_1")

    assert 25 < client.rate_limits.wait_time() <= 30


def test_sends_newsletter_context() -> None:
    canned = Canned(body=EXPORT % b"ready")
    with (
        serve({"/v1/exports/exp_1": canned}) as stub,
        ExportsClient(
            api_url=f"{stub.url}/v1", api_key="k", newsletter_id="nl_123"
        ) as client,
    ):
        client.get_export("exp_1")

    _, _, headers = stub.requests[0]
    assert headers["Buttondown-Context"] == "nl_123"


def test_read_timeout_is_transient() -> None:
    with SandboxServer(events=1, faults=["timeout"], slow_seconds=2) as server:
        timeout = httpx.Timeout(5, read=0.3)
        client = ExportsClient(api_url=server.api_url, api_key="k", timeout=timeout)
        with client, pytest.raises(ApiUnreachable, match="timed out"):
            client.create_export(["events"])


@pytest.mark.parametrize(
    "body",
    [
        b'{"detail": "API key test-key is not valid."}',
        b'{"code": "bad_key_test-key", "detail": "No."}',
        b"plain text mentioning test-key",
    ],
)
def test_echoed_key_not_in_error(body: bytes) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        get_canned(Canned(status=401, body=body))

    assert "test-key" not in str(caught.value)
    assert "test-key" not in str(caught.value.code)
    assert "test-key" not in str(caught.value.detail)


def test_huge_body_stops_reading() -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)
    with pytest.raises(InvalidResponse, match="stopped reading"):
        get_canned(Canned(status=400, body=body))


def test_export_id_quoted_into_path() -> None:
    with (
        serve({}) as stub,
        client_for(f"{stub.url}/v1") as client,
        pytest.raises(ExportNotFound),
    ):
        client.get_export("../../admin?x=1")

    _, path, _ = stub.requests[0]
    assert path == "/v1/exports/..%2F..%2Fadmin%3Fx%3D1"


def test_redirect_names_location() -> None:
    location = {"Location": "https://api.example/v1/exports/exp_1"}
    with pytest.raises(ApiError, match=r"redirecting to https://api\.example/v1"):
        get_canned(Canned(status=301, headers=location))


def test_next_link_loop_detected() -> None:
    with serve({}) as stub:
        loop = f'{{"results": [], "count": 1, "next": "{stub.url}/v1/exports"}}'
        stub.routes["/v1/exports"] = Canned(body=loop.encode())
        with (
            client_for(f"{stub.url}/v1") as client,
            pytest.raises(InvalidResponse, match="already read"),
        ):
            list(client.list_exports())

    assert len(stub.requests) == 1
