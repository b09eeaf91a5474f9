"""Webhook delivery: each event goes, as a signed HTTP POST, to every enabled endpoint that
subscribes to its type, in the background of the sandbox's event loop, with retries.

Follows https://stripe.com/docs/webhooks (retries with exponential backoff, any 2xx is
success) and https://stripe.com/docs/webhooks#verify-manually (the Stripe-Signature header).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import random
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import aiohttp

from .clock import SandboxClock
from .events import type_matches
from .store import AccountState, Json
from .webhook_faults import WebhookFaultBook, WebhookFaultRule

logger = logging.getLogger("stripe_sandbox.webhooks")

_USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
_LOG_SIZE = 10_000


def signature_header(payload: str, secret: str, timestamp: int) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "t.payload" keyed with the endpoint's secret>`."""
    signed = f"{timestamp}.{payload}".encode()
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass
class WebhookSettings:
    """How deliveries are retried: attempt n+1 waits retry_base_ms * 2**(n-1) after attempt n;
    after max_attempts failed attempts the delivery is given up."""

    retry_base_ms: int = 1000
    max_attempts: int = 5
    timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if self.retry_base_ms < 0 or self.max_attempts < 1 or self.timeout_ms < 1:
            raise ValueError(
                "webhook settings need retry_base_ms >= 0, max_attempts >= 1, timeout_ms >= 1"
            )


@dataclass
class _Delivery:
    event: Json
    endpoint_id: str
    url: str
    secret: str
    delay_ms: int = 0


@dataclass
class _Stats:
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    gave_up: int = 0
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0
    reordered: int = 0


