"""Find the events data inside an export file, and check that it is whole.

An export file is a ZIP archive, a gzip file or plain text, detected from
its first bytes and never from its name. ``open_source`` picks the events
member of a ZIP archive, checks it against ``ParseLimits``, and for the two
compressed forms decompresses the data once to verify its CRC-32 and size
before anything reads it, so a cut or corrupt file fails before the first
event reaches a plugin.

Member names are only shown in messages: nothing is extracted, and no
member name is used as a file path.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from processor.errors import DamagedFile, LimitExceeded, ParseError
from processor.inflate import GZIP_MAGIC, DecompressingReader, Method, verify
from processor.limits import RATIO_GRACE_BYTES, ParseLimits

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")

# Member name endings that may contain events, and the base name preferred
# when an archive contains several (as an export of more than one collection does).
DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".ndjson")
EVENTS_STEM = "events"

# ZIP compression methods read here: stored and deflate. Buttondown's and
# every common tool's ZIP files use deflate.
_METHODS: dict[int, Method] = {zipfile.ZIP_STORED: "stored", 8: "deflate"}

_END_RECORD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_END_RECORD = b"PK\x06\x06"
_LOCAL_HEADER = b"PK\x03\x04"
_LOCAL_HEADER_SIZE = 30
# The end record is 22 bytes followed by a comment of up to 65,535 bytes.
_END_SEARCH = 22 + 65_535


@dataclasses.dataclass(frozen=True)
class Source:
    """The events data of an export file.

    Fields:
        name: the file name, with ``:member`` added for a ZIP member; used in
            messages and in the rejects file.
        open: returns a new raw stream of the decompressed bytes.
        verified: whether the data was read whole and passed its CRC-32 and
            size checks before ``open_source`` returned.
    """

    name: str
    open: Callable[[], BinaryIO]
    verified: bool


def open_source(path: Path, limits: ParseLimits) -> Source:
    """Return the events data of the export file at ``path``.

    Raises ``DamagedFile`` for a cut or corrupt file, ``LimitExceeded`` for
    one that breaks ``limits``, and ``ParseError`` for an archive without a
    single events member.
    """
    with path.open("rb") as file:
        head = file.read(4)

    if head in ZIP_MAGIC:
        return _zip_source(path, limits)

    if head.startswith(GZIP_MAGIC):

        def open_gzip() -> BinaryIO:
            return _reader_for(path, 0, "gzip", path.name, limits)

        with open_gzip() as reader:
            verify(reader)  # type: ignore[arg-type]
        return Source(path.name, open_gzip, verified=True)

    def open_plain() -> BinaryIO:
        return path.open("rb", buffering=0)

    return Source(path.name, open_plain, verified=False)


def display_name(name: str) -> str:
    """Return a member name as safe to print: as given, or quoted if odd."""
    if name.isprintable() and len(name) <= 200:
        return name
    return repr(name[:200])


def _zip_source(path: Path, limits: ParseLimits) -> Source:
    _check_entry_count(path, limits)

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise DamagedFile(
            f"{path.name} is not a whole ZIP archive ({error}), so it was "
            "probably cut short. Download the export again."
        ) from None

    with archive:
        member = _events_member(archive, path.name)

    name = f"{path.name}:{display_name(member.filename)}"
    method = _check_member(member, name, limits)
    data_offset = _data_offset(path, member, name)

    def open_member() -> BinaryIO:
        return _reader_for(
            path,
            data_offset,
            method,
            name,
            limits,
            compressed_size=member.compress_size,
            expected_crc=member.CRC,
            expected_size=member.file_size,
        )

    with open_member() as reader:
        verify(reader)  # type: ignore[arg-type]
    return Source(name, open_member, verified=True)


def _reader_for(
    path: Path,
    offset: int,
    method: Method,
    name: str,
    limits: ParseLimits,
    **expected: int,
) -> BinaryIO:
    file = path.open("rb")
    try:
        file.seek(offset)
        return DecompressingReader(  # type: ignore[return-value]
            file, method=method, name=name, limits=limits, **expected
        )
    except BaseException:
        file.close()
        raise


def _check_entry_count(path: Path, limits: ParseLimits) -> None:
    """Raise ``LimitExceeded`` before zipfile reads an oversized directory.

    zipfile builds an object per entry when it opens an archive, so a
    directory of millions of entries costs gigabytes. The count is read
    from the end record first.
    """
    count = _entry_count(path)
    if count is not None and count > limits.max_members:
        raise LimitExceeded(
            f"{path.name} lists {count:,} entries, more than the "
            f"{limits.max_members:,} allowed; an events export holds a few. "
            "Raise PROCESSOR_MAX_ARCHIVE_MEMBERS if the file is trusted."
        )


def _entry_count(path: Path) -> int | None:
    """Return the entry count of the ZIP end record, or ``None`` if absent."""
    size = path.stat().st_size
    with path.open("rb") as file:
        start = max(0, size - _END_SEARCH)
        file.seek(start)
        tail = file.read()

        position = tail.rfind(_END_RECORD)
        if position < 0 or len(tail) - position < 22:
            return None
        (count,) = struct.unpack_from("<H", tail, position + 10)
        if count != 0xFFFF:
            return int(count)

        # ZIP64: a locator just before the end record points at the ZIP64
        # end record, which contains the 64-bit count.
        locator = position - 20
        if locator < 0 or tail[locator : locator + 4] != _ZIP64_LOCATOR:
            return None
        (record_offset,) = struct.unpack_from("<Q", tail, locator + 8)
        file.seek(record_offset)
        record = file.read(56)
        if len(record) < 56 or not record.startswith(_ZIP64_END_RECORD):
            return None
        (count64,) = struct.unpack_from("<Q", record, 32)
        return int(count64)


def _events_member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    candidates = [
        info
        for info in archive.infolist()
        if not info.is_dir()
        and info.filename.lower().endswith(DATA_SUFFIXES)
        and not info.filename.startswith("__MACOSX/")
        and not os.path.basename(info.filename).startswith(".")
    ]
    if len(candidates) == 1:
        return candidates[0]

    named = [info for info in candidates if _stem(info.filename) == EVENTS_STEM]
    if len(named) == 1:
        return named[0]

    listed = [display_name(info.filename) for info in archive.infolist()[:10]]
    if len(archive.infolist()) > 10:
        listed.append(f"and {len(archive.infolist()) - 10:,} more")
    found = ", ".join(listed) or "no members"
    reason = "several" if candidates else "no"
    raise ParseError(
        f"{name} contains {reason} data files to choose from ({found}). An "
        "events export ZIP holds one CSV or JSON file, or one named "
        "events.csv, events.json or events.jsonl."
    )


def _stem(filename: str) -> str:
    base = filename.rsplit("/", 1)[-1].lower()
    return base.rsplit(".", 1)[0]


def _check_member(member: zipfile.ZipInfo, name: str, limits: ParseLimits) -> Method:
    if member.flag_bits & 0x1:
        raise ParseError(
            f"{name} is encrypted. Export the events again without a password."
        )

    method = _METHODS.get(member.compress_type)
    if method is None:
        raise ParseError(
            f"{name} uses ZIP compression method {member.compress_type}, which "
            "is not supported; only stored (0) and deflate (8) are. Re-create "
            "the archive with deflate, for example with `zip`."
        )

    if member.file_size > limits.max_uncompressed_bytes:
        raise LimitExceeded(
            f"{name} declares {member.file_size:,} bytes, more than the "
            f"{limits.max_uncompressed_bytes:,} allowed. Raise "
            "PROCESSOR_MAX_UNCOMPRESSED_BYTES if the file is trusted."
        )

    ratio_limit = limits.max_compression_ratio
    if member.file_size > RATIO_GRACE_BYTES and member.file_size > (
        ratio_limit * max(member.compress_size, 1)
    ):
        raise LimitExceeded(
            f"{name} declares {member.file_size:,} bytes from "
            f"{member.compress_size:,} compressed, more than {ratio_limit} "
            "times, as a decompression bomb does. Raise "
            "PROCESSOR_MAX_COMPRESSION_RATIO if the file is trusted."
        )
    return method


def _data_offset(path: Path, member: zipfile.ZipInfo, name: str) -> int:
    """Return where the member's compressed bytes start in the file."""
    with path.open("rb") as file:
        file.seek(member.header_offset)
        header = file.read(_LOCAL_HEADER_SIZE)
        file_size = os.fstat(file.fileno()).st_size

    if len(header) < _LOCAL_HEADER_SIZE or not header.startswith(_LOCAL_HEADER):
        raise DamagedFile(
            f"{name} has no valid local header at offset {member.header_offset}. "
            "Download the export again."
        )

    name_length, extra_length = struct.unpack_from("<HH", header, 26)
    offset = int(member.header_offset + _LOCAL_HEADER_SIZE + name_length + extra_length)
    if offset + member.compress_size > file_size:
        raise DamagedFile(
            f"{name} was cut short: its data needs {member.compress_size:,} "
            f"bytes from offset {offset:,}, but the file ends at {file_size:,}. "
            "Download the export again."
        )
    return offset
