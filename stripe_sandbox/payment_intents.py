"""PaymentIntents: create/confirm, capture, cancel, retrieve, list and search.

Follows https://stripe.com/docs/api/payment_intents, the status lifecycle in
https://stripe.com/docs/payments/paymentintents/lifecycle and manual capture in
https://stripe.com/docs/payments/place-a-hold-on-a-payment-method.
"""

from __future__ import annotations

import copy

from . import events
from .cards import TestCard
from .charges import capture_charge
from .charges import new_charge as _new_charge
from .customers import get_customer, get_payment_method, test_card_of
from .errors import StripeError, invalid_request, resource_missing
from .form import Params
from .params import (
    get_bool,
    get_choice,
    get_expand,
    get_int,
    get_metadata,
    get_str,
    reject_unknown,
)
from .search import compile_query
from .store import AccountState, Json

_CREATE_PARAMS = {
    "amount",
    "application_fee_amount",
    "automatic_payment_methods",
    "capture_method",
    "confirm",
    "confirmation_method",
    "currency",
    "customer",
    "description",
    "error_on_requires_action",
    "expand",
    "mandate",
    "metadata",
    "off_session",
    "on_behalf_of",
    "payment_method",
    "payment_method_options",
    "payment_method_types",
    "receipt_email",
    "return_url",
    "setup_future_usage",
    "shipping",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "transfer_data",
    "transfer_group",
    "use_stripe_sdk",
}
_CONFIRM_PARAMS = {
    "capture_method",
    "error_on_requires_action",
    "expand",
    "mandate",
    "off_session",
    "payment_method",
    "payment_method_options",
    "receipt_email",
    "return_url",
    "setup_future_usage",
    "shipping",
    "use_stripe_sdk",
}
_CAPTURE_PARAMS = {
    "amount_to_capture",
    "application_fee_amount",
    "expand",
    "final_capture",
    "metadata",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "transfer_data",
}
_CANCEL_PARAMS = {"cancellation_reason", "expand"}
_LIST_PARAMS = {"created", "customer", "ending_before", "expand", "limit", "starting_after"}
_SEARCH_PARAMS = {"expand", "limit", "page", "query"}

_CANCELLATION_REASONS = ("abandoned", "duplicate", "fraudulent", "requested_by_customer")
_CANCELABLE = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
    "processing",
)
_CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
_EXPANDABLE = {"latest_charge", "customer", "payment_method"}
_MINIMUM_AMOUNT = 50
_CAPTURE_METHODS = ("automatic", "automatic_async", "manual")


def _get_intent(state: AccountState, intent_id: str) -> Json:
    intent = state.payment_intents.get(intent_id)
    if intent is None:
        raise resource_missing("payment_intent", intent_id, "intent")
    return intent


def _unexpected_state(intent: Json, action: str, allowed: tuple[str, ...]) -> StripeError:
    verb = {"capture": "captured", "cancel": "canceled", "confirm": "confirmed"}[action]
    message = (
        f"This PaymentIntent could not be {verb} because it has a status of "
        f"{intent['status']}. Only a PaymentIntent with one of the following statuses may be "
        f"{verb}: {', '.join(allowed)}."
    )
    if action == "cancel":
        message = (
            f"You cannot cancel this PaymentIntent because it has a status of "
            f"{intent['status']}. Only a PaymentIntent with one of the following statuses may "
            f"be canceled: {', '.join(allowed)}."
        )
    return StripeError(
        400,
        "invalid_request_error",
        message,
        code="payment_intent_unexpected_state",
        extra={"payment_intent": copy.deepcopy(intent)},
        stored=True,
    )


def _decline(
    state: AccountState,
    intent: Json,
    card: TestCard,
    *,
    code: str,
    decline_code: str,
    message: str,
    charge_id: str | None,
) -> StripeError:
    payment_method = get_payment_method(state, intent["payment_method"])
    error_hash: Json = {}
    if charge_id is not None:
        error_hash["charge"] = charge_id
    error_hash.update(
        {
            "code": code,
            "decline_code": decline_code,
            "doc_url": "https://stripe.com/docs/error-codes/" + code.replace("_", "-"),
            "message": message,
            "payment_method": copy.deepcopy(payment_method),
            "type": "card_error",
        }
    )
    intent["status"] = "requires_payment_method"
    intent["last_payment_error"] = error_hash
    intent["latest_charge"] = charge_id
    if charge_id is not None:
        events.record(state, "charge.failed", state.charges[charge_id])
    events.record(state, "payment_intent.payment_failed", intent)
    extra: Json = {}
    if charge_id is not None:
        extra["charge"] = charge_id
    extra["payment_intent"] = copy.deepcopy(intent)
    extra["payment_method"] = copy.deepcopy(payment_method)
    return StripeError(
        402,
        "card_error",
        message,
        code=code,
        decline_code=decline_code,
        extra=extra,
        stored=True,
    )


