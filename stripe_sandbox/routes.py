"""The API surface: which (method, path) is which named endpoint, and what it runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from . import (
    charges,
    customers,
    customers_api,
    disputes_api,
    events_api,
    payment_intents,
    refunds,
    webhook_endpoints,
)
from .form import Params
from .params import reject_unknown
from .store import AccountState, Json

Operation = Callable[[AccountState, str, Params], Json]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str
    operation: Operation


def _create_customer(state: AccountState, _: str, params: Params) -> Json:
    return customers.create_customer(state, params)


def _retrieve_customer(state: AccountState, object_id: str, params: Params) -> Json:
    reject_unknown(params, {"expand"})
    return customers.get_customer(state, object_id)


def _retrieve_payment_method(state: AccountState, object_id: str, params: Params) -> Json:
    reject_unknown(params, {"expand"})
    return customers.get_payment_method(state, object_id, param="id")


def _attach_payment_method(state: AccountState, object_id: str, params: Params) -> Json:
    return customers.attach_payment_method(state, object_id, params)


def _update_customer(state: AccountState, object_id: str, params: Params) -> Json:
    return customers.update_customer(state, object_id, params)


def _pi_create(state: AccountState, _: str, params: Params) -> Json:
    return payment_intents.create(state, params)


def _pi_list(state: AccountState, _: str, params: Params) -> Json:
    return payment_intents.list_intents(state, params)


def _pi_search(state: AccountState, _: str, params: Params) -> Json:
    return payment_intents.search(state, params)


_ID = r"([A-Za-z0-9_]+)"

ROUTES: tuple[Route, ...] = (
    Route("POST", re.compile(r"/v1/customers"), "customers.create", _create_customer),
    Route("GET", re.compile(rf"/v1/customers/{_ID}"), "customers.retrieve", _retrieve_customer),
    Route("POST", re.compile(rf"/v1/customers/{_ID}"), "customers.update", _update_customer),
    Route("GET", re.compile(r"/v1/customers"), "customers.list", customers_api.list_customers),
    Route(
        "GET",
        re.compile(rf"/v1/payment_methods/{_ID}"),
        "payment_methods.retrieve",
        _retrieve_payment_method,
    ),
    Route(
        "POST",
        re.compile(rf"/v1/payment_methods/{_ID}/attach"),
        "payment_methods.attach",
        _attach_payment_method,
    ),
    Route("GET", re.compile(rf"/v1/charges/{_ID}"), "charges.retrieve", charges.retrieve),
    Route("POST", re.compile(r"/v1/payment_intents"), "payment_intents.create", _pi_create),
    Route("GET", re.compile(r"/v1/payment_intents"), "payment_intents.list", _pi_list),
    Route("GET", re.compile(r"/v1/payment_intents/search"), "payment_intents.search", _pi_search),
    Route(
        "GET",
        re.compile(rf"/v1/payment_intents/{_ID}"),
        "payment_intents.retrieve",
        payment_intents.retrieve,
    ),
    Route(
        "POST",
        re.compile(rf"/v1/payment_intents/{_ID}/confirm"),
        "payment_intents.confirm",
        payment_intents.confirm,
    ),
    Route(
        "POST",
        re.compile(rf"/v1/payment_intents/{_ID}/capture"),
        "payment_intents.capture",
        payment_intents.capture,
    ),
    Route(
        "POST",
        re.compile(rf"/v1/payment_intents/{_ID}/cancel"),
        "payment_intents.cancel",
        payment_intents.cancel,
    ),
    Route("GET", re.compile(r"/v1/events"), "events.list", events_api.list_events),
    Route("GET", re.compile(rf"/v1/events/{_ID}"), "events.retrieve", events_api.retrieve),
    Route(
        "POST",
        re.compile(r"/v1/webhook_endpoints"),
        "webhook_endpoints.create",
        webhook_endpoints.create,
    ),
    Route(
        "GET",
        re.compile(r"/v1/webhook_endpoints"),
        "webhook_endpoints.list",
        webhook_endpoints.list_endpoints,
    ),
    Route(
        "GET",
        re.compile(rf"/v1/webhook_endpoints/{_ID}"),
        "webhook_endpoints.retrieve",
        webhook_endpoints.retrieve,
    ),
    Route(
        "DELETE",
        re.compile(rf"/v1/webhook_endpoints/{_ID}"),
        "webhook_endpoints.delete",
        webhook_endpoints.delete,
    ),
)

# Refunds and disputes (refunds.py, disputes.py).
ROUTES += (
    Route("POST", re.compile(r"/v1/refunds"), "refunds.create", refunds.create),
    Route("GET", re.compile(r"/v1/refunds"), "refunds.list", refunds.list_refunds),
    Route("GET", re.compile(rf"/v1/refunds/{_ID}"), "refunds.retrieve", refunds.retrieve),
    Route("POST", re.compile(rf"/v1/refunds/{_ID}"), "refunds.update", refunds.update),
    Route("GET", re.compile(r"/v1/disputes"), "disputes.list", disputes_api.list_disputes),
    Route("GET", re.compile(rf"/v1/disputes/{_ID}"), "disputes.retrieve", disputes_api.retrieve),
)

ENDPOINTS: frozenset[str] = frozenset(route.endpoint for route in ROUTES)


def match(method: str, path: str) -> tuple[Route, str] | None:
    for route in ROUTES:
        if route.method != method:
            continue
        found = route.pattern.fullmatch(path)
        if found is not None:
            return route, (found.group(1) if found.groups() else "")
    return None
