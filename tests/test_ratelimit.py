from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from processor.api.ratelimit import RESERVE, RateLimitTracker, parse_retry_after

NOW = 1_700_000_000.0


def http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", 1.0),
        ("0", 0.0),
        (" 30 ", 30.0),
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00", None),
    ],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_future_date() -> None:
    assert parse_retry_after(http_date(2), NOW) == pytest.approx(2, abs=1)


def test_parse_retry_after_past_date() -> None:
    assert parse_retry_after(http_date(-60), NOW) is None


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def headers(remaining: int, reset_in: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "600",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(NOW + reset_in)),
    }


def test_tracker_no_wait_with_room() -> None:
    tracker = RateLimitTracker(clock=Clock())
    tracker.observe(headers(remaining=100, reset_in=30))

    assert tracker.wait_time() == 0


def test_tracker_waits_for_reset_when_low() -> None:
    tracker = RateLimitTracker(clock=Clock())
    tracker.observe(headers(remaining=RESERVE, reset_in=30))

    assert tracker.wait_time() == pytest.approx(30)


def test_tracker_no_wait_after_reset() -> None:
    clock = Clock()
    tracker = RateLimitTracker(clock=clock)
    tracker.observe(headers(remaining=0, reset_in=30))
    clock.now += 31

    assert tracker.wait_time() == 0


def test_tracker_block_after_429() -> None:
    clock = Clock()
    tracker = RateLimitTracker(clock=clock)
    tracker.block_for(5)
    clock.now += 2

    assert tracker.wait_time() == pytest.approx(3)


def test_tracker_ignores_bad_headers() -> None:
    tracker = RateLimitTracker(clock=Clock())
    tracker.observe({"X-RateLimit-Remaining": "zero", "X-RateLimit-Reset": "later"})

    assert tracker.wait_time() == 0


def test_parse_retry_after_superscript_digit() -> None:
    assert parse_retry_after("²", NOW) is None


def test_tracker_block_capped() -> None:
    tracker = RateLimitTracker(clock=Clock(), max_wait=5)
    tracker.block_for(100_000)

    assert tracker.wait_time() == 5


def test_tracker_far_reset_capped() -> None:
    tracker = RateLimitTracker(clock=Clock(), max_wait=5)
    tracker.observe(headers(remaining=0, reset_in=10**9))

    assert tracker.wait_time() == 5


def test_tracker_low_remaining_waits_once() -> None:
    tracker = RateLimitTracker(clock=Clock())
    tracker.observe(headers(remaining=0, reset_in=30))
    first = tracker.wait_time()

    assert first == pytest.approx(30)
    assert tracker.wait_time() == 0