@dataclass
class WebhookDispatcher:
    """Owned by a Sandbox: hears every recorded event and delivers it."""

    clock: SandboxClock
    rng: random.Random
    settings: WebhookSettings = field(default_factory=WebhookSettings)

    def __post_init__(self) -> None:
        self.faults = WebhookFaultBook(self.rng)
        self._state: AccountState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = 0  # handed to the loop, task not yet created
        self._generation = 0
        self._held: list[_Delivery] = []
        self._delivered: set[tuple[str, str]] = set()
        self._stats = _Stats()
        self._log: deque[Json] = deque(maxlen=_LOG_SIZE)

    # ----- wiring ----------------------------------------------------------------------

    def attach(self, state: AccountState) -> None:
        """Deliver the events of `state` from now on; forget the previous state's deliveries
        (held, in flight, counters). Faults and settings stay."""
        self._generation += 1
        for task in self._tasks:
            task.cancel()
        self._held.clear()
        self._delivered.clear()
        self._stats = _Stats()
        self._log.clear()
        self._state = state
        state.event_listeners.append(self._on_event)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        self._generation += 1
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._held.clear()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        self._loop = None

    # ----- faults and inspection --------------------------------------------------------

    def add_fault(self, rule: WebhookFaultRule) -> str:
        return self.faults.add(rule)

    def remove_fault(self, rule_id: str) -> bool:
        return self.faults.remove(rule_id)

    def clear_faults(self) -> None:
        self.faults.clear()

    def describe_faults(self) -> list[dict[str, Any]]:
        return self.faults.describe()

    def stats(self) -> dict[str, Any]:
        return {
            **asdict(self._stats),
            "held": len(self._held),
            "in_flight": self._scheduled + len(self._tasks),
        }

    def deliveries(self) -> list[Json]:
        """Every attempt, oldest first: event, type, endpoint, attempt, status, error, at."""
        return list(self._log)

    def release(self) -> int:
        """Send every held (reorder) delivery now, newest first. Returns how many."""
        held, self._held = self._held, []
        if held:
            self._stats.reordered += len(held)
            self._schedule(functools.partial(self._send_in_order, list(reversed(held))))
        return len(held)

    async def wait_idle(self) -> None:
        """Wait until no delivery is in flight, retries included (held ones do not count).
        Bound it with `asyncio.timeout`."""
        while self._scheduled or self._tasks:
            if self._tasks:
                await asyncio.wait(list(self._tasks))
            else:
                await asyncio.sleep(0)

    # ----- delivery ------------------------------------------------------------------------

    def _on_event(self, event: Json) -> None:
        state = self._state
        assert state is not None
        self._stats.events += 1
        targets = [
            endpoint
            for endpoint in state.webhook_endpoints.values()
            if endpoint["status"] == "enabled"
            and any(type_matches(p, event["type"]) for p in endpoint["enabled_events"])
        ]
        event["pending_webhooks"] = len(targets)
        for endpoint in targets:
            secret = state.webhook_secrets[endpoint["id"]]
            self._submit(_Delivery(event, endpoint["id"], endpoint["url"], secret))

    def _submit(self, delivery: _Delivery) -> None:
        rules = self.faults.draw(delivery.event["type"])
        kinds = {rule.kind for rule in rules}
        self._stats.deliveries += 1
        if "drop" in kinds:
            self._stats.dropped += 1
            self._note(delivery, 0, None, "dropped by a webhook fault")
            return
        delivery.delay_ms = sum(rule.delay_ms for rule in rules if rule.kind == "delay")
        if delivery.delay_ms:
            self._stats.delayed += 1
        copies = [delivery]
        if "duplicate" in kinds:
            self._stats.duplicated += 1
            copies.append(replace(delivery))
        reorder = next((rule for rule in rules if rule.kind == "reorder"), None)
        for copy in copies:
            if reorder is None:
                self._schedule(functools.partial(self._run, copy))
                continue
            self._held.append(copy)
            if len(self._held) >= reorder.hold:
                self.release()

    def _schedule(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start `make()` as a task on the sandbox's loop, from any thread, never waiting."""
        if self._loop is None or self._loop.is_closed():
            logger.warning("webhook delivery skipped: the sandbox is not serving")
            return
        self._scheduled += 1
        generation = self._generation

        def start() -> None:
            self._scheduled -= 1
            if generation != self._generation:
                return
            task = asyncio.ensure_future(make())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._loop.call_soon_threadsafe(start)

    async def _send_in_order(self, deliveries: list[_Delivery]) -> None:
        """First attempts one after the other, in this order; retries run on their own."""
        for delivery in deliveries:
            if not await self._attempt(delivery, 1):
                self._schedule(functools.partial(self._run, delivery, first=2))

    async def _run(self, delivery: _Delivery, first: int = 1) -> None:
        if first == 1 and delivery.delay_ms:
            await asyncio.sleep(delivery.delay_ms / 1000)
        settings = self.settings
        for attempt in range(first, settings.max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(settings.retry_base_ms * 2 ** (attempt - 2) / 1000)
            if await self._attempt(delivery, attempt):
                return
        self._stats.gave_up += 1
        logger.info(
            "webhook %s to %s given up after %d attempts",
            delivery.event["id"],
            delivery.url,
            settings.max_attempts,
        )

    async def _attempt(self, delivery: _Delivery, attempt: int) -> bool:
        session = self._session
        if session is None:
            return False
        # Signed at each attempt with the sandbox clock, as Stripe signs each attempt anew.
        payload = json.dumps(delivery.event, indent=2)
        timestamp = self.clock.now()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature_header(payload, delivery.secret, timestamp),
            "User-Agent": _USER_AGENT,
        }
        status: int | None = None
        error: str | None = None
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_ms / 1000)
        try:
            async with session.post(
                delivery.url, data=payload.encode(), headers=headers, timeout=timeout
            ) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as failure:
            error = f"{type(failure).__name__}: {failure}"
        self._stats.attempts += 1
        ok = status is not None and 200 <= status < 300
        if ok:
            self._stats.successes += 1
            pair = (delivery.event["id"], delivery.endpoint_id)
            if pair not in self._delivered:
                self._delivered.add(pair)
                delivery.event["pending_webhooks"] -= 1
        else:
            self._stats.failures += 1
        self._note(delivery, attempt, status, error)
        return ok

    def _note(
        self, delivery: _Delivery, attempt: int, status: int | None, error: str | None
    ) -> None:
        self._log.append(
            {
                "event": delivery.event["id"],
                "type": delivery.event["type"],
                "endpoint": delivery.endpoint_id,
                "attempt": attempt,
                "status": status,
                "error": error,
                "at": self.clock.now(),
            }
        )