def _confirm(
    state: AccountState, intent: Json, *, off_session: bool, return_url: str | None = None
) -> None:
    """Charge the intent's payment method; raise a 402 on decline (the intent is kept).

    A card that needs 3D Secure fails off-session with `authentication_required` (the intent
    back in `requires_payment_method`) and waits on-session in `requires_action` for the
    customer at `next_action.redirect_to_url.url` (authentication.py completes or fails it).
    """
    if intent["payment_method"] is None:
        raise invalid_request(
            "You cannot confirm this PaymentIntent because it's missing a payment method. "
            "To confirm the PaymentIntent with a payment method, pass `payment_method`.",
            code="payment_intent_unexpected_state",
        )
    card = test_card_of(state, intent["payment_method"])
    assert card is not None
    intent["last_payment_error"] = None
    intent["next_action"] = None
    if card.requires_authentication and not (off_session and card.set_up_for_off_session):
        if off_session:
            raise _decline(
                state,
                intent,
                card,
                code="authentication_required",
                decline_code="authentication_required",
                message="Your card was declined. This transaction requires authentication.",
                charge_id=None,
            )
        intent["status"] = "requires_action"
        intent["next_action"] = {
            "type": "redirect_to_url",
            "redirect_to_url": {
                "return_url": return_url,
                "url": f"{state.base_url}/_sandbox/3ds/{intent['id']}",
            },
        }
        events.record(state, "payment_intent.requires_action", intent)
        return
    authorize(state, intent, card)


def authorize(state: AccountState, intent: Json, card: TestCard) -> None:
    """Charge the card (authenticated, or needing no authentication); a 402 on decline."""
    if card.decline_code is not None:
        charge = _new_charge(state, intent, card, failed=True, captured=False)
        raise _decline(
            state,
            intent,
            card,
            code="card_declined",
            decline_code=card.decline_code,
            message=card.decline_message,
            charge_id=charge["id"],
        )
    manual = intent["capture_method"] == "manual"
    charge = _new_charge(state, intent, card, failed=False, captured=not manual)
    intent["latest_charge"] = charge["id"]
    events.record(state, "charge.succeeded", charge)
    if manual:
        intent["status"] = "requires_capture"
        intent["amount_capturable"] = intent["amount"]
        state.schedule_expiry(intent["id"], state.clock.now())
        events.record(state, "payment_intent.amount_capturable_updated", intent)
    else:
        intent["status"] = "succeeded"
        intent["amount_received"] = intent["amount"]
        events.record(state, "payment_intent.succeeded", intent)


def _off_session(params: Params) -> bool:
    raw = get_str(params, "off_session")
    if raw in ("one_off", "recurring"):
        return True
    return get_bool(params, "off_session")


def create(state: AccountState, params: Params) -> Json:
    reject_unknown(params, _CREATE_PARAMS)
    amount = get_int(params, "amount", required=True)
    assert amount is not None
    if amount < _MINIMUM_AMOUNT:
        raise invalid_request(
            "Amount must be at least $0.50 usd", param="amount", code="amount_too_small"
        )
    currency = get_str(params, "currency", required=True)
    assert currency is not None
    if len(currency) != 3 or not currency.isalpha():
        raise invalid_request(
            f"Invalid currency: {currency.lower()}.",
            param="currency",
            code="parameter_invalid_string",
        )
    customer = get_str(params, "customer")
    if customer is not None:
        get_customer(state, customer, param="customer")
    payment_method = get_str(params, "payment_method")
    if payment_method is not None:
        get_payment_method(state, payment_method)
    confirm = get_bool(params, "confirm")
    off_session = _off_session(params)
    if off_session and not confirm:
        raise invalid_request(
            "You may only specify `off_session` when `confirm` is true.",
            param="off_session",
        )
    capture_method = get_choice(params, "capture_method", _CAPTURE_METHODS) or "automatic_async"
    metadata = get_metadata(params)
    expand = _expansions(params)

    intent_id = state.new_id("pi")
    intent: Json = {
        "id": intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": capture_method,
        "client_secret": intent_id + "_secret_" + state.new_id("s")[2:],
        "confirmation_method": get_str(params, "confirmation_method") or "automatic",
        "created": state.clock.now(),
        "currency": currency.lower(),
        "customer": customer,
        "customer_account": None,
        "description": get_str(params, "description"),
        "excluded_payment_method_types": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": state.livemode,
        "managed_payments": None,
        "metadata": metadata,
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": payment_method,
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": get_str(params, "receipt_email"),
        "review": None,
        "setup_future_usage": get_str(params, "setup_future_usage"),
        "shipping": None,
        "source": None,
        "statement_descriptor": get_str(params, "statement_descriptor"),
        "statement_descriptor_suffix": get_str(params, "statement_descriptor_suffix"),
        "status": "requires_confirmation" if payment_method else "requires_payment_method",
        "transfer_data": None,
        "transfer_group": get_str(params, "transfer_group"),
    }
    state.payment_intents[intent_id] = intent
    state.remember_order(intent_id)
    events.record(state, "payment_intent.created", intent)
    try:
        if confirm:
            return_url = get_str(params, "return_url")
            _confirm(state, intent, off_session=off_session, return_url=return_url)
    finally:
        state.index_for_search(intent)
    return render(state, intent, expand)


