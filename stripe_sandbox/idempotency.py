"""Idempotent requests as Stripe documents them (https://stripe.com/docs/api/idempotent_requests).

The first result under a key is kept for 24 hours of sandbox time and replayed byte for byte.
A key reused with other parameters or on another endpoint is a 400 `idempotency_error`; a key
whose first request is still executing is a 409 and nothing is saved.
"""

from __future__ import annotations

from dataclasses import dataclass

from .clock import SandboxClock
from .errors import StripeError

KEY_TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255

Fingerprint = tuple[str, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class StoredResponse:
    endpoint: str
    path: str
    fingerprint: Fingerprint
    status: int
    body: bytes
    stored_at: float


def fingerprint(endpoint: str, path: str, pairs: list[tuple[str, str]]) -> Fingerprint:
    return (endpoint, path, tuple(sorted(pairs)))


class IdempotencyStore:
    def __init__(self, clock: SandboxClock) -> None:
        self._clock = clock
        self._stored: dict[str, StoredResponse] = {}
        self._in_flight: set[str] = set()

    def __len__(self) -> int:
        return len(self._stored)

    def check_key(self, key: str) -> None:
        if len(key) > MAX_KEY_LENGTH:
            raise StripeError(
                400,
                "idempotency_error",
                f"Idempotency keys can be at most {MAX_KEY_LENGTH} characters long; this "
                f"one has {len(key)}.",
            )

    def begin(self, key: str, method: str, fp: Fingerprint) -> StoredResponse | None:
        """Claim `key` for a new execution, or return the stored response to replay."""
        stored = self._stored.get(key)
        if stored is not None and self._clock.time() - stored.stored_at >= KEY_TTL_SECONDS:
            del self._stored[key]
            stored = None
        if stored is not None:
            if stored.fingerprint[:2] != fp[:2]:
                raise StripeError(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used for the same endpoint they "
                    f"were first used for ('{method} {stored.path}' vs '{method} {fp[1]}'). "
                    f"Try using a key other than '{key}' if you meant to execute a different "
                    "request.",
                )
            if stored.fingerprint != fp:
                raise StripeError(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    "meant to execute a different request.",
                )
            return stored
        if key in self._in_flight:
            raise StripeError(
                409,
                "idempotency_error",
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still "
                f"going through): {key}. Please try again later.",
            )
        self._in_flight.add(key)
        return None

    def finish(self, key: str, fp: Fingerprint, status: int, body: bytes | None) -> None:
        """Release the claim; store the response unless `body` is None (nothing saved)."""
        self._in_flight.discard(key)
        if body is not None:
            self._stored[key] = StoredResponse(fp[0], fp[1], fp, status, body, self._clock.time())

    def forget_expired(self) -> None:
        cutoff = self._clock.time() - KEY_TTL_SECONDS
        for key in [k for k, v in self._stored.items() if v.stored_at <= cutoff]:
            del self._stored[key]
