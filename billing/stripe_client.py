"""The one home of Stripe call patterns: building the client, counting and timing each
request, paging a customer's PaymentIntents and a PaymentIntent's refunds and disputes,
bounded retries of reads, a void read back when its answer is not plain, the URL where a
customer passes 3-D Secure, and registering a webhook endpoint.

Reads take a `Reader`: `read_retried` in the CLI, which retries a bounded number of times, and
`read_once` in an activity, where a read error must reach Temporal, which retries it.
"""

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import stripe
from opentelemetry.trace import SpanKind
from stripe.params import DisputeListParams, PaymentIntentListParams, RefundListParams

from billing import metrics
from billing.settings import Settings
from billing.tracing import tracer

# PaymentIntent statuses the code acts on.
CAPTURABLE = "requires_capture"
CAPTURED = "succeeded"
CANCELED = "canceled"
# Waiting for the customer to authenticate (3-D Secure) at `next_action`'s URL.
REQUIRES_ACTION = "requires_action"
LIST_PAGE = 100  # Stripe's largest page

# Stripe's answer to a capture or cancel of an intent in a status that does not allow it
# (already captured, already cancelled): the call changed nothing.
UNEXPECTED_STATE = "payment_intent_unexpected_state"

# Below the Stripe activities' start_to_close timeout, so a hung request fails inside the
# attempt and the engine retries it with the same idempotency key.
STRIPE_HTTP_TIMEOUT_SECONDS = 20.0

# `read_retried`: attempts in all, and its backoff (doubling from the first delay).
READ_ATTEMPTS = 10
READ_FIRST_DELAY_SECONDS = 0.2
READ_MAX_DELAY_SECONDS = 5.0

CancellationReason = Literal["abandoned", "duplicate", "fraudulent", "requested_by_customer"]
T = TypeVar("T")


# An object id in a path (`pi_3Nf…`, `cus_…`), left out of span names so that they group.
OBJECT_ID = re.compile(r"/[a-z]+_(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]+")


class TracedHTTPXClient(stripe.HTTPXClient):
    """One span per HTTP request to Stripe, retries included, with its method, path, status
    and idempotency key. Never the body (card and customer data) nor the headers (the key)."""

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        path = urlsplit(url).path
        attributes = {"http.request.method": method.upper(), "url.path": path}
        if key := headers.get("Idempotency-Key"):
            attributes["stripe.idempotency_key"] = key
        name = f"Stripe {method.upper()} {OBJECT_ID.sub('/{id}', path)}"
        span_of_request = tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=attributes
        )
        with span_of_request as span:
            content, status, response_headers = await super().request_async(
                method, url, headers, post_data
            )
            span.set_attribute("http.response.status_code", status)
            if request_id := response_headers.get("Request-Id"):
                span.set_attribute("stripe.request_id", request_id)
            return content, status, response_headers


def make_stripe_client(settings: Settings) -> stripe.StripeClient:
    base = settings.resolved_stripe_base()
    return stripe.StripeClient(
        settings.resolved_stripe_key(),
        base_addresses={"api": base} if base else None,
        max_network_retries=settings.stripe_max_network_retries,
        http_client=MeteredHTTPClient(timeout=STRIPE_HTTP_TIMEOUT_SECONDS),
    )


class MeteredHTTPClient(TracedHTTPXClient):
    """The traced client, also recording each request sent from an activity: its endpoint,
    its outcome and how long Stripe took (`billing.metrics.stripe_request`)."""

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        endpoint = stripe_endpoint(method, url)
        started = time.monotonic()
        try:
            content, status, answer_headers = await super().request_async(
                method, url, headers, post_data
            )
        except stripe.APIConnectionError:
            metrics.stripe_request(endpoint, "network_error", _since(started))
            raise
        metrics.stripe_request(endpoint, request_outcome(status, answer_headers), _since(started))
        return content, status, answer_headers


def _since(started: float) -> timedelta:
    return timedelta(seconds=time.monotonic() - started)


def stripe_endpoint(method: str, url: str) -> str:
    """The endpoint a request calls, without ids, named as Stripe's API reference does:
    `payment_intents.create`, `payment_intents.capture`, `payment_intents.list`…"""
    resource, *rest = urlsplit(url).path.removeprefix("/v1/").split("/")
    method = method.upper()
    if len(rest) >= 2:  # /v1/payment_intents/pi_…/capture
        action = rest[-1]
    elif rest == ["search"]:
        action = "search"
    elif rest:  # /v1/payment_intents/pi_…
        action = {"GET": "retrieve", "DELETE": "delete"}.get(method, "update")
    else:
        action = "list" if method == "GET" else "create"
    return f"{resource}.{action}"


