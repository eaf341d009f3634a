"""Routing, authentication and responses of the sandbox's ``/v1/`` endpoints.

``ExportApi.handle`` turns one request into an ``ApiResponse``. It never
touches the HTTP connection, which the server module handles.
"""

from __future__ import annotations

import hmac
import re
import threading
import time
from urllib.parse import parse_qs, unquote

from processor.sandbox.store import Export, ExportStore
from processor.sandbox.subscribers import SubscriberStore, handle_subscriber
from processor.sandbox.validation import ApiResponse, validate_export_request

# Requests a minute per account, as Buttondown documents.
RATE_LIMIT = 600

_EXPORT_PATH = re.compile(r"/v1/exports/(?P<id>[^/]+)/?")
_SUBSCRIBER_PATH = re.compile(r"/v1/subscribers/(?P<key>[^/]+)/?")


class RateLimitWindow:
    """Request counter for the X-RateLimit headers, one window per minute.

    The counter only reports. A request past the limit still succeeds.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._window_start = 0
        self._count = 0

    def headers(self) -> dict[str, str]:
        """Count one request and return the X-RateLimit headers for it."""
        now = int(time.time())
        with self._lock:
            if now - self._window_start >= 60:
                self._window_start = now - now % 60
                self._count = 0
            self._count += 1
            remaining = max(0, self.limit - self._count)
            reset = self._window_start + 60

        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        }


class ExportApi:
    """The Exports API of one sandbox server.

    ``api_key`` None accepts any non-empty token. ``api_url`` is the absolute
    base of the ``next`` and ``previous`` page links.
    """

    def __init__(
        self, store: ExportStore, *, api_key: str | None, page_size: int, api_url: str
    ) -> None:
        self.store = store
        self.api_key = api_key
        self.page_size = page_size
        self.api_url = api_url
        self.rate_limit = RateLimitWindow(RATE_LIMIT)
        self.subscribers = SubscriberStore()

    def handle(
        self, method: str, path: str, query: str, authorization: str | None, body: bytes
    ) -> ApiResponse:
        """Route one request and return its response."""
        if not path.startswith("/v1/"):
            return ApiResponse(404, {"detail": "Not found."})

        denied = self._authenticate(authorization)
        if denied is not None:
            return denied

        if path.rstrip("/") == "/v1/exports":
            if method == "GET":
                return self._list(query)
            if method == "POST":
                return self._create(body)
            return _method_not_allowed(method, "GET, POST")

        subscriber = _SUBSCRIBER_PATH.fullmatch(path)
        if subscriber is not None:
            key = unquote(subscriber["key"])
            return handle_subscriber(self.subscribers, method, key, body)

        match = _EXPORT_PATH.fullmatch(path)
        if match is None:
            return ApiResponse(404, {"detail": "Not found."})
        if method != "GET":
            return _method_not_allowed(method, "GET")
        return self._retrieve(match["id"])

    def peek(self, method: str, path: str) -> Export | None:
        """Return the export that a retrieve request names, without advancing it.

        Returns None for other requests and for an unknown export id.
        """
        match = _EXPORT_PATH.fullmatch(path)
        if method != "GET" or match is None:
            return None
        return self.store.peek(match["id"])

    def _authenticate(self, authorization: str | None) -> ApiResponse | None:
        if authorization is None:
            return _auth_error(401, "Authentication credentials were not provided.")

        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "token" or not token:
            return _auth_error(
                401,
                "Invalid Authorization header. Send 'Authorization: Token <api key>'.",
            )

        if self.api_key is None:
            return None
        if hmac.compare_digest(token.encode(), self.api_key.encode()):
            return None
        return _auth_error(403, "Invalid API key. Check the key in your settings.")

    def _create(self, body: bytes) -> ApiResponse:
        outcome = validate_export_request(body)
        if isinstance(outcome, ApiResponse):
            return outcome

        export = self.store.create(outcome)
        return ApiResponse(201, export)

    def _retrieve(self, export_id: str) -> ApiResponse:
        export = self.store.retrieve(export_id)
        if export is None:
            return ApiResponse(404, {"detail": "Not found."})
        return ApiResponse(200, export)

    def _list(self, query: str) -> ApiResponse:
        values = parse_qs(query).get("page", ["1"])
        try:
            number = int(values[-1])
        except ValueError:
            message = (
                "Input should be a valid integer, unable to parse string as an integer"
            )
            error = {"type": "int_parsing", "loc": ["query", "page"], "msg": message}
            return ApiResponse(422, {"detail": [error]})

        count, exports = self.store.page(number, self.page_size)
        last_page = max(1, -(-count // self.page_size))
        if not 1 <= number <= last_page:
            return ApiResponse(404, {"detail": "Invalid page."})

        page = {
            "results": exports,
            "count": count,
            "next": self._page_url(number + 1) if number < last_page else None,
            "previous": self._page_url(number - 1) if number > 1 else None,
        }
        return ApiResponse(200, page)

    def _page_url(self, number: int) -> str:
        return f"{self.api_url}/exports?page={number}"


def _auth_error(status: int, detail: str) -> ApiResponse:
    code = "unauthorized" if status == 401 else "forbidden"
    return ApiResponse(status, {"code": code, "detail": detail})


def _method_not_allowed(method: str, allowed: str) -> ApiResponse:
    detail = f'Method "{method}" not allowed.'
    return ApiResponse(405, {"detail": detail}, {"Allow": allowed})
