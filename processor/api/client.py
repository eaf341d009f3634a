"""A synchronous client for the Exports API on httpx.

Every response is decoded into msgspec structs, and every failure raises a
branch of ``ApiError`` (see ``processor.errors``) that shows the caller
whether to retry. The client never sleeps and never retries by itself: the
actors turn a ``TransientApiError`` into a delayed message, so no worker
thread waits. The API key goes out only in the ``Authorization`` header of
requests to the configured API origin and never into a message or log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from processor import __version__
from processor.api.models import (
    ErrorBody,
    Export,
    ExportPage,
    ExportRequest,
    Subscriber,
)
from processor.api.ratelimit import RateLimitTracker, parse_retry_after
from processor.config import Settings
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
)
from processor.redact import install_log_redaction, redact_url, scrub_credentials

logger = logging.getLogger(__name__)
install_log_redaction()

T = TypeVar("T")

# A guard against a `next` link that points back at an earlier page.
MAX_PAGES = 10_000

# Largest response body read from the API. Export objects and list pages are
# a few kilobytes; anything near this is not a real API response.
MAX_BODY_BYTES = 8 * 1024 * 1024


class ExportsClient:
    """Create, retrieve and list exports, and read and tag subscribers.

    Use it as a context manager, or call ``close()``, so that its connection
    pool is released.
    """

    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        api_version: str | None = None,
        newsletter_id: str | None = None,
        timeout: httpx.Timeout | float = 30.0,
        rate_limits: RateLimitTracker | None = None,
    ) -> None:
        headers = {
            "Authorization": f"Token {api_key}",
            "Accept": "application/json",
            "User-Agent": f"buttondown-processor/{__version__}",
        }
        if api_version:
            headers["X-API-Version"] = api_version
        if newsletter_id:
            headers["Buttondown-Context"] = newsletter_id

        self.api_url = api_url.rstrip("/")
        self._secrets = (api_key,)
        self.rate_limits = rate_limits or RateLimitTracker()
        self._origin = _origin(self.api_url)
        self._http = httpx.Client(
            headers=headers,
            timeout=timeout
            if isinstance(timeout, httpx.Timeout)
            else httpx.Timeout(timeout),
            follow_redirects=False,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, rate_limits: RateLimitTracker | None = None
    ) -> ExportsClient:
        """Build a client from the processor's settings.

        Clients that share ``rate_limits`` share what the API reported about
        the account's rate-limit window.
        """
        return cls(
            api_url=settings.api_url,
            api_key=settings.require_api_key(),
            api_version=settings.api_version,
            newsletter_id=settings.newsletter_id,
            timeout=settings.http_timeouts(),
            rate_limits=rate_limits,
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
        content = msgspec.json.encode(body)
        return self._request("POST", "/exports", Export, content=content)

    def get_export(self, export_id: str) -> Export:
        """Retrieve one export by id."""
        # The id is quoted so that an odd id cannot change the request path.
        path = f"/exports/{quote(export_id, safe='')}"
        return self._request("GET", path, Export)

    def list_exports(self) -> Iterator[Export]:
        """Yield every export, following the ``next`` page links."""
        url: str | None = f"{self.api_url}/exports"
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            if url is None:
                return
            if url in seen:
                raise InvalidResponse(
                    f"GET /exports returned a next link to a page already read "
                    f"({_redact(url)}); stopping."
                )
            seen.add(url)

            page = self._request("GET", url, ExportPage)
            yield from page.results
            url = page.next

        raise ApiError(f"GET /exports returned more than {MAX_PAGES} pages; stopping.")

    def get_subscriber(self, id_or_email: str) -> Subscriber:
        """Retrieve one subscriber by id or email address."""
        return self._request("GET", _subscriber_path(id_or_email), Subscriber)

    def set_subscriber_tags(self, id_or_email: str, tags: list[str]) -> Subscriber:
        """Replace a subscriber's tags with ``tags`` and return the subscriber."""
        content = msgspec.json.encode({"tags": tags})
        path = _subscriber_path(id_or_email)
        return self._request("PATCH", path, Subscriber, content=content)

    def _request(self, method: str, target: str, model: type[T], **kwargs: Any) -> T:
        url = target if "://" in target else f"{self.api_url}{target}"
        path = _redact(url)
        if _origin(url) != self._origin:
            # The key must never reach another host, even through a `next` link.
            raise ApiError(
                f"{method} {path} is outside the API at {self._origin}; "
                "refusing to send the API key there.",
                method=method,
                path=path,
            )

        # NOTE: each read and write has a timeout, but a request as a whole
        # has no deadline, so a server trickling bytes can stretch one call.
        headers = {"Content-Type": "application/json"} if "content" in kwargs else None
        try:
            with self._http.stream(method, url, headers=headers, **kwargs) as response:
                content = _read_capped(response, method, path)
        except httpx.InvalidURL as error:
            raise ApiError(
                f"{method} {path} is not a valid request URL ({error}); check the "
                "export id.",
                method=method,
                path=path,
            ) from None
        except httpx.TimeoutException as error:
            raise ApiUnreachable(
                f"{method} {path} timed out ({type(error).__name__}).",
                method=method,
                path=path,
            ) from None
        except httpx.HTTPError as error:
            # httpx's text can quote a header value, the API key included.
            reason = scrub_credentials(str(error), self._secrets)
            raise ApiUnreachable(
                f"{method} {path} failed: {type(error).__name__}: {reason}.",
                method=method,
                path=path,
            ) from None

        self.rate_limits.observe(response.headers)
        logger.debug("%s %s returned %d", method, path, response.status_code)
        if response.is_success:
            return _decode(response, content, model, method, path)

        failure = _error_for(response, content, method, path, self._secrets)
        if isinstance(failure, RateLimited) and failure.retry_after is not None:
            self.rate_limits.block_for(failure.retry_after)
        raise failure


