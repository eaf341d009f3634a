"""Find the events data inside an export file, and check that it is whole.

An export file is a ZIP archive, a gzip file or plain text, detected from
its first bytes and never from its name. ``open_source`` picks the events
member of a ZIP archive and checks it against ``ParseLimits``. For the two
compressed forms it decompresses the data once to verify its CRC-32 and size
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
_DIRECTORY_HEADER = b"PK\x01\x02"
_DIRECTORY_HEADER_SIZE = 46
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
    if not path.is_file():
        raise ParseError(
            f"{path.name} is not a regular file (a directory, pipe or device); "
            "pass an export file."
        )
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
    except (OSError, ValueError) as error:
        # zipfile raises these for a directory whose offsets or UTF-8 names
        # are corrupt (UnicodeDecodeError is a ValueError).
        raise DamagedFile(
            f"{path.name} has a damaged ZIP directory ({type(error).__name__}: "
            f"{error}). Download the export again."
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
    directory of millions of entries costs gigabytes. The count in the end
    record can understate the entries, so they are also counted here, one
    header at a time, up to the limit.
    """
    directory = _central_directory(path)
    if directory is None:
        return

    declared, start, size = directory
    limit = limits.max_members
    counted = declared if declared > limit else _count_entries(path, start, size, limit)
    if counted > limit:
        raise LimitExceeded(
            f"{path.name} lists {counted:,} entries, more than the {limit:,} "
            "allowed; an events export holds a few. Raise "
            "PROCESSOR_MAX_ARCHIVE_MEMBERS if the file is trusted."
        )


def _central_directory(path: Path) -> tuple[int, int, int] | None:
    """Return the declared entry count, start and size of the directory.

    Returns ``None`` when the end record is missing, which zipfile reports.
    The start is found from where the end record sits, as zipfile does, so
    data prepended to the archive does not matter.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        tail_start = max(0, size - _END_SEARCH)
        file.seek(tail_start)
        tail = file.read()

        position = tail.rfind(_END_RECORD)
        if position < 0 or len(tail) - position < 22:
            return None
        count, directory_size = struct.unpack_from("<HI", tail, position + 10)
        record_start = tail_start + position
        if count != 0xFFFF and directory_size != 0xFFFFFFFF:
            return int(count), record_start - int(directory_size), int(directory_size)

        # ZIP64: a locator just before the end record points at the ZIP64
        # end record, which contains the 64-bit count and size.
        locator = position - 20
        if locator < 0 or tail[locator : locator + 4] != _ZIP64_LOCATOR:
            return None
        (record_offset,) = struct.unpack_from("<Q", tail, locator + 8)
        file.seek(record_offset)
        record = file.read(56)
        if len(record) < 56 or not record.startswith(_ZIP64_END_RECORD):
            return None
        count64, size64 = struct.unpack_from("<QQ", record, 32)
        return int(count64), int(record_offset - size64), int(size64)


def _count_entries(path: Path, start: int, size: int, limit: int) -> int:
    """Count the directory's headers, stopping at ``limit`` + 1."""
    count = 0
    position = max(0, start)
    end = position + size
    with path.open("rb") as file:
        while count <= limit and position + _DIRECTORY_HEADER_SIZE <= end:
            file.seek(position)
            header = file.read(_DIRECTORY_HEADER_SIZE)
            if len(header) < _DIRECTORY_HEADER_SIZE or not header.startswith(
                _DIRECTORY_HEADER
            ):
                break
            name, extra, comment = struct.unpack_from("<HHH", header, 28)
            position += _DIRECTORY_HEADER_SIZE + name + extra + comment
            count += 1
    return count


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
        file_size = os.fstat(file.fileno()).st_size
        if not 0 <= member.header_offset < file_size:
            raise DamagedFile(
                f"{name} is damaged: its data would start at offset "
                f"{member.header_offset:,}, outside the file of {file_size:,} "
                "bytes. Download the export again."
            )
        file.seek(member.header_offset)
        header = file.read(_LOCAL_HEADER_SIZE)

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
