"""GET /v1/customers (https://stripe.com/docs/api/customers/list). Apart from customers.py,
which payment_intents.py imports and listing.py needs in turn."""

from __future__ import annotations

from .form import Params
from .listing import created_filter, created_matches, page
from .params import get_str, reject_unknown
from .store import AccountState, Json

_LIST_PARAMS = {"created", "email", "ending_before", "expand", "limit", "starting_after"}


def list_customers(state: AccountState, _: str, params: Params) -> Json:
    """GET /v1/customers: newest first, optionally only those with `email` (exact match)."""
    reject_unknown(params, _LIST_PARAMS)
    email = get_str(params, "email")
    bounds = created_filter(params)

    def wanted(customer: Json) -> bool:
        if email is not None and customer["email"] != email:
            return False
        return created_matches(customer["created"], bounds)

    oldest_first = list(state.customers.values())
    return page(oldest_first, params, url="/v1/customers", kind="customer", wanted=wanted)
