"""Control routes for events, webhook delivery and 3D Secure (see control.py for the rest).

GET    /_sandbox/events                          every Event, oldest first
GET    /_sandbox/webhooks/deliveries             every delivery attempt, oldest first
POST   /_sandbox/webhooks/release                send the held (reorder) deliveries now
POST   /_sandbox/webhooks/config                 {"retry_base_ms", "max_attempts", "timeout_ms"}
GET    /_sandbox/webhook_faults                  active webhook faults with match counts
POST   /_sandbox/webhook_faults                  JSON WebhookFaultRule fields -> {"id": ...}
DELETE /_sandbox/webhook_faults                  remove every webhook fault
DELETE /_sandbox/webhook_faults/{id}             remove one
POST   /_sandbox/payment_intents/{id}/3ds/complete   the customer passes 3D Secure
POST   /_sandbox/payment_intents/{id}/3ds/fail       the customer fails it
GET    /_sandbox/3ds/{id}                        the page next_action.redirect_to_url.url shows
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .authentication import AuthenticationError, UnknownIntent, page
from .webhook_faults import WebhookFaultRule
from .webhooks import WebhookSettings

if TYPE_CHECKING:
    from .sandbox import Sandbox

PREFIXES = ("/_sandbox/events", "/_sandbox/webhook", "/_sandbox/3ds/", "/_sandbox/payment_intents/")
_AUTHENTICATE = re.compile(r"/_sandbox/payment_intents/([A-Za-z0-9_]+)/3ds/(complete|fail)")
_PAGE = re.compile(r"/_sandbox/3ds/([A-Za-z0-9_]+)")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )


def _problem(message: str, status: int = 400) -> web.Response:
    return _json({"error": {"type": "invalid_request_error", "message": message}}, status)


def dispatch(sandbox: Sandbox, method: str, path: str, body: dict[str, Any]) -> web.Response | None:
    """Answer a control route of this module, or None when the path is not one of them."""
    webhooks = sandbox.webhooks
    if (method, path) == ("GET", "/_sandbox/events"):
        return _json(sandbox.events())
    if (method, path) == ("GET", "/_sandbox/webhooks/deliveries"):
        return _json(webhooks.deliveries())
    if (method, path) == ("POST", "/_sandbox/webhooks/release"):
        return _json({"released": webhooks.release()})
    if (method, path) == ("POST", "/_sandbox/webhooks/config"):
        settings = {**asdict(webhooks.settings), **body}
        webhooks.settings = WebhookSettings(**{k: int(v) for k, v in settings.items()})
        return _json(asdict(webhooks.settings))
    if (method, path) == ("GET", "/_sandbox/webhook_faults"):
        return _json(webhooks.describe_faults())
    if (method, path) == ("POST", "/_sandbox/webhook_faults"):
        return _json({"id": webhooks.add_fault(WebhookFaultRule(**body))}, 201)
    if (method, path) == ("DELETE", "/_sandbox/webhook_faults"):
        webhooks.clear_faults()
        return _json({"cleared": True})
    if method == "DELETE" and path.startswith("/_sandbox/webhook_faults/"):
        rule_id = path.rsplit("/", 1)[1]
        if not webhooks.remove_fault(rule_id):
            return _problem(f"no webhook fault {rule_id}", 404)
        return _json({"deleted": rule_id})
    found = _AUTHENTICATE.fullmatch(path)
    if method == "POST" and found is not None:
        intent_id, outcome = found.groups()
        try:
            if outcome == "complete":
                return _json(sandbox.complete_authentication(intent_id))
            return _json(sandbox.fail_authentication(intent_id))
        except AuthenticationError as error:
            return _problem(str(error), 404 if isinstance(error, UnknownIntent) else 400)
    found = _PAGE.fullmatch(path)
    if method == "GET" and found is not None:
        intent_id = found.group(1)
        text = page(intent_id, sandbox.payment_intent(intent_id))
        return web.Response(text=text, content_type="text/html")
    return None
