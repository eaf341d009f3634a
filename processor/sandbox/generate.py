"""Deterministic, realistic events exports for the sandbox and for tests.

The rows copy the dashboard's events CSV: the columns in ``EVENT_COLUMNS``,
timestamps such as ``2024-03-13 00:16:58+00:00`` and ``metadata`` written as
a Python dict literal (``repr`` of a ``dict``, as a Django export prints it).
Event ids are TypeIDs (``ext_evt_`` and a UUIDv7 in Crockford base32). Email
ids are TypeIDs with the prefix ``em_``, which is an assumption.

A seed fixes every byte of the output, ZIP archives included, because the
ZIP member's timestamp is a constant. Rows are produced one at a time, so
memory stays flat however many rows are written.
"""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import random
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TextIO

from processor.events import EVENT_COLUMNS

EXPORT_FORMATS = ("csv", "json")

# Event types and their weights per 1,000 rows, delivered most, as in a
# typical newsletter's event log. The weights are an estimate.
EVENT_TYPE_WEIGHTS = {
    "delivered": 600,
    "opened": 240,
    "clicked": 90,
    "bounced": 25,
    "unsubscribed": 15,
    "replied": 12,
    "rejected": 10,
    "complained": 8,
}

# The first event's time. Later events follow 1 ms to 5 s apart.
START_TIME = datetime(2024, 3, 13, tzinfo=UTC)
MAX_STEP_MS = 5_000

EMAIL_COUNT = 5

# Values for the metadata fields. A few contain a comma, a single quote, a
# double quote or non-ASCII text, so that CSV quoting and the dict literal's
# escaping are exercised.
COUNTRIES = (
    "",
    "",
    "United States",
    "Germany",
    "United Kingdom",
    "Brazil",
    "Japan",
    "Korea, Republic of",
    "Côte d'Ivoire",
    "Lao People's Democratic Republic",
)
CLIENT_OSES = ("Windows", "macOS", "iOS", "Android", "Linux", "")
CLIENT_NAMES = (
    "Gmail",
    "Apple Mail",
    "Outlook",
    "Thunderbird",
    "Yahoo! Mail",
    'Outlook "New"',
)
URLS = (
    "https://example.com/issues/42",
    "https://example.com/archive?utm_source=buttondown",
    "https://example.com/search?q=python,email&sort=new",
    "https://example.com/posts/what's-new",
)
BOUNCE_REASONS = (
    "550 5.1.1 User unknown",
    "552 5.2.2 Mailbox full",
    "550-5.1.1 The email account that you tried to reach does not exist, "
    "please check the recipient's address.",
    '554 5.7.1 Message rejected: "spam content detected"',
)
REJECT_REASONS = ("suppressed", "invalid_address", 'blocked "role" address')

_CROCKFORD = b"0123456789abcdefghjkmnpqrstvwxyz"
_STANDARD_BASE32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TO_CROCKFORD = bytes.maketrans(_STANDARD_BASE32, _CROCKFORD)

# Members larger than 2 GiB need ZIP64 headers, which zipfile writes for a
# streamed member only when force_zip64 is set. This byte count per row is
# above the largest row written here.
_MAX_ROW_BYTES = 512

_ZIP_DATE_TIME = (2024, 3, 13, 0, 0, 0)


def encode_typeid(prefix: str, value: int) -> str:
    """Encode a 128-bit integer as a TypeID such as ``exp_01hs...``.

    The suffix is 26 lowercase Crockford base32 characters, the first of
    which is always 0-7 because 26 characters hold 130 bits.
    """
    # base32 of 20 bytes is 32 characters. The 128-bit value sits in the
    # last 130 bits, so the first 6 characters are zero padding.
    encoded = base64.b32encode(value.to_bytes(20, "big"))[6:]
    return f"{prefix}_{encoded.translate(_TO_CROCKFORD).decode('ascii')}"


def uuid7_int(unix_ms: int, random_bits: int) -> int:
    """Return a UUIDv7 as an integer from a Unix time in ms and 74 random bits."""
    rand_a = random_bits >> 62
    rand_b = random_bits & ((1 << 62) - 1)

    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand_a & 0xFFF) << 64
    value |= 0b10 << 62
    return value | rand_b


