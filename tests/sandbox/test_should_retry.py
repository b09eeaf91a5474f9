"""`Stripe-Should-Retry`, and what the SDK does with it when it may retry
(`max_network_retries`): a 409 says `true` and the SDK retries it; a rate limit's 429 says
nothing, and the SDK leaves it to the caller, as Stripe intends."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import stripe

from stripe_sandbox import RequestInfo, Sandbox

from .conftest import API_KEY, SandboxFactory, auth
from .helpers import authorize_params, authorized_intent


def _retrying_client(sandbox: Sandbox) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": sandbox.url}, max_network_retries=2)


async def test_a_409_says_retry_and_the_sdk_does(
    sandbox: Sandbox, client: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold(_: RequestInfo) -> None:
        arrived.set()
        await release.wait()

    sandbox.add_hook("payment_intents.create", "before", hold)
    first = asyncio.create_task(authorized_intent(client, key="pay_1_auth_1"))
    await arrived.wait()
    form = {"amount": "2000", "currency": "usd"}
    headers = {**auth(), "Idempotency-Key": "pay_1_auth_1"}
    async with http.post(f"{sandbox.url}/v1/payment_intents", data=form, headers=headers) as raw:
        assert raw.status == 409
        assert raw.headers["Stripe-Should-Retry"] == "true"
    # The SDK's retry of its own 409 lands after the first request let go of the key.
    second = asyncio.create_task(
        _retrying_client(sandbox).v1.payment_intents.create_async(
            authorize_params(), {"idempotency_key": "pay_1_auth_1"}
        )
    )
    for _ in range(500):
        if sandbox.stats()["idempotency_conflicts"] >= 2:
            break
        await asyncio.sleep(0.01)
    assert sandbox.stats()["idempotency_conflicts"] == 2
    release.set()
    created, replayed = await first, await second
    assert replayed.id == created.id
    assert sandbox.stats()["replays"] == 1


def _frozen() -> float:
    return 1000.0


async def test_a_rate_limited_429_is_not_retried_by_the_sdk(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await make_sandbox(rate_limits=True, monotonic=_frozen)
    client = _retrying_client(sandbox)
    for _ in range(25):
        await client.v1.customers.create_async({})
    with pytest.raises(stripe.RateLimitError) as limited:
        await client.v1.customers.create_async({})
    names = {name.lower() for name in (limited.value.headers or {})}
    assert "request-id" in names and "stripe-should-retry" not in names
    assert sandbox.stats()["requests"] == 26
