"""Contract tests: every object the sandbox returns, fetched raw, validates against the schema
of Stripe's OpenAPI spec (vendored in stripe_schemas.json by extract_stripe_schemas.py) and
has every field of Stripe's example of that object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import stripe

from stripe_sandbox import Sandbox

from .conftest import auth
from .helpers import authorize_params

Json = dict[str, Any]

STRIPE = json.loads(Path(__file__).with_name("stripe_schemas.json").read_text())


def assert_conforms(kind: str, obj: Json) -> None:
    """`obj` validates against Stripe's schema of `kind` and has all of Stripe's fields."""
    jsonschema.validate(obj, STRIPE["objects"][kind])
    missing = set(STRIPE["fields"].get(kind, ())) - set(obj)
    assert not missing, f"{kind} lacks {sorted(missing)}"


async def _get(http: aiohttp.ClientSession, sandbox: Sandbox, path: str) -> Json:
    async with http.get(sandbox.url + path, headers=auth()) as response:
        body: Json = await response.json()
        return body


@pytest.fixture
async def objects(client: stripe.StripeClient) -> dict[str, str]:
    """One of each kind of object, made through the SDK: kind -> its API path."""
    customer = await client.v1.customers.create_async({"email": "c@example.com"})
    card = await client.v1.payment_methods.attach_async("pm_card_visa", {"customer": customer.id})
    paid = await client.v1.payment_intents.create_async(
        authorize_params(card.id, customer=customer.id, capture_method="automatic")
    )
    refund = await client.v1.refunds.create_async({"payment_intent": paid.id, "amount": 300})
    disputed = await client.v1.payment_intents.create_async(
        authorize_params("pm_card_createDispute", capture_method="automatic")
    )
    (dispute,) = (await client.v1.disputes.list_async({"payment_intent": disputed.id})).data
    return {
        "customer": f"/v1/customers/{customer.id}",
        "payment_method": f"/v1/payment_methods/{card.id}",
        "payment_intent": f"/v1/payment_intents/{paid.id}",
        "charge": f"/v1/charges/{paid.latest_charge}",
        "refund": f"/v1/refunds/{refund.id}",
        "dispute": f"/v1/disputes/{dispute.id}",
    }


@pytest.mark.parametrize(
    "kind", ["customer", "payment_method", "payment_intent", "charge", "refund", "dispute"]
)
async def test_objects_match_stripes_schema(
    sandbox: Sandbox, http: aiohttp.ClientSession, objects: dict[str, str], kind: str
) -> None:
    assert_conforms(kind, await _get(http, sandbox, objects[kind]))


@pytest.mark.parametrize("kind", ["customer", "payment_intent", "refund", "dispute"])
async def test_lists_match_stripes_schema(
    sandbox: Sandbox, http: aiohttp.ClientSession, objects: dict[str, str], kind: str
) -> None:
    listed = await _get(http, sandbox, f"/v1/{kind}s")
    jsonschema.validate(listed, STRIPE["lists"][kind])
    assert listed["data"]
    for item in listed["data"]:
        assert_conforms(kind, item)


async def test_declined_charge_and_expanded_intent_match(
    sandbox: Sandbox, client: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(stripe.CardError) as declined:
        await client.v1.payment_intents.create_async(authorize_params("pm_card_chargeDeclined"))
    assert declined.value.error is not None and declined.value.error.payment_intent is not None
    intent_id = declined.value.error.payment_intent.id
    intent = await _get(http, sandbox, f"/v1/payment_intents/{intent_id}?expand[]=latest_charge")
    assert_conforms("payment_intent", intent)
    assert_conforms("charge", intent["latest_charge"])


async def test_errors_match_stripes_schema(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    missing = await _get(http, sandbox, "/v1/refunds/re_nope")
    jsonschema.validate(missing, STRIPE["objects"]["error"])
    declined = {
        "amount": "2000",
        "currency": "usd",
        "payment_method": "pm_card_chargeDeclined",
        "confirm": "true",
    }
    url = f"{sandbox.url}/v1/payment_intents"
    async with http.post(url, data=declined, headers=auth()) as response:
        assert response.status == 402
        jsonschema.validate(await response.json(), STRIPE["objects"]["error"])


def test_the_schemas_catch_a_wrong_object() -> None:
    """The vendored schemas are strict enough to fail: a charge without `amount`, or with
    a string `created`, is rejected."""
    charge = {"id": "ch_1", "object": "charge"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(charge, STRIPE["objects"]["charge"])
    refund = {"id": "re_1", "object": "refund", "amount": 1, "currency": "usd", "created": "x"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(refund, STRIPE["objects"]["refund"])
