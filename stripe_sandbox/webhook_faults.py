"""Fault rules for webhook deliveries: drop, duplicate, delay or reorder them."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .events import EVENT_TYPES
from .faults import _Matcher

WebhookFaultKind = Literal["drop", "duplicate", "delay", "reorder"]
WEBHOOK_FAULT_KINDS: tuple[str, ...] = ("drop", "duplicate", "delay", "reorder")


@dataclass
class WebhookFaultRule:
    """When an event is about to be delivered to an endpoint, apply `kind`.

    - drop: never deliver it (no attempt, no retry); the event stays `pending_webhooks`.
    - duplicate: deliver it twice, as two independent deliveries (each retried on failure).
    - delay: wait `delay_ms` before the first attempt.
    - reorder: hold it; once `hold` deliveries are held, send them newest first, one after
      the other (`Sandbox.release_webhooks()` sends whatever is held at once, in that order).

    `event_type` None matches every event. `nth` applies to the nth matching delivery only
    (1-based); otherwise `probability` (None means always). `times` caps how often it fires.
    """

    kind: WebhookFaultKind
    event_type: str | None = None
    nth: int | None = None
    probability: float | None = None
    times: int | None = None
    delay_ms: int = 0
    hold: int = 2

    def __post_init__(self) -> None:
        if self.kind not in WEBHOOK_FAULT_KINDS:
            raise ValueError(
                f"unknown webhook fault kind {self.kind!r}; expected one of {WEBHOOK_FAULT_KINDS}"
            )
        if self.event_type is not None and self.event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.event_type!r}")
        if self.nth is not None and self.nth < 1:
            raise ValueError("nth is 1-based")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if self.kind == "delay" and self.delay_ms <= 0:
            raise ValueError("a delay fault needs delay_ms > 0")
        if self.hold < 2:
            raise ValueError("a reorder fault holds at least 2 deliveries")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WebhookFaultBook:
    rng: random.Random
    _rules: dict[str, tuple[WebhookFaultRule, _Matcher]] = field(default_factory=dict)
    _next_id: int = 0

    def add(self, rule: WebhookFaultRule) -> str:
        self._next_id += 1
        rule_id = f"webhook_fault_{self._next_id}"
        matcher = _Matcher(rule.event_type, rule.nth, rule.probability, rule.times, None)
        self._rules[rule_id] = (rule, matcher)
        return rule_id

    def remove(self, rule_id: str) -> bool:
        return self._rules.pop(rule_id, None) is not None

    def clear(self) -> None:
        self._rules.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"id": rule_id, **rule.to_json(), "matched": m.seen, "fired": m.fired}
            for rule_id, (rule, m) in self._rules.items()
        ]

    def draw(self, event_type: str) -> list[WebhookFaultRule]:
        """The rules that fire for one delivery of an event of `event_type`."""
        return [
            rule
            for rule, matcher in list(self._rules.values())
            if matcher.fires(event_type, None, self.rng)
        ]
