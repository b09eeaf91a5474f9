"""What a payment's workflow says in words in the Web UI: its summary and details, set when
it starts, and the summaries of its activities and timers.

Whatever starts a payment's workflow (`bill`, a billing run) passes `payment_summary` and
`payment_details` as `static_summary` and `static_details`, so that every payment reads the
same. Summaries are user metadata: not part of replay's determinism checks, so their wording
may change under running workflows.
"""

from datetime import datetime, timedelta

from billing.durations import format_duration
from billing.models import PaymentInput, RefundInput
from billing.money import format_amount


def amount_text(amount: int, currency: str) -> str:
    """`1200, "eur"` -> `12.00 EUR`, in the currency's major units."""
    return f"{format_amount(amount, currency)} {currency.strip().upper()}"


def payment_summary(payment: PaymentInput) -> str:
    """One line for the payment's page: `Charge cus_… 12.00 EUR for 2026-11`."""
    return (
        f"Charge {payment.stripe_customer_id} {amount_text(payment.amount, payment.currency)} "
        f"for {payment.billing_period}"
    )


def payment_details(payment: PaymentInput) -> str:
    """The rest of what the payment was started with, one fact a line (Temporal markdown)."""
    policy = payment.policy
    window = format_duration(policy.capture_delay) if policy.capture_delay else "none"
    dunning = ", ".join(format_duration(d) for d in policy.dunning_schedule) or "none"
    window_3ds = policy.authentication_window
    authentication = f"waits up to {format_duration(window_3ds)}" if window_3ds else "off"
    return "\n".join(
        [
            f"**Payment** {payment.payment_id}",
            f"**Customer** {payment.customer_id} (Stripe {payment.stripe_customer_id})",
            f"**Card** {payment.payment_method_id}",
            f"**Capture window** {window}",
            f"**Dunning retries after** {dunning}",
            f"**3-D Secure** {authentication}",
        ]
    )


def refund_summary(refund: RefundInput) -> str:
    """One line for a refund's page: `Refund 12.00 EUR of pi_… (refund 1)`."""
    return (
        f"Refund {amount_text(refund.amount, refund.currency)} of {refund.intent_id} "
        f"(refund {refund.n})"
    )


def refund_details(refund: RefundInput) -> str:
    return "\n".join(
        [
            f"**Payment** {refund.payment_id} ({refund.billing_period})",
            f"**Customer** {refund.customer_id}",
            f"**Reason** {refund.reason}",
        ]
    )


def billing_run_summary(period: str) -> str:
    """The billing run's line in the Web UI."""
    return f"Bill every active customer for {period}"


def until_text(start: datetime, wait: timedelta) -> str:
    """When a wait of `wait` begun at `start` (UTC) ends: `14:00 UTC` the same day, else
    `2026-11-30 14:00 UTC`."""
    end = start + wait
    return f"{end:%H:%M} UTC" if end.date() == start.date() else f"{end:%Y-%m-%d %H:%M} UTC"


def capture_window_summary(start: datetime, wait: timedelta) -> str:
    """`capture window 2h, until 14:00 UTC`."""
    return f"capture window {format_duration(wait)}, until {until_text(start, wait)}"


def dunning_wait_summary(retry: int, retries: int, start: datetime, wait: timedelta) -> str:
    """`retry` counts from 1: `dunning retry 2 of 3 in 2d, at 2026-11-30 14:00 UTC`."""
    return (
        f"dunning retry {retry} of {retries} in {format_duration(wait)}, "
        f"at {until_text(start, wait)}"
    )


def authentication_wait_summary(intent_id: str, start: datetime, wait: timedelta) -> str:
    """`3-D Secure of pi_…: next check in 1h, at 14:00 UTC`."""
    return (
        f"3-D Secure of {intent_id}: next check in {format_duration(wait)}, "
        f"at {until_text(start, wait)}"
    )
