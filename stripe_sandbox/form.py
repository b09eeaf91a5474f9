"""Decoding of Stripe's form encoding: `metadata[k]=v`, `expand[0]=x`, `expand[]=x`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from .errors import invalid_request

Params = dict[str, Any]


def parse_pairs(raw: str) -> list[tuple[str, str]]:
    return parse_qsl(raw, keep_blank_values=True)


def _split_key(key: str) -> list[str]:
    head, bracket, rest = key.partition("[")
    if not bracket:
        return [key]
    parts = [head]
    for piece in ("[" + rest).split("]")[:-1]:
        if not piece.startswith("["):
            raise invalid_request(f"Invalid parameter name: {key}", param=key)
        parts.append(piece[1:])
    return parts


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k == "" or k.isdigit() for k in node):
        items = sorted(node.items(), key=lambda kv: -1 if kv[0] == "" else int(kv[0]))
        out: list[Any] = []
        for _, value in items:
            if isinstance(value, list) and "" in node:
                out.extend(_listify(v) for v in value)
            else:
                out.append(_listify(value))
        return out
    return {k: _listify(v) for k, v in node.items()}


def decode(pairs: list[tuple[str, str]]) -> Params:
    """Turn flat form pairs into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = _split_key(key)
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        last = parts[-1]
        if last == "":
            bucket = node.setdefault("", [])
            if isinstance(bucket, list):
                bucket.append(value)
        else:
            node[last] = value
    result = _listify(root)
    assert isinstance(result, dict)
    return result
