import logging

import pytest

from processor.redact import FILTERED, CredentialFilter, redact_url, scrub_credentials


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("?X-Amz-Signature=s3sig&X-Amz-Security-Token=tok", ""),
        ("?X-Goog-Signature=gcs&X-Goog-Credential=cred", ""),
        ("?sv=2024&sig=azure%2Bsig", "sv=2024"),
        ("?Policy=cfpolicy&Signature=cfsig&Key-Pair-Id=kp", ""),
        ("?config_sig=harmless", "config_sig=harmless"),
    ],
)
def test_scrub_presigned_parameters(text: str, kept: str) -> None:
    scrubbed = scrub_credentials(f"https://bucket.example/export.zip{text}")

    for secret in ("s3sig", "tok", "gcs", "cred", "azure", "cfpolicy", "cfsig", "kp"):
        assert secret not in scrubbed
    assert kept in scrubbed


def test_scrub_known_secret_and_token_header() -> None:
    scrubbed = scrub_credentials("Token abc123 then key-456", ("key-456",))

    assert scrubbed == f"Token {FILTERED} then {FILTERED}"


def test_redact_url_drops_query() -> None:
    assert (
        redact_url("https://u:p@h.example:8443/a?b=c") == "https://h.example:8443/a?..."
    )


def test_filter_rewrites_formatted_record() -> None:
    record = logging.LogRecord(
        "httpx", logging.INFO, __file__, 1, "GET %s", ("/x?X-Amz-Signature=abc",), None
    )

    CredentialFilter().filter(record)

    assert record.getMessage() == f"GET /x?X-Amz-Signature={FILTERED}"