def request_outcome(status: int, headers: Mapping[str, str]) -> str:
    """What a Stripe answer was, as the `outcome` label of billing_stripe_requests."""
    if status < 300:
        return "ok"
    if status == 402:
        return "declined"
    if status == 409:
        return "conflict"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "stored_server_error" if stored_answer(headers) else "server_error"
    return "rejected"


def stored_answer(headers: Mapping[str, str]) -> bool:
    """Stripe stored its answer under the key: a retry with the key only replays it. Stripe
    says so with `Stripe-Should-Retry: false`, or by marking the answer
    `Idempotent-Replayed: true`. Header names are compared ignoring case."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return (
        lowered.get("stripe-should-retry") == "false"
        or lowered.get("idempotent-replayed") == "true"
    )


def stored_server_error(err: stripe.StripeError) -> bool:
    """A 5xx that Stripe stored under the key: every retry with this key replays it, so
    whether Stripe acted can only be learnt by reading the PaymentIntent."""
    return (err.http_status or 0) >= 500 and stored_answer(err.headers or {})


class Reader(Protocol):
    """How a read without side effects is sent: `read_once` or `read_retried`."""

    def __call__(self, call: Callable[[], Awaitable[T]], /) -> Awaitable[T]: ...


async def read_once(call: Callable[[], Awaitable[T]]) -> T:
    """Send the read once; any error is raised. For activities: Temporal retries them."""
    return await call()


async def read_retried(call: Callable[[], Awaitable[T]]) -> T:
    """Send the read, retrying rate limits, lost connections and 5xx: a read is safe to
    repeat, whatever `Stripe-Should-Retry` says, since no key stores its answer. Bounded:
    after READ_ATTEMPTS the last error is raised. Other errors are raised at once."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return await call()
        except (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError):
            if attempt == READ_ATTEMPTS - 1:
                raise
            await asyncio.sleep(min(READ_FIRST_DELAY_SECONDS * 2**attempt, READ_MAX_DELAY_SECONDS))
    raise AssertionError("unreachable")


async def list_customer_intents(
    client: stripe.StripeClient,
    customer: str,
    created_after: int,
    *,
    read: Reader,
    expand: Sequence[str] = (),
) -> list[stripe.PaymentIntent]:
    """Every PaymentIntent of `customer` created at or after `created_after` (unix seconds),
    newest first, following every page. A list, never search, which lags writes.

    `expand` names fields of each intent to expand, e.g. `latest_charge`. Each page is one
    read sent through `read`.
    """
    found: list[stripe.PaymentIntent] = []
    params: PaymentIntentListParams = {
        "customer": customer,
        "created": {"gte": created_after},
        "limit": LIST_PAGE,
    }
    if expand:
        params["expand"] = [f"data.{field}" for field in expand]
    while True:
        page = await read(lambda: client.v1.payment_intents.list_async(params))
        found += page.data
        if not page.has_more or not page.data:
            return found
        params["starting_after"] = page.data[-1].id


async def list_intent_refunds(
    client: stripe.StripeClient, intent_id: str, *, read: Reader
) -> list[stripe.Refund]:
    """Every refund of a PaymentIntent, newest first, following every page; each page is one
    read sent through `read`."""
    found: list[stripe.Refund] = []
    params: RefundListParams = {"payment_intent": intent_id, "limit": LIST_PAGE}
    while True:
        page = await read(lambda: client.v1.refunds.list_async(params))
        found += page.data
        if not page.has_more or not page.data:
            return found
        params["starting_after"] = page.data[-1].id


def redirect_url(intent: stripe.PaymentIntent) -> str | None:
    """Where the customer authenticates an intent in `requires_action`: the URL of its
    `redirect_to_url` next action (a confirm that names a `return_url` gets one)."""
    action = intent.next_action.to_dict() if intent.next_action else {}
    return (action.get("redirect_to_url") or {}).get("url")


