"""The exception tree of the processor.

Every error the processor raises on purpose derives from ``ProcessorError``:

    ProcessorError
    ├── ConfigurationError          a setting is missing or invalid
    ├── ApiError                    the Exports API failed a request
    │   ├── RequestRejected         400 or 422: the request itself is invalid
    │   ├── AuthenticationFailed    401 or 403: the key is wrong or lacks access
    │   ├── ExportNotFound          404 on an export id
    │   └── TransientApiError       worth retrying with backoff
    │       ├── RateLimited         429, with the wait the server asked for
    │       ├── Conflict            409
    │       ├── ServerError         5xx
    │       ├── ApiUnreachable      connection error or timeout
    │       └── InvalidResponse     a 2xx whose body is not the expected JSON
    ├── DownloadError               the export file could not be downloaded
    │   ├── DownloadRejected        the URL or the file breaks a rule; no retry
    │   ├── DownloadExpired         403 or 404 from storage: fetch a fresh URL
    │   └── IncompleteDownload      cut short, timed out or a 5xx; retry
    ├── ParseError                  the export file cannot be read at all
    │   ├── DamagedFile             cut short, or a failed CRC-32 or size check
    │   └── LimitExceeded           too large, too compressed or too many members
    ├── PluginError                 a plugin could not be loaded
    ├── RunStopped                  the run ended elsewhere while it worked
    └── WebhookError                a webhook delivery was not accepted
        ├── WebhookRejected         a 4xx: bad signature, size or body
        └── BrokerUnavailable       503: Redis is unreachable; retry later

A single bad row is not an exception: the parser counts it as rejected and
goes on. No message in this tree contains the API key or a download URL's
query string.
"""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of every error the processor raises on purpose."""


class ConfigurationError(ProcessorError):
    """A setting is missing or invalid."""


class ApiError(ProcessorError):
    """The Exports API failed a request.

    ``method`` and ``path`` name the request (the path without its query),
    ``status`` is the HTTP status (``None`` when no response arrived), and
    ``code`` and ``detail`` are Buttondown's error fields where the body had
    them.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        path: str = "",
        status: int | None = None,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.detail = detail


class RequestRejected(ApiError):
    """The API rejected the request as invalid (400 or 422)."""


class AuthenticationFailed(ApiError):
    """The API key is invalid or lacks permission (401 or 403)."""


class ExportNotFound(ApiError):
    """The API has no export with the requested id (404)."""


class TransientApiError(ApiError):
    """An API failure that a later attempt may not hit."""


class RateLimited(TransientApiError):
    """The API throttled the request (429).

    ``retry_after`` is the wait in seconds that the ``Retry-After`` header
    asked for, or ``None`` when the header was missing or unusable.
    """

    retry_after: float | None = None


class Conflict(TransientApiError):
    """The API returned 409, whose meaning Buttondown does not document."""


class ServerError(TransientApiError):
    """The API failed with a 5xx status."""


class ApiUnreachable(TransientApiError):
    """No response arrived: a connection error or a timeout."""


class InvalidResponse(TransientApiError):
    """A successful status with a body that is not the expected JSON."""


class DownloadError(ProcessorError):
    """The export file could not be downloaded whole.

    ``url`` is the download URL without its query string, and ``status``
    the storage host's HTTP status (``None`` when no response arrived).
    """

    def __init__(self, message: str, *, url: str = "", status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class DownloadRejected(DownloadError):
    """The URL or the file breaks a rule, so retrying cannot help."""


class DownloadExpired(DownloadError):
    """Storage refused the URL (403 or 404); a fresh URL may work."""


class IncompleteDownload(DownloadError):
    """The download was cut short, timed out or met a 5xx; a retry may work."""


class ParseError(ProcessorError):
    """The export file cannot be read, or not all of it.

    ``events`` is the number of events read, and handed on, before the fault.
    """

    events: int = 0


class DamagedFile(ParseError):
    """The export file is cut short or corrupt; a fresh download may work."""


class LimitExceeded(ParseError):
    """The export file breaks a limit in ``ParseLimits``, as a ZIP bomb does."""


class PluginError(ProcessorError):
    """A plugin could not be loaded or set up."""


class RunStopped(ProcessorError):
    """The run was marked finished elsewhere, such as by ``processor run``
    on Ctrl-C, while an actor was still working on it."""


class WebhookError(ProcessorError):
    """A webhook delivery was not accepted.

    ``status`` is the HTTP status of the response, and the message is the
    short reason sent in its body.
    """

    status: int = 500
    # The delivery's id and type, when the body was read before the failure.
    delivery_id: str | None = None
    event_type: str | None = None

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class WebhookRejected(WebhookError):
    """The delivery is invalid (a 4xx); sending it again cannot help."""


class BrokerUnavailable(WebhookError):
    """Redis is unreachable, so the delivery cannot be recorded (503)."""

    def __init__(self, reason: str = "broker unavailable; retry later") -> None:
        super().__init__(503, reason)
