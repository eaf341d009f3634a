"""Validation of ``POST /v1/exports`` request bodies, with the API's errors.

Schema errors get status 422 and a body in the pydantic shape that Buttondown
returns, ``{"detail": [{"type", "loc", "msg"}]}``, one item per problem.
A body that fits the schema but makes no sense gets status 400 and
``{"code", "detail"}`` with one of the codes ``collection_empty_invalid``,
``columns_empty_invalid`` or ``columns_invalid``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from processor.events import EVENT_COLUMNS
from processor.sandbox.generate import EXPORT_FORMATS

# The ExportCollection enum of Buttondown's OpenAPI spec, as published on
# 2026-08-22.
COLLECTIONS = (
    "subscribers",
    "emails",
    "events",
    "referrals",
    "surveys",
    "comments",
    "requests",
    "mentions",
    "conversations",
    "images",
    "stripe_subscriptions",
    "stripe_products",
    "stripe_customers",
    "stripe_prices",
    "stripe_charges",
)
REQUEST_FIELDS = ("collections", "format", "parameters", "columns")

# NOTE: the "payload" part of each error's loc is a guess at the name of the
# real API's body parameter. The types and messages are pydantic-core's.
_BODY_LOC: tuple[str, ...] = ("body", "payload")


class ApiResponse(msgspec.Struct):
    """Status, JSON-encodable body and extra headers of one API response."""

    status: int
    body: Any
    headers: dict[str, str] = {}


def validate_export_request(body: bytes) -> dict[str, Any] | ApiResponse:
    """Decode and check a create-export body.

    Returns the decoded request when it is valid, or else the 400 or 422
    response to send.
    """
    if not body.strip():
        return _unprocessable([_error("missing", (), "Field required")])

    try:
        request = msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        return _unprocessable(
            [_error("json_invalid", (), f"JSON decode error: {error}")]
        )

    errors = _schema_errors(request)
    if errors:
        return _unprocessable(errors)

    # _schema_errors returned nothing, so the request is a dict.
    valid_request: dict[str, Any] = request
    semantic_error = _semantic_error(valid_request)
    if semantic_error is not None:
        return semantic_error
    return valid_request


def _schema_errors(request: object) -> list[dict[str, Any]]:
    if not isinstance(request, dict):
        return [
            _error(
                "model_attributes_type",
                (),
                "Input should be a valid dictionary or object to extract fields from",
            )
        ]

    errors = [
        _error("extra_forbidden", (key,), "Extra inputs are not permitted")
        for key in request
        if key not in REQUEST_FIELDS
    ]

    if "collections" not in request:
        errors.append(_error("missing", ("collections",), "Field required"))
    else:
        errors += _list_errors(request["collections"], "collections", COLLECTIONS)

    export_format = request.get("format", "csv")
    if not isinstance(export_format, str) or export_format not in EXPORT_FORMATS:
        errors.append(_enum_error(("format",), EXPORT_FORMATS))

    parameters = request.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        errors.append(
            _error("dict_type", ("parameters",), "Input should be a valid dictionary")
        )

    columns = request.get("columns")
    if columns is not None:
        errors += _list_errors(columns, "columns", None)

    return errors


def _list_errors(
    value: object, field: str, choices: tuple[str, ...] | None
) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return [_error("list_type", (field,), "Input should be a valid list")]

    errors = []
    for index, item in enumerate(value):
        if choices is not None and item not in choices:
            errors.append(_enum_error((field, index), choices))
        elif not isinstance(item, str):
            errors.append(
                _error("string_type", (field, index), "Input should be a valid string")
            )
    return errors


def _semantic_error(request: dict[str, Any]) -> ApiResponse | None:
    collections: list[str] = request["collections"]
    columns: list[str] | None = request.get("columns")

    if not collections:
        return _bad_request(
            "collection_empty_invalid",
            "Choose at least one collection to export, such as 'events'.",
        )

    if columns is None:
        return None

    if not columns:
        return _bad_request(
            "columns_empty_invalid",
            "columns must not be empty; pass null to export every column.",
        )

    # Only the events collection's columns are known here, so columns for
    # other collections are accepted as given.
    unknown = [name for name in columns if name not in EVENT_COLUMNS]
    if collections == ["events"] and unknown:
        return _bad_request(
            "columns_invalid",
            f"Invalid columns for the events collection: {', '.join(unknown)}. "
            f"Valid columns are {', '.join(EVENT_COLUMNS)}.",
        )
    return None


def _error(kind: str, loc: tuple[str | int, ...], message: str) -> dict[str, Any]:
    return {"type": kind, "loc": [*_BODY_LOC, *loc], "msg": message}


def _enum_error(loc: tuple[str | int, ...], choices: tuple[str, ...]) -> dict[str, Any]:
    quoted = [f"'{choice}'" for choice in choices]
    expected = f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return _error("enum", loc, f"Input should be {expected}")


def _unprocessable(errors: list[dict[str, Any]]) -> ApiResponse:
    return ApiResponse(422, {"detail": errors})


def _bad_request(code: str, detail: str) -> ApiResponse:
    return ApiResponse(400, {"code": code, "detail": detail})
