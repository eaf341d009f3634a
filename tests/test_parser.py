import csv
import io
import tracemalloc
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from processor.errors import DamagedFile, ParseError
from processor.events import EVENT_COLUMNS
from processor.parser import ParseStats, iter_events
from processor.rows import parse_timestamp

ROW = [
    "ext_evt_01",
    "tok-1",
    "em_1",
    "reader@example.com",
    "opened",
    "2024-03-13 00:16:58+00:00",
    "{'country': '', 'client_os': 'Windows', 'client_name': 'Gmail'}",
]


def write_csv(
    path: Path, rows: list[list[str]], header: tuple[str, ...] = EVENT_COLUMNS
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EVENT_COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def test_csv_yields_typed_event(tmp_path: Path) -> None:
    [event] = list(iter_events(write_csv(tmp_path / "events.csv", [ROW])))

    assert event.id == "ext_evt_01"
    assert event.token == "tok-1"
    assert event.email_id == "em_1"
    assert event.subscriber_email == "reader@example.com"
    assert event.event_type == "opened"
    assert event.timestamp == datetime(2024, 3, 13, 0, 16, 58, tzinfo=UTC)
    assert event.metadata == {
        "country": "",
        "client_os": "Windows",
        "client_name": "Gmail",
    }


def test_zip_with_one_csv_member(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "export.zip", {"export/events.csv": csv_text([ROW, ROW])}
    )

    stats = ParseStats()
    events = list(iter_events(path, stats))

    assert len(events) == 2
    assert stats.events == 2
    assert stats.rejected == 0


def test_zip_prefers_member_named_events(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "export.zip",
        {"emails.csv": "id,subject\n1,Hello\n", "events.csv": csv_text([ROW])},
    )

    assert [event.id for event in iter_events(path)] == ["ext_evt_01"]


def test_zip_without_csv_member(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "export.zip", {"readme.txt": "nothing"})

    with pytest.raises(ParseError, match=r"readme\.txt"):
        list(iter_events(path))


def test_reordered_columns_matched_by_name(tmp_path: Path) -> None:
    header = tuple(reversed(EVENT_COLUMNS))
    path = write_csv(tmp_path / "events.csv", [list(reversed(ROW))], header=header)

    [event] = list(iter_events(path))

    assert event.id == "ext_evt_01"
    assert event.event_type == "opened"


def test_missing_required_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "events.csv", [ROW[:4]], header=EVENT_COLUMNS[:4])

    with pytest.raises(ParseError, match="event_type"):
        list(iter_events(path))


def test_bad_rows_rejected_and_counted(tmp_path: Path) -> None:
    bad_timestamp = [*ROW[:5], "yesterday", ROW[6]]
    bad_metadata = [*ROW[:6], "__import__('os')"]
    short = ROW[:3]
    empty_id = ["", *ROW[1:]]
    path = write_csv(
        tmp_path / "events.csv",
        [ROW, bad_timestamp, bad_metadata, short, empty_id, ROW],
    )

    stats = ParseStats()
    events = list(iter_events(path, stats))

    assert len(events) == 2
    assert stats.events == 2
    assert stats.rejected == 4


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + csv_text([ROW]).replace("\r\n", "\n").replace("\n", "\r\n").encode()
    )

    [event] = list(iter_events(path))

    assert event.id == "ext_evt_01"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(b"")

    with pytest.raises(ParseError, match="empty"):
        list(iter_events(path))


def test_binary_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(b"\x00\x01\x02\x03binary")

    with pytest.raises(ParseError, match="binary data"):
        list(iter_events(path))


def test_empty_email_id_is_none(tmp_path: Path) -> None:
    row = ROW.copy()
    row[2] = ""
    [event] = list(iter_events(write_csv(tmp_path / "events.csv", [row])))

    assert event.email_id is None


def test_unknown_event_type_passes_through(tmp_path: Path) -> None:
    row = ROW.copy()
    row[4] = "deferred"
    [event] = list(iter_events(write_csv(tmp_path / "events.csv", [row])))

    assert event.event_type == "deferred"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-13 00:16:58+00:00", datetime(2024, 3, 13, 0, 16, 58, tzinfo=UTC)),
        ("2024-03-13T00:16:58Z", datetime(2024, 3, 13, 0, 16, 58, tzinfo=UTC)),
        ("2024-03-13T00:16:58", datetime(2024, 3, 13, 0, 16, 58, tzinfo=UTC)),
        (
            "2024-03-13T02:16:58.250+02:00",
            datetime(
                2024, 3, 13, 2, 16, 58, 250000, tzinfo=timezone(timedelta(hours=2))
            ),
        ),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


def test_memory_stays_flat(tmp_path: Path) -> None:
    rows = ([f"ext_evt_{n}", *ROW[1:]] for n in range(100_000))
    path = tmp_path / "events.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(EVENT_COLUMNS)
        writer.writerows(rows)
    zipped = write_zip(tmp_path / "export.zip", {"events.csv": path.read_text()})

    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_events(zipped))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == 100_000
    # The file contains about 13 MB of CSV; a parser that kept rows would peak
    # far above this bound, which allows a few 1 MiB read buffers.
    assert peak < 8 * 1024 * 1024


def damaged_zip(tmp_path: Path, rows: int = 2000) -> Path:
    text = csv_text([[f"ext_evt_{n}", *ROW[1:]] for n in range(rows)])
    path = write_zip(tmp_path / "export.zip", {"events.csv": text})
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = b"\x00" * 8
    path.write_bytes(bytes(data))
    return path


def test_damaged_zip_member_yields_no_events(tmp_path: Path) -> None:
    stats = ParseStats()
    seen = []

    with pytest.raises(DamagedFile, match="damaged"):
        for event in iter_events(damaged_zip(tmp_path), stats):
            seen.append(event)

    assert seen == []
    assert stats.events == 0


def test_field_over_default_csv_limit(tmp_path: Path) -> None:
    big = "{'urls': '" + "x" * 200_000 + "'}"
    path = write_csv(tmp_path / "events.csv", [[*ROW[:6], big]])

    [event] = list(iter_events(path))

    assert len(str(event.metadata["urls"])) == 200_000


def test_invalid_escape_row_rejected(tmp_path: Path) -> None:
    bad = [*ROW[:6], "{'k': 'a\\x'}"]
    stats = ParseStats()

    events = list(iter_events(write_csv(tmp_path / "events.csv", [ROW, bad]), stats))

    assert len(events) == 1
    assert stats.rejected == 1