async def list_intent_disputes(
    client: stripe.StripeClient, intent_id: str, *, read: Reader
) -> list[stripe.Dispute]:
    """Every dispute of a PaymentIntent, newest first, following every page; each page is one
    read sent through `read`."""
    found: list[stripe.Dispute] = []
    params: DisputeListParams = {"payment_intent": intent_id, "limit": LIST_PAGE}
    while True:
        page = await read(lambda: client.v1.disputes.list_async(params))
        found += page.data
        if not page.has_more or not page.data:
            return found
        params["starting_after"] = page.data[-1].id


class ReadBackFailed(Exception):
    """The read after a cancel failed. Not a StripeError, so that no caller takes the read's
    error for the keyed call's: a read stores nothing under a key, and a 5xx on it is always
    worth retrying. `error` is the read's StripeError."""

    def __init__(self, error: stripe.StripeError) -> None:
        super().__init__(f"reading the PaymentIntent back failed: {error}")
        self.error = error


@dataclass(frozen=True)
class CancelAnswer:
    """What a cancel came to: the intent as Stripe holds it, and the error the cancel raised
    (None when Stripe answered the cancel, and `intent` is that answer)."""

    intent: stripe.PaymentIntent
    error: stripe.StripeError | None

    @property
    def cancelled(self) -> bool:
        return self.intent.status == CANCELED

    @property
    def cancelled_before(self) -> bool:
        """Cancelled, and this cancel was refused for it: someone else had voided it."""
        return self.cancelled and self.error is not None and self.error.code == UNEXPECTED_STATE

    @property
    def captured(self) -> bool:
        return self.intent.status == CAPTURED


def needs_read_back(err: stripe.StripeError) -> bool:
    """A cancel (or capture) error after which only reading the intent tells what holds: the
    intent was in another status, or Stripe stored a 500 under the key."""
    return err.code == UNEXPECTED_STATE or stored_server_error(err)


async def cancel_and_read_back(
    client: stripe.StripeClient,
    intent_id: str,
    *,
    reason: CancellationReason,
    idempotency_key: str,
    read: Reader,
) -> CancelAnswer:
    """Cancel an uncaptured authorization under `idempotency_key`.

    When Stripe refuses it as `payment_intent_unexpected_state`, or answers a 500 stored under
    the key, the intent is read back through `read`: it may be cancelled already, captured, or
    (after a stored 500) still capturable, which then needs a new key. If that read fails,
    ReadBackFailed is raised. Any other error of the cancel is raised as it is: sending the
    same key again replays Stripe's answer or makes the call.
    """
    try:
        intent = await client.v1.payment_intents.cancel_async(
            intent_id, {"cancellation_reason": reason}, {"idempotency_key": idempotency_key}
        )
    except stripe.StripeError as err:
        if not needs_read_back(err):
            raise
        try:
            intent = await read(lambda: client.v1.payment_intents.retrieve_async(intent_id))
        except stripe.StripeError as read_error:
            raise ReadBackFailed(read_error) from read_error
        return CancelAnswer(intent, err)
    return CancelAnswer(intent, None)


class NoWebhookSecret(Exception):
    """Stripe's answer to creating a webhook endpoint carried no signing secret."""


@dataclass(frozen=True)
class WebhookEndpoint:
    """A registered webhook endpoint and its signing secret, which Stripe returns only when it
    creates the endpoint. The secret stays out of `repr`, so that no log shows it."""

    id: str
    secret: str = field(repr=False)


async def webhook_endpoint_ids(client: stripe.StripeClient, url: str) -> list[str]:
    """The ids of the webhook endpoints that deliver to `url`, following every page."""
    page = await client.v1.webhook_endpoints.list_async({"limit": LIST_PAGE})
    return [endpoint.id async for endpoint in page.auto_paging_iter() if endpoint.url == url]


async def register_webhook_endpoint(client: stripe.StripeClient, url: str) -> WebhookEndpoint:
    """Delete every endpoint that delivers to `url`, then register one there for every event
    type: afterwards exactly one endpoint delivers to `url`, signing with the secret returned."""
    for endpoint_id in await webhook_endpoint_ids(client, url):
        await client.v1.webhook_endpoints.delete_async(endpoint_id)
    endpoint = await client.v1.webhook_endpoints.create_async({"url": url, "enabled_events": ["*"]})
    if endpoint.secret is None:
        raise NoWebhookSecret(f"Stripe created webhook endpoint {endpoint.id} without a secret")
    return WebhookEndpoint(endpoint.id, endpoint.secret)
