"""Disputes: Stripe's dispute test card, retrieve and list, and closing a dispute.

Follows https://stripe.com/docs/api/disputes and https://stripe.com/docs/testing#disputes:
a charge of `pm_card_createDispute` (card 4000 0000 0000 0259) succeeds and is then disputed
as fraudulent; the dispute waits in `needs_response`. Stripe closes a dispute when the card
network decides; here the control API (`close`) plays the network. disputes_api.py serves
them under /v1/disputes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from . import events
from .store import AccountState, Json

# Stripe gives the merchant about a week to answer (`evidence_details.due_by`).
RESPONSE_WINDOW = timedelta(days=7)
_EVIDENCE_FIELDS = (
    "access_activity_log",
    "billing_address",
    "cancellation_policy",
    "cancellation_policy_disclosure",
    "cancellation_rebuttal",
    "customer_communication",
    "customer_email_address",
    "customer_name",
    "customer_purchase_ip",
    "customer_signature",
    "duplicate_charge_documentation",
    "duplicate_charge_explanation",
    "duplicate_charge_id",
    "product_description",
    "receipt",
    "refund_policy",
    "refund_policy_disclosure",
    "refund_refusal_explanation",
    "service_date",
    "service_documentation",
    "shipping_address",
    "shipping_carrier",
    "shipping_date",
    "shipping_documentation",
    "shipping_tracking_number",
    "uncategorized_file",
    "uncategorized_text",
)
_OPEN_STATUSES = (
    "needs_response",
    "under_review",
    "warning_needs_response",
    "warning_under_review",
)
OUTCOMES = ("won", "lost")


@dataclass(frozen=True)
class DisputeScenario:
    """How a charge of one test card gets disputed."""

    reason: str
    status: str
    case_type: str
    network_reason_code: str


# Keyed by the test payment method the charge's card was made from.
DISPUTING_CARDS: dict[str, DisputeScenario] = {
    "pm_card_createDispute": DisputeScenario("fraudulent", "needs_response", "chargeback", "10.4"),
    "pm_card_createDisputeInquiry": DisputeScenario(
        "general", "warning_needs_response", "inquiry", "10.4"
    ),
}


def open_if_disputing_card(state: AccountState, charge: Json) -> Json | None:
    """Dispute the just-captured `charge` if its card is one of the dispute test cards."""
    pm_id: str = charge["payment_method"]
    token = state.payment_method_cards.get(pm_id, pm_id)
    scenario = DISPUTING_CARDS.get(token)
    if scenario is None:
        return None
    now = state.clock.now()
    card = charge["payment_method_details"]["card"]
    dispute: Json = {
        "id": state.new_id("dp"),
        "object": "dispute",
        "amount": charge["amount_captured"],
        "balance_transactions": [],
        "charge": charge["id"],
        "created": now,
        "currency": charge["currency"],
        "enhanced_eligibility_types": [],
        "evidence": {**dict.fromkeys(_EVIDENCE_FIELDS), "enhanced_evidence": {}},
        "evidence_details": {
            "due_by": now + int(RESPONSE_WINDOW.total_seconds()),
            "enhanced_eligibility": {},
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": scenario.case_type == "inquiry",
        "livemode": state.livemode,
        "metadata": {},
        "payment_intent": charge["payment_intent"],
        "payment_method_details": {
            "card": {
                "brand": card["brand"],
                "case_type": scenario.case_type,
                "network_reason_code": scenario.network_reason_code,
            },
            "type": "card",
        },
        "reason": scenario.reason,
        "status": scenario.status,
    }
    state.disputes[dispute["id"]] = dispute
    charge["disputed"] = True
    events.record(state, "charge.dispute.created", dispute)
    return dispute


def blocks_refund(state: AccountState, charge: Json) -> bool:
    """A chargeback that is not closed in the merchant's favour takes the refundable money."""
    return any(
        d["charge"] == charge["id"] and not d["is_charge_refundable"] and d["status"] != "won"
        for d in state.disputes.values()
    )


def close(state: AccountState, dispute_id: str, outcome: str) -> Json:
    """The card network's decision: `won` (the funds come back) or `lost`. An inquiry that
    is closed either way ends `warning_closed`, as Stripe's inquiries do."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
    dispute = state.disputes.get(dispute_id)
    if dispute is None:
        raise LookupError(f"no dispute {dispute_id}")
    if dispute["status"] not in _OPEN_STATUSES:
        raise ValueError(f"dispute {dispute_id} is already closed ({dispute['status']})")
    inquiry = dispute["status"].startswith("warning_")
    dispute["status"] = "warning_closed" if inquiry else outcome
    dispute["is_charge_refundable"] = inquiry or outcome == "won"
    dispute["evidence_details"]["past_due"] = False
    events.record(state, "charge.dispute.closed", dispute)
    return dispute
