"""Safe parsing of the ``metadata`` column of an events export.

Buttondown's dashboard export writes metadata as a Python dict literal with
single quotes (``{'client_os': 'Windows', 'country': ''}``), while the API
returns JSON objects. Both forms are read here without evaluating code: the
literal form is scanned token by token and only flat dicts whose keys are
strings and whose values are strings, numbers, booleans or ``None`` are
accepted.
"""

from __future__ import annotations

import math
import re

import msgspec

from processor.events import MetadataValue

_STRING = r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\""""
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_PAIR = re.compile(
    rf"\s*(?P<key>{_STRING})\s*:\s*"
    rf"(?P<value>{_STRING}|{_NUMBER}|True|False|None)\s*(?P<end>,|\}})"
)
_EMPTY_END = re.compile(r"\s*\}\s*$")

_json_decoder = msgspec.json.Decoder(dict[str, MetadataValue])

# Parsed cells by their text. Exports repeat the same few metadata values
# (client names, countries, bounce reasons) across millions of rows, so most
# cells are parsed once. Only short cells are kept, and the cache is emptied
# when full, so it contains at most _CACHE_SIZE * _CACHE_KEY_MAX characters.
_CACHE_SIZE = 4096
_CACHE_KEY_MAX = 512
_cache: dict[str, dict[str, MetadataValue]] = {}


def parse_metadata(text: str) -> dict[str, MetadataValue]:
    """Parse a metadata cell, raising ``ValueError`` with the reason.

    An empty cell is an empty dict. Each call returns a new dict, so a
    caller may change it without affecting other events.
    """
    cached = _cache.get(text)
    if cached is not None:
        return cached.copy()

    result = _parse(text)
    for key, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            # JSON has no such number, so it could not be archived as given.
            raise ValueError(
                f"metadata {key!r} is {value}, which is not a finite number"
            )
    if len(text) <= _CACHE_KEY_MAX:
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[text] = result.copy()
    return result


def _parse(text: str) -> dict[str, MetadataValue]:
    text = text.strip()
    if not text:
        return {}

    if not text.startswith("{"):
        raise ValueError(f"metadata does not start with '{{': {_excerpt(text)}")

    if '"' not in text and "\\" not in text:
        # Every quote is then a single quote that opens or closes a string
        # without escapes, so the literal reads as JSON once the quotes are
        # swapped. JSON rejects what Python alone allows (True, None, a
        # trailing comma), which the token scanner below then reads.
        try:
            return _json_decoder.decode(text.replace("'", '"'))
        except msgspec.DecodeError:
            pass
    elif text.startswith('{"'):
        try:
            return _json_decoder.decode(text)
        except msgspec.DecodeError:
            # Fall through: a Python literal may also start with a double quote.
            pass

    return _parse_literal(text)


def _parse_literal(text: str) -> dict[str, MetadataValue]:
    result: dict[str, MetadataValue] = {}
    position = 1

    if _EMPTY_END.match(text, position):
        return result

    while True:
        match = _PAIR.match(text, position)
        if match is None:
            raise ValueError(
                f"metadata is not a flat dict literal near offset {position}: "
                f"{_excerpt(text[position:])}"
            )

        key = _string_value(match["key"])
        result[key] = _scalar_value(match["value"])
        position = match.end()

        if match["end"] == "}":
            break
        if _EMPTY_END.match(text, position):
            # A trailing comma before the closing brace, as Python allows.
            return result

    if text[position:].strip():
        raise ValueError(f"metadata has text after its closing brace: {_excerpt(text)}")
    return result


def _string_value(token: str) -> str:
    body = token[1:-1]
    if "\\" not in body:
        return body

    # Decode Python's backslash escapes (\n, \', \xhh, \uXXXX, \N{...})
    # with the unicode_escape codec: it reads escapes and nothing else, so
    # no code is compiled. Characters outside Latin-1 pass through as their
    # own backslash escapes first.
    escaped = body.encode("latin-1", "backslashreplace")
    try:
        return escaped.decode("unicode_escape")
    except UnicodeDecodeError:
        raise ValueError(
            f"metadata has an invalid escape in the string {_excerpt(token)}"
        ) from None


def _scalar_value(token: str) -> MetadataValue:
    first = token[0]
    if first in "'\"":
        return _string_value(token)
    if token == "True":
        return True
    if token == "False":
        return False
    if token == "None":
        return None
    if "." in token or "e" in token or "E" in token:
        return float(token)
    return int(token)


def _excerpt(text: str, limit: int = 60) -> str:
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + "..."
