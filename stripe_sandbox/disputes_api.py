"""GET /v1/disputes/{id} and GET /v1/disputes (https://stripe.com/docs/api/disputes/list)."""

from __future__ import annotations

from .errors import resource_missing
from .form import Params
from .listing import created_filter, created_matches, page
from .params import get_str, reject_unknown
from .store import AccountState, Json

_LIST_PARAMS = {
    "charge",
    "created",
    "ending_before",
    "expand",
    "limit",
    "payment_intent",
    "starting_after",
}


def get_dispute(state: AccountState, dispute_id: str) -> Json:
    dispute = state.disputes.get(dispute_id)
    if dispute is None:
        raise resource_missing("dispute", dispute_id, "dispute")
    return dispute


def retrieve(state: AccountState, dispute_id: str, params: Params) -> Json:
    reject_unknown(params, {"expand"})
    return get_dispute(state, dispute_id)


def list_disputes(state: AccountState, _: str, params: Params) -> Json:
    reject_unknown(params, _LIST_PARAMS)
    charge = get_str(params, "charge")
    payment_intent = get_str(params, "payment_intent")
    bounds = created_filter(params)

    def wanted(dispute: Json) -> bool:
        if charge is not None and dispute["charge"] != charge:
            return False
        if payment_intent is not None and dispute["payment_intent"] != payment_intent:
            return False
        return created_matches(dispute["created"], bounds)

    oldest_first = list(state.disputes.values())
    return page(oldest_first, params, url="/v1/disputes", kind="dispute", wanted=wanted)
