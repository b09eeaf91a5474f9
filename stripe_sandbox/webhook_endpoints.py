"""Webhook endpoints: create, retrieve, list, delete (https://stripe.com/docs/api/webhook_endpoints).

The sandbox delivers only to 127.0.0.1 or localhost; webhooks.py does the delivering.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import invalid_request, parameter_missing, resource_missing
from .events import EVENT_TYPES
from .form import Params
from .listing import page
from .params import get_metadata, get_str, reject_unknown
from .store import AccountState, Json

_CREATE_PARAMS = {
    "api_version",
    "connect",
    "description",
    "enabled_events",
    "expand",
    "metadata",
    "url",
}
_LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _checked_url(params: Params) -> str:
    url = get_str(params, "url", required=True)
    assert url is not None
    invalid = invalid_request(f"Invalid URL: {url}", param="url", code="url_invalid")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise invalid from None
    if parts.scheme not in ("http", "https") or host is None:
        raise invalid
    if host not in _LOCAL_HOSTS:
        raise invalid_request(
            f"Invalid URL: {url}. The sandbox delivers webhooks only to 127.0.0.1 or localhost.",
            param="url",
            code="url_invalid",
        )
    return url


def _enabled_events(params: Params) -> list[str]:
    raw = params.get("enabled_events")
    values = [raw] if isinstance(raw, str) else raw
    if not values:
        raise parameter_missing("enabled_events")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise invalid_request("Invalid array", param="enabled_events")
    for index, value in enumerate(values):
        if value != "*" and value not in EVENT_TYPES:
            raise invalid_request(
                f"Invalid enabled_events[{index}]: must be one of *, "
                + ", ".join(sorted(EVENT_TYPES)),
                param=f"enabled_events[{index}]",
                code="parameter_invalid_string",
            )
    return list(dict.fromkeys(values))


def create(state: AccountState, _: str, params: Params) -> Json:
    reject_unknown(params, _CREATE_PARAMS)
    url = _checked_url(params)
    enabled = _enabled_events(params)
    endpoint_id = state.new_id("we")
    secret = "whsec_" + state.new_id("s")[2:] + state.new_id("s")[2:]
    endpoint: Json = {
        "id": endpoint_id,
        "object": "webhook_endpoint",
        "api_version": get_str(params, "api_version"),
        "application": None,
        "created": state.clock.now(),
        "description": get_str(params, "description"),
        "enabled_events": enabled,
        "livemode": state.livemode,
        "metadata": get_metadata(params),
        "status": "enabled",
        "url": url,
    }
    state.webhook_endpoints[endpoint_id] = endpoint
    state.webhook_secrets[endpoint_id] = secret
    # The secret is returned on creation only, as Stripe does.
    return {**endpoint, "secret": secret}


def _get(state: AccountState, endpoint_id: str) -> Json:
    endpoint = state.webhook_endpoints.get(endpoint_id)
    if endpoint is None:
        raise resource_missing("webhook endpoint", endpoint_id, "id")
    return endpoint


def retrieve(state: AccountState, endpoint_id: str, params: Params) -> Json:
    reject_unknown(params, {"expand"})
    return _get(state, endpoint_id)


def delete(state: AccountState, endpoint_id: str, params: Params) -> Json:
    reject_unknown(params, set())
    _get(state, endpoint_id)
    del state.webhook_endpoints[endpoint_id]
    del state.webhook_secrets[endpoint_id]
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}


def list_endpoints(state: AccountState, _: str, params: Params) -> Json:
    reject_unknown(params, {"ending_before", "expand", "limit", "starting_after"})
    endpoints = list(state.webhook_endpoints.values())
    return page(endpoints, params, url="/v1/webhook_endpoints", kind="webhook endpoint")
