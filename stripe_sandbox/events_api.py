"""GET /v1/events and /v1/events/{id} (https://stripe.com/docs/api/events/list)."""

from __future__ import annotations

from .errors import resource_missing
from .events import type_matches
from .form import Params
from .listing import created_filter, created_matches, page
from .params import get_str, reject_unknown
from .store import AccountState, Json

_LIST_PARAMS = {
    "created",
    "ending_before",
    "expand",
    "limit",
    "starting_after",
    "type",
    "types",
}


def retrieve(state: AccountState, event_id: str, params: Params) -> Json:
    reject_unknown(params, {"expand"})
    event = state.events.get(event_id)
    if event is None:
        raise resource_missing("event", event_id, "id")
    return event


def list_events(state: AccountState, _: str, params: Params) -> Json:
    reject_unknown(params, _LIST_PARAMS)
    wanted_type = get_str(params, "type")
    raw_types = params.get("types")
    types = [raw_types] if isinstance(raw_types, str) else list(raw_types or [])
    bounds = created_filter(params)

    def wanted(event: Json) -> bool:
        if wanted_type is not None and not type_matches(wanted_type, event["type"]):
            return False
        if types and event["type"] not in types:
            return False
        return created_matches(event["created"], bounds)

    return page(list(state.events.values()), params, url="/v1/events", kind="event", wanted=wanted)
