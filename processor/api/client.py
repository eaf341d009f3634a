"""A synchronous client for the Exports API on httpx.

Every response is decoded into msgspec structs. Failures raise ``ApiError``,
or ``TransientApiError`` for faults a later attempt may not hit (5xx, 429,
timeouts, connection errors, a 200 whose body is not the expected JSON). The
API key goes out only in the ``Authorization`` header of requests to the
configured API origin and never into a message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from processor import __version__
from processor.api.models import ErrorBody, Export, ExportPage, ExportRequest
from processor.config import Settings
from processor.errors import ApiError, TransientApiError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A guard against a `next` link that points back at an earlier page.
MAX_PAGES = 10_000


class ExportsClient:
    """Create, retrieve and list exports.

    Use it as a context manager, or call ``close()``, so that its connection
    pool is released.
    """

    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        api_version: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {
            "Authorization": f"Token {api_key}",
            "Accept": "application/json",
            "User-Agent": f"buttondown-processor/{__version__}",
        }
        if api_version:
            headers["X-API-Version"] = api_version

        self.api_url = api_url.rstrip("/")
        self._origin = _origin(self.api_url)
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportsClient:
        """Build a client from the processor's settings."""
        return cls(
            api_url=settings.api_url,
            api_key=settings.require_api_key(),
            api_version=settings.api_version,
            timeout=settings.http_timeout,
        )

    def __enter__(self) -> ExportsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def create_export(
        self,
        collections: list[str],
        *,
        export_format: str = "csv",
        parameters: dict[str, Any] | None = None,
        columns: list[str] | None = None,
    ) -> Export:
        """Request a new export of ``collections`` and return it."""
        body = ExportRequest(
            collections=collections,
            format=export_format,
            parameters=parameters,
            columns=columns,
        )
        return self._request(
            "POST", "/exports", Export, content=msgspec.json.encode(body)
        )

    def get_export(self, export_id: str) -> Export:
        """Retrieve one export by id."""
        return self._request("GET", f"/exports/{export_id}", Export)

    def list_exports(self) -> Iterator[Export]:
        """Yield every export, following the ``next`` page links."""
        url: str | None = f"{self.api_url}/exports"
        for _ in range(MAX_PAGES):
            if url is None:
                return

            page = self._request("GET", url, ExportPage)
            yield from page.results
            url = page.next

        raise ApiError(f"GET /exports returned more than {MAX_PAGES} pages; stopping.")

    def _request(self, method: str, target: str, model: type[T], **kwargs: Any) -> T:
        url = target if "://" in target else f"{self.api_url}{target}"
        if _origin(url) != self._origin:
            # The key must never reach another host, even through a `next` link.
            raise ApiError(
                f"{method} {_redact(url)} is outside the API at {self._origin}; "
                "refusing to send the API key there.",
                method=method,
                path=_redact(url),
            )

        path = _redact(url)
        headers = {"Content-Type": "application/json"} if "content" in kwargs else None
        try:
            response = self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TimeoutException as error:
            raise TransientApiError(
                f"{method} {path} timed out ({type(error).__name__}).",
                method=method,
                path=path,
            ) from None
        except httpx.TransportError as error:
            raise TransientApiError(
                f"{method} {path} failed: {type(error).__name__}: {error}.",
                method=method,
                path=path,
            ) from None

        logger.debug("%s %s returned %d", method, path, response.status_code)
        if response.is_success:
            return _decode(response, model, method, path)
        raise _error_for(response, method, path)


def _decode(response: httpx.Response, model: type[T], method: str, path: str) -> T:
    try:
        return msgspec.json.decode(response.content, type=model)
    except msgspec.DecodeError as error:
        raise TransientApiError(
            f"{method} {path} returned {response.status_code} with a body that is "
            f"not a valid {model.__name__} ({error}): {_excerpt(response.content)}",
            method=method,
            path=path,
            status=response.status_code,
        ) from None


def _error_for(response: httpx.Response, method: str, path: str) -> ApiError:
    status = response.status_code
    code, detail = _error_fields(response.content)
    cls = TransientApiError if status == 429 or status >= 500 else ApiError

    message = f"{method} {path} returned {status}"
    if code:
        message += f" ({code})"
    if detail:
        message += f": {detail}"
    elif response.content:
        message += f": {_excerpt(response.content)}"

    if status in (401, 403):
        message += (
            ". Check that BUTTONDOWN_API_KEY holds a valid key with access to exports."
        )
    return cls(
        message, method=method, path=path, status=status, code=code, detail=detail
    )


def _error_fields(content: bytes) -> tuple[str | None, str | None]:
    try:
        body = msgspec.json.decode(content, type=ErrorBody)
    except msgspec.DecodeError:
        return None, None

    if isinstance(body.detail, list):
        items = [
            f"{'.'.join(str(part) for part in item.loc)}: {item.msg}"
            for item in body.detail
        ]
        return body.code, "; ".join(items)
    return body.code, body.detail


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _redact(url: str) -> str:
    """Return ``url`` without its query string, which may hold credentials."""
    parts = urlsplit(url)
    return parts.path if not parts.query else f"{parts.path}?..."


def _excerpt(content: bytes, limit: int = 120) -> str:
    text = content[:limit].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return repr(text + ("..." if len(content) > limit else ""))
