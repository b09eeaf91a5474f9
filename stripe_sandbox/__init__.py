"""A stateful fake of Stripe's HTTP API for tests and local runs. See docs/stripe-sandbox.md."""

from .clock import SandboxClock
from .faults import FaultRule, RequestInfo
from .sandbox import Sandbox

__all__ = ["FaultRule", "RequestInfo", "Sandbox", "SandboxClock"]
