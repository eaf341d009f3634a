from __future__ import annotations

import gzip
import logging
import time
from pathlib import Path

import httpx
import pytest

from processor.download import (
    DownloadLimits,
    check_download_url,
    download,
    redact_url,
)
from processor.errors import (
    DownloadError,
    DownloadExpired,
    DownloadRejected,
    IncompleteDownload,
)
from processor.sandbox import SandboxServer
from tests.httpstub import Canned, serve

SIGNED = "?X-Amz-Credential=AKIA%2F20240101&X-Amz-Signature=abc123"


def test_download_from_sandbox(sandbox: SandboxServer, tmp_path: Path) -> None:
    headers = {"Authorization": "Token test-key"}
    created = httpx.post(
        f"{sandbox.api_url}/exports", json={"collections": ["events"]}, headers=headers
    ).json()
    for _ in range(2):
        export = httpx.get(
            f"{sandbox.api_url}/exports/{created['id']}", headers=headers
        ).json()

    path = download(export["url"], tmp_path / "downloads")

    assert path.exists()
    assert path.read_bytes()[:2] == b"PK"
    assert list((tmp_path / "downloads").glob("*.part")) == []


def test_no_authorization_header_sent(tmp_path: Path) -> None:
    with serve({f"/file.csv{SIGNED}": Canned(body=b"id\n1\n")}) as stub:
        download(f"{stub.url}/file.csv{SIGNED}", tmp_path)

    _, path, headers = stub.requests[0]
    assert "Authorization" not in headers
    assert path == f"/file.csv{SIGNED}"


def test_short_body_detected_and_removed(tmp_path: Path) -> None:
    canned = Canned(body=b"id\n1\n", headers={"Content-Length": "100"})
    with serve({"/file.csv": canned}) as stub, pytest.raises(DownloadError) as caught:
        download(f"{stub.url}/file.csv", tmp_path)

    assert "/file.csv" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_gzip_encoding_lands_decoded(tmp_path: Path) -> None:
    body = b"id,event_type\n1,opened\n"
    canned = Canned(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    with serve({"/file.csv": canned}) as stub:
        path = download(f"{stub.url}/file.csv", tmp_path)

    assert path.read_bytes() == body


def test_expired_url_error_hides_query(tmp_path: Path) -> None:
    with serve({}) as stub, pytest.raises(DownloadError) as caught:
        download(f"{stub.url}/file.csv{SIGNED}", tmp_path)

    assert "404" in str(caught.value)
    assert "abc123" not in str(caught.value)
    assert "AKIA" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "s3://buttondown/path-to-export",
        "http://example.com/export.zip",
        "ftp://127.0.0.1/export.zip",
        "file:///etc/passwd",
    ],
)
def test_unsupported_url_rejected(url: str) -> None:
    with pytest.raises(DownloadError, match="only https URLs"):
        check_download_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://bucket.s3.amazonaws.com/x.zip",
        "http://127.0.0.1:9000/x.zip",
        "http://[::1]/x",
    ],
)
def test_supported_url_accepted(url: str) -> None:
    check_download_url(url)


def test_redact_url_drops_query_and_userinfo() -> None:
    redacted = redact_url(
        f"https://user:pass@bucket.example:8443/path/export.zip{SIGNED}"
    )

    assert redacted == "https://bucket.example:8443/path/export.zip?..."


def test_url_escapes_sent_untouched(tmp_path: Path) -> None:
    query = "?X-Amz-Credential=A%2FB%2Bc&X-Amz-Signature=a%3Db"
    with serve({f"/dir%20name/file.csv{query}": Canned(body=b"id\n")}) as stub:
        download(f"{stub.url}/dir%20name/file.csv{query}", tmp_path)

    _, path, _ = stub.requests[0]
    assert path == f"/dir%20name/file.csv{query}"


def test_redirect_followed(tmp_path: Path) -> None:
    routes = {
        "/a": Canned(status=302, headers={"Location": "/b"}),
        "/b": Canned(body=b"id\n"),
    }
    with serve(routes) as stub:
        path = download(f"{stub.url}/a", tmp_path)

    assert path.read_bytes() == b"id\n"


