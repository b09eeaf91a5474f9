"""A subset of Stripe's Search Query Language (https://stripe.com/docs/search#search-query-language).

Supported: clauses `field:'value'`, `metadata['key']:'value'`, numeric `field>N` (also
`<`, `>=`, `<=`), negation with a leading `-`, and clauses joined by all-AND or all-OR.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import invalid_request

Predicate = Callable[[dict[str, Any]], bool]

_CLAUSE = re.compile(
    r"""\s*(?P<neg>-)?
        (?P<field>metadata\[(?P<q1>['"])(?P<mkey>[^'"]+)(?P=q1)\]|[a-z_]+)
        \s*(?P<op>>=|<=|:|>|<)\s*
        (?:(?P<q2>['"])(?P<sval>(?:\\.|(?!(?P=q2)).)*)(?P=q2)|(?P<nval>-?\d+)|(?P<null>null))
        \s*""",
    re.VERBOSE,
)
_JOIN = re.compile(r"(AND|OR)\s")

_STRING_FIELDS = {"customer", "status", "currency"}
_NUMBER_FIELDS = {"amount", "created"}


def _invalid(query: str, why: str) -> Exception:
    return invalid_request(f"Invalid search query '{query}': {why}", param="query")


def _clause_predicate(query: str, match: re.Match[str]) -> Predicate:
    field = match.group("field")
    op = match.group("op")
    negate = match.group("neg") is not None
    raw_string = match.group("sval")
    number = match.group("nval")
    wants_null = match.group("null") is not None

    if match.group("mkey") is not None or field in _STRING_FIELDS:
        if op != ":":
            raise _invalid(query, f"`{field}` only supports the `:` operator")
        key = match.group("mkey")
        wanted = None if wants_null else (raw_string if raw_string is not None else number)
        if wanted is not None:
            wanted = wanted.replace("\\'", "'").replace('\\"', '"')

        def equals(snapshot: dict[str, Any]) -> bool:
            value = snapshot["metadata"].get(key) if key is not None else snapshot.get(field)
            return value == wanted

        test = equals
    elif field in _NUMBER_FIELDS:
        if number is None:
            raise _invalid(query, f"`{field}` needs a number")
        bound = int(number)
        compare: dict[str, Callable[[int], bool]] = {
            ":": lambda v: v == bound,
            ">": lambda v: v > bound,
            "<": lambda v: v < bound,
            ">=": lambda v: v >= bound,
            "<=": lambda v: v <= bound,
        }
        check = compare[op]

        def numeric(snapshot: dict[str, Any]) -> bool:
            return check(int(snapshot[field]))

        test = numeric
    else:
        raise _invalid(query, f"`{field}` is not a supported search field")

    if negate:
        return lambda snapshot: not test(snapshot)
    return test


def compile_query(query: str) -> Predicate:
    """Parse a search query into a predicate over indexed snapshots."""
    pos = 0
    predicates: list[Predicate] = []
    joins: set[str] = set()
    while True:
        match = _CLAUSE.match(query, pos)
        if match is None:
            raise _invalid(query, f"cannot parse at position {pos}")
        predicates.append(_clause_predicate(query, match))
        pos = match.end()
        if pos >= len(query):
            break
        join = _JOIN.match(query, pos)
        if join is None:
            raise _invalid(query, f"expected AND or OR at position {pos}")
        joins.add(join.group(1))
        pos = join.end()
    if len(joins) > 1:
        raise _invalid(query, "mixing AND and OR is not supported")
    if joins == {"OR"}:
        return lambda snapshot: any(p(snapshot) for p in predicates)
    return lambda snapshot: all(p(snapshot) for p in predicates)
