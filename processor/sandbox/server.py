"""Local stand-in for Buttondown's Exports API, for demos and tests.

``SandboxServer`` serves on a loopback address only:

- ``POST /v1/exports``, ``GET /v1/exports?page=N`` and ``GET /v1/exports/{id}``,
  with Buttondown's request validation, error bodies and X-RateLimit headers.
  Every ``/v1/`` request needs ``Authorization: Token <api key>``.
- ``GET /downloads/{id}/export.zip?X-Amz-Expires=3600&X-Amz-Signature=...``,
  a presigned download in the manner of S3. It needs no Authorization header
  and rejects any with 400 InvalidArgument, the error S3 returns for a
  presigned URL sent with an AWS Authorization header. The check also catches
  a client that would send its Buttondown API key to the file host.

An export's status moves one step per retrieve, from ``not_started`` through
``in_progress`` to ``ready`` at retrieve number ``polls_to_ready``. Then its
ZIP file is written to ``<data_dir>/<export id>.zip`` with one member per
collection, named ``<collection>.<format>``. The ``events`` member contains
``events`` generated rows, seeded with ``seed * 1_000_000 + n`` for the n-th
export created (n counts from 1) and limited to ``columns`` when given.
Every other collection gets an empty table: a CSV with the single header
``id``, or ``[]`` in JSON. The list endpoint returns the newest export first.

Differences from the real API: ``parameters`` is stored and returned but
filters nothing. The X-RateLimit headers count requests, but the sandbox
never responds with 429. Download URLs never expire.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import shutil
import socket
import socketserver
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import msgspec

from processor.sandbox.api import ExportApi
from processor.sandbox.store import ExportStore

logger = logging.getLogger(__name__)

DOWNLOAD_EXPIRES_SECONDS = 3600
MAX_BODY_BYTES = 1 << 20

_DOWNLOAD_PATH = re.compile(r"/downloads/(?P<id>[^/]+)/export\.zip")
_CHUNK_BYTES = 64 * 1024
# How often the serving thread checks for stop(), which waits up to this long.
_SHUTDOWN_POLL_SECONDS = 0.05


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    api: ExportApi
    signing_key: bytes

    def __init__(self, host: str, port: int) -> None:
        if ipaddress.ip_address(host).version == 6:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can send a
        # reverse DNS query. The sandbox needs no server name, so skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def sign(self, path: str) -> str:
        return hmac.new(self.signing_key, path.encode(), hashlib.sha256).hexdigest()


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
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
        body = self._read_body()
        if body is None:
            return

        url = urlsplit(self.path)
        if url.path.startswith("/downloads/"):
            self._download(method, url.path, url.query)
            return

        api = self.server.api
        response = api.handle(
            method, url.path, url.query, self.headers.get("Authorization"), body
        )
        headers = api.rate_limit.headers() | response.headers
        self._send(response.status, msgspec.json.encode(response.body), headers)

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
        match = _DOWNLOAD_PATH.fullmatch(path)
        if match is None:
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

        signature = parse_qs(query).get("X-Amz-Signature", [""])[-1]
        if not signature:
            self._send_s3_error(403, "AccessDenied", "Access Denied")
            return
        if not hmac.compare_digest(signature, self.server.sign(path)):
            self._send_s3_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature "
                "you provided.",
            )
            return

        self._send_file(self.server.api.store.file_path(match["id"]))

    def _send_file(self, path: Path) -> None:
        try:
            file = path.open("rb")
        except FileNotFoundError:
            self._send_s3_error(404, "NoSuchKey", "The specified key does not exist.")
            return

        with file:
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(size))
            self.end_headers()

            try:
                shutil.copyfileobj(file, self.wfile, _CHUNK_BYTES)
            except (BrokenPipeError, ConnectionResetError) as error:
                self.close_connection = True
                logger.debug("Client closed the download of %s: %s", path.name, error)

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
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

        self.wfile.write(body)


class SandboxServer:
    """Buttondown-compatible Exports API server on a loopback address.

    The socket is bound when the object is created, so ``port`` is known at
    once. Call ``start()`` to serve in a background thread, or use the server
    as a context manager. ``stop()`` shuts it down and deletes the data
    directory if the server created it.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        events: int = 10_000,
        polls_to_ready: int = 2,
        api_key: str | None = None,
        page_size: int = 20,
        data_dir: Path | None = None,
        seed: int = 0,
    ) -> None:
        host = _loopback_host(host)
        _check_settings(events, polls_to_ready, page_size, api_key)

        self._httpd = _HTTPServer(host, port)
        self._httpd.signing_key = secrets.token_bytes(32)

        self._own_data_dir = data_dir is None
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="buttondown-sandbox-"))
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir

        store = ExportStore(
            events=events,
            seed=seed,
            polls_to_ready=polls_to_ready,
            data_dir=data_dir,
            download_url=self._download_url,
        )
        self._httpd.api = ExportApi(
            store, api_key=api_key, page_size=page_size, api_url=self.api_url
        )
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        """TCP port the server listens on."""
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """Root URL, such as ``http://127.0.0.1:8000``."""
        host = str(self._httpd.server_address[0])
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        """API base URL to configure in place of ``https://api.buttondown.com/v1``."""
        return f"{self.base_url}/v1"

    def start(self) -> None:
        """Serve requests in a daemon thread and return.

        The socket listens from construction on, so requests succeed as soon
        as this returns.
        """
        self._check_startable()

        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_SECONDS},
            name="buttondown-sandbox",
            daemon=True,
        )
        self._thread.start()
        logger.info("Sandbox Buttondown API is listening on %s.", self.api_url)

    def serve_forever(self) -> None:
        """Serve requests in this thread until interrupted, then clean up."""
        self._check_startable()
        logger.info("Sandbox Buttondown API is listening on %s.", self.api_url)
        try:
            self._httpd.serve_forever(poll_interval=_SHUTDOWN_POLL_SECONDS)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving, close the socket and delete a data dir of our own."""
        if self._stopped:
            return
        self._stopped = True

        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        logger.info("Sandbox Buttondown API on %s stopped.", self.api_url)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _check_startable(self) -> None:
        if self._stopped:
            raise RuntimeError("The sandbox server is stopped; create a new one.")
        if self._thread is not None:
            raise RuntimeError("The sandbox server is already running.")

    def _download_url(self, export_id: str) -> str:
        path = f"/downloads/{export_id}/export.zip"
        signature = self._httpd.sign(path)
        return (
            f"{self.base_url}{path}?X-Amz-Expires={DOWNLOAD_EXPIRES_SECONDS}"
            f"&X-Amz-Signature={signature}"
        )


def _loopback_host(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"host {host!r} is not an IP address; use a loopback address "
            "such as 127.0.0.1"
        ) from None

    if not address.is_loopback:
        raise ValueError(
            f"host {host!r} is not a loopback address; the sandbox serves "
            "only on loopback, such as 127.0.0.1 or ::1"
        )
    return host


def _check_settings(
    events: int, polls_to_ready: int, page_size: int, api_key: str | None
) -> None:
    if events < 0:
        raise ValueError(f"events must be 0 or more, not {events}")
    if polls_to_ready < 0:
        raise ValueError(f"polls_to_ready must be 0 or more, not {polls_to_ready}")
    if page_size < 1:
        raise ValueError(f"page_size must be 1 or more, not {page_size}")
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key must not be empty; pass None to accept any key")
