"""GET /v1/disputes/{id} and GET /v1/disputes (https://stripe.com/docs/api/disputes/list)."""

from __future__ import annotations

from .errors import resource_missing
from .form import Params
from .listing import list_of_charges
from .params import reject_unknown
from .store import AccountState, Json


def get_dispute(state: AccountState, dispute_id: str) -> Json:
    dispute = state.disputes.get(dispute_id)
    if dispute is None:
        raise resource_missing("dispute", dispute_id, "dispute")
    return dispute


def retrieve(state: AccountState, dispute_id: str, params: Params) -> Json:
    reject_unknown(params, {"expand"})
    return get_dispute(state, dispute_id)


def list_disputes(state: AccountState, _: str, params: Params) -> Json:
    oldest_first = list(state.disputes.values())
    return list_of_charges(oldest_first, params, url="/v1/disputes", kind="dispute")
