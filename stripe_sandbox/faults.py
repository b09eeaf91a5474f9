"""Fault rules and hooks that tests set to break the network or act at an exact point."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FaultKind = Literal["error_before", "drop_after", "error_after", "latency"]
FAULT_KINDS: tuple[str, ...] = ("error_before", "drop_after", "error_after", "latency")
HookWhen = Literal["before", "after"]


@dataclass
class FaultRule:
    """When a matching request arrives, inject `kind`.

    - error_before: answer a 500 without executing; nothing is stored under the key.
    - drop_after: execute (or replay) and store, then close the connection without answering.
    - error_after: execute (or replay), then answer a 500; if it executed, the 500 is what is
      stored under the key and replayed.
    - latency: wait `latency_ms` more before executing.

    A request matches once it has passed auth, the rate limits and the idempotency check
    (a 429, 409 or idempotency 400 consumes no fault). `endpoint` None matches any endpoint.
    `nth` applies to the nth matching request only (1-based); otherwise `probability` (None
    means always). `times` caps how often the rule fires (None: unlimited). `key_contains`
    restricts to Idempotency-Keys containing it.
    """

    kind: FaultKind
    endpoint: str | None = None
    nth: int | None = None
    probability: float | None = None
    times: int | None = None
    key_contains: str | None = None
    latency_ms: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.nth is not None and self.nth < 1:
            raise ValueError("nth is 1-based")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if self.kind == "latency" and self.latency_ms <= 0:
            raise ValueError("a latency fault needs latency_ms > 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RequestInfo:
    """What a hook callback receives. `status`, `body` and `replayed` are set for "after"."""

    endpoint: str
    method: str
    path: str
    idempotency_key: str | None
    params: dict[str, Any]
    status: int | None = None
    body: dict[str, Any] | None = None
    replayed: bool = False


HookCallback = Callable[[RequestInfo], Awaitable[None] | None]


@dataclass
class _Matcher:
    endpoint: str | None
    nth: int | None
    probability: float | None
    times: int | None
    key_contains: str | None
    seen: int = 0
    fired: int = 0

    def fires(self, endpoint: str, key: str | None, rng: random.Random) -> bool:
        if self.endpoint is not None and self.endpoint != endpoint:
            return False
        if self.key_contains is not None and (key is None or self.key_contains not in key):
            return False
        self.seen += 1
        if self.times is not None and self.fired >= self.times:
            return False
        if self.nth is not None:
            hit = self.seen == self.nth
        elif self.probability is not None:
            hit = rng.random() < self.probability
        else:
            hit = True
        if hit:
            self.fired += 1
        return hit


@dataclass
class _Hook:
    when: HookWhen
    callback: HookCallback
    matcher: _Matcher


@dataclass
class FaultBook:
    """The faults and hooks of one sandbox, and how often each has matched."""

    rng: random.Random
    _rules: dict[str, tuple[FaultRule, _Matcher]] = field(default_factory=dict)
    _hooks: dict[str, _Hook] = field(default_factory=dict)
    _next_id: int = 0

    def _new_id(self, prefix: str) -> str:
        self._next_id += 1
        return f"{prefix}_{self._next_id}"

    def add_fault(self, rule: FaultRule) -> str:
        rule_id = self._new_id("fault")
        matcher = _Matcher(rule.endpoint, rule.nth, rule.probability, rule.times, rule.key_contains)
        self._rules[rule_id] = (rule, matcher)
        return rule_id

    def add_hook(
        self,
        endpoint: str | None,
        when: HookWhen,
        callback: HookCallback,
        *,
        key_contains: str | None = None,
        nth: int | None = None,
        times: int | None = 1,
    ) -> str:
        if when not in ("before", "after"):
            raise ValueError("when must be 'before' or 'after'")
        hook_id = self._new_id("hook")
        self._hooks[hook_id] = _Hook(
            when, callback, _Matcher(endpoint, nth, None, times, key_contains)
        )
        return hook_id

    def remove(self, rule_id: str) -> bool:
        return (
            self._rules.pop(rule_id, None) is not None or self._hooks.pop(rule_id, None) is not None
        )

    def clear(self) -> None:
        self._rules.clear()
        self._hooks.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"id": rule_id, **rule.to_json(), "matched": m.seen, "fired": m.fired}
            for rule_id, (rule, m) in self._rules.items()
        ]

    def draw(self, endpoint: str, key: str | None) -> list[FaultRule]:
        """The rules that fire for this request (each match counts toward nth and times)."""
        if not self._rules:
            return []
        return [
            rule
            for rule, matcher in list(self._rules.values())
            if matcher.fires(endpoint, key, self.rng)
        ]

    def hooks_for(self, endpoint: str, key: str | None) -> list[_Hook]:
        if not self._hooks:
            return []
        return [h for h in list(self._hooks.values()) if h.matcher.fires(endpoint, key, self.rng)]
