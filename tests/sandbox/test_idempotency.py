"""Idempotency keys as Stripe documents them."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import pytest
import stripe

from stripe_sandbox import RequestInfo, Sandbox

from .conftest import auth
from .helpers import authorize_params, authorized_intent

FORM = {
    "amount": "2000",
    "currency": "usd",
    "payment_method": "pm_card_visa",
    "confirm": "true",
    "off_session": "true",
    "capture_method": "manual",
    "metadata[payment_id]": "pay_1",
}


async def _post(
    http: aiohttp.ClientSession, sandbox: Sandbox, key: str, form: dict[str, str]
) -> tuple[int, bytes, str | None]:
    headers = {**auth(), "Idempotency-Key": key}
    async with http.post(f"{sandbox.url}/v1/payment_intents", data=form, headers=headers) as r:
        return r.status, await r.read(), r.headers.get("Idempotent-Replayed")


async def test_first_response_is_replayed_byte_for_byte(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    first = await _post(http, sandbox, "pay_1_auth_1", FORM)
    second = await _post(http, sandbox, "pay_1_auth_1", FORM)
    assert first[0] == second[0] == 200
    assert first[1] == second[1]
    assert (first[2], second[2]) == (None, "true")
    assert len(sandbox.payment_intents()) == 1


async def test_sdk_replay_returns_the_same_intent(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    first = await authorized_intent(client, key="pay_1_auth_1")
    again = await asyncio.to_thread(
        client.v1.payment_intents.create,
        authorize_params(),
        {"idempotency_key": "pay_1_auth_1"},
    )
    assert again.id == first.id
    assert again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert sandbox.stats()["replays"] == 1


async def test_a_decline_is_stored_and_replayed(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    params = authorize_params("pm_card_chargeDeclined")
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as failed:
            await client.v1.payment_intents.create_async(params, {"idempotency_key": "k_dec"})
        errors.append(failed.value)
    assert errors[0].http_body == errors[1].http_body
    assert len(sandbox.payment_intents()) == 1


async def test_a_captured_intent_replays_success_not_unexpected_state(
    client: stripe.StripeClient,
) -> None:
    intent = await authorized_intent(client)
    options: stripe.RequestOptions = {"idempotency_key": "pay_1_capture_1"}
    first = await client.v1.payment_intents.capture_async(intent.id, None, options)
    again = await client.v1.payment_intents.capture_async(intent.id, None, options)
    assert first.status == again.status == "succeeded"


async def test_same_key_other_parameters_is_400_idempotency_error(
    client: stripe.StripeClient,
) -> None:
    await authorized_intent(client, "pay_1", key="shared")
    with pytest.raises(stripe.IdempotencyError) as failed:
        await authorized_intent(client, "pay_2", key="shared")
    assert failed.value.http_status == 400
    assert failed.value.error is not None
    assert failed.value.error.type == "idempotency_error"


async def test_same_key_other_endpoint_is_400_idempotency_error(
    client: stripe.StripeClient,
) -> None:
    await authorized_intent(client, key="shared")
    with pytest.raises(stripe.IdempotencyError) as failed:
        await client.v1.customers.create_async({}, {"idempotency_key": "shared"})
    assert failed.value.http_status == 400
    assert "same endpoint" in str(failed.value.user_message)


async def test_concurrent_request_under_same_key_is_409_and_saves_nothing(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold(_: RequestInfo) -> None:
        arrived.set()
        await release.wait()

    sandbox.add_hook("payment_intents.create", "before", hold)
    first = asyncio.create_task(authorized_intent(client, key="pay_1_auth_1"))
    await arrived.wait()
    with pytest.raises(stripe.APIError) as clash:
        await authorized_intent(client, key="pay_1_auth_1")
    assert clash.value.http_status == 409
    assert clash.value.error is not None
    assert clash.value.error.type == "idempotency_error"
    release.set()
    created = await first
    replay = await authorized_intent(client, key="pay_1_auth_1")
    assert replay.id == created.id
    assert len(sandbox.payment_intents()) == 1
    assert sandbox.stats()["idempotency_conflicts"] == 1


async def test_keys_longer_than_255_characters_are_rejected(
    client: stripe.StripeClient,
) -> None:
    await authorized_intent(client, key="k" * 255)
    with pytest.raises(stripe.IdempotencyError) as failed:
        await authorized_intent(client, key="k" * 256)
    assert failed.value.http_status == 400


async def test_validation_errors_are_not_stored(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.payment_intents.create_async(
            {"amount": 10, "currency": "usd"}, {"idempotency_key": "k_fix"}
        )
    assert failed.value.code == "amount_too_small"
    fixed = await client.v1.payment_intents.create_async(
        {"amount": 1000, "currency": "usd"}, {"idempotency_key": "k_fix"}
    )
    assert fixed.amount == 1000


async def test_keys_are_forgotten_after_24_hours(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    first = await authorized_intent(client, "pay_1", key="reused")
    sandbox.clock.advance(timedelta(hours=23, minutes=59))
    with pytest.raises(stripe.IdempotencyError):
        await authorized_intent(client, "pay_2", key="reused")
    sandbox.clock.advance(timedelta(minutes=2))
    second = await authorized_intent(client, "pay_2", key="reused")
    assert second.id != first.id
    assert second.metadata is not None
    assert second.metadata["payment_id"] == "pay_2"
