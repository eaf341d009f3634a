"""The exception tree of the processor.

Every error the processor raises on purpose derives from ``ProcessorError``:

    ProcessorError
    ├── ConfigurationError      an environment variable or option is invalid
    ├── ApiError                the Exports API answered with an error
    │   └── TransientApiError   a fault worth retrying (5xx, 429, timeouts)
    ├── DownloadError           the export file could not be downloaded
    ├── ParseError              the export file cannot be read at all
    └── PluginError             a plugin could not be loaded

A single bad row is not an exception: the parser counts it as rejected and
goes on.
"""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of every error the processor raises on purpose."""


class ConfigurationError(ProcessorError):
    """A setting is missing or invalid."""


class ApiError(ProcessorError):
    """The Exports API returned an error response.

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


class TransientApiError(ApiError):
    """An API failure that a later attempt may not hit."""


class DownloadError(ProcessorError):
    """The export file could not be downloaded whole."""


class ParseError(ProcessorError):
    """The export file is not in a format the parser reads."""


class PluginError(ProcessorError):
    """A plugin could not be loaded or set up."""
