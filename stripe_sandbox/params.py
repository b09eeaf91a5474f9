"""Typed reads of decoded form parameters, with Stripe's validation errors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import invalid_request, parameter_missing
from .form import Params

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def reject_unknown(params: Params, allowed: Iterable[str]) -> None:
    allowed_set = set(allowed)
    for name in params:
        if name not in allowed_set:
            raise invalid_request(
                f"Received unknown parameter: {name}", param=name, code="parameter_unknown"
            )


def get_str(params: Params, name: str, *, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise parameter_missing(name)
        return None
    if not isinstance(value, str):
        raise invalid_request(
            f"Invalid string: {value!r}", param=name, code="parameter_invalid_string"
        )
    return value


def get_int(params: Params, name: str, *, required: bool = False) -> int | None:
    raw = get_str(params, name, required=required)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise invalid_request(
            f"Invalid integer: {raw}", param=name, code="parameter_invalid_integer"
        ) from None


def get_bool(params: Params, name: str) -> bool:
    raw = get_str(params, name)
    if raw is None:
        return False
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise invalid_request(f"Invalid boolean: {raw}", param=name, code="parameter_invalid_boolean")


def get_choice(params: Params, name: str, choices: Iterable[str]) -> str | None:
    raw = get_str(params, name)
    options = list(choices)
    if raw is not None and raw not in options:
        raise invalid_request(
            f"Invalid {name}: must be one of {', '.join(options)}",
            param=name,
            code="parameter_invalid_string",
        )
    return raw


def get_metadata(params: Params) -> dict[str, str]:
    raw = params.get("metadata")
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, dict):
        raise invalid_request(
            "Invalid metadata: metadata must be a hash of keys and values.", param="metadata"
        )
    if len(raw) > 50:
        raise invalid_request("Metadata can have at most 50 keys.", param="metadata")
    metadata: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise invalid_request(
                f"Invalid value for metadata[{key}]: must be a string.",
                param=f"metadata[{key}]",
            )
        if len(key) > 40:
            raise invalid_request(
                f"Metadata key '{key}' exceeds the limit of 40 characters.",
                param=f"metadata[{key}]",
            )
        if len(value) > 500:
            raise invalid_request(
                f"Metadata value for '{key}' exceeds the limit of 500 characters.",
                param=f"metadata[{key}]",
            )
        if value != "":
            metadata[key] = value
    return metadata


def update_metadata(metadata: dict[str, str], params: Params) -> None:
    """Apply an update's `metadata` to `metadata`: keys are set, a key sent empty is deleted,
    and `metadata=""` deletes them all (https://stripe.com/docs/api/metadata)."""
    raw = params.get("metadata")
    if raw is None:
        return
    if raw == "":
        metadata.clear()
        return
    new_values = get_metadata(params)  # a dict from here on
    merged = {key: value for key, value in metadata.items() if key not in raw}
    merged.update(new_values)
    if len(merged) > 50:
        raise invalid_request("Metadata can have at most 50 keys.", param="metadata")
    metadata.clear()
    metadata.update(merged)


def get_expand(params: Params) -> list[str]:
    raw: Any = params.get("expand")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return list(raw)
    raise invalid_request("Invalid array", param="expand")
