"""Sandbox time: real wall time plus an offset that tests can advance."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta


class SandboxClock:
    def __init__(self) -> None:
        self._offset = 0.0
        self._listeners: list[Callable[[], None]] = []

    def time(self) -> float:
        """Sandbox time in fractional unix seconds."""
        return time.time() + self._offset

    def now(self) -> int:
        """Sandbox time in whole unix seconds, as Stripe's `created` fields."""
        return int(self.time())

    def advance(self, delta: timedelta | float) -> int:
        """Move sandbox time forward and run what became due (expiries). Returns now()."""
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        self._offset += seconds
        for listener in list(self._listeners):
            listener()
        return self.now()

    def on_advance(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)