def _subscriber_path(id_or_email: str) -> str:
    # Quoted like an export id, so that an odd address cannot change the path.
    return f"/subscribers/{quote(id_or_email, safe='@')}"


def _read_capped(response: httpx.Response, method: str, path: str) -> bytes:
    chunks = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidResponse(
                f"{method} {path} returned {response.status_code} with a body "
                f"over {MAX_BODY_BYTES} bytes; stopped reading.",
                method=method,
                path=path,
                status=response.status_code,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(
    response: httpx.Response, content: bytes, model: type[T], method: str, path: str
) -> T:
    try:
        return msgspec.json.decode(content, type=model)
    except msgspec.DecodeError as error:
        raise InvalidResponse(
            f"{method} {path} returned {response.status_code} with a body that is "
            f"not a valid {model.__name__} ({error}): {_excerpt(content)}",
            method=method,
            path=path,
            status=response.status_code,
        ) from None


_ERROR_CLASSES: dict[int, type[ApiError]] = {
    400: RequestRejected,
    401: AuthenticationFailed,
    403: AuthenticationFailed,
    404: ExportNotFound,
    409: Conflict,
    422: RequestRejected,
    429: RateLimited,
}


def _error_for(
    response: httpx.Response,
    content: bytes,
    method: str,
    path: str,
    secrets: tuple[str, ...],
) -> ApiError:
    status = response.status_code
    code, detail = _error_fields(content)
    # A server may echo the key back, in any field.
    code = scrub_credentials(code, secrets) if code else code
    detail = scrub_credentials(detail, secrets) if detail else detail

    message = f"{method} {path} returned {status}"
    if code:
        message += f" ({code})"
    if detail:
        message += f": {detail}"
    elif content:
        message += f": {_excerpt(content, secrets)}"
    else:
        message += " with an empty body"
    if response.is_redirect:
        location = redact_url(response.headers.get("Location", ""))
        message += (
            f" redirecting to {location}; set BUTTONDOWN_API_URL to the API's "
            "current address"
        )
    advice = _advice(status)
    if advice:
        message = message.rstrip(".") + advice

    cls = ServerError if status >= 500 else _ERROR_CLASSES.get(status, ApiError)
    error = cls(
        message, method=method, path=path, status=status, code=code, detail=detail
    )
    if isinstance(error, RateLimited):
        retry_after = response.headers.get("Retry-After")
        error.retry_after = parse_retry_after(retry_after, time.time())
    return error


def _advice(status: int) -> str:
    if status == 401:
        return (
            ". The API key was not accepted: check that BUTTONDOWN_API_KEY holds "
            "a current key from Buttondown's API settings."
        )
    if status == 403:
        return (
            ". The key in BUTTONDOWN_API_KEY is wrong or lacks permission for "
            "this request: check the key's permissions, and "
            "BUTTONDOWN_NEWSLETTER_ID on accounts with several newsletters."
        )
    return ""


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
    """Return the path of ``url``, with ``?...`` in place of any query."""
    parts = urlsplit(url)
    return parts.path if not parts.query else f"{parts.path}?..."


def _excerpt(content: bytes, secrets: tuple[str, ...] = (), limit: int = 120) -> str:
    # The body may hold a presigned download URL, whose query is a credential,
    # so credentials are filtered before the text is cut to length.
    text = content[: limit * 32].decode("utf-8", errors="replace")
    text = scrub_credentials(" ".join(text.split()), secrets)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
