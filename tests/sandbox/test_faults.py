"""Fault injection (error_before, drop_after, error_after, latency) and hooks."""

from __future__ import annotations

import asyncio
import time

import pytest
import stripe

from stripe_sandbox import FaultRule, RequestInfo, Sandbox

from .conftest import SandboxFactory, sdk_client
from .helpers import authorized_intent


async def test_error_before_answers_500_without_executing_or_storing(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    sandbox.add_fault(FaultRule(kind="error_before", endpoint="payment_intents.create", nth=1))
    with pytest.raises(stripe.APIError) as failed:
        await authorized_intent(client, key="pay_1_auth_1")
    assert failed.value.http_status == 500
    assert sandbox.payment_intents() == []
    retried = await authorized_intent(client, key="pay_1_auth_1")
    assert retried.last_response is not None
    assert "Idempotent-Replayed" not in retried.last_response.headers
    assert len(sandbox.payment_intents()) == 1


async def test_drop_after_executes_and_stores_then_closes_the_connection(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await authorized_intent(client)
    sandbox.add_fault(FaultRule(kind="drop_after", endpoint="payment_intents.capture", nth=1))
    options: stripe.RequestOptions = {"idempotency_key": "pay_1_capture_1"}
    with pytest.raises(stripe.APIConnectionError):
        await client.v1.payment_intents.capture_async(intent.id, None, options)
    assert sandbox.payment_intents()[0]["status"] == "succeeded"  # Stripe acted, we never heard
    retried = await client.v1.payment_intents.capture_async(intent.id, None, options)
    assert retried.status == "succeeded"
    assert retried.last_response is not None
    assert retried.last_response.headers["Idempotent-Replayed"] == "true"


async def test_drop_after_with_the_sync_client(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    sandbox.add_fault(FaultRule(kind="drop_after", endpoint="customers.create", nth=1))
    with pytest.raises(stripe.APIConnectionError):
        await asyncio.to_thread(client.v1.customers.create, {}, {"idempotency_key": "c1"})
    again = await asyncio.to_thread(client.v1.customers.create, {}, {"idempotency_key": "c1"})
    assert [c["id"] for c in sandbox.customers()] == [again.id]


async def test_error_after_executes_and_the_500_is_replayed(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    sandbox.add_fault(FaultRule(kind="error_after", endpoint="payment_intents.create", nth=1))
    for _ in range(2):
        with pytest.raises(stripe.APIError) as failed:
            await authorized_intent(client, key="pay_1_auth_1")
        assert failed.value.http_status == 500
        assert failed.value.headers is not None
        assert failed.value.headers.get("Stripe-Should-Retry") == "false"
    assert len(sandbox.payment_intents()) == 1
    assert sandbox.payment_intents()[0]["status"] == "requires_capture"
    assert sandbox.stats()["replays"] == 1


async def test_latency_fault_delays_the_answer(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    sandbox.add_fault(
        FaultRule(kind="latency", endpoint="customers.create", latency_ms=300, times=1)
    )
    started = time.perf_counter()
    await client.v1.customers.create_async({})
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    await client.v1.customers.create_async({})
    assert time.perf_counter() - started < 0.3


async def test_global_latency_and_jitter(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox(latency_ms=100, jitter_ms=50)
    started = time.perf_counter()
    await sdk_client(sandbox).v1.customers.create_async({})
    assert 0.1 <= time.perf_counter() - started < 1.0


async def test_rule_applies_to_the_nth_matching_request_only(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intents = [await authorized_intent(client, f"p{i}") for i in range(4)]
    sandbox.add_fault(FaultRule(kind="error_before", endpoint="payment_intents.capture", nth=3))
    outcomes = []
    for intent in intents:
        try:
            await client.v1.payment_intents.capture_async(intent.id)
            outcomes.append("ok")
        except stripe.APIError:
            outcomes.append("500")
    assert outcomes == ["ok", "ok", "500", "ok"]
    assert sandbox.stats()["faults"] == {"error_before": 1}


async def test_rule_by_probability(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox(seed=1)
    client = sdk_client(sandbox)
    sandbox.add_fault(FaultRule(kind="error_before", endpoint="customers.create", probability=0.5))
    failures = 0
    for _ in range(40):
        try:
            await client.v1.customers.create_async({})
        except stripe.APIError:
            failures += 1
    assert 8 <= failures <= 32
    assert sandbox.stats()["faults"]["error_before"] == failures


async def test_rule_times_and_key_filter(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    sandbox.add_fault(FaultRule(kind="error_before", endpoint=None, key_contains="_auth_", times=2))
    await client.v1.customers.create_async({}, {"idempotency_key": "cust_1"})
    for attempt in (1, 2):
        with pytest.raises(stripe.APIError):
            await authorized_intent(client, key=f"pay_1_auth_{attempt}")
    await authorized_intent(client, key="pay_1_auth_3")


async def test_hooks_run_before_and_after_execution(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    seen: list[tuple[str, int, int | None]] = []

    def before(info: RequestInfo) -> None:
        seen.append(("before", len(sandbox.payment_intents()), info.status))
        assert info.idempotency_key == "pay_9_auth_1"
        assert info.params["metadata"] == {"payment_id": "pay_9"}

    async def after(info: RequestInfo) -> None:
        seen.append(("after", len(sandbox.payment_intents()), info.status))
        assert info.body is not None and info.body["status"] == "requires_capture"

    sandbox.add_hook(endpoint="payment_intents.create", when="before", callback=before)
    sandbox.add_hook(endpoint="payment_intents.create", when="after", callback=after)
    await authorized_intent(client, "pay_9", key="pay_9_auth_1")
    await authorized_intent(client, "pay_9", key="pay_9_auth_1")  # times=1: hooks are spent
    assert seen == [("before", 0, None), ("after", 1, 200)]
    assert sandbox.stats()["hooks_run"] == 2


async def test_hook_filters_by_key_and_nth(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    keys: list[str | None] = []
    sandbox.add_hook(
        "payment_intents.create",
        "after",
        lambda info: keys.append(info.idempotency_key),
        key_contains="_auth_",
        nth=2,
    )
    for key in ("pay_1_auth_1", "other", "pay_2_auth_1", "pay_3_auth_1"):
        await authorized_intent(client, key=key)
    assert keys == ["pay_2_auth_1"]


async def test_clear_faults_removes_faults_and_hooks(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    calls: list[RequestInfo] = []
    sandbox.add_fault(FaultRule(kind="error_before"))
    sandbox.add_hook(None, "before", calls.append)
    sandbox.clear_faults()
    await client.v1.customers.create_async({})
    assert calls == []


def test_fault_rules_are_validated() -> None:
    with pytest.raises(ValueError):
        FaultRule(kind="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FaultRule(kind="latency")
    with pytest.raises(ValueError):
        FaultRule(kind="error_before", probability=1.5)
    with pytest.raises(ValueError):
        Sandbox().add_fault(FaultRule(kind="error_before", endpoint="transfers.create"))


async def test_before_hook_with_error_before_is_a_crash_before_stripe_acted(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    arrivals: list[str | None] = []
    sandbox.add_hook("payment_intents.create", "before", lambda i: arrivals.append(i.endpoint))
    sandbox.add_fault(FaultRule(kind="error_before", endpoint="payment_intents.create", nth=1))
    with pytest.raises(stripe.APIError):
        await authorized_intent(client, key="pay_1_auth_1")
    assert arrivals == ["payment_intents.create"]
    assert sandbox.payment_intents() == []