def test_redirect_loop_rejected(tmp_path: Path) -> None:
    routes = {"/a": Canned(status=302, headers={"Location": "/a"})}
    with serve(routes) as stub, pytest.raises(DownloadRejected, match="redirected"):
        download(f"{stub.url}/a", tmp_path)


def test_redirect_to_public_http_rejected(tmp_path: Path) -> None:
    location = {"Location": "http://storage.invalid/export.zip"}
    routes = {"/a": Canned(status=302, headers=location)}
    with serve(routes) as stub, pytest.raises(DownloadRejected, match="only https"):
        download(f"{stub.url}/a", tmp_path)

    assert len(stub.requests) == 1


def test_content_length_over_limit_rejected(tmp_path: Path) -> None:
    limits = DownloadLimits(max_bytes=10)
    with (
        serve({"/f": Canned(body=b"x" * 11)}) as stub,
        pytest.raises(DownloadRejected, match="PROCESSOR_MAX_DOWNLOAD_BYTES"),
    ):
        download(f"{stub.url}/f", tmp_path, limits)

    assert list(tmp_path.iterdir()) == []


def test_streamed_size_over_limit_rejected(tmp_path: Path) -> None:
    body = gzip.compress(b"x" * 1000)
    canned = Canned(body=body, headers={"Content-Encoding": "gzip"})
    limits = DownloadLimits(max_bytes=500)
    with (
        serve({"/f": canned}) as stub,
        pytest.raises(DownloadRejected, match="passed the limit of 500 bytes"),
    ):
        download(f"{stub.url}/f", tmp_path, limits)

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (403, DownloadExpired),
        (404, DownloadExpired),
        (500, IncompleteDownload),
        (503, IncompleteDownload),
        (400, DownloadRejected),
    ],
)
def test_storage_status_maps_to_error(
    status: int, error_class: type[DownloadError], tmp_path: Path
) -> None:
    canned = Canned(status=status, body=b"<Error/>")
    with serve({"/f": canned}) as stub, pytest.raises(error_class):
        download(f"{stub.url}/f", tmp_path)


def test_trickle_stopped_by_deadline(tmp_path: Path) -> None:
    limits = DownloadLimits(deadline=1.0)
    with SandboxServer(events=50, polls_to_ready=0, faults=["trickle"]) as server:
        url = httpx.post(
            f"{server.api_url}/exports",
            json={"collections": ["events"]},
            headers={"Authorization": "Token k"},
        ).json()["url"]
        started = time.monotonic()
        with pytest.raises(IncompleteDownload, match="did not finish within 1"):
            download(url, tmp_path, limits)

    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []


def test_httpx_log_line_has_no_query(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    with serve({f"/file.csv{SIGNED}": Canned(body=b"id\n")}) as stub:
        download(f"{stub.url}/file.csv{SIGNED}", tmp_path)

    assert "X-Amz-Signature=[Filtered]" in caplog.text
    assert "abc123" not in caplog.text


def test_userinfo_url_rejected() -> None:
    with pytest.raises(DownloadRejected, match="user name or password"):
        check_download_url("https://user:pass@bucket.example/export.zip")


def test_gzip_cut_short_detected(tmp_path: Path) -> None:
    body = gzip.compress(b"id,event_type\n" + b"1,opened\n" * 5000)
    cut = body[: len(body) // 2]
    canned = Canned(body=cut, headers={"Content-Encoding": "gzip"})
    with (
        serve({"/f": canned}) as stub,
        pytest.raises(IncompleteDownload, match="ended inside its gzip stream"),
    ):
        download(f"{stub.url}/f", tmp_path)

    assert list(tmp_path.iterdir()) == []


def test_error_carries_url_and_status(tmp_path: Path) -> None:
    with serve({}) as stub, pytest.raises(DownloadExpired) as caught:
        download(f"{stub.url}/gone.zip{SIGNED}", tmp_path)

    assert caught.value.status == 404
    assert caught.value.url == f"{stub.url}/gone.zip?..."
