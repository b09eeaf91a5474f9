"""Stripe's request rate limits (https://stripe.com/docs/rate-limits).

Live mode: 100 requests/s for the account and 25/s for each endpoint. Test mode: 25/s for the
account. Search: 20 reads/s in both modes. Each limit is a token bucket refilled continuously
with a burst of one second's worth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now


class RateLimiter:
    def __init__(
        self,
        mode: str,
        *,
        enabled: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self._monotonic = monotonic
        live = mode == "live"
        self._account_rate = 100.0 if live else 25.0
        self._endpoint_rate: float | None = 25.0 if live else None
        self._special_rates = {"payment_intents.search": 20.0}
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, name: str, rate: float, now: float) -> TokenBucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = TokenBucket(rate, rate, now)
            self._buckets[name] = bucket
        else:
            bucket.refill(now)
        return bucket

    def allow(self, endpoint: str) -> bool:
        """Take one request from every limit that applies; False if any is exhausted."""
        if not self.enabled:
            return True
        now = self._monotonic()
        buckets = [self._bucket("account", self._account_rate, now)]
        endpoint_rate = self._special_rates.get(endpoint, self._endpoint_rate)
        if endpoint_rate is not None:
            buckets.append(self._bucket("endpoint:" + endpoint, endpoint_rate, now))
        if any(bucket.tokens < 1.0 for bucket in buckets):
            return False
        for bucket in buckets:
            bucket.tokens -= 1.0
        return True
