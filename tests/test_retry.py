import pytest

from processor.config import Settings
from processor.errors import RateLimited, ServerError
from processor.retry import backoff, retry_delay


@pytest.mark.parametrize("attempt", range(12))
def test_backoff_within_bounds(attempt: int) -> None:
    ceiling = min(60.0, 2.0 * 2**attempt)

    delay = backoff(attempt, 2.0, 60.0)

    assert delay >= max(2.0, ceiling / 2)
    assert delay <= ceiling


def test_backoff_capped_for_huge_attempt() -> None:
    assert backoff(10_000, 1.0, 60.0) <= 60.0


def test_backoff_jitters() -> None:
    delays = {backoff(5, 1.0, 60.0) for _ in range(20)}

    assert len(delays) > 1


def test_retry_delay_follows_retry_after() -> None:
    error = RateLimited("429")
    error.retry_after = 7

    assert retry_delay(error, 1, Settings()) == 7


def test_retry_delay_caps_retry_after() -> None:
    error = RateLimited("429")
    error.retry_after = 100_000

    assert retry_delay(error, 1, Settings(max_retry_after=120)) == 120


def test_retry_delay_without_retry_after_backs_off() -> None:
    settings = Settings(retry_min_delay=1, retry_max_delay=60)

    delay = retry_delay(RateLimited("429"), 3, settings)

    assert 2 <= delay <= 4


def test_retry_delay_server_error_backs_off() -> None:
    settings = Settings(retry_min_delay=1, retry_max_delay=60)

    assert 0.5 <= retry_delay(ServerError("503"), 1, settings) <= 1
