from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from processor_deliverability import DeliverabilityHandler

from processor.api.ratelimit import RateLimitTracker
from processor.sandbox import SandboxServer
from processor.testing import make_event, run_handler


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxServer]:
    with SandboxServer(events=10, api_key="test-key") as server:
        monkeypatch.setenv("BUTTONDOWN_API_URL", server.api_url)
        monkeypatch.setenv("BUTTONDOWN_API_KEY", "test-key")
        yield server


def tags_of(server: SandboxServer, email: str) -> list[str]:
    response = httpx.get(
        f"{server.api_url}/subscribers/{email}",
        headers={"Authorization": "Token test-key"},
    )
    response.raise_for_status()
    tags: list[str] = response.json()["tags"]
    return tags


def test_bounce_and_complaint_tagged(sandbox: SandboxServer) -> None:
    events = [
        make_event(event_type="bounced", subscriber_email="a@example.com"),
        make_event(event_type="complained", subscriber_email="a@example.com"),
        make_event(event_type="bounced", subscriber_email="a@example.com"),
        make_event(event_type="bounced", subscriber_email="b@example.com"),
    ]

    result = run_handler(DeliverabilityHandler(), events)

    assert result.handled == 4
    assert result.failed == 0
    assert tags_of(sandbox, "a@example.com") == ["bounced", "complained"]
    assert tags_of(sandbox, "b@example.com") == ["bounced"]


def test_only_bounces_and_complaints(sandbox: SandboxServer) -> None:
    handler = DeliverabilityHandler()
    events = [make_event(event_type="opened", subscriber_email="c@example.com")]

    result = run_handler(handler, events)

    assert result.handled == 0
    assert tags_of(sandbox, "c@example.com") == []


def test_tags_from_config(sandbox: SandboxServer) -> None:
    events = [make_event(event_type="complained", subscriber_email="d@example.com")]

    run_handler(
        DeliverabilityHandler(), events, config={"complained_tag": "spam-report"}
    )

    assert tags_of(sandbox, "d@example.com") == ["spam-report"]


def test_unknown_subscriber_dead_letter(sandbox: SandboxServer) -> None:
    events = [
        make_event(
            event_type="bounced", subscriber_email=None, subscriber_id="sub_missing"
        )
    ]

    result = run_handler(DeliverabilityHandler(), events)

    assert result.failed == 1
    [letter] = result.dead_letters
    assert "returned 404" in letter.error


def test_rate_limit_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with SandboxServer(events=10, api_key="test-key", faults=["rate-limit"]) as server:
        monkeypatch.setenv("BUTTONDOWN_API_URL", server.api_url)
        monkeypatch.setenv("BUTTONDOWN_API_KEY", "test-key")
        events = [make_event(event_type="bounced", subscriber_email="e@example.com")]

        result = run_handler(DeliverabilityHandler(), events, sleep=time.sleep)

        assert result.handled == 1
        assert result.failed == 0
        assert [name for name, _, _ in server.fault_log] == ["rate-limit"] * 2
        assert tags_of(server, "e@example.com") == ["bounced"]


def test_missing_api_key_fails_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUTTONDOWN_API_KEY", raising=False)

    result = run_handler(DeliverabilityHandler(), [make_event(event_type="bounced")])

    assert result.failed == 1
    assert "BUTTONDOWN_API_KEY is not set" in str(result.error)


def test_long_rate_limit_deferred(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = DeliverabilityHandler()
    events = [make_event(event_type="bounced", subscriber_email="f@example.com")]
    monkeypatch.setattr(RateLimitTracker, "wait_time", lambda self: 42.0)

    result = run_handler(handler, events)

    assert result.failed == 1
    [letter] = result.dead_letters
    assert letter.attempts == 1
    assert letter.error.startswith("RetryLater: Buttondown's rate limit is spent")
    assert "for the next 42 s" in letter.error
    assert "processor dead-letters retry deliverability" in letter.error
    assert tags_of(sandbox, "f@example.com") == []


def test_subscriber_tagged_once_per_run(sandbox: SandboxServer) -> None:
    events = [
        make_event(event_type="bounced", subscriber_email="g@example.com")
        for _ in range(5)
    ]

    result = run_handler(DeliverabilityHandler(), events)

    assert result.handled == 5
    assert result.checkpoint is not None
    assert result.checkpoint.state == [["g@example.com", "bounced"]]
    # A GET and a PATCH for the first event; the others are skipped.
    assert sandbox.requests == 2
