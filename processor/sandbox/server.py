"""Local stand-in for Buttondown's Exports API, for demos and tests.

``SandboxServer`` serves on a loopback address only:

- ``POST /v1/exports``, ``GET /v1/exports?page=N`` and ``GET /v1/exports/{id}``,
  with Buttondown's request validation, error bodies and X-RateLimit headers.
  Every ``/v1/`` request needs ``Authorization: Token <api key>``.
- ``GET /downloads/{id}/export.zip?X-Amz-Algorithm=...&X-Amz-Signature=...``,
  a presigned download in the manner of S3, signed as ``presign`` describes.
  It needs no Authorization header and rejects any with 400 InvalidArgument,
  the error S3 returns for a presigned URL sent with an AWS Authorization
  header. The check also catches a client that would send its Buttondown API
  key to the file host.

An export's status moves one step per retrieve, from ``not_started`` through
``in_progress`` to ``ready`` at retrieve number ``polls_to_ready``. Then its
ZIP file is written to ``<data_dir>/<export id>.zip`` with one member per
collection, named ``<collection>.<format>``. The ``events`` member contains
``events`` generated rows, seeded with ``seed * 1_000_000 + n`` for the n-th
export created (n counts from 1) and limited to ``columns`` when given.
Every other collection gets an empty table: a CSV with the single header
``id``, or ``[]`` in JSON. The list endpoint returns the newest export first.

With ``ready_after`` set, an export turns ready that many seconds after it
is created, whatever the retrieves. With ``webhook_url`` set too, the
sandbox then POSTs a signed ``export.completed`` delivery there, as
``notify`` describes.

Differences from the real API: ``parameters`` is stored and returned but
filters nothing. The X-RateLimit headers count requests, but the sandbox
never responds with 429, and download URLs never expire, unless the faults
in ``faults`` are enabled.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import shutil
import tempfile
import threading
from collections.abc import Collection
from pathlib import Path
from types import TracebackType
from typing import Self

from processor.sandbox.api import ExportApi
from processor.sandbox.faults import FaultInjector
from processor.sandbox.handler import SandboxHTTPServer
from processor.sandbox.notify import WebhookNotifier
from processor.sandbox.presign import UrlSigner
from processor.sandbox.store import ExportStore

logger = logging.getLogger(__name__)

# How often the serving thread checks for stop(), which waits up to this long.
_SHUTDOWN_POLL_SECONDS = 0.05


class SandboxServer:
    """Buttondown-compatible Exports API server on a loopback address.

    The socket is bound when the object is created, so ``port`` is known at
    once. Call ``start()`` to serve in a background thread, or use the server
    as a context manager. ``stop()`` shuts it down and deletes the data
    directory if the server created it.

    ``faults`` enables faults by their names in ``FAULTS``, which the
    ``faults`` module describes. ``slow_seconds`` is the delay of the
    ``timeout`` fault. An unknown fault name raises ValueError.
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
        faults: Collection[str] = (),
        slow_seconds: float = 3.0,
        ready_after: float | None = None,
        webhook_url: str | None = None,
        webhook_key: str | None = None,
    ) -> None:
        host = _loopback_host(host)
        _check_settings(events, polls_to_ready, page_size, api_key)
        notifier = _notifier(ready_after, webhook_url, webhook_key)
        injector = FaultInjector(faults, slow_seconds=slow_seconds)

        self._httpd = SandboxHTTPServer(host, port)
        self._httpd.faults = injector
        self._httpd.signer = UrlSigner(secrets.token_bytes(32), self.base_url)

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
            download_url=self._httpd.signer.sign,
            ready_after=ready_after,
            on_finished=notifier.export_finished if notifier else None,
        )
        self._store = store
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

    @property
    def faults(self) -> tuple[str, ...]:
        """Names of the enabled faults, in ``FAULTS`` order."""
        return self._httpd.faults.enabled

    @property
    def requests(self) -> int:
        """Number of HTTP requests handled, API and downloads together."""
        return self._httpd.faults.requests

    @property
    def fault_log(self) -> list[tuple[str, str, str]]:
        """Copy of the (fault, method, path without query) of each fault fired."""
        return self._httpd.faults.fault_log

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
        self._log_start()

    def serve_forever(self) -> None:
        """Serve requests in this thread until interrupted, then clean up."""
        self._check_startable()
        self._log_start()
        try:
            self._httpd.serve_forever(poll_interval=_SHUTDOWN_POLL_SECONDS)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving, close the socket and delete a data dir of our own."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.faults.stopping.set()
        self._store.cancel_timers()

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

    def _log_start(self) -> None:
        logger.info("Sandbox Buttondown API is listening on %s.", self.api_url)
        enabled = self._httpd.faults.enabled
        if enabled:
            logger.info("Sandbox faults enabled: %s.", ", ".join(enabled))


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


def _notifier(
    ready_after: float | None, url: str | None, key: str | None
) -> WebhookNotifier | None:
    if ready_after is not None and ready_after < 0:
        raise ValueError(f"ready_after must be 0 or more, not {ready_after}")
    if url is None:
        return None
    if ready_after is None or not key:
        raise ValueError(
            "webhook_url needs ready_after, the seconds until an export turns "
            "ready, and webhook_key, the signing key"
        )
    return WebhookNotifier(url, key)


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
