"""Cursor pagination of list endpoints (https://stripe.com/docs/api/pagination), for any
collection kept oldest first. PaymentIntents page with the same rules in payment_intents.py,
whose limit and `created` filter this module shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import resource_missing
from .form import Params
from .params import get_str, reject_unknown
from .payment_intents import _created_filter as created_filter
from .payment_intents import _created_matches as created_matches
from .payment_intents import _limit as limit_of

Json = dict[str, Any]

__all__ = ["created_filter", "created_matches", "list_of_charges", "page"]

# What a list of a charge's objects (refunds, disputes) accepts.
CHARGE_LIST_PARAMS = frozenset(
    {"charge", "created", "ending_before", "expand", "limit", "payment_intent", "starting_after"}
)


def page(
    oldest_first: Sequence[Json],
    params: Params,
    *,
    url: str,
    kind: str,
    wanted: Callable[[Json], bool] = lambda _: True,
) -> Json:
    """One page, newest first, after `starting_after` or before `ending_before`."""
    limit = limit_of(params)
    starting_after = get_str(params, "starting_after")
    ending_before = get_str(params, "ending_before")
    ids = [item["id"] for item in oldest_first]
    for cursor, name in ((starting_after, "starting_after"), (ending_before, "ending_before")):
        if cursor is not None and cursor not in ids:
            raise resource_missing(kind, cursor, name, status=400)
    if ending_before is not None:
        newer = [item for item in oldest_first[ids.index(ending_before) + 1 :] if wanted(item)]
        data = list(reversed(newer[:limit]))
        has_more = len(newer) > limit
    else:
        newest_first = list(reversed(oldest_first))
        start = 0
        if starting_after is not None:
            start = len(ids) - ids.index(starting_after)
        older = (item for item in newest_first[start:] if wanted(item))
        data = []
        has_more = False
        for item in older:
            if len(data) == limit:
                has_more = True
                break
            data.append(item)
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def list_of_charges(oldest_first: Sequence[Json], params: Params, *, url: str, kind: str) -> Json:
    """A page of objects that belong to a charge and its PaymentIntent (refunds, disputes),
    filtered by `charge`, `payment_intent` and `created`."""
    reject_unknown(params, CHARGE_LIST_PARAMS)
    charge = get_str(params, "charge")
    payment_intent = get_str(params, "payment_intent")
    bounds = created_filter(params)

    def wanted(item: Json) -> bool:
        if charge is not None and item["charge"] != charge:
            return False
        if payment_intent is not None and item["payment_intent"] != payment_intent:
            return False
        return created_matches(item["created"], bounds)

    return page(oldest_first, params, url=url, kind=kind, wanted=wanted)
