"""Round trips: events written in every format and container parse back unchanged."""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.events import EVENT_COLUMNS, Event
from processor.parser import ParseStats, iter_events

OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]


def make_events(count: int) -> list[Event]:
    start = datetime(2024, 3, 13, tzinfo=UTC)
    return [
        Event(
            id=f"ext_evt_{number}",
            token=f"tok-{number}",
            email_id=None if number % 3 else "em_1",
            subscriber_email=f"reader{number}@example.com",
            event_type=("opened", "clicked", "sent")[number % 3],
            timestamp=(
                start + timedelta(seconds=number, microseconds=number)
            ).astimezone(OFFSETS[number % 3]),
            metadata={"client_name": 'Outlook "New"', "n": number, "ok": True}
            if number % 2
            else {},
        )
        for number in range(count)
    ]


def dashboard_row(event: Event) -> list[str]:
    return [
        event.id,
        event.token,
        event.email_id or "",
        event.subscriber_email or "",
        event.event_type,
        event.timestamp.isoformat(sep=" "),
        repr(event.metadata),
    ]


def json_record(event: Event) -> dict[str, object]:
    return {
        "id": event.id,
        "token": event.token,
        "email_id": event.email_id,
        "subscriber__email": event.subscriber_email,
        "event_type": event.event_type,
        "timestamp": event.timestamp.isoformat(),
        "metadata": event.metadata,
    }


def as_csv(events: Sequence[Event]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EVENT_COLUMNS)
    writer.writerows(dashboard_row(event) for event in events)
    return buffer.getvalue().encode("utf-8")


def as_json_array(events: Sequence[Event]) -> bytes:
    return msgspec.json.encode([json_record(event) for event in events])


def as_json_lines(events: Sequence[Event]) -> bytes:
    return b"".join(msgspec.json.encode(json_record(event)) + b"\n" for event in events)


def plain(data: bytes, member: str) -> bytes:
    return data


def gzipped(data: bytes, member: str) -> bytes:
    return gzip.compress(data, mtime=0)


def zipped(data: bytes, member: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("subscribers.csv", "id,email\r\n")
        archive.writestr(member, data)
    return buffer.getvalue()


FORMATS: dict[str, tuple[str, Callable[[Sequence[Event]], bytes]]] = {
    "csv": ("events.csv", as_csv),
    "json": ("events.json", as_json_array),
    "jsonl": ("events.jsonl", as_json_lines),
}
CONTAINERS = {"plain": plain, "gzip": gzipped, "zip": zipped}


def parse(path: Path) -> tuple[list[Event], ParseStats]:
    stats = ParseStats()
    return list(iter_events(path, stats)), stats


@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("export_format", sorted(FORMATS))
def test_round_trip(tmp_path: Path, export_format: str, container: str) -> None:
    events = make_events(3000)
    member, encode = FORMATS[export_format]
    path = tmp_path / "export.bin"
    path.write_bytes(CONTAINERS[container](encode(events), member))

    parsed, stats = parse(path)

    assert parsed == events
    assert [event.timestamp.utcoffset() for event in parsed] == [
        event.timestamp.utcoffset() for event in events
    ]
    assert stats.events == 3000
    assert stats.rejected == 0


# Text without surrogates, which UTF-8 cannot encode, and without NUL, which
# the parser rejects outside metadata.
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=20,
)
METADATA_VALUES = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
EVENTS = st.builds(
    Event,
    id=TEXT.filter(bool),
    token=TEXT,
    email_id=st.one_of(st.none(), TEXT.filter(bool)),
    subscriber_email=st.one_of(st.none(), TEXT.filter(bool)),
    event_type=TEXT.filter(bool),
    timestamp=st.datetimes(
        min_value=datetime(1000, 1, 1),
        timezones=st.sampled_from(OFFSETS),
    ),
    metadata=st.dictionaries(
        st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=10),
        METADATA_VALUES,
        max_size=4,
    ),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(EVENTS, min_size=1, max_size=5))
@pytest.mark.parametrize("export_format", sorted(FORMATS))
def test_random_rows_survive(
    tmp_path: Path, export_format: str, events: list[Event]
) -> None:
    member, encode = FORMATS[export_format]
    path = tmp_path / member
    path.write_bytes(encode(events))

    parsed, stats = parse(path)

    assert stats.rejected == 0
    assert parsed == events
