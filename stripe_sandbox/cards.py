"""Stripe's documented test payment methods and how each behaves when charged.

Follows https://stripe.com/docs/testing (cards by brand, declined payments, 3D Secure).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TestCard:
    brand: str
    last4: str
    country: str = "US"
    funding: str = "credit"
    decline_code: str | None = None
    decline_message: str = "Your card was declined."
    requires_authentication: bool = False
    # 3D Secure is needed on session only: the card was set up for off-session payments.
    set_up_for_off_session: bool = False


TEST_CARDS: dict[str, TestCard] = {
    "pm_card_visa": TestCard("visa", "4242"),
    "pm_card_visa_debit": TestCard("visa", "5556", funding="debit"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_amex": TestCard("amex", "0005"),
    # Succeed, then the charge is disputed once captured (disputes.py says how).
    "pm_card_createDispute": TestCard("visa", "0259"),
    "pm_card_createDisputeInquiry": TestCard("visa", "1976"),
    "pm_card_chargeDeclined": TestCard("visa", "0002", decline_code="generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": TestCard(
        "visa",
        "9995",
        decline_code="insufficient_funds",
        decline_message="Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedLostCard": TestCard("visa", "9987", decline_code="lost_card"),
    "pm_card_chargeDeclinedStolenCard": TestCard("visa", "9979", decline_code="stolen_card"),
    "pm_card_authenticationRequired": TestCard("visa", "3184", requires_authentication=True),
    # 3D Secure test cards (https://stripe.com/docs/testing#regulatory-cards and
    # #three-ds-cards); payment_intents.py and authentication.py say what each does.
    "pm_card_authenticationRequiredOnSetup": TestCard("visa", "3155", requires_authentication=True),
    "pm_card_authenticationRequiredSetupForOffSession": TestCard(
        "visa", "0446", requires_authentication=True, set_up_for_off_session=True
    ),
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": TestCard(
        "visa",
        "3178",
        decline_code="insufficient_funds",
        decline_message="Your card has insufficient funds.",
        requires_authentication=True,
    ),
    "pm_card_threeDSecure2Required": TestCard("visa", "3220", requires_authentication=True),
    "pm_card_threeDSecureRequired": TestCard("visa", "3063", requires_authentication=True),
    "pm_card_threeDSecureRequiredChargeDeclined": TestCard(
        "visa", "1629", decline_code="generic_decline", requires_authentication=True
    ),
    "pm_card_threeDSecureOptional": TestCard("visa", "3055"),
}
