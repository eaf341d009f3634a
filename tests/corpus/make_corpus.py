"""Write the parser's corpus: one small export file per quirk found in the wild.

Run ``python tests/corpus/make_corpus.py`` to write the files into
``tests/corpus/files`` and their expected outcomes into
``tests/corpus/expected.json``. The output is the same on every run (ZIP and
gzip timestamps are fixed), and ``tests/test_corpus.py`` checks that the
committed files match this script.

Each entry states how many events and rejected rows ``processor replay``
must report for the file, or the words its error must contain.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import struct
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
FILES = HERE / "files"
EXPECTED = HERE / "expected.json"

HEADER = (
    "id",
    "token",
    "email_id",
    "subscriber__email",
    "event_type",
    "timestamp",
    "metadata",
)
ZIP_DATE = (2024, 3, 13, 0, 0, 0)


@dataclass
class Entry:
    """One corpus file and the outcome ``processor replay`` must report."""

    name: str
    quirk: str
    build: Callable[[], bytes]
    events: int = 0
    rejected: int = 0
    error: str | None = None


def row(number: int, **changes: str) -> list[str]:
    """Return a valid dashboard row for event ``number``, with ``changes``."""
    values = {
        "id": f"ext_evt_{number:04d}",
        "token": f"tok-{number}",
        "email_id": "em_01",
        "subscriber__email": f"reader{number}@example.com",
        "event_type": "opened",
        "timestamp": f"2024-03-13 00:{number % 60:02d}:58+00:00",
        "metadata": "{'country': '', 'client_os': 'Windows', 'client_name': 'Gmail'}",
    }
    values.update(changes)
    return [values[name] for name in HEADER]


def csv_bytes(
    rows: Sequence[Sequence[str]],
    header: Sequence[str] = HEADER,
    line_end: str = "\r\n",
) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=line_end)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def standard_rows(count: int) -> list[list[str]]:
    return [row(number) for number in range(count)]


def json_record(number: int) -> dict[str, object]:
    return dict(zip(HEADER, row(number), strict=True))


def zip_bytes(
    members: Sequence[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.compress_type = method
            info.external_attr = 0o100644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# --- CSV quirks -----------------------------------------------------------


def bom_crlf() -> bytes:
    return b"\xef\xbb\xbf" + csv_bytes(standard_rows(4))


def lf_only() -> bytes:
    return csv_bytes(standard_rows(4), line_end="\n")


def quoted_newlines() -> bytes:
    return csv_bytes(
        [
            row(0, metadata="{'reason': '550 5.1.1 User unknown\\nsee log'}"),
            row(1, event_type="bounced", metadata="{'reason': 'x',\n 'code': '550'}"),
            row(2, subscriber__email="reader2@example.com", token="multi\r\nline"),
            row(3),
        ]
    )


def large_field() -> bytes:
    url = "https://example.com/?q=" + "x" * 300_000
    return csv_bytes([row(0, metadata=repr({"url": url})), row(1)])


def nul_byte() -> bytes:
    data = csv_bytes(standard_rows(4))
    return data.replace(b"reader2@", b"reader2\x00@")


def invalid_utf8() -> bytes:
    data = csv_bytes([*standard_rows(3), row(3, metadata="{'country': 'CAFE'}")])
    return data.replace(b"CAFE", b"CAF\xe9")


def missing_optional_columns() -> bytes:
    header = ("id", "subscriber__email", "event_type", "timestamp")
    rows = [[r[0], r[3], r[4], r[5]] for r in standard_rows(3)]
    return csv_bytes(rows, header=header)


def extra_columns() -> bytes:
    header = (*HEADER, "automation_id", "ip_address")
    rows = [[*r, "aut_1", "192.0.2.1"] for r in standard_rows(3)]
    return csv_bytes(rows, header=header)


def reordered_columns() -> bytes:
    order = (6, 5, 4, 3, 2, 1, 0)
    header = [HEADER[index] for index in order]
    rows = [[r[index] for index in order] for r in standard_rows(3)]
    return csv_bytes(rows, header=header)


def upper_case_header() -> bytes:
    header = [name.upper() for name in HEADER]
    return csv_bytes(standard_rows(2), header=header)


def blank_trailing_lines() -> bytes:
    return csv_bytes(standard_rows(3)) + b"\r\n\r\n   \r\n\n"


def timestamps() -> bytes:
    forms = [
        "2024-03-13 00:16:58+00:00",
        "2024-03-13T00:16:58Z",
        "2024-03-13T00:16:58.123456Z",
        "2024-03-13T00:16:58.5+01:00",
        "2024-03-13T05:46:58+0530",
        "2024-03-13 00:16:58",
        "2024-03-13T00:16:58-08:00",
    ]
    bad = ["2024-03-13", "13/03/2024 00:16", "yesterday", ""]
    rows = [row(index, timestamp=text) for index, text in enumerate(forms)]
    rows += [row(100 + index, timestamp=text) for index, text in enumerate(bad)]
    return csv_bytes(rows)


def metadata_forms() -> bytes:
    good = [
        "{'client_name': 'Outlook \"New\"', 'country': \"Côte d'Ivoire\"}",
        '{"client_os": "iOS", "opens": 3, "bot": false}',
        "{}",
        "",
        "{'first': True, 'score': 1.5e3, 'missing': None,}",
        "{'escaped': 'tab\\there \\u00e9 \\N{BULLET}'}",
    ]
    bad = [
        "{'nested': {'a': 1}}",
        "__import__('os').system('true')",
        "{'a': 'unclosed}",
        "[1, 2]",
    ]
    rows = [row(index, metadata=text) for index, text in enumerate(good)]
    rows += [row(100 + index, metadata=text) for index, text in enumerate(bad)]
    return csv_bytes(rows)


def unknown_event_types() -> bytes:
    types = ["sent", "deferred", "opened", "attempted", "survey_answered"]
    return csv_bytes([row(index, event_type=name) for index, name in enumerate(types)])


def bad_rows() -> bytes:
    rows = [
        row(0),
        row(1, id=""),
        row(2),
        [*row(3)[:5]],
        row(4, event_type=""),
        [*row(5), "surplus"],
        row(6),
    ]
    return csv_bytes(rows)


def api_shape_csv() -> bytes:
    header = ("id", "creation_date", "event_type", "subscriber_id", "email_id")
    rows = [
        [f"evt_{n}", f"2024-03-13T00:00:0{n}Z", "clicked", f"sub_{n}", "em_1"]
        for n in range(3)
    ]
    return csv_bytes(rows, header=header)


def missing_required_column() -> bytes:
    header = ("id", "subscriber__email", "timestamp")
    return csv_bytes([["ext_evt_1", "a@example.com", "2024-03-13T00:00:00Z"]], header)


def header_only() -> bytes:
    return csv_bytes([])


def html_page() -> bytes:
    return b"<!DOCTYPE html><html><body>AccessDenied</body></html>\n"


def binary_data() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes(range(64))


# --- JSON quirks ----------------------------------------------------------


def json_array() -> bytes:
    records = [json_record(number) for number in range(5)]
    text = "[\n" + ",\n".join(json.dumps(record) for record in records) + "\n]\n"
    return text.encode("utf-8")


def json_array_pretty() -> bytes:
    records: list[object] = [
        {
            "id": 1001,
            "subscriber_email": "a@example.com",
            "event_type": "clicked",
            "timestamp": "2024-03-13T00:16:58Z",
            "metadata": {"url": "https://example.com/a,b", "client_name": "Gmail"},
        },
        {
            "id": "ext_evt_2",
            "subscriber__email": "b@example.com",
            "event_type": "opened",
            "timestamp": "2024-03-13 00:16:59+00:00",
            "metadata": "{'client_os': 'macOS'}",
        },
        {"id": "ext_evt_3", "event_type": "opened"},
        ["not", "an", "object"],
        {
            "id": "ext_evt_4",
            "subscriber__email": "c@example.com",
            "event_type": "delivered",
            "timestamp": "2024-03-13T00:17:00Z",
            "metadata": None,
        },
    ]
    return json.dumps(records, indent=2).encode("utf-8")


def json_lines() -> bytes:
    lines = [json.dumps(json_record(number)) for number in range(4)]
    lines.insert(2, '{"id": "ext_evt_broken", "event_type": ')
    lines.insert(3, "")
    lines.append('{"id": "ext_evt_9", "event_type": "opened", "metadata": [1]}')
    return ("\n".join(lines) + "\n").encode("utf-8")


def api_shape_json_lines() -> bytes:
    records = [
        {
            "id": f"evt_{n}",
            "creation_date": f"2024-03-13T00:00:0{n}.250000Z",
            "event_type": "clicked",
            "subscriber_id": f"sub_{n}",
            "email_id": None,
            "automation_id": None,
            "metadata": {"url": "https://example.com"},
        }
        for n in range(3)
    ]
    return "".join(json.dumps(record) + "\r\n" for record in records).encode()


def json_array_cut_short() -> bytes:
    return json_array()[:-40]


def json_array_syntax_error() -> bytes:
    records = [json.dumps(json_record(number)) for number in range(5)]
    records[3] = records[3].replace('"event_type":', '"event_type"')
    return ("[\n" + ",\n".join(records) + "\n]\n").encode("utf-8")


# --- Containers -----------------------------------------------------------


def zip_one_member() -> bytes:
    return zip_bytes([("events.csv", csv_bytes(standard_rows(6)))])


def zip_several_collections() -> bytes:
    return zip_bytes(
        [
            ("subscribers.csv", b"id,email\r\nsub_1,a@example.com\r\n"),
            ("events.csv", csv_bytes(standard_rows(3))),
            ("emails.csv", b"id,subject\r\nem_1,Hello\r\n"),
        ]
    )


def zip_json_member() -> bytes:
    return zip_bytes([("export/events.json", json_array())])


def zip_stored_member() -> bytes:
    return zip_bytes([("events.csv", csv_bytes(standard_rows(3)))], zipfile.ZIP_STORED)


def zip_hostile_member_name() -> bytes:
    return zip_bytes([("../../../tmp/events.csv", csv_bytes(standard_rows(3)))])


def zip_cut_short() -> bytes:
    data = zip_one_member()
    return data[: len(data) * 2 // 3]


def zip_crc_error() -> bytes:
    data = bytearray(zip_stored_member())
    position = data.index(b"reader1@")
    data[position] = ord("R")
    return bytes(data)


def zip_bomb() -> bytes:
    text = b"id,subscriber__email,event_type,timestamp\r\n" + b"0" * (64 * 1024 * 1024)
    return zip_bytes([("events.csv", text)])


def zip_bomb_small_header() -> bytes:
    """A bomb whose headers declare 1 KiB, so only the running check stops it."""
    data = bytearray(zip_bomb())
    _patch_sizes(data, 1024)
    return bytes(data)


def _patch_sizes(data: bytearray, size: int) -> None:
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, size)
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, size)


def zip_many_members() -> bytes:
    members = [(f"part-{number:05d}.txt", b"") for number in range(1_500)]
    return zip_bytes([*members, ("events.csv", csv_bytes(standard_rows(1)))])


def zip_without_data() -> bytes:
    return zip_bytes([("readme.txt", b"nothing here"), ("inner.zip", b"PK")])


def zip_encrypted_flag() -> bytes:
    data = bytearray(zip_one_member())
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 8, 0x1)
    return bytes(data)


def zip_understated_count() -> bytes:
    """1,100 entries whose end record claims one, to slip past the limit."""
    members = [(f"p{number:04d}", b"") for number in range(1_100)]
    data = bytearray(zip_bytes([*members, ("events.csv", csv_bytes(standard_rows(1)))]))
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 1, 1)
    return bytes(data)


def zip_bad_directory_offset() -> bytes:
    data = bytearray(zip_one_member())
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 42, 10_000_000)
    return bytes(data)


def deeply_nested_json_lines() -> bytes:
    nested = "[" * 5000 + "]" * 5000
    good = [json.dumps(json_record(number)) for number in range(2)]
    bad = '{"id": "ext_evt_deep", "x": ' + nested + "}"
    return "\n".join([good[0], bad, good[1]]).encode() + b"\n"


def unrepresentable_numbers() -> bytes:
    records = [json.dumps(json_record(number)) for number in range(3)]
    records.insert(1, '{"id": ' + "9" * 5000 + ', "event_type": "opened"}')
    records.insert(
        2,
        '{"id": "e", "subscriber_id": "s", "event_type": "opened", '
        '"timestamp": "2024-03-13T00:00:00Z", "metadata": {"n": NaN}}',
    )
    records.insert(
        3,
        '{"id": "f", "subscriber_id": "s", "event_type": "opened", '
        '"timestamp": "2024-03-13T00:00:00Z", "metadata": {"n": 1e999}}',
    )
    return ("[\n" + ",\n".join(records) + "\n]\n").encode()


def out_of_range_timestamps() -> bytes:
    rows = [
        row(0),
        row(1, timestamp="0001-01-01T00:00:00+01:00"),
        row(2, timestamp="9999-12-31T23:59:59-01:00"),
        row(3, timestamp="0001-01-01T05:00:00+01:00"),
        row(4, metadata="{'n': 1e999}"),
    ]
    return csv_bytes(rows)


def utf16_csv() -> bytes:
    return csv_bytes(standard_rows(2)).decode().encode("utf-16")


def gzip_csv() -> bytes:
    return gzip_bytes(csv_bytes(standard_rows(5)))


def gzip_json() -> bytes:
    return gzip_bytes(json_array())


def gzip_json_lines() -> bytes:
    return gzip_bytes(json_lines())


def gzip_concatenated() -> bytes:
    data = csv_bytes(standard_rows(6))
    middle = data.index(b"ext_evt_0003")
    return gzip_bytes(data[:middle]) + gzip_bytes(data[middle:])


def gzip_cut_short() -> bytes:
    data = gzip_csv()
    return data[: len(data) - 12]


def gzip_bomb() -> bytes:
    return gzip_bytes(b"id,event_type\n" + b"\n" * (64 * 1024 * 1024))


def gzip_zip() -> bytes:
    return gzip_bytes(zip_one_member())


ENTRIES = [
    Entry(
        "dashboard.csv", "the dashboard's CSV", lambda: csv_bytes(standard_rows(5)), 5
    ),
    Entry("bom-crlf.csv", "UTF-8 byte order mark and CRLF", bom_crlf, 4),
    Entry("lf.csv", "LF line ends", lf_only, 4),
    Entry("quoted-newlines.csv", "quoted fields holding newlines", quoted_newlines, 4),
    Entry(
        "large-field.csv", "a field over the csv module's default limit", large_field, 2
    ),
    Entry("nul-byte.csv", "a NUL byte in one row", nul_byte, 3, 1),
    Entry(
        "invalid-utf8.csv", "a byte that is not UTF-8 in one row", invalid_utf8, 3, 1
    ),
    Entry(
        "missing-columns.csv", "optional columns missing", missing_optional_columns, 3
    ),
    Entry("extra-columns.csv", "extra columns", extra_columns, 3),
    Entry("reordered-columns.csv", "columns in another order", reordered_columns, 3),
    Entry("upper-case-header.csv", "header in upper case", upper_case_header, 2),
    Entry("blank-lines.csv", "blank trailing lines", blank_trailing_lines, 3),
    Entry("timestamps.csv", "ISO 8601 forms, and four bad ones", timestamps, 7, 4),
    Entry(
        "metadata.csv",
        "dict literals and JSON, and four bad ones",
        metadata_forms,
        6,
        4,
    ),
    Entry(
        "unknown-types.csv",
        "event types outside the known list",
        unknown_event_types,
        5,
    ),
    Entry("bad-rows.csv", "empty ids and types, wrong field counts", bad_rows, 3, 4),
    Entry(
        "api-shape.csv",
        "the API's names: creation_date, subscriber_id",
        api_shape_csv,
        3,
    ),
    Entry(
        "missing-required.csv",
        "no event_type column",
        missing_required_column,
        error="has no column for event_type",
    ),
    Entry("empty.csv", "an empty file", lambda: b"", error="is empty"),
    Entry("header-only.csv", "a header and no rows", header_only, 0),
    Entry(
        "error-page.csv", "an HTML error page", html_page, error="HTML or XML document"
    ),
    Entry("image.csv", "binary data", binary_data, error="binary data"),
    Entry("array.json", "a JSON array, one object per line", json_array, 5),
    Entry(
        "array-indented.json",
        "an indented array of mixed records",
        json_array_pretty,
        3,
        2,
    ),
    Entry(
        "lines.jsonl",
        "JSON lines with a broken line and a bad record",
        json_lines,
        4,
        2,
    ),
    Entry(
        "api-shape.jsonl",
        "JSON lines shaped like API event objects",
        api_shape_json_lines,
        3,
    ),
    Entry(
        "array-cut-short.json",
        "a JSON array cut short",
        json_array_cut_short,
        error="without its closing ']'",
    ),
    Entry(
        "array-syntax-error.json",
        "a syntax error in the fourth element",
        json_array_syntax_error,
        events=3,
        error="3 events were read before this fault",
    ),
    Entry("export.zip", "a ZIP with one CSV member", zip_one_member, 6),
    Entry(
        "collections.zip", "a ZIP of several collections", zip_several_collections, 3
    ),
    Entry(
        "json-member.zip", "a ZIP with a JSON member in a folder", zip_json_member, 5
    ),
    Entry("stored.zip", "a ZIP member without compression", zip_stored_member, 3),
    Entry(
        "hostile-name.zip",
        "a member named ../../../tmp/events.csv",
        zip_hostile_member_name,
        3,
    ),
    Entry("cut-short.zip", "a ZIP cut short", zip_cut_short, error="cut short"),
    Entry(
        "crc-error.zip",
        "a ZIP member failing its CRC-32",
        zip_crc_error,
        error="CRC-32",
    ),
    Entry("bomb.zip", "a ZIP bomb", zip_bomb, error="decompression bomb"),
    Entry(
        "bomb-small-header.zip",
        "a ZIP bomb whose headers understate its size",
        zip_bomb_small_header,
        error="damaged",
    ),
    Entry("many-members.zip", "1,501 entries", zip_many_members, error="1,501 entries"),
    Entry(
        "no-data.zip",
        "a ZIP without CSV or JSON",
        zip_without_data,
        error="no data files",
    ),
    Entry(
        "encrypted.zip", "an encrypted member", zip_encrypted_flag, error="encrypted"
    ),
    Entry(
        "understated-count.zip",
        "1,100 entries, an end record that claims 1",
        zip_understated_count,
        error="more than the 1,000 allowed",
    ),
    Entry(
        "bad-offset.zip",
        "a directory entry pointing past the file's end",
        zip_bad_directory_offset,
        error="damaged",
    ),
    Entry("nested.jsonl", "a record nested 5,000 deep", deeply_nested_json_lines, 2, 1),
    Entry(
        "numbers.json",
        "a 5,000-digit id, NaN and 1e999 in an array",
        unrepresentable_numbers,
        3,
        3,
    ),
    Entry(
        "far-dates.csv",
        "times outside years 1 to 9999 in UTC",
        out_of_range_timestamps,
        2,
        3,
    ),
    Entry("utf16.csv", "a UTF-16 CSV", utf16_csv, error="UTF-16"),
    Entry("events.csv.gz", "gzip-compressed CSV", gzip_csv, 5),
    Entry("events.json.gz", "gzip-compressed JSON array", gzip_json, 5),
    Entry("events.jsonl.gz", "gzip-compressed JSON lines", gzip_json_lines, 4, 2),
    Entry("concatenated.csv.gz", "two gzip members in a row", gzip_concatenated, 6),
    Entry("cut-short.csv.gz", "gzip cut short", gzip_cut_short, error="cut short"),
    Entry("bomb.gz", "a gzip bomb", gzip_bomb, error="decompression bomb"),
    Entry("zip-in-gzip.gz", "a ZIP inside gzip", gzip_zip, error="another ZIP or gzip"),
]


def write_corpus(directory: Path) -> dict[str, dict[str, object]]:
    """Write every corpus file into ``directory``; return the expectations."""
    directory.mkdir(parents=True, exist_ok=True)
    expected: dict[str, dict[str, object]] = {}
    for entry in ENTRIES:
        (directory / entry.name).write_bytes(entry.build())
        expected[entry.name] = {
            "quirk": entry.quirk,
            "events": entry.events,
            "rejected": entry.rejected,
            "error": entry.error,
        }
    return expected


def main() -> None:
    expected = write_corpus(FILES)
    EXPECTED.write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")
    print(f"Wrote {len(expected)} files to {FILES}", file=sys.stderr)


if __name__ == "__main__":
    main()
