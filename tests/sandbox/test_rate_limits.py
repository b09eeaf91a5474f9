"""Stripe's rate limits: 25/s in test mode; 100/s account and 25/s per endpoint in live mode."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import stripe

from .conftest import SandboxFactory, sdk_client


async def _burst(client: stripe.StripeClient, count: int) -> list[BaseException | object]:
    calls = [client.v1.customers.create_async({}) for _ in range(count)]
    return await asyncio.gather(*calls, return_exceptions=True)


def _limited(results: Sequence[BaseException | object]) -> list[stripe.RateLimitError]:
    return [r for r in results if isinstance(r, stripe.RateLimitError)]


def frozen() -> float:
    return 1000.0


async def test_test_mode_allows_25_per_second_for_the_account(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await make_sandbox(mode="test", rate_limits=True, monotonic=frozen)
    results = await _burst(sdk_client(sandbox), 40)
    limited = _limited(results)
    assert len(limited) == 15
    error = limited[0]
    assert error.http_status == 429
    assert error.error is not None
    assert (error.error.type, error.error.code) == ("invalid_request_error", "rate_limit")
    assert sandbox.stats()["rate_limited"] == len(limited)


async def test_live_mode_limits_each_endpoint_to_25_per_second(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await make_sandbox(mode="live", rate_limits=True, monotonic=frozen)
    client = sdk_client(sandbox)
    results = await _burst(client, 35)
    assert len(_limited(results)) == 10
    # Another endpoint still has its own 25/s, within the account's 100/s.
    ok = await asyncio.gather(
        *[client.v1.payment_intents.list_async() for _ in range(20)], return_exceptions=True
    )
    assert _limited(list(ok)) == []


async def test_live_mode_account_limit_is_100_per_second(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox(mode="live", rate_limits=True, monotonic=frozen)
    client = sdk_client(sandbox)
    calls = []
    for _ in range(22):
        calls += [
            client.v1.customers.create_async({}),
            client.v1.payment_intents.list_async(),
            client.v1.customers.retrieve_async("cus_x"),
            client.v1.payment_intents.retrieve_async("pi_x"),
            client.v1.payment_methods.retrieve_async("pm_card_visa"),
        ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert len(_limited(list(results))) == 10


async def test_a_429_is_decided_before_idempotency_and_stores_nothing(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await make_sandbox(mode="test", rate_limits=True, monotonic=frozen)
    client = sdk_client(sandbox)
    await _burst(client, 25)
    with pytest.raises(stripe.RateLimitError):
        await client.v1.customers.create_async({"name": "first"}, {"idempotency_key": "k429"})
    sandbox.rate_limits = False
    customer = await client.v1.customers.create_async(
        {"name": "second"}, {"idempotency_key": "k429"}
    )
    assert customer.name == "second"


async def test_rate_limits_can_be_switched_off(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox(mode="test", rate_limits=False)
    assert _limited(await _burst(sdk_client(sandbox), 60)) == []


async def test_the_budget_refills_each_second(make_sandbox: SandboxFactory) -> None:
    now = [1000.0]
    sandbox = await make_sandbox(mode="test", rate_limits=True, monotonic=lambda: now[0])
    client = sdk_client(sandbox)
    assert len(_limited(await _burst(client, 30))) == 5
    now[0] += 1.0
    assert len(_limited(await _burst(client, 30))) == 5
