"""Serving: CLI on loopback, in-process start/stop, form encoding, auth, error envelope."""

from __future__ import annotations

import asyncio
import socket
import sys

import aiohttp
import pytest
import stripe

from stripe_sandbox import Sandbox

from .conftest import SandboxFactory, auth, sdk_client


async def test_cli_serves_on_loopback_and_applies_fault_flags() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stripe_sandbox",
        "--port",
        "0",
        "--mode",
        "live",
        "--fault",
        "error_before:customers.create:nth=1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        assert "listening on http://127.0.0.1:" in line
        url = line.split("listening on ")[1].split()[0]
        client = stripe.StripeClient("sk_test_cli", base_addresses={"api": url})
        with pytest.raises(stripe.APIError) as failed:
            await client.v1.customers.create_async({"email": "cli@example.com"})
        assert failed.value.http_status == 500
        customer = await client.v1.customers.create_async({"email": "cli@example.com"})
        assert customer.id.startswith("cus_")
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0
    log = stderr.decode()
    assert "POST /v1/customers key=" in log
    assert "fault=error_before" in log


async def test_in_process_start_uses_a_free_loopback_port_and_stop_releases_it() -> None:
    sandbox = Sandbox(rate_limits=False)
    await sandbox.start(port=0)
    port = sandbox.port
    try:
        assert sandbox.url == f"http://127.0.0.1:{port}"
        customer = await sdk_client(sandbox).v1.customers.create_async({})
        assert customer.object == "customer"
    finally:
        await sandbox.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    with socket.socket() as probe:  # nothing listens: the port can be bound again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


async def test_two_sandboxes_keep_separate_state(make_sandbox: SandboxFactory) -> None:
    first, second = await make_sandbox(), await make_sandbox()
    customer = await sdk_client(first).v1.customers.create_async({})
    with pytest.raises(stripe.InvalidRequestError):
        await sdk_client(second).v1.customers.retrieve_async(customer.id)


async def test_form_encoded_nested_params_round_trip(client: stripe.StripeClient) -> None:
    customer = await client.v1.customers.create_async(
        {"name": "Ada", "metadata": {"account": "acc_1", "tier": "gold"}}
    )
    intent = await client.v1.payment_intents.create_async(
        {
            "amount": 1500,
            "currency": "usd",
            "customer": customer.id,
            "metadata": {"payment_id": "pay_42"},
            "payment_method_types": ["card"],  # type: ignore[typeddict-unknown-key]
            "expand": ["customer"],
        }
    )
    assert intent.metadata.to_dict() == {"payment_id": "pay_42"}
    assert isinstance(intent.customer, stripe.Customer)
    assert intent.customer.metadata is not None
    assert intent.customer.metadata.to_dict() == {"account": "acc_1", "tier": "gold"}


@pytest.mark.parametrize("api_key", ["sk_test_sandbox", "sk_live_51abcDEF"])
async def test_bearer_keys_of_either_mode_are_accepted(sandbox: Sandbox, api_key: str) -> None:
    customer = await sdk_client(sandbox, api_key).v1.customers.create_async({})
    assert customer.id.startswith("cus_")


@pytest.mark.parametrize("api_key", ["pk_test_abc", "sk_prod_abc", "rk"])
async def test_other_keys_are_401(sandbox: Sandbox, api_key: str) -> None:
    with pytest.raises(stripe.AuthenticationError) as failed:
        await sdk_client(sandbox, api_key).v1.customers.create_async({})
    assert failed.value.http_status == 401


async def test_missing_key_is_401_and_basic_auth_works(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sandbox.url}/v1/customers") as response:
        assert response.status == 401
        body = await response.json()
    assert body["error"]["type"] == "invalid_request_error"
    basic = aiohttp.BasicAuth("sk_test_sandbox", "")
    async with http.post(f"{sandbox.url}/v1/customers", auth=basic) as response:
        assert response.status == 200


async def test_errors_use_stripes_envelope(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    url = f"{sandbox.url}/v1/payment_intents/pi_missing"
    async with http.get(url, headers=auth()) as response:
        assert response.status == 404
        assert response.content_type == "application/json"
        body = await response.json()
    assert body == {
        "error": {
            "code": "resource_missing",
            "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
            "message": "No such payment_intent: 'pi_missing'",
            "param": "intent",
            "type": "invalid_request_error",
        }
    }


async def test_unknown_url_is_404(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sandbox.url}/v1/transfers", headers=auth()) as response:
        assert response.status == 404
        assert "Unrecognized request URL" in (await response.json())["error"]["message"]


async def test_unknown_parameter_is_400(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.customers.create_async({"colour": "blue"})  # type: ignore[arg-type]
    assert failed.value.code == "parameter_unknown"
    assert failed.value.param == "colour"
