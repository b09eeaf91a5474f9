"""The Sandbox: an aiohttp server that answers Stripe's HTTP API from in-memory state."""

from __future__ import annotations

import asyncio
import base64
import copy
import inspect
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from . import authentication, routes
from .clock import SandboxClock
from .control import ControlApi
from .disputes import close as close_dispute
from .errors import StripeError, api_error, invalid_request
from .faults import FaultBook, FaultRule, HookCallback, HookWhen, RequestInfo
from .form import Params, decode, parse_pairs
from .idempotency import IdempotencyStore, fingerprint
from .ratelimit import RateLimiter
from .refunds import fail as fail_refund
from .store import AccountState, Json
from .webhooks import WebhookDispatcher, WebhookSettings

logger = logging.getLogger("stripe_sandbox")

Mode = Literal["test", "live"]
_KEY_SHAPE = re.compile(r"sk_(test|live)_[A-Za-z0-9_]+")
_JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class _Outcome:
    status: int
    body: bytes
    replayed: bool = False
    drop: bool = False
    faults: list[str] = field(default_factory=list)
    endpoint: str = "-"


@dataclass
class _Stats:
    requests: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    replays: int = 0
    rate_limited: int = 0
    idempotency_conflicts: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    hooks_run: int = 0
    dropped: int = 0


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _error_outcome(error: StripeError, endpoint: str = "-") -> _Outcome:
    return _Outcome(error.status, _encode(error.body()), endpoint=endpoint)


