"""Observability (log line, stats) and the /_sandbox/ control API used across processes."""

from __future__ import annotations

import logging

import aiohttp
import pytest
import stripe

from stripe_sandbox import FaultRule, Sandbox
from stripe_sandbox.cli import parse_fault

from .helpers import authorized_intent


async def test_one_log_line_per_request(
    sandbox: Sandbox, client: stripe.StripeClient, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.add_fault(FaultRule(kind="error_after", endpoint="payment_intents.create", nth=1))
    caplog.set_level(logging.INFO, logger="stripe_sandbox")
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            await authorized_intent(client, key="pay_1_auth_1")
    lines = [r.getMessage() for r in caplog.records if r.name == "stripe_sandbox"]
    assert len(lines) == 2
    assert lines[0].startswith("POST /v1/payment_intents key=pay_1_auth_1 status=500")
    assert "replayed=no fault=error_after" in lines[0]
    assert "replayed=yes fault=-" in lines[1]


async def test_stats_count_endpoints_replays_429s_and_faults(
    sandbox: Sandbox, client: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    sandbox.add_fault(FaultRule(kind="drop_after", endpoint="payment_intents.create", nth=1))
    with pytest.raises(stripe.APIConnectionError):
        await authorized_intent(client, key="k1")
    await authorized_intent(client, key="k1")
    await client.v1.customers.create_async({})
    async with http.get(f"{sandbox.url}/_sandbox/stats") as response:
        stats = await response.json()
    assert stats == sandbox.stats()
    assert stats["by_endpoint"] == {"payment_intents.create": 2, "customers.create": 1}
    assert stats["replays"] == 1
    assert stats["rate_limited"] == 0
    assert stats["faults"] == {"drop_after": 1}
    assert stats["by_status"] == {"dropped": 1, "200": 2}
    assert stats["objects"]["payment_intents"] == 1


async def test_faults_are_managed_through_the_control_api(
    sandbox: Sandbox, client: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    rule = {"kind": "error_before", "endpoint": "customers.create", "nth": 1}
    async with http.post(f"{sandbox.url}/_sandbox/faults", json=rule) as response:
        assert response.status == 201
        rule_id = (await response.json())["id"]
    async with http.get(f"{sandbox.url}/_sandbox/faults") as response:
        assert [f["id"] for f in await response.json()] == [rule_id]
    with pytest.raises(stripe.APIError):
        await client.v1.customers.create_async({})
    async with http.delete(f"{sandbox.url}/_sandbox/faults/{rule_id}") as response:
        assert response.status == 200
    async with http.post(f"{sandbox.url}/_sandbox/faults", json={"kind": "boom"}) as response:
        assert response.status == 400
    sandbox.add_fault(FaultRule(kind="error_before"))
    async with http.delete(f"{sandbox.url}/_sandbox/faults") as response:
        assert response.status == 200
    await client.v1.customers.create_async({})


async def test_control_api_lists_intents_configures_and_resets(
    sandbox: Sandbox, client: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    intent = await authorized_intent(client)
    async with http.get(f"{sandbox.url}/_sandbox/payment_intents") as response:
        assert [pi["id"] for pi in await response.json()] == [intent.id]
    settings = {"search_lag_seconds": 5, "latency_ms": 0}
    async with http.post(f"{sandbox.url}/_sandbox/config", json=settings) as response:
        assert (await response.json())["search_lag_seconds"] == 5
    assert sandbox.search_lag_seconds == 5
    async with http.post(f"{sandbox.url}/_sandbox/reset") as response:
        assert response.status == 200
    assert sandbox.payment_intents() == []


def test_cli_fault_syntax() -> None:
    assert parse_fault("drop_after:payment_intents.capture:p=0.1") == FaultRule(
        kind="drop_after", endpoint="payment_intents.capture", probability=0.1
    )
    assert parse_fault("latency:*:ms=500,nth=2,times=1,key=_auth_") == FaultRule(
        kind="latency", endpoint=None, nth=2, times=1, key_contains="_auth_", latency_ms=500
    )
    for bad in ("drop_after", "drop_after:nope.create", "error_before:*:color=red"):
        with pytest.raises(ValueError):
            parse_fault(bad)
