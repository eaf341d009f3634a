"""Error reports to Sentry: sent when a DSN is set, with secrets filtered."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from processor.config import Settings
from processor.redact import FILTERED
from processor.sentry import init_sentry, scrub, secret_forms

API_KEY = "bd-secret-key-0123456789"
PRESIGNED = "https://bucket.example/export.zip?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef"


def test_report_sent_without_secrets(
    sentry_ingest: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    dsn, bodies = sentry_ingest
    script = textwrap.dedent(
        f"""
        import sentry_sdk
        from processor.config import Settings
        from processor.sentry import init_sentry

        settings = Settings(api_key={API_KEY!r}, sentry_dsn={dsn!r})
        assert init_sentry(settings)

        def fetch(headers, url):
            auth = headers["Authorization"]
            raise RuntimeError("download of " + url + " failed with " + auth)

        try:
            fetch({{"Authorization": "Token {API_KEY}"}}, {PRESIGNED!r})
        except RuntimeError:
            sentry_sdk.capture_exception()
        sentry_sdk.flush(timeout=10)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr

    sent = b"".join(bodies).decode()
    assert "download of" in sent
    assert API_KEY not in sent
    assert "deadbeef" not in sent
    assert "AKIAEXAMPLE" not in sent
    assert FILTERED in sent


def test_off_without_dsn() -> None:
    assert init_sentry(Settings(api_key=API_KEY)) is False


def test_scrub_nested_values() -> None:
    event = {"message": f"key {API_KEY}", "extra": [{"url": PRESIGNED}], "count": 3}

    scrubbed = scrub(event, (API_KEY,))

    assert scrubbed["message"] == f"key {FILTERED}"
    assert "deadbeef" not in scrubbed["extra"][0]["url"]
    assert scrubbed["extra"][0]["url"].startswith("https://bucket.example/export.zip?")
    assert scrubbed["count"] == 3


def test_failed_fault_run_reports_without_secrets(
    sentry_ingest: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    dsn, bodies = sentry_ingest
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BUTTONDOWN_", "PROCESSOR_", "REDIS_URL", "SENTRY_"))
    }
    env.update(
        BUTTONDOWN_API_KEY=API_KEY,
        SENTRY_DSN=dsn,
        PROCESSOR_LOG_LEVEL="DEBUG",
        # The download passes every fault, then breaks the size limit, so the
        # run fails after presigned URLs went through every HTTP log line.
        PROCESSOR_MAX_DOWNLOAD_BYTES="100",
    )
    command = [
        str(Path(sys.executable).parent / "processor"),
        "run",
        "--sandbox",
        "--events",
        "50",
        "--fault",
        "all",
        "--json",
    ]

    result = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    sent = b"".join(bodies).decode(errors="replace")
    output = result.stdout + result.stderr

    assert result.returncode == 1
    assert "PROCESSOR_MAX_DOWNLOAD_BYTES" in sent
    assert "X-Amz-Signature=[Filtered]" in sent
    for text in (sent, output):
        assert API_KEY not in text
        assert re.search(r"X-Amz-(Signature|Credential)=(?!\[Filtered\])", text) is None


def test_escaped_secrets_scrubbed() -> None:
    key = "whsec_back\\slash'quote\"end"
    frame_vars = {"settings": f"Settings(webhook_signing_key={key!r})"}
    payload = {"vars": frame_vars, "json": json.dumps({"key": key})}

    scrubbed = scrub(payload, secret_forms([key]))

    assert "slash" not in json.dumps(scrubbed)
    assert scrubbed["vars"]["settings"] == "Settings(webhook_signing_key='[Filtered]')"
