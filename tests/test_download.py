from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from processor.download import check_download_url, download, redact_url
from processor.errors import DownloadError
from processor.sandbox import SandboxServer
from tests.httpstub import Canned, serve

SIGNED = "?X-Amz-Credential=AKIA%2F20240101&X-Amz-Signature=abc123"


def test_download_from_sandbox(sandbox: SandboxServer, tmp_path: Path) -> None:
    import httpx

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