def retrieve(state: AccountState, intent_id: str, params: Params) -> Json:
    reject_unknown(params, {"client_secret", "expand"})
    return render(state, _get_intent(state, intent_id), _expansions(params))


def confirm(state: AccountState, intent_id: str, params: Params) -> Json:
    reject_unknown(params, _CONFIRM_PARAMS)
    intent = _get_intent(state, intent_id)
    expand = _expansions(params)
    if intent["status"] not in _CONFIRMABLE:
        raise _unexpected_state(intent, "confirm", _CONFIRMABLE)
    payment_method = get_str(params, "payment_method")
    if payment_method is not None:
        get_payment_method(state, payment_method)
        intent["payment_method"] = payment_method
    capture_method = get_choice(
        params, "capture_method", ("automatic", "automatic_async", "manual")
    )
    if capture_method is not None:
        intent["capture_method"] = capture_method
    try:
        _confirm(
            state,
            intent,
            off_session=_off_session(params),
            return_url=get_str(params, "return_url"),
        )
    finally:
        state.index_for_search(intent)
    return render(state, intent, expand)


def capture(state: AccountState, intent_id: str, params: Params) -> Json:
    reject_unknown(params, _CAPTURE_PARAMS)
    intent = _get_intent(state, intent_id)
    expand = _expansions(params)
    amount = get_int(params, "amount_to_capture")
    metadata = get_metadata(params)
    if intent["status"] != "requires_capture":
        raise _unexpected_state(intent, "capture", ("requires_capture",))
    capturable = intent["amount_capturable"]
    if amount is None:
        amount = capturable
    if amount > capturable:
        raise invalid_request(
            f"The amount to capture ({amount}) is greater than the amount capturable "
            f"({capturable}).",
            param="amount_to_capture",
            code="amount_too_large",
        )
    if amount < 1:
        raise invalid_request(
            "The amount to capture must be a positive integer.",
            param="amount_to_capture",
            code="parameter_invalid_integer",
        )
    intent["status"] = "succeeded"
    intent["amount_received"] = amount
    intent["amount_capturable"] = 0
    intent["metadata"].update(metadata)
    charge = state.charges.get(intent["latest_charge"] or "")
    if charge is not None:
        capture_charge(state, charge, amount)
        events.record(state, "charge.captured", charge)
    state.index_for_search(intent)
    events.record(state, "payment_intent.succeeded", intent)
    return render(state, intent, expand)


def cancel(state: AccountState, intent_id: str, params: Params) -> Json:
    reject_unknown(params, _CANCEL_PARAMS)
    intent = _get_intent(state, intent_id)
    expand = _expansions(params)
    reason = get_choice(params, "cancellation_reason", _CANCELLATION_REASONS)
    if intent["status"] not in _CANCELABLE:
        raise _unexpected_state(intent, "cancel", _CANCELABLE)
    if intent["status"] == "requires_capture":
        charge = state.charges.get(intent["latest_charge"] or "")
        if charge is not None:
            charge["refunded"] = True
            charge["amount_refunded"] = charge["amount"]
    intent["status"] = "canceled"
    intent["cancellation_reason"] = reason
    intent["canceled_at"] = state.clock.now()
    intent["amount_capturable"] = 0
    state.index_for_search(intent)
    events.record(state, "payment_intent.canceled", intent)
    return render(state, intent, expand)


def _limit(params: Params) -> int:
    limit = get_int(params, "limit")
    if limit is None:
        return 10
    if not 1 <= limit <= 100:
        raise invalid_request(
            "This value must be greater than or equal to 1 and less than or equal to 100.",
            param="limit",
            code="parameter_invalid_integer",
        )
    return limit


