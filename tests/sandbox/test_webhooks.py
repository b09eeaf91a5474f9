"""Webhook endpoints and delivery: signatures the SDK accepts, retries, faults, stats."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
import stripe

from stripe_sandbox import Sandbox
from stripe_sandbox.cli import parse_webhook_fault
from stripe_sandbox.webhook_faults import WebhookFaultRule
from stripe_sandbox.webhooks import WebhookSettings

from .conftest import SandboxFactory, sdk_client
from .helpers import authorized_intent
from .webhook_receiver import Receiver

FAST = WebhookSettings(retry_base_ms=5, max_attempts=3, timeout_ms=2000)
AUTHORIZED = [
    "payment_intent.created",
    "charge.succeeded",
    "payment_intent.amount_capturable_updated",
]


async def fast_sandbox(make_sandbox: SandboxFactory) -> tuple[Sandbox, stripe.StripeClient]:
    sandbox = await make_sandbox(webhook_settings=FAST)
    return sandbox, sdk_client(sandbox)


async def subscribe(
    client: stripe.StripeClient, url: str, events: list[str] | None = None
) -> stripe.WebhookEndpoint:
    return await client.v1.webhook_endpoints.create_async(
        {"url": url, "enabled_events": events or ["*"]}  # type: ignore[typeddict-item]
    )


async def idle(sandbox: Sandbox) -> None:
    async with asyncio.timeout(5):
        await sandbox.webhooks.wait_idle()


async def test_endpoint_create_retrieve_list_delete(client: stripe.StripeClient) -> None:
    created = await subscribe(client, "http://localhost:9/hooks", ["charge.captured"])
    assert created.id.startswith("we_")
    assert created.secret is not None and created.secret.startswith("whsec_")
    assert created.enabled_events == ["charge.captured"]
    assert created.status == "enabled"
    fetched = await client.v1.webhook_endpoints.retrieve_async(created.id)
    assert fetched.url == "http://localhost:9/hooks"
    assert "secret" not in fetched  # only on creation, as Stripe
    second = await subscribe(client, "http://127.0.0.1:9/other")
    listed = await client.v1.webhook_endpoints.list_async()
    assert [e.id for e in listed.data] == [second.id, created.id]
    deleted = await client.v1.webhook_endpoints.delete_async(created.id)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.webhook_endpoints.retrieve_async(created.id)
    assert missing.value.http_status == 404


@pytest.mark.parametrize(
    ("url", "events", "param"),
    [
        ("https://example.com/hooks", ["*"], "url"),
        ("http://10.0.0.1/hooks", ["*"], "url"),
        ("ftp://127.0.0.1/hooks", ["*"], "url"),
        ("http://127.0.0.1/hooks", ["charge.exploded"], "enabled_events[0]"),
    ],
)
async def test_endpoint_refuses_remote_urls_and_unknown_events(
    client: stripe.StripeClient, url: str, events: list[str], param: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await subscribe(client, url, events)
    assert refused.value.http_status == 400
    assert refused.value.param == param


async def test_events_are_delivered_signed_so_the_sdk_accepts_them(
    make_sandbox: SandboxFactory, receiver: Receiver
) -> None:
    sandbox, client = await fast_sandbox(make_sandbox)
    endpoint = await subscribe(client, receiver.url)
    assert endpoint.secret is not None
    intent = await authorized_intent(client)
    deliveries = await receiver.wait_for(3)
    await idle(sandbox)
    assert sorted(receiver.types()) == sorted(AUTHORIZED)
    for delivery in deliveries:
        event = stripe.Webhook.construct_event(
            delivery.payload, delivery.signature, endpoint.secret
        )
        assert event.id in {e["id"] for e in sandbox.events()}
        assert delivery.headers["Content-Type"].startswith("application/json")
        timestamp = int(delivery.signature.split(",")[0].removeprefix("t="))
        assert abs(timestamp - sandbox.clock.now()) <= 5
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(delivery.payload, delivery.signature, "whsec_wrong")
    capturable = next(d for d in deliveries if d.type == AUTHORIZED[2])
    assert capturable.event["data"]["object"]["id"] == intent.id
    assert capturable.event["pending_webhooks"] == 1  # not yet answered when it was sent
    assert [e["pending_webhooks"] for e in sandbox.events()] == [0, 0, 0]
    stats = sandbox.stats()["webhooks"]
    assert stats["attempts"] == stats["successes"] == 3
    assert stats["failures"] == 0


async def test_only_subscribed_types_and_not_after_delete(
    make_sandbox: SandboxFactory, receiver: Receiver
) -> None:
    sandbox, client = await fast_sandbox(make_sandbox)
    endpoint = await subscribe(client, receiver.url, ["payment_intent.succeeded"])
    intent = await authorized_intent(client)
    await client.v1.payment_intents.capture_async(intent.id)
    await receiver.wait_for(1)
    await idle(sandbox)
    assert receiver.types() == ["payment_intent.succeeded"]
    await client.v1.webhook_endpoints.delete_async(endpoint.id)
    second = await authorized_intent(client, payment_id="pay_2")
    await client.v1.payment_intents.capture_async(second.id)
    await idle(sandbox)
    assert receiver.types() == ["payment_intent.succeeded"]


async def test_delivery_never_blocks_the_api_request(
    make_sandbox: SandboxFactory, receiver: Receiver
) -> None:
    sandbox, client = await fast_sandbox(make_sandbox)
    receiver.gate = asyncio.Event()  # the endpoint hangs until the test lets it answer
    await subscribe(client, receiver.url, ["payment_intent.created"])
    intent = await authorized_intent(client)
    assert intent.status == "requires_capture"
    await receiver.wait_for(1)
    assert sandbox.stats()["webhooks"]["in_flight"] == 1
    receiver.gate.set()
    await idle(sandbox)
    assert sandbox.stats()["webhooks"]["successes"] == 1


async def test_a_failed_delivery_is_retried_until_it_succeeds(
    make_sandbox: SandboxFactory, receiver: Receiver
) -> None:
    sandbox, client = await fast_sandbox(make_sandbox)
    receiver.answers = [500, 503]
    await subscribe(client, receiver.url, ["payment_intent.created"])
    await authorized_intent(client)
    deliveries = await receiver.wait_for(3)
    await idle(sandbox)
    assert len({d.event["id"] for d in deliveries}) == 1
    log = sandbox.webhooks.deliveries()
    assert [(entry["attempt"], entry["status"]) for entry in log] == [(1, 500), (2, 503), (3, 200)]
    stats = sandbox.stats()["webhooks"]
    assert (stats["attempts"], stats["successes"], stats["failures"]) == (3, 1, 2)
    assert stats["gave_up"] == 0
    assert sandbox.events()[0]["pending_webhooks"] == 0


async def test_an_unreachable_endpoint_is_given_up_after_max_attempts(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox, client = await fast_sandbox(make_sandbox)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await subscribe(client, f"http://127.0.0.1:{port}/hooks", ["payment_intent.created"])
    await authorized_intent(client)
    await idle(sandbox)
    log = sandbox.webhooks.deliveries()
    assert [entry["attempt"] for entry in log] == [1, 2, 3]
    assert all(entry["status"] is None and entry["error"] for entry in log)
    stats = sandbox.stats()["webhooks"]
    assert (stats["attempts"], stats["failures"], stats["gave_up"]) == (3, 3, 1)
    assert sandbox.events()[0]["pending_webhooks"] == 1


async def test_drop_and_duplicate_faults(make_sandbox: SandboxFactory, receiver: Receiver) -> None:
    sandbox, client = await fast_sandbox(make_sandbox)
    await subscribe(client, receiver.url)
    sandbox.webhooks.add_fault(WebhookFaultRule(kind="drop", event_type="charge.succeeded"))
    sandbox.webhooks.add_fault(
        WebhookFaultRule(kind="duplicate", event_type="payment_intent.created")
    )
    await authorized_intent(client)
    await receiver.wait_for(3)
    await idle(sandbox)
    assert sorted(receiver.types()) == [
        "payment_intent.amount_capturable_updated",
        "payment_intent.created",
        "payment_intent.created",
    ]
    created = [d.event["id"] for d in receiver.deliveries if d.type == "payment_intent.created"]
    assert created[0] == created[1]  # the same event twice, as Stripe may send it
    stats = sandbox.stats()["webhooks"]
    assert (stats["dropped"], stats["duplicated"], stats["successes"]) == (1, 1, 3)
    pending = {e["type"]: e["pending_webhooks"] for e in sandbox.events()}
    assert pending == {
        "payment_intent.created": 0,
        "charge.succeeded": 1,  # dropped: never delivered
        "payment_intent.amount_capturable_updated": 0,
    }


async def test_delay_fault_holds_one_delivery_back(
    make_sandbox: SandboxFactory, receiver: Receiver
) -> None:
    sandbox, client = await fast_sandbox(make_sandbox)
    await subscribe(client, receiver.url, ["payment_intent.created", "payment_intent.canceled"])
    sandbox.webhooks.add_fault(
        WebhookFaultRule(kind="delay", event_type="payment_intent.created", delay_ms=1000)
    )
    intent = await authorized_intent(client)
    await client.v1.payment_intents.cancel_async(intent.id)
    await receiver.wait_for(1)
    assert receiver.types() == ["payment_intent.canceled"]  # the earlier event is held back
    await receiver.wait_for(2)
    assert receiver.types() == ["payment_intent.canceled", "payment_intent.created"]
    assert sandbox.stats()["webhooks"]["delayed"] == 1


async def test_reorder_fault_sends_held_deliveries_newest_first(
    make_sandbox: SandboxFactory, receiver: Receiver
) -> None:
    sandbox, client = await fast_sandbox(make_sandbox)
    await subscribe(client, receiver.url)
    sandbox.webhooks.add_fault(WebhookFaultRule(kind="reorder", hold=3, times=3))
    await authorized_intent(client)
    await receiver.wait_for(3)
    await idle(sandbox)
    assert receiver.types() == list(reversed(AUTHORIZED))
    assert sandbox.stats()["webhooks"]["reordered"] == 3


async def test_held_deliveries_are_released_on_demand_through_the_control_api(
    make_sandbox: SandboxFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    sandbox, client = await fast_sandbox(make_sandbox)
    await subscribe(client, receiver.url)
    rule = {"kind": "reorder", "hold": 10, "event_type": "payment_intent.created"}
    async with http.post(f"{sandbox.url}/_sandbox/webhook_faults", json=rule) as response:
        assert response.status == 201
        rule_id = (await response.json())["id"]
    for n in range(2):
        await authorized_intent(client, payment_id=f"pay_{n}")
    await receiver.wait_for(4)
    await idle(sandbox)
    assert "payment_intent.created" not in receiver.types()
    assert sandbox.stats()["webhooks"]["held"] == 2
    async with http.post(f"{sandbox.url}/_sandbox/webhooks/release") as response:
        assert (await response.json()) == {"released": 2}
    await receiver.wait_for(6)
    created = [d.event for d in receiver.deliveries if d.type == "payment_intent.created"]
    metadata = [event["data"]["object"]["metadata"]["payment_id"] for event in created]
    assert metadata == ["pay_1", "pay_0"]
    async with http.get(f"{sandbox.url}/_sandbox/webhook_faults") as response:
        assert [(f["id"], f["fired"]) for f in await response.json()] == [(rule_id, 2)]
    async with http.delete(f"{sandbox.url}/_sandbox/webhook_faults/{rule_id}") as response:
        assert response.status == 200
    async with http.post(f"{sandbox.url}/_sandbox/webhook_faults", json={"kind": "x"}) as response:
        assert response.status == 400
    async with http.get(f"{sandbox.url}/_sandbox/webhooks/deliveries") as response:
        assert len(await response.json()) == 6
    async with http.post(
        f"{sandbox.url}/_sandbox/webhooks/config", json={"max_attempts": 7}
    ) as response:
        assert (await response.json())["max_attempts"] == 7
    async with http.get(f"{sandbox.url}/_sandbox/stats") as response:
        assert (await response.json())["webhooks"]["successes"] == 6


def test_cli_webhook_fault_syntax() -> None:
    assert parse_webhook_fault("drop:payment_intent.succeeded:nth=1") == WebhookFaultRule(
        kind="drop", event_type="payment_intent.succeeded", nth=1
    )
    assert parse_webhook_fault("delay:*:ms=500,p=0.5") == WebhookFaultRule(
        kind="delay", delay_ms=500, probability=0.5
    )
    assert parse_webhook_fault("reorder:*:hold=3,times=3") == WebhookFaultRule(
        kind="reorder", hold=3, times=3
    )
    for bad in ("drop", "drop:charge.exploded", "delay:*", "reorder:*:color=red", "nope:*"):
        with pytest.raises(ValueError):
            parse_webhook_fault(bad)
