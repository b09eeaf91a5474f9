"""Customers and payment methods.

Follows https://stripe.com/docs/api/customers and https://stripe.com/docs/api/payment_methods.
"""

from __future__ import annotations

from .cards import TEST_CARDS, TestCard
from .errors import invalid_request, resource_missing
from .form import Params
from .params import get_metadata, get_str, reject_unknown, update_metadata
from .store import AccountState, Json

_CUSTOMER_CREATE_PARAMS = {
    "address",
    "balance",
    "description",
    "email",
    "expand",
    "invoice_prefix",
    "invoice_settings",
    "metadata",
    "name",
    "payment_method",
    "phone",
    "preferred_locales",
    "shipping",
    "tax_exempt",
}


def create_customer(state: AccountState, params: Params) -> Json:
    reject_unknown(params, _CUSTOMER_CREATE_PARAMS)
    customer_id = state.new_id("cus")
    default_pm = None
    settings = params.get("invoice_settings")
    if isinstance(settings, dict):
        default_pm = settings.get("default_payment_method") or None
    customer: Json = {
        "id": customer_id,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": state.clock.now(),
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": get_str(params, "description"),
        "discount": None,
        "email": get_str(params, "email"),
        "invoice_prefix": customer_id[4:12].upper(),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": state.livemode,
        "metadata": get_metadata(params),
        "name": get_str(params, "name"),
        "next_invoice_sequence": 1,
        "phone": get_str(params, "phone"),
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }
    payment_method = get_str(params, "payment_method")
    state.customers[customer_id] = customer
    state.remember_order(customer_id)
    if payment_method is not None:
        attached = attach_payment_method(state, payment_method, {"customer": customer_id})
        if default_pm == payment_method:
            default_pm = attached["id"]
    if default_pm is not None:
        get_payment_method(state, default_pm, param="invoice_settings[default_payment_method]")
        customer["invoice_settings"]["default_payment_method"] = default_pm
    return customer


_CUSTOMER_UPDATE_PARAMS = {
    "description",
    "email",
    "expand",
    "invoice_settings",
    "metadata",
    "name",
    "phone",
}


def update_customer(state: AccountState, customer_id: str, params: Params) -> Json:
    """POST /v1/customers/{id}: the fields sent change, an empty string clears one."""
    reject_unknown(params, _CUSTOMER_UPDATE_PARAMS)
    customer = get_customer(state, customer_id)
    settings = params.get("invoice_settings")
    default_pm: str | None = None
    if settings is not None:
        if not isinstance(settings, dict) or set(settings) - {"default_payment_method"}:
            raise invalid_request(
                "Only invoice_settings[default_payment_method] can be updated here.",
                param="invoice_settings",
            )
        default_pm = settings.get("default_payment_method") or None
        if default_pm is not None:
            _check_attached(state, customer_id, default_pm)
    update_metadata(customer["metadata"], params)
    for name in ("description", "email", "name", "phone"):
        if name in params:
            customer[name] = get_str(params, name)
    if settings is not None:
        customer["invoice_settings"]["default_payment_method"] = default_pm
    return customer


def _check_attached(state: AccountState, customer_id: str, pm_id: str) -> None:
    param = "invoice_settings[default_payment_method]"
    payment_method = get_payment_method(state, pm_id, param=param)
    if payment_method["customer"] != customer_id:
        raise invalid_request(
            f"The customer does not have a payment method with the ID {pm_id}. The payment "
            "method must be attached to the customer.",
            param=param,
            code="resource_missing",
        )


def get_customer(state: AccountState, customer_id: str, *, param: str = "id") -> Json:
    customer = state.customers.get(customer_id)
    if customer is None:
        raise resource_missing("customer", customer_id, param, status=404 if param == "id" else 400)
    return customer


def test_card_of(state: AccountState, payment_method_id: str) -> TestCard | None:
    token = state.payment_method_cards.get(payment_method_id, payment_method_id)
    return TEST_CARDS.get(token)


def _payment_method_json(
    state: AccountState, pm_id: str, card: TestCard, customer: str | None
) -> Json:
    return {
        "id": pm_id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": None,
            "name": None,
            "phone": None,
        },
        "card": {
            "brand": card.brand,
            "checks": {
                "address_line1_check": None,
                "address_postal_code_check": None,
                "cvc_check": "unchecked",
            },
            "country": card.country,
            "display_brand": card.brand,
            "exp_month": 12,
            "exp_year": 2034,
            "fingerprint": "fp" + card.last4 + card.brand[:4],
            "funding": card.funding,
            "generated_from": None,
            "last4": card.last4,
            "networks": {"available": [card.brand], "preferred": None},
            "three_d_secure_usage": {"supported": True},
            "wallet": None,
        },
        "created": state.clock.now(),
        "customer": customer,
        "customer_account": None,
        "livemode": state.livemode,
        "metadata": {},
        "type": "card",
    }


def get_payment_method(state: AccountState, pm_id: str, *, param: str = "payment_method") -> Json:
    stored = state.payment_methods.get(pm_id)
    if stored is not None:
        return stored
    card = TEST_CARDS.get(pm_id)
    if card is None:
        raise resource_missing("PaymentMethod", pm_id, param, status=404 if param == "id" else 400)
    # A test token such as pm_card_visa reads as an unattached card of its kind.
    return _payment_method_json(state, pm_id, card, None)


def attach_payment_method(state: AccountState, pm_id: str, params: Params) -> Json:
    reject_unknown(params, {"customer", "expand"})
    customer_id = get_str(params, "customer", required=True)
    assert customer_id is not None
    get_customer(state, customer_id, param="customer")
    stored = state.payment_methods.get(pm_id)
    if stored is not None:
        if stored["customer"] == customer_id:
            return stored
        raise invalid_request(
            "The payment method you provided has already been attached to a customer.",
            param="payment_method",
            code="payment_method_unexpected_state",
            stored=True,
        )
    card = TEST_CARDS.get(pm_id)
    if card is None:
        raise resource_missing("PaymentMethod", pm_id, "payment_method", status=404)
    # Attaching a test token creates a new payment method that clones its card.
    new_id = state.new_id("pm")
    attached = _payment_method_json(state, new_id, card, customer_id)
    state.payment_methods[new_id] = attached
    state.payment_method_cards[new_id] = pm_id
    state.remember_order(new_id)
    return attached
