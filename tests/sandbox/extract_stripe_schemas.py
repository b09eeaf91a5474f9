"""Extract, from Stripe's OpenAPI spec, the JSON Schemas of the objects the sandbox returns,
into tests/sandbox/stripe_schemas.json (test_contract.py validates against that file).

    python tests/sandbox/extract_stripe_schemas.py SPEC3_JSON FIXTURES3_JSON [--source TEXT]

SPEC3_JSON is openapi/spec3.json and FIXTURES3_JSON openapi/fixtures3.json of the repository
stripe/openapi. From the spec it takes each object's schema: `$ref`s are resolved inline, down
to MAX_DEPTH levels (deeper, and any other API resource such as an expanded customer, is left
as "any object"); OpenAPI's `nullable: true` becomes a JSON Schema type that admits null;
descriptions and `x-` extensions are dropped, and so are the sub-objects of payment method
types other than `card`, the only type the sandbox knows. From the fixtures (Stripe's example
of each object in the newest API version) it takes the list of fields each object has, since
the spec may be older than the fixtures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

OUT = Path(__file__).with_name("stripe_schemas.json")
OBJECTS = ("charge", "customer", "dispute", "error", "payment_intent", "payment_method", "refund")
# The list endpoints whose answer (a list object) the sandbox serves, by object.
LISTS = {
    "customer": "/v1/customers",
    "dispute": "/v1/disputes",
    "payment_intent": "/v1/payment_intents",
    "refund": "/v1/refunds",
}
MAX_DEPTH = 3
_KEPT = {
    "additionalProperties",
    "anyOf",
    "enum",
    "items",
    "maxLength",
    "nullable",
    "properties",
    "required",
    "type",
}


class Extractor:
    def __init__(self, spec: Schema) -> None:
        self._schemas: dict[str, Schema] = spec["components"]["schemas"]
        self._paths: dict[str, Any] = spec["paths"]
        types = self._schemas["payment_method"]["properties"]["type"]["enum"]
        self._skipped: frozenset[str] = frozenset(types) - {"card"}

    def object_schema(self, name: str) -> Schema:
        return self._convert(self._schemas[name], depth=0)

    def list_schema(self, path: str) -> Schema:
        answer = self._paths[path]["get"]["responses"]["200"]["content"]["application/json"]
        return self._convert(answer["schema"], depth=0)

    def _convert(self, node: Schema, depth: int) -> Schema:
        ref = node.get("$ref")
        if ref is not None:
            name = ref.rsplit("/", 1)[1]
            target = self._schemas[name]
            if depth > 0 and ("x-resourceId" in target or depth >= MAX_DEPTH):
                return {"type": "object"}
            return self._convert(target, depth)
        out: Schema = {}
        for key, value in node.items():
            if key not in _KEPT:
                continue
            if key == "properties":
                out[key] = {
                    k: self._convert(v, depth + 1)
                    for k, v in value.items()
                    if k not in self._skipped
                }
            elif key == "items":
                out[key] = self._convert(value, depth + 1)
            elif key == "anyOf":
                out[key] = [self._convert(v, depth) for v in value]
            elif key != "nullable":
                out[key] = value
        if node.get("nullable"):
            out = _nullable(out)
        return out


def _nullable(schema: Schema) -> Schema:
    """OpenAPI 3.0's `nullable: true` in JSON Schema terms."""
    if "enum" in schema:
        schema = {**schema, "enum": [*schema["enum"], None]}
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def extract(spec: Schema, fixtures: Schema, source: str) -> Schema:
    extractor = Extractor(spec)
    resources = fixtures["resources"]
    return {
        "source": source,
        "objects": {name: extractor.object_schema(name) for name in OBJECTS},
        "lists": {name: extractor.list_schema(path) for name, path in LISTS.items()},
        "fields": {name: sorted(resources[name]) for name in OBJECTS if name in resources},
    }


def dump(result: Schema) -> str:
    """JSON with one line per schema, so that a re-extraction diffs object by object."""
    parts = []
    for key, value in sorted(result.items()):
        if isinstance(value, dict):
            inner = ",\n".join(
                f"  {json.dumps(name)}: {json.dumps(item, sort_keys=True)}"
                for name, item in sorted(value.items())
            )
            parts.append(f" {json.dumps(key)}: {{\n{inner}\n }}")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="openapi/spec3.json of stripe/openapi")
    parser.add_argument("fixtures", type=Path, help="openapi/fixtures3.json of stripe/openapi")
    parser.add_argument("--source", default="stripe/openapi", help="where the files came from")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    fixtures = json.loads(args.fixtures.read_text())
    result = extract(spec, fixtures, args.source)
    args.out.write_text(dump(result))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
