"""Opening export files: member choice, limits and completeness checks."""

from __future__ import annotations

import gzip
import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from processor.containers import open_source
from processor.errors import DamagedFile, LimitExceeded, ParseError
from processor.limits import ParseLimits
from processor.parser import ParseStats, iter_events

HEADER = "id,subscriber__email,event_type,timestamp,metadata\r\n"


def rows(count: int, start: int = 0) -> str:
    return "".join(
        f"ext_evt_{n},r{n}@example.com,opened,2024-03-13T00:00:00Z,{{}}\r\n"
        for n in range(start, start + count)
    )


def write_zip(path: Path, members: dict[str, str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def read_all(path: Path, limits: ParseLimits | None = None) -> tuple[int, ParseStats]:
    stats = ParseStats()
    events = iter_events(path, stats, limits=limits or ParseLimits())
    count = sum(1 for _ in events)
    return count, stats


def test_plain_file_is_not_verified(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(HEADER + rows(2))

    source = open_source(path, ParseLimits())

    assert source.verified is False
    assert source.name == "events.csv"


def test_zip_member_is_verified(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "export.zip", {"events.csv": HEADER + rows(2)})

    source = open_source(path, ParseLimits())

    assert source.verified is True
    assert source.name == "export.zip:events.csv"


def test_several_candidates_listed(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "export.zip", {"a.csv": HEADER, "b.json": "[]", "c.txt": ""}
    )

    with pytest.raises(ParseError, match="several data files") as caught:
        open_source(path, ParseLimits())

    assert "a.csv, b.json, c.txt" in str(caught.value)


def test_odd_member_name_shown_quoted(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "export.zip", {"x\x1b[31m.txt": ""})

    with pytest.raises(ParseError) as caught:
        open_source(path, ParseLimits())

    assert "\x1b" not in str(caught.value)
    assert "'x\\x1b[31m.txt'" in str(caught.value)


def test_gzip_size_limit_while_reading(tmp_path: Path) -> None:
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress((HEADER + rows(200)).encode()))

    with pytest.raises(LimitExceeded, match="PROCESSOR_MAX_UNCOMPRESSED_BYTES"):
        open_source(path, ParseLimits(max_uncompressed_bytes=1000))


def test_declared_size_limit_before_reading(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "export.zip", {"events.csv": HEADER + rows(200)})

    with pytest.raises(LimitExceeded, match="declares"):
        open_source(path, ParseLimits(max_uncompressed_bytes=1000))


def test_ratio_limit_while_reading(tmp_path: Path) -> None:
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress(HEADER.encode() + b"\r\n" * (8 * 1024 * 1024)))

    with pytest.raises(LimitExceeded, match="expands more than 100 times"):
        open_source(path, ParseLimits())


def test_gzip_zero_padding_accepted(tmp_path: Path) -> None:
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress((HEADER + rows(3)).encode()) + b"\x00" * 512)

    count, stats = read_all(path)

    assert count == 3
    assert stats.rejected == 0


def test_gzip_trailing_garbage_damaged(tmp_path: Path) -> None:
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress((HEADER + rows(3)).encode()) + b"garbage")

    with pytest.raises(DamagedFile, match="after the end of its gzip data"):
        open_source(path, ParseLimits())


def test_flipped_deflate_bit_dispatches_nothing(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "export.zip", {"events.csv": HEADER + rows(5000)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    seen = []

    with pytest.raises(DamagedFile):
        for event in iter_events(path):
            seen.append(event)

    assert seen == []


def test_long_field_rejected_and_parsing_goes_on(tmp_path: Path) -> None:
    long_row = "ext_evt_x,x@example.com,opened,2024-03-13T00:00:00Z," + (
        "\"{'url': '" + "u" * 3000 + "'}\"\r\n"
    )
    path = tmp_path / "events.csv"
    path.write_text(HEADER + rows(2) + long_row + rows(3, start=10))

    count, stats = read_all(path, ParseLimits(max_field_size=1024))

    assert count == 5
    assert stats.rejected >= 1


def test_long_json_line_rejected_and_parsing_goes_on(tmp_path: Path) -> None:
    record = (
        '{"id": "e%d", "subscriber_id": "s", "event_type": "opened", '
        '"timestamp": "2024-03-13T00:00:00Z"%s}\n'
    )
    lines = [record % (n, "") for n in range(3)]
    lines.insert(1, record % (99, ', "metadata": {"u": "' + "u" * 5000 + '"}'))
    path = tmp_path / "events.jsonl"
    path.write_text("".join(lines))

    count, stats = read_all(path, ParseLimits(max_field_size=1024))

    assert count == 3
    assert stats.rejected == 1


def test_zip_members_over_limit_fail_fast(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(30):
            archive.writestr(f"part-{number}.txt", "")
    path = tmp_path / "export.zip"
    path.write_bytes(buffer.getvalue())

    with pytest.raises(LimitExceeded, match="lists 30 entries"):
        open_source(path, ParseLimits(max_members=10))


def test_fifo_rejected_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "events.csv"
    os.mkfifo(fifo)

    with pytest.raises(ParseError, match="not a regular file"):
        open_source(fifo, ParseLimits())


def array_record(size: int) -> str:
    return (
        '{"id": "e1", "subscriber_id": "s", "event_type": "opened", '
        '"timestamp": "2024-03-13T00:00:00Z", "metadata": {"u": "' + "u" * size + '"}}'
    )


def test_long_array_element_rejected(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_text("[" + array_record(5000) + ", " + array_record(10) + "]")

    count, stats = read_all(path, ParseLimits(max_field_size=1024))

    assert count == 1
    assert stats.rejected == 1


def test_array_element_past_read_limit(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_text("[" + array_record(1_200_000) + "]")

    with pytest.raises(LimitExceeded, match="PROCESSOR_MAX_FIELD_SIZE"):
        read_all(path, ParseLimits(max_field_size=1024))


def test_large_array_element_read_whole(tmp_path: Path) -> None:
    metadata = {f"k{number}": "v" * 10 for number in range(100_000)}
    record = {
        "id": "e1",
        "subscriber_id": "s",
        "event_type": "opened",
        "timestamp": "2024-03-13T00:00:00Z",
        "metadata": metadata,
    }
    path = tmp_path / "events.json"
    path.write_text(json.dumps([record]))

    count, stats = read_all(path, ParseLimits(max_field_size=4 * 1024 * 1024))

    assert count == 1
    assert stats.rejected == 0
