"""The plugin guide documents every public part of the handler API."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

import processor.plugins.api
import processor.testing
from processor.events import Event
from processor.plugins import Handler, RunInfo

GUIDE = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()

PUBLIC_NAMES = sorted(
    {
        *processor.plugins.api.__all__,
        *processor.testing.__all__,
        *(name for name in vars(Handler) if not name.startswith("_")),
        *(field.name for field in msgspec.structs.fields(RunInfo)),
        *(field.name for field in msgspec.structs.fields(Event)),
        "idempotency_key",
    }
)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_guide_mentions(name: str) -> None:
    assert f"`{name}" in GUIDE or f".{name}`" in GUIDE
