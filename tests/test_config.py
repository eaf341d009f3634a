from pathlib import Path

import pytest

from processor.config import DEFAULT_API_URL, Settings
from processor.errors import ConfigurationError


def test_defaults() -> None:
    settings = Settings.from_env({})

    assert settings.api_url == DEFAULT_API_URL
    assert settings.api_key is None
    assert settings.redis_url is None
    assert settings.sentry_dsn is None
    assert settings.api_version is None
    assert settings.state_dir == Path(".processor")


def test_reads_every_variable() -> None:
    settings = Settings.from_env(
        {
            "BUTTONDOWN_API_KEY": "key",
            "BUTTONDOWN_API_URL": "https://api.buttondown.email/v1/",
            "BUTTONDOWN_API_VERSION": "2026-04-01",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "SENTRY_DSN": "https://public@sentry.example/1",
            "PROCESSOR_STATE_DIR": "/var/lib/processor",
            "PROCESSOR_POLL_MIN_DELAY": "0.5",
            "PROCESSOR_POLL_MAX_DELAY": "30",
            "PROCESSOR_POLL_DEADLINE": "7200",
        }
    )

    assert settings.api_key == "key"
    assert settings.api_url == "https://api.buttondown.email/v1"
    assert settings.api_version == "2026-04-01"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.sentry_dsn == "https://public@sentry.example/1"
    assert settings.state_dir == Path("/var/lib/processor")
    assert settings.poll_min_delay == 0.5
    assert settings.poll_max_delay == 30
    assert settings.poll_deadline == 7200


def test_blank_values_are_unset() -> None:
    settings = Settings.from_env({"BUTTONDOWN_API_KEY": "  ", "REDIS_URL": ""})

    assert settings.api_key is None
    assert settings.redis_url is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BUTTONDOWN_API_URL", "ftp://api.buttondown.com", "BUTTONDOWN_API_URL 'ftp"),
        ("BUTTONDOWN_API_URL", "api.buttondown.com/v1", "not an http"),
        ("BUTTONDOWN_API_URL", "https://api.buttondown.com/v1?x=1", "query"),
        ("REDIS_URL", "http://127.0.0.1:6379", "scheme 'http'"),
        ("PROCESSOR_POLL_MIN_DELAY", "soon", "PROCESSOR_POLL_MIN_DELAY is 'soon'"),
        ("PROCESSOR_POLL_DEADLINE", "-5", "PROCESSOR_POLL_DEADLINE is '-5'"),
        ("PROCESSOR_POLL_MAX_DELAY", "nan", "PROCESSOR_POLL_MAX_DELAY is 'nan'"),
        ("PROCESSOR_POLL_MAX_DELAY", "1", "larger than PROCESSOR_POLL_MAX_DELAY"),
    ],
)
def test_invalid_value_named(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("?", r"\?")):
        Settings.from_env({name: value})


def test_redis_password_not_in_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"REDIS_URL": "http://user:hunter2@127.0.0.1:6379"})

    assert "hunter2" not in str(caught.value)


def test_missing_api_key_explains_fix() -> None:
    with pytest.raises(ConfigurationError, match="BUTTONDOWN_API_KEY is not set"):
        Settings.from_env({}).require_api_key()


def test_reads_fault_handling_variables() -> None:
    settings = Settings.from_env(
        {
            "BUTTONDOWN_NEWSLETTER_ID": "nl_123",
            "PROCESSOR_CONNECT_TIMEOUT": "5",
            "PROCESSOR_HTTP_TIMEOUT": "20",
            "PROCESSOR_DOWNLOAD_DEADLINE": "600",
            "PROCESSOR_MAX_DOWNLOAD_BYTES": "1_000_000",
            "PROCESSOR_MAX_RETRIES": "0",
            "PROCESSOR_RETRY_MIN_DELAY": "0.5",
            "PROCESSOR_RETRY_MAX_DELAY": "10",
            "PROCESSOR_MAX_RETRY_AFTER": "90",
        }
    )
    timeouts = settings.http_timeouts()

    assert settings.newsletter_id == "nl_123"
    assert timeouts.connect == 5
    assert timeouts.pool == 5
    assert timeouts.read == 20
    assert timeouts.write == 20
    assert settings.download_deadline == 600
    assert settings.max_download_bytes == 1_000_000
    assert settings.max_retries == 0
    assert settings.retry_min_delay == 0.5
    assert settings.retry_max_delay == 10
    assert settings.max_retry_after == 90


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PROCESSOR_MAX_RETRIES", "-1", "set it to 0 or more"),
        ("PROCESSOR_MAX_RETRIES", "many", "not a whole number"),
        ("PROCESSOR_MAX_DOWNLOAD_BYTES", "0", "set it to 1 or more"),
        ("PROCESSOR_MAX_DOWNLOAD_BYTES", "1.5e9", "not a whole number"),
        ("PROCESSOR_RETRY_MIN_DELAY", "100", "larger than PROCESSOR_RETRY_MAX_DELAY"),
    ],
)
def test_invalid_count_named(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({name: value})


@pytest.mark.parametrize("key", ["sek\nret-key", "sëcret-key", "key with space"])
def test_api_key_header_safe_and_not_shown(key: str) -> None:
    with pytest.raises(
        ConfigurationError, match="BUTTONDOWN_API_KEY contains"
    ) as caught:
        Settings.from_env({"BUTTONDOWN_API_KEY": key})

    assert key not in str(caught.value)


def test_api_version_header_safe() -> None:
    with pytest.raises(ConfigurationError, match="BUTTONDOWN_API_VERSION contains"):
        Settings.from_env({"BUTTONDOWN_API_VERSION": "2026-04-01\nX-Evil: 1"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BUTTONDOWN_API_URL", "http://127.0.0.1:abc/v1", "not a valid URL"),
        ("BUTTONDOWN_API_URL", "http://[::1", "not a valid URL"),
        ("REDIS_URL", "redis://127.0.0.1:notaport/0", "not a valid URL"),
        ("SENTRY_DSN", "nonsense", "not a valid Sentry DSN"),
        ("PROCESSOR_POLL_DEADLINE", "1e14", "at most 31,536,000"),
        ("PROCESSOR_HTTP_TIMEOUT", "1e12", "at most 31,536,000"),
    ],
)
def test_invalid_value_rejected_at_start(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({name: value})


def test_field_size_above_maximum_rejected() -> None:
    with pytest.raises(ConfigurationError, match="PROCESSOR_MAX_FIELD_SIZE"):
        Settings.from_env({"PROCESSOR_MAX_FIELD_SIZE": "99999999999999999999"})
