"""The one way to build a Stripe client: from settings, never the global `stripe.api_key`."""

import stripe

from billing.settings import Settings

# PaymentIntent statuses the code acts on.
CAPTURABLE = "requires_capture"
CAPTURED = "succeeded"
CANCELED = "canceled"
LIST_PAGE = 100  # Stripe's largest page

# Below the Stripe activities' start_to_close timeout, so a hung request fails inside the
# attempt and the engine retries it with the same idempotency key.
STRIPE_HTTP_TIMEOUT_SECONDS = 20.0


def make_stripe_client(settings: Settings) -> stripe.StripeClient:
    base = settings.resolved_stripe_base()
    return stripe.StripeClient(
        settings.resolved_stripe_key(),
        base_addresses={"api": base} if base else None,
        max_network_retries=settings.stripe_max_network_retries,
        http_client=stripe.HTTPXClient(timeout=STRIPE_HTTP_TIMEOUT_SECONDS),
    )


def stored_server_error(err: stripe.StripeError) -> bool:
    """A 5xx that Stripe stored under the key: every retry with this key replays it, so
    whether Stripe acted can only be learnt by reading the PaymentIntent. Stripe says so with
    `Stripe-Should-Retry: false`, or by marking the answer `Idempotent-Replayed: true`."""
    headers = err.headers or {}
    stored = (
        headers.get("stripe-should-retry") == "false"
        or headers.get("idempotent-replayed") == "true"
    )
    return (err.http_status or 0) >= 500 and stored
