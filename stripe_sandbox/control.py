"""The control API under /_sandbox/, to drive a sandbox running in another process.

GET    /_sandbox/stats               counters (same as Sandbox.stats())
GET    /_sandbox/faults              active faults with match counts
POST   /_sandbox/faults              JSON FaultRule fields -> {"id": ...}
DELETE /_sandbox/faults              remove every fault and hook
DELETE /_sandbox/faults/{id}         remove one
GET    /_sandbox/clock               {"now": unix seconds}
POST   /_sandbox/clock/advance       {"seconds": N} (or days/hours/minutes) -> {"now": ...}
GET    /_sandbox/payment_intents     every PaymentIntent
GET    /_sandbox/disputes            every Dispute
POST   /_sandbox/disputes/{id}/close {"outcome": "won" | "lost"} -> the Dispute
POST   /_sandbox/refunds/{id}/fail   {"failure_reason": ...} (default expired_or_canceled_card)
                                     -> the Refund, now `failed`
POST   /_sandbox/config              {"latency_ms", "jitter_ms", "rate_limits",
                                      "search_lag_seconds"} (any subset)
POST   /_sandbox/reset               forget all objects, keys and counters
and the events, webhook and 3D Secure routes listed in control_webhooks.py.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import control_webhooks
from .faults import FaultRule

if TYPE_CHECKING:
    from .sandbox import Sandbox


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )


def _problem(message: str, status: int = 400) -> web.Response:
    return _json({"error": {"type": "invalid_request_error", "message": message}}, status)


class ControlApi:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def handle(self, request: web.BaseRequest) -> web.Response:
        path = request.path.rstrip("/")
        method = request.method
        body: dict[str, Any] = {}
        if method == "POST" and request.can_read_body:
            try:
                loaded = json.loads(await request.text() or "{}")
            except ValueError:
                return _problem("the body must be JSON")
            if not isinstance(loaded, dict):
                return _problem("the body must be a JSON object")
            body = loaded
        try:
            return self._dispatch(method, path, body)
        except (TypeError, ValueError) as error:
            return _problem(str(error))

    def _dispatch(self, method: str, path: str, body: dict[str, Any]) -> web.Response:
        sandbox = self._sandbox
        if path.startswith(control_webhooks.PREFIXES):
            answer = control_webhooks.dispatch(sandbox, method, path, body)
            if answer is not None:
                return answer
        if (method, path) == ("GET", "/_sandbox/stats"):
            return _json(sandbox.stats())
        if (method, path) == ("GET", "/_sandbox/faults"):
            return _json(sandbox.faults())
        if (method, path) == ("POST", "/_sandbox/faults"):
            return _json({"id": sandbox.add_fault(FaultRule(**body))}, 201)
        if (method, path) == ("DELETE", "/_sandbox/faults"):
            sandbox.clear_faults()
            return _json({"cleared": True})
        if method == "DELETE" and path.startswith("/_sandbox/faults/"):
            rule_id = path.rsplit("/", 1)[1]
            if not sandbox.remove_fault(rule_id):
                return _problem(f"no fault {rule_id}", 404)
            return _json({"deleted": rule_id})
        if (method, path) == ("GET", "/_sandbox/clock"):
            return _json({"now": sandbox.clock.now()})
        if (method, path) == ("POST", "/_sandbox/clock/advance"):
            delta = timedelta(
                days=float(body.get("days", 0)),
                hours=float(body.get("hours", 0)),
                minutes=float(body.get("minutes", 0)),
                seconds=float(body.get("seconds", 0)),
            )
            return _json({"now": sandbox.clock.advance(delta)})
        if (method, path) == ("GET", "/_sandbox/payment_intents"):
            return _json(sandbox.payment_intents())
        if (method, path) == ("GET", "/_sandbox/disputes"):
            return _json(sandbox.disputes())
        if method == "POST" and path.startswith("/_sandbox/disputes/") and path.endswith("/close"):
            dispute_id = path.removeprefix("/_sandbox/disputes/").removesuffix("/close")
            try:
                return _json(sandbox.close_dispute(dispute_id, str(body.get("outcome"))))
            except LookupError as missing:
                return _problem(str(missing), 404)
        if method == "POST" and path.startswith("/_sandbox/refunds/") and path.endswith("/fail"):
            refund_id = path.removeprefix("/_sandbox/refunds/").removesuffix("/fail")
            reason = str(body.get("failure_reason", "expired_or_canceled_card"))
            try:
                return _json(sandbox.fail_refund(refund_id, reason))
            except LookupError as missing:
                return _problem(str(missing), 404)
        if (method, path) == ("POST", "/_sandbox/config"):
            return self._configure(body)
        if (method, path) == ("POST", "/_sandbox/reset"):
            sandbox.reset()
            return _json({"reset": True})
        return _problem(f"unknown control route {method} {path}", 404)

    def _configure(self, body: dict[str, Any]) -> web.Response:
        sandbox = self._sandbox
        unknown = set(body) - {"latency_ms", "jitter_ms", "rate_limits", "search_lag_seconds"}
        if unknown:
            return _problem(f"unknown settings: {sorted(unknown)}")
        if "latency_ms" in body:
            sandbox.latency_ms = int(body["latency_ms"])
        if "jitter_ms" in body:
            sandbox.jitter_ms = int(body["jitter_ms"])
        if "rate_limits" in body:
            sandbox.rate_limits = bool(body["rate_limits"])
        if "search_lag_seconds" in body:
            sandbox.search_lag_seconds = float(body["search_lag_seconds"])
        return _json(
            {
                "latency_ms": sandbox.latency_ms,
                "jitter_ms": sandbox.jitter_ms,
                "rate_limits": sandbox.rate_limits,
                "search_lag_seconds": sandbox.search_lag_seconds,
            }
        )
