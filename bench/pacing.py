"""Client-side pacing of Stripe requests: one evenly spaced schedule per Stripe endpoint.

Stripe limits live mode to 25 requests/s per endpoint (create and capture are two) and 100/s
for the account. Pacing each endpoint a little below its limit keeps a single process clear of
429s; it only holds across processes when one process sends all the traffic.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any

import stripe

_CAPTURE = re.compile(r"/v1/payment_intents/[^/]+/capture$")
_CANCEL = re.compile(r"/v1/payment_intents/[^/]+/cancel$")


def endpoint_of(method: str, url: str) -> str:
    path = url.split("?", 1)[0]
    if _CAPTURE.search(path):
        return "payment_intents.capture"
    if _CANCEL.search(path):
        return "payment_intents.cancel"
    if path.endswith("/v1/payment_intents"):
        return "payment_intents.create" if method.lower() == "post" else "payment_intents.list"
    return f"{method.lower()} {path.rsplit('/v1/', 1)[-1].split('/', 1)[0]}"


class EndpointPacer:
    """Hands out send times at most `rate` per second per endpoint, evenly spaced."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next: dict[str, float] = {}

    async def wait_turn(self, endpoint: str) -> None:
        now = time.monotonic()
        slot = max(now, self._next.get(endpoint, now))
        self._next[endpoint] = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)


class PacedHTTPXClient(stripe.HTTPXClient):
    """The Stripe SDK's async HTTP client, each request waiting for its endpoint's turn."""

    def __init__(self, pacer: EndpointPacer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pacer = pacer

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        await self._pacer.wait_turn(endpoint_of(method, url))
        result: tuple[bytes, int, Mapping[str, str]] = await super().request_async(
            method, url, headers, post_data
        )
        return result


def stripe_client(api_base: str, *, pace_per_endpoint: float | None) -> stripe.StripeClient:
    """A client like `billing.stripe_client.make_stripe_client` builds for the sandbox, with
    optional pacing."""
    from billing.stripe_client import STRIPE_HTTP_TIMEOUT_SECONDS

    http: stripe.HTTPXClient
    if pace_per_endpoint:
        http = PacedHTTPXClient(
            EndpointPacer(pace_per_endpoint), timeout=STRIPE_HTTP_TIMEOUT_SECONDS
        )
    else:
        http = stripe.HTTPXClient(timeout=STRIPE_HTTP_TIMEOUT_SECONDS)
    return stripe.StripeClient(
        "sk_test_sandbox",
        base_addresses={"api": api_base},
        max_network_retries=0,
        http_client=http,
    )