def _created_filter(params: Params) -> dict[str, int]:
    raw = params.get("created")
    if raw is None:
        return {}
    if isinstance(raw, str):
        value = get_int(params, "created")
        assert value is not None
        return {"eq": value}
    if not isinstance(raw, dict):
        raise invalid_request("Invalid created filter", param="created")
    bounds: dict[str, int] = {}
    for op in raw:
        if op not in ("gt", "gte", "lt", "lte"):
            raise invalid_request(
                f"Received unknown parameter: created[{op}]",
                param=f"created[{op}]",
                code="parameter_unknown",
            )
        parsed = get_int(raw, op)
        if parsed is not None:
            bounds[op] = parsed
    return bounds


def _created_matches(created: int, bounds: dict[str, int]) -> bool:
    checks = {
        "eq": created == bounds.get("eq", created),
        "gt": created > bounds.get("gt", created - 1),
        "gte": created >= bounds.get("gte", created),
        "lt": created < bounds.get("lt", created + 1),
        "lte": created <= bounds.get("lte", created),
    }
    return all(checks[op] for op in bounds)


def list_intents(state: AccountState, params: Params) -> Json:
    reject_unknown(params, _LIST_PARAMS)
    limit = _limit(params)
    customer = get_str(params, "customer")
    if customer is not None:  # as Stripe: a filter on an unknown customer is a 400
        get_customer(state, customer, param="customer")
    bounds = _created_filter(params)
    expand = _expansions(params, prefix="data.")
    starting_after = get_str(params, "starting_after")
    ending_before = get_str(params, "ending_before")
    for cursor, name in ((starting_after, "starting_after"), (ending_before, "ending_before")):
        if cursor is not None and cursor not in state.payment_intents:
            raise resource_missing("payment_intent", cursor, name, status=400)

    def wanted(intent: Json) -> bool:
        if customer is not None and intent["customer"] != customer:
            return False
        return _created_matches(intent["created"], bounds)

    newest_first = list(reversed(state.payment_intents.values()))
    if ending_before is not None:
        older_first = list(state.payment_intents.values())
        start = [i["id"] for i in older_first].index(ending_before) + 1
        page_rev = [i for i in older_first[start:] if wanted(i)][: limit + 1]
        has_more = len(page_rev) > limit
        page = list(reversed(page_rev[:limit]))
    else:
        start = 0
        if starting_after is not None:
            start = [i["id"] for i in newest_first].index(starting_after) + 1
        page = []
        has_more = False
        for intent in newest_first[start:]:
            if wanted(intent):
                if len(page) == limit:
                    has_more = True
                    break
                page.append(intent)
    return {
        "object": "list",
        "data": [render(state, intent, expand) for intent in page],
        "has_more": has_more,
        "url": "/v1/payment_intents",
    }


def search(state: AccountState, params: Params) -> Json:
    reject_unknown(params, _SEARCH_PARAMS)
    query = get_str(params, "query", required=True)
    assert query is not None
    limit = _limit(params)
    expand = _expansions(params, prefix="data.")
    page_token = get_str(params, "page")
    offset = 0
    if page_token is not None:
        if not page_token.startswith("sbxpage_") or not page_token[8:].isdigit():
            raise invalid_request(f"Invalid page: {page_token}", param="page")
        offset = int(page_token[8:])
    predicate = compile_query(query)
    now = state.clock.time()
    matches: list[Json] = []
    for intent in reversed(state.payment_intents.values()):
        snapshot = state.searchable_version(intent["id"], now)
        if snapshot is not None and predicate(snapshot):
            matches.append(intent)
    page = matches[offset : offset + limit]
    has_more = len(matches) > offset + limit
    return {
        "object": "search_result",
        "data": [render(state, intent, expand) for intent in page],
        "has_more": has_more,
        "next_page": f"sbxpage_{offset + limit}" if has_more else None,
        "url": "/v1/payment_intents/search",
    }


def _expansions(params: Params, prefix: str = "") -> list[str]:
    fields = []
    for path in get_expand(params):
        field = path.removeprefix(prefix) if prefix else path
        if field not in _EXPANDABLE or (prefix and not path.startswith(prefix)):
            raise invalid_request(f"This property cannot be expanded ({path}).", param="expand")
        fields.append(field)
    return fields


def render(state: AccountState, intent: Json, expand: list[str]) -> Json:
    """The intent as Stripe returns it, with the requested fields expanded."""
    if not expand:
        return intent
    out = dict(intent)
    for field in expand:
        object_id = intent[field]
        if object_id is None:
            continue
        if field == "latest_charge":
            out[field] = state.charges[object_id]
        elif field == "customer":
            out[field] = state.customers[object_id]
        else:
            out[field] = get_payment_method(state, object_id)
    return out
