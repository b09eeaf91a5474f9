"""Cursor pagination of list endpoints (https://stripe.com/docs/api/pagination), for any
collection kept oldest first. PaymentIntents page with the same rules in payment_intents.py,
whose limit and `created` filter this module shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import resource_missing
from .form import Params
from .params import get_str
from .payment_intents import _created_filter as created_filter
from .payment_intents import _created_matches as created_matches
from .payment_intents import _limit as limit_of

Json = dict[str, Any]

__all__ = ["created_filter", "created_matches", "page"]


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
