"""Settings read from environment variables and checked at start.

Every setting has an environment variable. ``Settings.from_env`` reads them
all at once and raises ``ConfigurationError`` naming the variable, the value
and the fix, so that a bad deployment fails at start instead of mid-run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sentry_sdk.utils import BadDsn, Dsn

from processor.errors import ConfigurationError
from processor.limits import MAX_FIELD_SIZE_LIMIT, ParseLimits

DEFAULT_API_URL = "https://api.buttondown.com/v1"

# Upper bound of every duration setting, in seconds: one year. Larger values
# overflow datetime arithmetic and are typing mistakes in practice.
MAX_SECONDS = 365 * 24 * 3600

# Runs after an email is sent: opens and clicks keep arriving for days.
DEFAULT_WEBHOOK_RUN_DELAYS = (3600.0, 86400.0, 3 * 86400.0)

# Buttondown retries a failed delivery up to 5 times about 5 minutes apart,
# so a delivery id can come back for about 25 minutes. The dedupe window must
# outlast that span.
MIN_DEDUPE_WINDOW = 1800.0

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Runtime settings of the processor, one field per environment variable."""

    api_key: str | None = None
    api_url: str = DEFAULT_API_URL
    api_version: str | None = None
    newsletter_id: str | None = None
    redis_url: str | None = None
    sentry_dsn: str | None = None
    state_dir: Path = Path(".processor")
    poll_min_delay: float = 2.0
    poll_max_delay: float = 60.0
    poll_deadline: float = 3600.0
    http_timeout: float = 30.0
    connect_timeout: float = 10.0
    download_deadline: float = 3600.0
    max_download_bytes: int = 10 * 1024**3
    max_retries: int = 8
    retry_min_delay: float = 1.0
    retry_max_delay: float = 60.0
    max_retry_after: float = 300.0
    stuck_after: float = 900.0
    parse_limits: ParseLimits = dataclasses.field(default_factory=ParseLimits)
    plugins_enabled: frozenset[str] | None = None
    plugins_disabled: frozenset[str] = frozenset()
    plugin_attempts: int = 4
    plugin_stall_after: float = 60.0
    plugin_config_file: Path | None = None
    webhook_signing_key: str | None = None
    webhook_run_delays: tuple[float, ...] = DEFAULT_WEBHOOK_RUN_DELAYS
    webhook_coalesce_window: float = 600.0
    webhook_dedupe_window: float = 86400.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings from ``environ`` (``os.environ``)."""
        env = os.environ if environ is None else environ

        settings = cls(
            api_key=_header_value(env, "BUTTONDOWN_API_KEY", secret=True),
            api_url=_api_url(env.get("BUTTONDOWN_API_URL") or DEFAULT_API_URL),
            api_version=_header_value(env, "BUTTONDOWN_API_VERSION"),
            newsletter_id=_header_value(env, "BUTTONDOWN_NEWSLETTER_ID"),
            redis_url=_redis_url(_optional(env, "REDIS_URL")),
            sentry_dsn=_sentry_dsn(_optional(env, "SENTRY_DSN")),
            state_dir=_state_dir(env),
            poll_min_delay=_seconds(env, "PROCESSOR_POLL_MIN_DELAY", 2.0),
            poll_max_delay=_seconds(env, "PROCESSOR_POLL_MAX_DELAY", 60.0),
            poll_deadline=_seconds(env, "PROCESSOR_POLL_DEADLINE", 3600.0),
            http_timeout=_seconds(env, "PROCESSOR_HTTP_TIMEOUT", 30.0),
            connect_timeout=_seconds(env, "PROCESSOR_CONNECT_TIMEOUT", 10.0),
            download_deadline=_seconds(env, "PROCESSOR_DOWNLOAD_DEADLINE", 3600.0),
            max_download_bytes=_count(
                env, "PROCESSOR_MAX_DOWNLOAD_BYTES", 10 * 1024**3, minimum=1
            ),
            max_retries=_count(env, "PROCESSOR_MAX_RETRIES", 8, minimum=0),
            retry_min_delay=_seconds(env, "PROCESSOR_RETRY_MIN_DELAY", 1.0),
            retry_max_delay=_seconds(env, "PROCESSOR_RETRY_MAX_DELAY", 60.0),
            max_retry_after=_seconds(env, "PROCESSOR_MAX_RETRY_AFTER", 300.0),
            stuck_after=_seconds(env, "PROCESSOR_STUCK_AFTER", 900.0),
            parse_limits=_parse_limits(env),
            plugins_enabled=_names(env, "PROCESSOR_PLUGINS"),
            plugins_disabled=_names(env, "PROCESSOR_DISABLED_PLUGINS") or frozenset(),
            plugin_attempts=_count(env, "PROCESSOR_PLUGIN_RETRIES", 4, minimum=1),
            plugin_stall_after=_seconds(env, "PROCESSOR_PLUGIN_TIMEOUT", 60.0),
            plugin_config_file=_config_file(env),
            webhook_signing_key=_optional(env, "BUTTONDOWN_WEBHOOK_SIGNING_KEY"),
            webhook_run_delays=_durations(
                env, "PROCESSOR_WEBHOOK_RUN_DELAYS", DEFAULT_WEBHOOK_RUN_DELAYS
            ),
            webhook_coalesce_window=_seconds(
                env, "PROCESSOR_WEBHOOK_COALESCE_WINDOW", 600.0
            ),
            webhook_dedupe_window=_dedupe_window(env),
        )

        _check_order(
            "PROCESSOR_POLL_MIN_DELAY",
            settings.poll_min_delay,
            "PROCESSOR_POLL_MAX_DELAY",
            settings.poll_max_delay,
        )
        _check_order(
            "PROCESSOR_RETRY_MIN_DELAY",
            settings.retry_min_delay,
            "PROCESSOR_RETRY_MAX_DELAY",
            settings.retry_max_delay,
        )
        return settings

    def http_timeouts(self) -> httpx.Timeout:
        """Return the connect, read, write and pool timeouts of API requests."""
        return httpx.Timeout(
            connect=self.connect_timeout,
            read=self.http_timeout,
            write=self.http_timeout,
            pool=self.connect_timeout,
        )

    def rejects_path(self, run_id: str) -> Path:
        """Return the path of the rejects file of run ``run_id``."""
        return self.state_dir / "rejects" / f"{run_id}.jsonl"

    def require_api_key(self) -> str:
        """Return the API key, or raise when it is not set."""
        if not self.api_key:
            raise ConfigurationError(
                "BUTTONDOWN_API_KEY is not set; copy the key from Buttondown's "
                "settings page (Settings > API) into BUTTONDOWN_API_KEY, or run "
                "with --sandbox to use the local sandbox API."
            )
        return self.api_key

    def replace(self, **changes: object) -> Settings:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _parse_limits(env: Mapping[str, str]) -> ParseLimits:
    default = ParseLimits()
    limits = ParseLimits(
        max_uncompressed_bytes=_count(
            env,
            "PROCESSOR_MAX_UNCOMPRESSED_BYTES",
            default.max_uncompressed_bytes,
            minimum=1,
        ),
        max_compression_ratio=_count(
            env,
            "PROCESSOR_MAX_COMPRESSION_RATIO",
            default.max_compression_ratio,
            minimum=1,
        ),
        max_members=_count(
            env, "PROCESSOR_MAX_ARCHIVE_MEMBERS", default.max_members, minimum=1
        ),
        max_field_size=_count(
            env, "PROCESSOR_MAX_FIELD_SIZE", default.max_field_size, minimum=1024
        ),
    )
    if limits.max_field_size > MAX_FIELD_SIZE_LIMIT:
        raise ConfigurationError(
            f"PROCESSOR_MAX_FIELD_SIZE is {limits.max_field_size}, more than the "
            f"{MAX_FIELD_SIZE_LIMIT} allowed; set it to {MAX_FIELD_SIZE_LIMIT} "
            f"or less, such as {default.max_field_size}."
        )
    return limits


def _names(env: Mapping[str, str], name: str) -> frozenset[str] | None:
    """Read a comma-separated list of plugin names; ``None`` when unset."""
    value = _optional(env, name)
    if value is None:
        return None
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def _config_file(env: Mapping[str, str]) -> Path | None:
    value = _optional(env, "PROCESSOR_PLUGIN_CONFIG")
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigurationError(
            f"PROCESSOR_PLUGIN_CONFIG is {value!r}, which is not a file; point it "
            "at a TOML file with one [plugins.NAME] table per plugin, or unset it."
        )
    return path


def _durations(
    env: Mapping[str, str], name: str, default: tuple[float, ...]
) -> tuple[float, ...]:
    """Read a comma-separated list of durations such as ``1h,1d,3d``."""
    value = _optional(env, name)
    if value is None:
        return default

    durations = set()
    for part in value.split(","):
        text = part.strip().lower()
        unit = _DURATION_UNITS.get(text[-1:], 0)
        number = text[:-1] if unit else text
        try:
            seconds = float(number) * (unit or 1)
        except ValueError:
            raise ConfigurationError(
                f"{name} has {part.strip()!r}, which is not a duration; list "
                "durations such as 1h,1d,3d (units s, m, h and d; a bare "
                "number is seconds)."
            ) from None
        if not 0 < seconds <= MAX_SECONDS:
            raise ConfigurationError(
                f"{name} has {part.strip()!r}; each duration must be above 0 "
                "and at most 365d, such as 1h,1d,3d."
            )
        durations.add(seconds)
    return tuple(sorted(durations))


def check_signing_key(key: str) -> None:
    """Raise ``ConfigurationError`` unless ``key`` can key an HMAC.

    Only ``processor web`` uses the key, so only it checks the key, and a
    stray character stops no other command.
    """
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        usable = False
    else:
        usable = key.isprintable()
    if not usable:
        # The key is secret, so its value is not shown.
        raise ConfigurationError(
            "BUTTONDOWN_WEBHOOK_SIGNING_KEY contains a control character or "
            "bytes that are not UTF-8; copy the signing key from the webhook's "
            "settings in Buttondown again, without stray characters."
        )


def _dedupe_window(env: Mapping[str, str]) -> float:
    seconds = _seconds(env, "PROCESSOR_WEBHOOK_DEDUPE_WINDOW", 86400.0)
    if seconds < MIN_DEDUPE_WINDOW:
        raise ConfigurationError(
            f"PROCESSOR_WEBHOOK_DEDUPE_WINDOW is {seconds:g} seconds, shorter "
            "than the 25 minutes over which Buttondown retries a delivery; set "
            f"it to {MIN_DEDUPE_WINDOW:g} or more, such as 86400 (a day)."
        )
    return seconds


def _check_order(low_name: str, low: float, high_name: str, high: float) -> None:
    if low > high:
        raise ConfigurationError(
            f"{low_name} ({low:g}) is larger than {high_name} ({high:g}); set "
            "the minimum at or below the maximum."
        )


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _header_value(
    env: Mapping[str, str], name: str, *, secret: bool = False
) -> str | None:
    """Read a value sent as an HTTP header: printable ASCII, no spaces."""
    value = _optional(env, name)
    if value is None:
        return None

    if not all("!" <= character <= "~" for character in value):
        shown = "its value" if secret else repr(value)
        raise ConfigurationError(
            f"{name} contains a space, a control character or a non-ASCII "
            f"character, so it cannot be sent in an HTTP header; check {shown} "
            "for a stray newline or quote from copying."
        )
    return value


def _api_url(value: str) -> str:
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - reading it raises ValueError on a bad port
    except ValueError as error:
        raise ConfigurationError(
            f"BUTTONDOWN_API_URL {value!r} is not a valid URL ({error}); set it "
            f"to {DEFAULT_API_URL} or leave it unset."
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"BUTTONDOWN_API_URL {value!r} is not an http(s) URL; set it to "
            f"{DEFAULT_API_URL} or leave it unset."
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"BUTTONDOWN_API_URL {value!r} has a query or fragment; set it to "
            f"the API root only, such as {DEFAULT_API_URL}."
        )
    return value.strip().rstrip("/")


def _redis_url(value: str | None) -> str | None:
    if value is None:
        return None

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - reading it raises ValueError on a bad port
    except ValueError:
        # The value may hold a password, so it is not shown.
        raise ConfigurationError(
            "REDIS_URL is not a valid URL (check its host and port); use "
            "redis://HOST:PORT/DB, such as redis://127.0.0.1:6379/0."
        ) from None
    scheme = parts.scheme
    if scheme not in ("redis", "rediss", "unix"):
        # The value may hold a password, so only the scheme is shown.
        raise ConfigurationError(
            f"REDIS_URL has the scheme {scheme!r}; use redis://, rediss:// or "
            "unix://, or unset REDIS_URL to run on the embedded broker."
        )
    return value


def _sentry_dsn(value: str | None) -> str | None:
    if value is None:
        return None

    try:
        Dsn(value)
    except BadDsn as error:
        raise ConfigurationError(
            f"SENTRY_DSN is not a valid Sentry DSN ({error}); copy it from the "
            "project's Client Keys page in Sentry, or unset it."
        ) from None
    return value


def _state_dir(env: Mapping[str, str]) -> Path:
    value = _optional(env, "PROCESSOR_STATE_DIR")
    if value is None:
        return Path(".processor")
    return Path(value).expanduser()


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = _optional(env, name)
    if value is None:
        return default

    try:
        seconds = float(value)
    except ValueError:
        raise ConfigurationError(
            f"{name} is {value!r}, not a number of seconds; set it to a number "
            f"such as {default:g}."
        ) from None

    if not 0 < seconds <= MAX_SECONDS:
        raise ConfigurationError(
            f"{name} is {value!r}; set it to a number of seconds above 0 and at "
            f"most {MAX_SECONDS:,} (a year), such as {default:g}."
        )
    return seconds


def _count(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    value = _optional(env, name)
    if value is None:
        return default

    try:
        count = int(value.replace("_", ""))
    except ValueError:
        raise ConfigurationError(
            f"{name} is {value!r}, not a whole number; set it to a number such "
            f"as {default}."
        ) from None

    if count < minimum:
        raise ConfigurationError(
            f"{name} is {value!r}; set it to {minimum} or more, such as {default}."
        )
    return count