def _api_key(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[0]
        except ValueError:
            return None
    return None


class Sandbox:
    """A stateful fake of Stripe's API for one account. Each instance owns all its state."""

    def __init__(
        self,
        mode: Mode = "test",
        rate_limits: bool = True,
        latency_ms: int = 0,
        jitter_ms: int = 0,
        search_lag_seconds: float = 0.0,
        *,
        seed: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        webhook_settings: WebhookSettings | None = None,
    ) -> None:
        """`seed` makes ids and probabilistic faults reproducible; `monotonic` is the time
        source of the rate limiter (tests can freeze it); `webhook_settings` the retries of
        webhook deliveries."""
        if mode not in ("test", "live"):
            raise ValueError("mode must be 'test' or 'live'")
        self.mode: Mode = mode
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self._rng = random.Random(seed)
        self.clock = SandboxClock()
        self.clock.on_advance(self._on_clock_advance)
        self._search_lag_seconds = search_lag_seconds
        # Stripe marks a 5xx stored under a key with `Stripe-Should-Retry: false`; turned off,
        # only a replay's `Idempotent-Replayed: true` says that retrying cannot help.
        self.mark_stored_errors = True
        self._limiter = RateLimiter(mode, enabled=rate_limits, monotonic=monotonic)
        self._faults = FaultBook(random.Random(self._rng.random()))
        self._fresh_state()
        self.webhooks = WebhookDispatcher(
            self.clock, random.Random(self._rng.random()), webhook_settings or WebhookSettings()
        )
        self.webhooks.attach(self._state)
        self._runner: web.ServerRunner | None = None
        self._port: int | None = None
        self._control = ControlApi(self)

    def _fresh_state(self) -> None:
        self._state = AccountState(
            self.clock,
            random.Random(self._rng.random()),
            livemode=self.mode == "live",
            search_lag_seconds=self._search_lag_seconds,
        )
        self._idempotency = IdempotencyStore(self.clock)
        self._stats = _Stats()

    # ----- lifecycle -------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        """Serve on 127.0.0.1:`port` (0 picks a free port; see `url`)."""
        if self._runner is not None:
            raise RuntimeError("sandbox already started")
        server = web.Server(self._handle, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._state.base_url = self.url
        await self.webhooks.start()

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await self.webhooks.stop()
            await runner.cleanup()

    async def __aenter__(self) -> Sandbox:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("sandbox not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ----- configuration and inspection -----------------------------------------------

    @property
    def rate_limits(self) -> bool:
        return self._limiter.enabled

    @rate_limits.setter
    def rate_limits(self, enabled: bool) -> None:
        self._limiter.enabled = enabled

    @property
    def search_lag_seconds(self) -> float:
        return self._search_lag_seconds

    @search_lag_seconds.setter
    def search_lag_seconds(self, seconds: float) -> None:
        self._search_lag_seconds = seconds
        self._state.search_lag_seconds = seconds

    def add_fault(self, rule: FaultRule) -> str:
        if rule.endpoint is not None and rule.endpoint not in routes.ENDPOINTS:
            raise ValueError(f"unknown endpoint {rule.endpoint!r}")
        return self._faults.add_fault(rule)

    def add_hook(
        self,
        endpoint: str | None,
        when: HookWhen,
        callback: HookCallback,
        key_contains: str | None = None,
        nth: int | None = None,
        times: int | None = 1,
    ) -> str:
        if endpoint is not None and endpoint not in routes.ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        return self._faults.add_hook(
            endpoint, when, callback, key_contains=key_contains, nth=nth, times=times
        )

    def remove_fault(self, rule_id: str) -> bool:
        """Remove one fault or hook by the id add_fault/add_hook returned."""
        return self._faults.remove(rule_id)

    def clear_faults(self) -> None:
        self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        return self._faults.describe()

    def reset(self) -> None:
        """Forget every object, idempotency key and counter (faults and clock stay)."""
        self._fresh_state()
        self.webhooks.attach(self._state)
        if self._port is not None:
            self._state.base_url = self.url

    def stats(self) -> dict[str, Any]:
        s = self._stats
        return {
            "requests": s.requests,
            "by_endpoint": dict(s.by_endpoint),
            "by_status": dict(s.by_status),
            "replays": s.replays,
            "rate_limited": s.rate_limited,
            "idempotency_conflicts": s.idempotency_conflicts,
            "faults": dict(s.faults),
            "hooks_run": s.hooks_run,
            "dropped": s.dropped,
            "idempotency_keys": len(self._idempotency),
            "objects": {
                "customers": len(self._state.customers),
                "payment_methods": len(self._state.payment_methods),
                "payment_intents": len(self._state.payment_intents),
                "charges": len(self._state.charges),
                "refunds": len(self._state.refunds),
                "disputes": len(self._state.disputes),
            },
            "clock": self.clock.now(),
            "webhooks": self.webhooks.stats(),
        }

    def payment_intents(self) -> list[Json]:
        """Every PaymentIntent as Stripe's JSON, oldest first (copies)."""
        return copy.deepcopy(list(self._state.payment_intents.values()))

    def refunds(self) -> list[Json]:
        """Every Refund, oldest first (copies)."""
        return copy.deepcopy(list(self._state.refunds.values()))

    def disputes(self) -> list[Json]:
        """Every Dispute, oldest first (copies)."""
        return copy.deepcopy(list(self._state.disputes.values()))

    def close_dispute(self, dispute_id: str, outcome: str) -> Json:
        """The card network decides an open dispute: `outcome` is "won" or "lost"
        (ValueError if the dispute is closed already, LookupError if there is none)."""
        return copy.deepcopy(close_dispute(self._state, dispute_id, outcome))

    def fail_refund(self, refund_id: str, failure_reason: str = "expired_or_canceled_card") -> Json:
        """The card's issuer sends a refund back: it turns `failed` with `failure_reason`, as
        refunds.fail says (LookupError if there is none, ValueError if it cannot fail)."""
        return copy.deepcopy(fail_refund(self._state, refund_id, failure_reason))

    def happened(self) -> list[tuple[str, str]]:
        """(event type, object id) of every Event, oldest first."""
        return [(e["type"], e["data"]["object"]["id"]) for e in self._state.events.values()]

    def customers(self) -> list[Json]:
        return copy.deepcopy(list(self._state.customers.values()))

    def payment_intent(self, intent_id: str) -> Json | None:
        """One PaymentIntent as Stripe's JSON (a copy), or None."""
        return copy.deepcopy(self._state.payment_intents.get(intent_id))

    def events(self) -> list[Json]:
        """Every Event, oldest first (copies)."""
        return copy.deepcopy(list(self._state.events.values()))

    def complete_authentication(self, intent_id: str) -> Json:
        """The customer passes 3D Secure on an intent in `requires_action` (ValueError if it
        is not): it is charged, as authentication.complete says. Returns the intent."""
        return copy.deepcopy(authentication.complete(self._state, intent_id))

    def fail_authentication(self, intent_id: str) -> Json:
        """The customer fails 3D Secure: `requires_payment_method`, `last_payment_error`."""
        return copy.deepcopy(authentication.fail(self._state, intent_id))

    def _on_clock_advance(self) -> None:
        self._state.expire_authorizations()
        self._idempotency.forget_expired()

    # ----- request handling ------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/_sandbox/"):
            return await self._control.handle(request)
        started = time.perf_counter()
        key = request.headers.get("Idempotency-Key")
        request_id = f"req_{self._rng.getrandbits(64):016x}"
        outcome = await self._serve(request, key, request_id)
        self._record(request, key, outcome, started)
        if outcome.drop:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=outcome.status)
        headers = dict(_JSON_HEADERS)
        headers["Request-Id"] = request_id
        if key is not None:
            headers["Idempotency-Key"] = key
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        if outcome.status == 409:
            # Another request holds the key: a retry soon should succeed, as Stripe says.
            headers["Stripe-Should-Retry"] = "true"
        stored = outcome.replayed or "error_after" in outcome.faults
        if outcome.status >= 500 and stored and self.mark_stored_errors:
            # The result is stored under the key; retrying would only replay it.
            headers["Stripe-Should-Retry"] = "false"
        return web.Response(status=outcome.status, body=outcome.body, headers=headers)

    def _record(
        self, request: web.BaseRequest, key: str | None, outcome: _Outcome, started: float
    ) -> None:
        s = self._stats
        s.requests += 1
        s.by_endpoint[outcome.endpoint] = s.by_endpoint.get(outcome.endpoint, 0) + 1
        status = str(outcome.status) if not outcome.drop else "dropped"
        s.by_status[status] = s.by_status.get(status, 0) + 1
        if outcome.replayed:
            s.replays += 1
        if outcome.status == 429:
            s.rate_limited += 1
        if outcome.status == 409:
            s.idempotency_conflicts += 1
        if outcome.drop:
            s.dropped += 1
        for kind in outcome.faults:
            s.faults[kind] = s.faults.get(kind, 0) + 1
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%s %s key=%s status=%s replayed=%s fault=%s %.1fms",
                request.method,
                request.path,
                key or "-",
                status,
                "yes" if outcome.replayed else "no",
                ",".join(outcome.faults) or "-",
                (time.perf_counter() - started) * 1000,
            )

    def _authenticate(self, request: web.BaseRequest) -> StripeError | None:
        api_key = _api_key(request.headers.get("Authorization"))
        if api_key is None or api_key == "":
            return StripeError(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        if _KEY_SHAPE.fullmatch(api_key) is None:
            shown = api_key[:8] + "*" * max(0, len(api_key) - 12) + api_key[-4:]
            return StripeError(
                401,
                "invalid_request_error",
                f"Invalid API Key provided: {shown}",
                code="api_key_invalid" if api_key.startswith("sk_") else None,
            )
        return None

    async def _serve(self, request: web.BaseRequest, key: str | None, request_id: str) -> _Outcome:
        auth_error = self._authenticate(request)
        if auth_error is not None:
            return _error_outcome(auth_error)
        found = routes.match(request.method, request.path)
        if found is None:
            return _error_outcome(
                invalid_request(
                    f"Unrecognized request URL ({request.method}: {request.path}). Please "
                    "see https://stripe.com/docs or we can help at https://support.stripe.com/.",
                    status=404,
                )
            )
        route, object_id = found
        endpoint = route.endpoint
        if not self._limiter.allow(endpoint):
            return _error_outcome(
                StripeError(
                    429,
                    "invalid_request_error",
                    "Request rate limit exceeded. Learn more about rate limits here "
                    "https://stripe.com/docs/rate-limits.",
                    code="rate_limit",
                ),
                endpoint,
            )

        if request.method == "POST":
            raw = await request.text()
        else:
            raw = request.query_string
        pairs = parse_pairs(raw)
        self._state.expire_authorizations()

        fp = None
        stored = None
        claimed = False
        if request.method == "POST" and key is not None:
            fp = fingerprint(endpoint, request.path, pairs)
            try:
                self._idempotency.check_key(key)
                stored = self._idempotency.begin(key, request.method, fp)
            except StripeError as error:
                return _error_outcome(error, endpoint)
            claimed = stored is None

        # Faults and hooks see only requests the idempotency layer let through.
        rules = self._faults.draw(endpoint, key)
        fault_kinds: list[str] = [rule.kind for rule in rules]
        hooks = self._faults.hooks_for(endpoint, key)
        refused = "error_before" in fault_kinds
        replayed = stored is not None and not refused

        info: RequestInfo | None = None
        status, body, keep = 500, _encode(api_error().body()), False
        try:
            delay_ms = float(self.latency_ms)
            delay_ms += sum(r.latency_ms for r in rules if r.kind == "latency")
            if self.jitter_ms:
                delay_ms += self._rng.uniform(0, self.jitter_ms)
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            if hooks:
                info = RequestInfo(endpoint, request.method, request.path, key, _params(pairs))
                await self._run_hooks(hooks, "before", info)
            if refused:
                pass  # error_before: the 500 above, nothing executed, nothing stored
            elif stored is not None:
                status, body = stored.status, stored.body
                if "error_after" in fault_kinds:  # answered 500, the stored result unchanged
                    status, body = 500, _encode(api_error().body())
            else:
                status, body, keep = self._execute(
                    route, object_id, pairs, {"id": request_id, "idempotency_key": key}
                )
                if "error_after" in fault_kinds:
                    status, body, keep = 500, _encode(api_error().body()), True
        finally:
            if claimed and fp is not None and key is not None:
                self._idempotency.finish(key, fp, status, body if keep else None)

        outcome = _Outcome(
            status,
            body,
            replayed=replayed,
            drop="drop_after" in fault_kinds and not refused,
            faults=fault_kinds,
            endpoint=endpoint,
        )
        if info is not None:
            info.status = status
            info.body = json.loads(body)
            info.replayed = replayed
            await self._run_hooks(hooks, "after", info)
        return outcome

    def _execute(
        self,
        route: routes.Route,
        object_id: str,
        pairs: list[tuple[str, str]],
        request: Json,
    ) -> tuple[int, bytes, bool]:
        """Run the operation: (status, body, whether the idempotency layer stores it).
        `request` ({id, idempotency_key}) is what events recorded meanwhile name."""
        self._state.current_request = request
        try:
            params = decode(pairs)
            result = route.operation(self._state, object_id, params)
        except StripeError as error:
            return error.status, _encode(error.body()), error.stored
        finally:
            self._state.current_request = None
        return 200, _encode(result), True

    async def _run_hooks(self, hooks: list[Any], when: HookWhen, info: RequestInfo) -> None:
        for hook in hooks:
            if hook.when != when:
                continue
            self._stats.hooks_run += 1
            try:
                result = hook.callback(info)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("sandbox hook for %s failed", info.endpoint)


def _params(pairs: list[tuple[str, str]]) -> Params:
    try:
        return decode(pairs)
    except StripeError:
        return {}
