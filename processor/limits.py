"""Limits that keep a hostile export file from exhausting memory, disk or time."""

from __future__ import annotations

import dataclasses

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclasses.dataclass(frozen=True)
class ParseLimits:
    """Bounds checked while an export file is opened and read.

    Fields:
        max_uncompressed_bytes: the largest events member or gzip stream, in
            bytes after decompression. An events CSV takes about 200 bytes
            per event, so the default of 64 GiB fits some 300 million events.
        max_compression_ratio: the largest ratio of decompressed to
            compressed bytes. Events CSVs compress about 4 to 1 and very
            repetitive files about 20 to 1, while a ZIP bomb reaches 1,000
            to 1. The ratio is checked only past ``RATIO_GRACE_BYTES``.
        max_members: the maximum number of entries a ZIP archive may list.
        max_field_size: the longest CSV field or metadata value, in
            characters, 64 times the csv module's default. A CSV line and a
            JSON record may be twice as long. Python needs up to about 25
            bytes per character to hold a line of many tiny fields, so the
            default keeps one line under about 50 MiB of memory.
    """

    max_uncompressed_bytes: int = 64 * GiB
    max_compression_ratio: int = 100
    max_members: int = 1_000
    max_field_size: int = 1 * MiB

    @property
    def max_record_size(self) -> int:
        """The longest CSV line or JSON record, in characters or bytes."""
        return 2 * self.max_field_size


# The largest max_field_size accepted: the csv module stores its limit in a
# C long, which is 32 bits on some platforms.
MAX_FIELD_SIZE_LIMIT = 256 * MiB

# Decompressed bytes produced before the compression ratio is checked, so a
# small, very repetitive file is not taken for a bomb.
RATIO_GRACE_BYTES = 4 * MiB
