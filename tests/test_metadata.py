import pytest

from processor.metadata import parse_metadata


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("{}", {}),
        (
            "{'country': '', 'client_os': 'Windows'}",
            {"country": "", "client_os": "Windows"},
        ),
        ('{"country": "FR"}', {"country": "FR"}),
        ("{\"it's\": 'a \\'quoted\\' value'}", {"it's": "a 'quoted' value"}),
        (
            "{'url': 'https://example.com/?a=1,b=2'}",
            {"url": "https://example.com/?a=1,b=2"},
        ),
        (
            "{'n': 3, 'x': 1.5, 'ok': True, 'no': False, 'none': None}",
            {"n": 3, "x": 1.5, "ok": True, "no": False, "none": None},
        ),
        ("{'a': 'b',}", {"a": "b"}),
        ("{ 'a' : 'b' , 'c':'d' }", {"a": "b", "c": "d"}),
        ("{'snow': '\\u2603'}", {"snow": "\u2603"}),
    ],
)
def test_parse_metadata_accepts(text: str, expected: dict[str, object]) -> None:
    assert parse_metadata(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "{'a': __import__('os')}",
        "{'a': ['nested']}",
        "{'a': {'b': 'c'}}",
        "{'a' 'b'}",
        "{'a': 'b'} trailing",
        "{'a': 'unterminated}",
        "['a', 'b']",
        "{1: 'a'}",
    ],
)
def test_parse_metadata_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_metadata(text)


@pytest.mark.parametrize(
    "text", ["{'k': 'a\\x'}", "{'k': 'a\\N{nope}'}", "{'k\\u12': 'v'}"]
)
def test_parse_metadata_invalid_escape(text: str) -> None:
    with pytest.raises(ValueError, match="invalid escape"):
        parse_metadata(text)


def test_parse_metadata_non_latin_with_escape() -> None:
    assert parse_metadata("{'city': 'Zürich \\'Nord\\' 東京'}") == {
        "city": "Zürich 'Nord' 東京"
    }
