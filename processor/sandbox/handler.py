"""HTTP request handling of the sandbox: the ``/v1/`` API and the file host.

``SandboxHTTPServer`` carries the server's API, URL signer and faults, and
``SandboxRequestHandler`` turns each request into a response. The ``server``
module describes the endpoints.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import os
import re
import secrets
import shutil
import socket
import socketserver
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import msgspec

from processor.sandbox.api import ExportApi
from processor.sandbox.faults import (
    TRICKLE_INTERVAL_SECONDS,
    TRICKLE_MAX_SECONDS,
    Fault,
    FaultInjector,
    fault_response,
    low_remaining_headers,
)
from processor.sandbox.presign import UrlSigner, query_signature

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20

# /storage/ serves the file only when the redirect fault sends clients there.
_DOWNLOAD_PATH = re.compile(r"/(?P<host>downloads|storage)/(?P<id>[^/]+)/export\.zip")
_CHUNK_BYTES = 64 * 1024


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    api: ExportApi
    signer: UrlSigner
    faults: FaultInjector

    def __init__(self, host: str, port: int) -> None:
        if ipaddress.ip_address(host).version == 6:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), SandboxRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can send a
        # reverse DNS query. The sandbox needs no server name, so skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class SandboxRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SandboxHTTPServer
    # Headers and body go out in separate writes, which Nagle's algorithm
    # would delay on a keep-alive connection.
    disable_nagle_algorithm = True
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 30

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The query string is left out because a download URL's contains its
        # signature.
        path = urlsplit(self.path).path
        logger.debug("%s %s -> %s", self.command, path, code)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s: " + format, self.address_string(), *args)

    def _dispatch(self, method: str) -> None:
        self.server.faults.count_request()
        body = self._read_body()
        if body is None:
            return

        url = urlsplit(self.path)
        if url.path.startswith(("/downloads/", "/storage/")):
            self._download(method, url.path, url.query)
            return

        self._api(method, url.path, url.query, body)

    def _api(self, method: str, path: str, query: str, body: bytes) -> None:
        api = self.server.api
        faults = self.server.faults
        rate_headers = api.rate_limit.headers()

        fault = None
        if path.startswith("/v1/"):
            fault = faults.before_api(method, path, lambda: api.peek(method, path))
        if fault is not None:
            replacement = fault_response(fault, rate_headers)
            if replacement is not None:
                self._send(
                    replacement.status,
                    replacement.body,
                    replacement.headers,
                    content_type=None,
                )
                return

        response = api.handle(
            method, path, query, self.headers.get("Authorization"), body
        )
        faults.hand_out_urls(response, self.server.signer.sign)
        headers = rate_headers | response.headers
        if fault is None:
            faults.after_api(method, path, response)
        elif fault.name == "low-remaining":
            headers |= low_remaining_headers()
        encoded = msgspec.json.encode(response.body)

        if fault is not None and fault.name == "timeout":
            self._send_late(response.status, encoded, headers)
            return
        self._send(response.status, encoded, headers)

    def _send_late(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        # The request is processed before the wait, so a client that times
        # out and retries a create gets a second export, as it could on the
        # real API.
        self.server.faults.stopping.wait(self.server.faults.slow_seconds)
        try:
            self._send(status, body, headers)
        except (BrokenPipeError, ConnectionResetError) as error:
            self.close_connection = True
            logger.debug("Client left before the delayed response: %s", error)

    def _read_body(self) -> bytes | None:
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            detail = "Chunked request bodies are not supported; send Content-Length."
            self._send(411, msgspec.json.encode({"detail": detail}))
            return None

        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            detail = f"Content-Length must be from 0 to {MAX_BODY_BYTES} bytes."
            self._send(
                413 if length > 0 else 400, msgspec.json.encode({"detail": detail})
            )
            return None

        return self.rfile.read(length)

    def _download(self, method: str, path: str, query: str) -> None:
        faults = self.server.faults
        match = _DOWNLOAD_PATH.fullmatch(path)
        if match is None or (
            match["host"] == "storage" and "redirect" not in faults.enabled
        ):
            self._send_s3_error(404, "NoSuchKey", "The specified key does not exist.")
            return
        if method != "GET":
            self._send_s3_error(
                405, "MethodNotAllowed", "The specified method is not allowed."
            )
            return
        if "Authorization" in self.headers:
            self._send_s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                "parameter, Signature query string parameter or the Authorization "
                "header should be specified",
            )
            return

        signature = query_signature(query)
        if not signature:
            self._send_s3_error(403, "AccessDenied", "Access Denied")
            return
        if not self.server.signer.verify(match["id"], query):
            self._send_s3_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature "
                "you provided.",
            )
            return
        if faults.check_expired(match["id"], signature, method, path):
            self._send_s3_error(403, "AccessDenied", "Request has expired")
            return

        if match["host"] == "downloads" and faults.redirect(method, path):
            location = f"{self.server.signer.base_url}/storage/{match['id']}/export.zip"
            self._send(302, b"", {"Location": f"{location}?{query}"}, content_type=None)
            return

        self._send_file(method, path, match["id"])

    def _send_file(self, method: str, url_path: str, export_id: str) -> None:
        path = self.server.api.store.file_path(export_id)
        if not path.is_file():
            self._send_s3_error(404, "NoSuchKey", "The specified key does not exist.")
            return

        fault = self.server.faults.before_serving(method, url_path, export_id)
        encoding = None
        if fault is not None and fault.name == "gzip":
            path = _gzip_copy(path)
            encoding = "gzip"

        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            if encoding is not None:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(size))
            self.end_headers()

            try:
                self._send_body(file, size, fault)
            except (BrokenPipeError, ConnectionResetError) as error:
                self.close_connection = True
                logger.debug("Client closed the download of %s: %s", path.name, error)

    def _send_body(self, file: IO[bytes], size: int, fault: Fault | None) -> None:
        if fault is None or fault.name == "gzip":
            shutil.copyfileobj(file, self.wfile, _CHUNK_BYTES)
            return

        if fault.name == "corrupt":
            body = bytearray(file.read())
            body[len(body) // 2] ^= 0xFF
            self.wfile.write(body)
            return

        # truncate and trickle leave the body short and end the connection,
        # which is how the client learns that the body is incomplete.
        self.close_connection = True
        if fault.name == "truncate":
            self.wfile.write(file.read(size // 2))
            return

        deadline = time.monotonic() + TRICKLE_MAX_SECONDS
        for _ in range(size - 1):
            stopping = self.server.faults.stopping.wait(TRICKLE_INTERVAL_SECONDS)
            if stopping or time.monotonic() >= deadline:
                return
            self.wfile.write(file.read(1))

    def _send_s3_error(self, status: int, code: str, message: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )
        allow = {"Allow": "GET"} if status == 405 else {}
        self._send(status, body.encode(), allow, content_type="application/xml")

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str | None = "application/json",
    ) -> None:
        # content_type None leaves Content-Type to the given headers, if any.
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

        self.wfile.write(body)


def _gzip_copy(path: Path) -> Path:
    """Return a gzip copy of the file next to it, written on first use."""
    target = path.with_name(f"{path.name}.gz")
    if target.exists():
        return target

    # Concurrent writers each write their own temporary file, and the
    # rename replaces the target atomically with the same bytes.
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.gz.tmp")
    with (
        path.open("rb") as source,
        temporary.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as sink,
    ):
        shutil.copyfileobj(source, sink, _CHUNK_BYTES)
    os.replace(temporary, target)
    return target