def iter_event_rows(count: int, seed: int) -> Iterator[dict[str, str]]:
    """Yield ``count`` event rows, keyed by ``EVENT_COLUMNS``, for ``seed``.

    Event times increase strictly in ms, and event ids are unique because
    their UUIDv7 starts with that time. The ``timestamp`` column shows whole
    seconds, so it never decreases but may repeat.
    """
    if count < 0:
        raise ValueError(f"count must be 0 or more, not {count}")

    rng = random.Random(seed)
    start_ms = int(START_TIME.timestamp() * 1000)
    # The emails went out one an hour in the hours before the first event.
    email_ids = [
        encode_typeid(
            "em", uuid7_int(start_ms - hours * 3_600_000, rng.getrandbits(74))
        )
        for hours in range(EMAIL_COUNT, 0, -1)
    ]
    subscriber_count = max(1, count // 4)
    event_types = list(EVENT_TYPE_WEIGHTS)
    cumulative_weights = list(itertools.accumulate(EVENT_TYPE_WEIGHTS.values()))

    unix_ms = start_ms
    for index in range(count):
        unix_ms += rng.randint(1, MAX_STEP_MS)
        event_type = rng.choices(event_types, cum_weights=cumulative_weights)[0]
        subscriber = rng.randrange(subscriber_count)

        yield {
            "id": encode_typeid("ext_evt", uuid7_int(unix_ms, rng.getrandbits(74))),
            "token": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "email_id": email_ids[index * EMAIL_COUNT // count],
            "subscriber__email": f"reader{subscriber}@example.com",
            "event_type": event_type,
            "timestamp": _format_timestamp(unix_ms),
            "metadata": repr(_metadata(rng, event_type)),
        }


def write_events_csv(
    stream: TextIO, count: int, seed: int, columns: Sequence[str] | None = None
) -> None:
    """Write the header and ``count`` event rows as CSV to ``stream``.

    ``columns`` selects and orders the columns, all of ``EVENT_COLUMNS`` when
    None. Open files with ``newline=""`` so that the CSV line ends survive.
    """
    selected = _select_columns(columns)
    writer = csv.writer(stream)

    writer.writerow(selected)
    for row in iter_event_rows(count, seed):
        writer.writerow([row[name] for name in selected])


def write_events_json(
    stream: TextIO, count: int, seed: int, columns: Sequence[str] | None = None
) -> None:
    """Write ``count`` event rows to ``stream`` as a JSON array of objects.

    The objects have the CSV's keys and string values, so ``metadata`` is the
    same dict literal as in the CSV.
    """
    # NOTE: Buttondown does not document its JSON events export. Its real
    # shape may differ from this one, for example with metadata as an object.
    selected = _select_columns(columns)

    stream.write("[")
    for index, row in enumerate(iter_event_rows(count, seed)):
        stream.write(",\n" if index else "\n")
        record = {name: row[name] for name in selected}
        stream.write(json.dumps(record, ensure_ascii=False))
    stream.write("\n]\n")


def write_events_export(
    path: Path, count: int, seed: int, export_format: str = "csv"
) -> None:
    """Write a ZIP file at ``path`` with one member, ``events.csv`` or ``.json``."""
    write_export(path, ["events"], count, seed, export_format)


def write_export(
    path: Path,
    collections: Sequence[str],
    count: int,
    seed: int,
    export_format: str = "csv",
    columns: Sequence[str] | None = None,
) -> None:
    """Write a ZIP file at ``path`` with one member per collection.

    The ``events`` member contains ``count`` generated events, limited to
    ``columns`` when given. Every other collection gets an empty table: a
    CSV with the single header ``id``, or an empty JSON array.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(
            f"export format {export_format!r} is invalid; use 'csv' or 'json'"
        )

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for collection in dict.fromkeys(collections):
            info = zipfile.ZipInfo(f"{collection}.{export_format}", _ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            large = collection == "events" and count * _MAX_ROW_BYTES >= 1 << 31

            with archive.open(info, "w", force_zip64=large) as member:
                _write_member(member, collection, count, seed, export_format, columns)


def _write_member(
    member: IO[bytes],
    collection: str,
    count: int,
    seed: int,
    export_format: str,
    columns: Sequence[str] | None,
) -> None:
    text = io.TextIOWrapper(member, encoding="utf-8", newline="")

    if collection != "events":
        text.write("id\r\n" if export_format == "csv" else "[]\n")
    elif export_format == "csv":
        write_events_csv(text, count, seed, columns)
    else:
        write_events_json(text, count, seed, columns)

    # Detach so that the ZIP member is closed by its own context manager.
    text.flush()
    text.detach()


def _select_columns(columns: Sequence[str] | None) -> tuple[str, ...]:
    if columns is None:
        return EVENT_COLUMNS

    unknown = [name for name in columns if name not in EVENT_COLUMNS]
    if unknown or not columns:
        raise ValueError(
            f"columns {list(columns)!r} are invalid; choose one or more of "
            f"{', '.join(EVENT_COLUMNS)}"
        )
    return tuple(columns)


def _format_timestamp(unix_ms: int) -> str:
    moment = datetime.fromtimestamp(unix_ms // 1000, UTC)
    return moment.isoformat(sep=" ")


def _metadata(rng: random.Random, event_type: str) -> dict[str, str]:
    if event_type == "opened":
        return _client_metadata(rng)

    if event_type == "clicked":
        metadata = _client_metadata(rng)
        metadata["url"] = rng.choice(URLS)
        return metadata

    if event_type == "bounced":
        return {"reason": rng.choice(BOUNCE_REASONS)}

    if event_type == "rejected":
        return {"reason": rng.choice(REJECT_REASONS)}

    return {}


def _client_metadata(rng: random.Random) -> dict[str, str]:
    return {
        "country": rng.choice(COUNTRIES),
        "client_os": rng.choice(CLIENT_OSES),
        "client_name": rng.choice(CLIENT_NAMES),
    }
