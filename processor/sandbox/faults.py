"""Fault injection for the sandbox server, chosen when the server is created.

``SandboxServer(faults=...)`` enables any of the faults in ``FAULTS``, so that
a client's handling of throttling, server errors, malformed bodies, timeouts
and broken downloads can be tested over real HTTP.

A limited fault fires on the first N requests that it applies to and never
again, so a client that retries correctly always finishes. For ``expire``,
retrying correctly means retrieving the export again for a new URL. N counts
per server unless it says per export. A request gets at most one fault,
because the faults are tried in the order of ``FAULTS`` and only the first
that applies and has not used up its N fires. Each firing is logged at INFO
and added to ``fault_log``.

API faults apply to any ``/v1/`` request. The first six replace the response,
and the request is not processed, so no export is created or advanced:

- ``rate-limit`` (N=2): 429 with ``Retry-After: 1``.
- ``rate-limit-date`` (N=1): 429 with ``Retry-After`` as an HTTP date at least
  2 seconds ahead.
- ``rate-limit-bad`` (N=4): 429 whose ``Retry-After`` is, in turn, missing,
  ``-5``, an HTTP date an hour in the past and ``soon``.
- ``server-errors`` (N=3): 500 with a JSON body, 502 with an HTML body, then
  503 with an HTML body and no X-RateLimit headers.
- ``conflict`` (N=2): 409 with an empty body.
- ``invalid-json`` (N=3): 200 with an HTML page, then ``{}``, then the export
  without its ``status`` field. The third firing waits for a retrieve of an
  existing export, which a client can make only after a successful create.

The next faults let the request be processed as usual:

- ``timeout`` (N=1): the response waits ``slow_seconds`` before its status line.
- ``low-remaining`` (N=2): ``X-RateLimit-Remaining: 0`` and
  ``X-RateLimit-Reset`` 2 seconds ahead, on the usual response.
- ``legacy-status`` (not limited): a retrieve or list response shows
  ``completed`` in place of ``ready``.
- ``unknown-status`` (N=1 per export): the first retrieve that reports
  ``in_progress`` or ``ready`` reports ``exporting_in_background`` instead.
  The export still advances, so the next retrieve reports the following step.

Every API response carries the X-RateLimit headers except the 503 above.

Download faults apply to the storage host, whose responses never carry
X-RateLimit headers:

- ``expire`` (once per export): every URL handed out for a ready export
  before the export's first download request is expired, as if the client
  had waited too long. Any request of such a URL gets S3's 403 ``Request has
  expired``. After the first, every create, retrieve or list response hands
  out a newly signed URL, and those handed out after the first download
  request work. So a client that downloads the URL from the retrieve that
  made the export ready, or from a retrieve just before the download, gets
  one 403 and succeeds after one more retrieve.
- ``truncate`` (N=1 per export): the headers give the full Content-Length,
  then half the body is sent and the connection closed.
- ``trickle`` (N=1 per export): after the headers, one byte of the body every
  0.25 s until the client disconnects, for at most 120 s. The last byte is
  never sent, so the body is never complete.
- ``gzip`` (not limited): the file is sent with ``Content-Encoding: gzip``
  whatever the request's Accept-Encoding, and Content-Length is the
  compressed size.
- ``redirect`` (not limited): ``/downloads/...`` answers 302 to
  ``/storage/<id>/export.zip`` with the same query, which serves the file.

- ``corrupt`` (N=1 per export): the whole body with its full Content-Length,
  but with one byte in the middle inverted, as a disk or proxy fault might
  leave it. Only the ZIP's CRC-32 check can tell.

``truncate``, ``trickle``, ``corrupt`` and ``gzip`` apply to the request that
would serve the file: a valid, unexpired ``/storage/`` URL when ``redirect``
is enabled, else a valid, unexpired ``/downloads/`` URL.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import msgspec

from processor.sandbox.presign import query_signature
from processor.sandbox.store import Export
from processor.sandbox.validation import ApiResponse

logger = logging.getLogger(__name__)

FAULTS = (
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

# Faults chosen before an API request is processed, in FAULTS order.
API_FAULTS = FAULTS[:8]
# Download faults chosen for a request that would serve the file.
SERVING_FAULTS = ("truncate", "trickle", "corrupt", "gzip")

# N of each limited fault. A fault missing here is not limited.
LIMITS = {
    "rate-limit": 2,
    "rate-limit-date": 1,
    "rate-limit-bad": 4,
    "server-errors": 3,
    "conflict": 2,
    "invalid-json": 3,
    "timeout": 1,
    "low-remaining": 2,
    "unknown-status": 1,
    "truncate": 1,
    "trickle": 1,
    "corrupt": 1,
}

TRICKLE_INTERVAL_SECONDS = 0.25
TRICKLE_MAX_SECONDS = 120.0

# Shaped like the pages of a reverse proxy and a single-page app, which a
# client can get in place of the API's JSON.
BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)
SERVICE_UNAVAILABLE_HTML = (
    "<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head>"
    "<body><h1>Service Unavailable</h1><p>The server is temporarily unable to "
    "handle the request. Try again later.</p></body></html>\n"
)
APP_PAGE_HTML = (
    "<!DOCTYPE html>\n<html><head><title>Buttondown</title></head>"
    '<body><div id="app"></div><noscript>Enable JavaScript to use '
    "Buttondown.</noscript></body></html>\n"
)

_JSON = "application/json"
_HTML = "text/html; charset=utf-8"


@dataclasses.dataclass(frozen=True)
class Fault:
    """A fault that fired on one request.

    ``index`` counts the fault's earlier firings in the same scope, from 0,
    and picks the response of faults that cycle through several. ``export``
    is the export that an ``invalid-json`` retrieve names.
    """

    name: str
    index: int
    export: Export | None = None


@dataclasses.dataclass(frozen=True)
class FaultResponse:
    """Status, body and headers of a response that replaces an API response.

    ``headers`` contains Content-Type when the body is not empty.
    """

    status: int
    body: bytes
    headers: dict[str, str]


class FaultInjector:
    """Enabled faults of one sandbox server, with their counters and log.

    The methods are thread-safe. ``stopping`` is set when the server stops,
    which ends the waits of ``timeout`` and ``trickle``.
    """

    def __init__(self, names: Collection[str], *, slow_seconds: float) -> None:
        self.enabled = _check_names(names)
        if not slow_seconds >= 0:
            raise ValueError(f"slow_seconds must be 0 or more, not {slow_seconds}")
        self.slow_seconds = slow_seconds
        self.stopping = threading.Event()

        self._lock = threading.Lock()
        self._requests = 0
        self._firings: dict[tuple[str, str], int] = {}
        self._log: list[tuple[str, str, str]] = []
        self._handed_out: set[str] = set()
        self._download_requested: set[str] = set()
        self._expired_signatures: set[str] = set()
        self._clean_next_api_request = False

    @property
    def requests(self) -> int:
        """Number of HTTP requests counted by ``count_request``."""
        with self._lock:
            return self._requests

    @property
    def fault_log(self) -> list[tuple[str, str, str]]:
        """Copy of the (fault, method, path without query) of each firing."""
        with self._lock:
            return list(self._log)

    def count_request(self) -> None:
        """Count one HTTP request."""
        with self._lock:
            self._requests += 1

    def before_api(
        self, method: str, path: str, peek: Callable[[], Export | None]
    ) -> Fault | None:
        """Fire the first API fault that applies to a ``/v1/`` request.

        ``peek`` returns the export that a retrieve request names, without
        advancing it, or None for other requests.
        """
        with self._lock:
            clean = self._clean_next_api_request
            self._clean_next_api_request = False
        if clean:
            return None

        retrieved = peek() if "invalid-json" in self.enabled else None

        def invalid_json_applies(index: int) -> bool:
            # The third response is the retrieved export without its status.
            return index < 2 or retrieved is not None

        for name in API_FAULTS:
            applies = invalid_json_applies if name == "invalid-json" else None
            fault = self._fire(name, "", method, path, applies)
            if fault is not None:
                self._space_after(fault)
                return dataclasses.replace(fault, export=retrieved)
        return None

    def _space_after(self, fault: Fault) -> None:
        # With several faults enabled, a clean request follows each faulted
        # one (within a 5xx burst, after the burst), so that the faults do
        # not pile up into one long outage that no retry budget outlasts.
        in_burst = (
            fault.name == "server-errors" and fault.index + 1 < LIMITS[fault.name]
        )
        if len(self.enabled) > 1 and not in_burst:
            with self._lock:
                self._clean_next_api_request = True

    def after_api(self, method: str, path: str, response: ApiResponse) -> None:
        """Fire ``legacy-status`` or ``unknown-status`` on a processed response.

        Changes the statuses in ``response.body`` in place.
        """
        if method != "GET" or response.status != 200:
            return
        exports = _exports_of(response.body)
        if not exports:
            return

        ready = [export for export in exports if export.status == "ready"]
        if ready and self._fire("legacy-status", "", method, path) is not None:
            for export in ready:
                export.status = "completed"
            return

        export = response.body
        if not isinstance(export, Export):
            return
        if export.status not in ("in_progress", "ready"):
            return
        if self._fire("unknown-status", export.id, method, path) is not None:
            export.status = "exporting_in_background"

    def hand_out_urls(self, response: ApiResponse, sign: Callable[[str], str]) -> None:
        """Apply ``expire`` to the download URLs in a processed API response.

        Replaces every URL after an export's first in ``response.body`` by a
        newly signed one. Records the URLs handed out before the export's
        first download request as expired.
        """
        if "expire" not in self.enabled:
            return

        for export in _exports_of(response.body):
            if export.status != "ready" or export.url is None:
                continue

            with self._lock:
                first = export.id not in self._handed_out
                self._handed_out.add(export.id)
            if not first:
                export.url = sign(export.id)

            with self._lock:
                if export.id not in self._download_requested:
                    self._expired_signatures.add(query_signature(export.url))

    def check_expired(
        self, export_id: str, signature: str, method: str, path: str
    ) -> bool:
        """Fire ``expire`` and return True if the signature's URL is expired.

        Call it for every download request with a valid signature, because
        the first one ends the export's handing out of expired URLs.
        """
        with self._lock:
            self._download_requested.add(export_id)
            expired = signature in self._expired_signatures
        if expired:
            self._fire("expire", signature, method, path)
        return expired

    def redirect(self, method: str, path: str) -> bool:
        """Fire ``redirect`` on a valid download request if it is enabled."""
        return self._fire("redirect", "", method, path) is not None

    def before_serving(self, method: str, path: str, export_id: str) -> Fault | None:
        """Fire the first download fault that applies to serving the file."""
        for name in SERVING_FAULTS:
            fault = self._fire(name, export_id, method, path)
            if fault is not None:
                return fault
        return None

    def _fire(
        self,
        name: str,
        scope: str,
        method: str,
        path: str,
        applies: Callable[[int], bool] | None = None,
    ) -> Fault | None:
        # scope is "" for faults limited per server, or else the export id.
        # applies returns whether the firing with the given index fits the
        # request.
        if name not in self.enabled:
            return None

        limit = LIMITS.get(name)
        with self._lock:
            index = self._firings.get((name, scope), 0)
            if limit is not None and index >= limit:
                return None
            if applies is not None and not applies(index):
                return None
            self._firings[(name, scope)] = index + 1
            self._log.append((name, method, path))

        logger.info("Injected fault %s into %s %s.", name, method, path)
        return Fault(name, index)


def fault_response(fault: Fault, rate_headers: dict[str, str]) -> FaultResponse | None:
    """Build the response that replaces an API response, if the fault does.

    ``rate_headers`` are the request's X-RateLimit headers. Returns None for
    faults that let the request be processed.
    """
    now = time.time()

    if fault.name == "rate-limit":
        return _throttled(rate_headers, "1", 1)

    if fault.name == "rate-limit-date":
        # An HTTP date has whole seconds, so round up to keep the full 2 s.
        retry_at = _http_date(math.ceil(now) + 2)
        return _throttled(rate_headers, retry_at, 2)

    if fault.name == "rate-limit-bad":
        retry_after = (None, "-5", _http_date(now - 3600), "soon")[fault.index]
        return _throttled(rate_headers, retry_after, None)

    if fault.name == "server-errors":
        return _server_error(fault.index, rate_headers)

    if fault.name == "conflict":
        return FaultResponse(409, b"", dict(rate_headers))

    if fault.name == "invalid-json":
        return _invalid_json(fault, rate_headers)

    return None


def low_remaining_headers() -> dict[str, str]:
    """Return the X-RateLimit headers of the ``low-remaining`` fault."""
    return {
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(time.time()) + 2),
    }


def _check_names(names: Collection[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise ValueError(
            f"faults must be a collection of fault names, not the string {names!r}"
        )

    unknown = [name for name in names if name not in FAULTS]
    if unknown:
        raise ValueError(
            f"Unknown fault {unknown[0]!r}. Valid faults are {', '.join(FAULTS)}."
        )
    return tuple(name for name in FAULTS if name in names)


def _exports_of(body: Any) -> list[Export]:
    if isinstance(body, Export):
        return [body]
    if isinstance(body, dict) and isinstance(body.get("results"), list):
        return [item for item in body["results"] if isinstance(item, Export)]
    return []


def _throttled(
    rate_headers: dict[str, str], retry_after: str | None, wait: int | None
) -> FaultResponse:
    # The message of Django REST framework's Throttled exception.
    detail = "Request was throttled."
    if wait is not None:
        unit = "second" if wait == 1 else "seconds"
        detail += f" Expected available in {wait} {unit}."

    headers = dict(rate_headers)
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return _json_response(429, {"detail": detail}, headers)


def _server_error(index: int, rate_headers: dict[str, str]) -> FaultResponse:
    if index == 0:
        body = {"detail": "Internal server error"}
        return _json_response(500, body, dict(rate_headers))

    if index == 1:
        headers = {"Content-Type": _HTML, **rate_headers}
        return FaultResponse(502, BAD_GATEWAY_HTML.encode(), headers)

    headers = {"Content-Type": _HTML}
    return FaultResponse(503, SERVICE_UNAVAILABLE_HTML.encode(), headers)


def _invalid_json(fault: Fault, rate_headers: dict[str, str]) -> FaultResponse:
    if fault.index == 0:
        headers = {"Content-Type": _HTML, **rate_headers}
        return FaultResponse(200, APP_PAGE_HTML.encode(), headers)

    body: dict[str, Any] = {}
    if fault.index == 2 and fault.export is not None:
        body = msgspec.to_builtins(fault.export)
        del body["status"]
    return _json_response(200, body, dict(rate_headers))


def _json_response(
    status: int, body: dict[str, Any], headers: dict[str, str]
) -> FaultResponse:
    headers = {"Content-Type": _JSON, **headers}
    return FaultResponse(status, msgspec.json.encode(body), headers)


def _http_date(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, UTC), usegmt=True)


def polls_to_ready_for(faults: Collection[str], base: int = 2) -> int:
    """Return how many retrieves an export should take with ``faults`` on.

    A clean request follows each faulted one, so every enabled fault gets a
    retrieve of its own to fire on before the export turns ready.
    """
    return base + 2 * len(faults)
