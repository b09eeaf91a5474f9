"""Listing PaymentIntents and searching them, with Stripe's indexing lag."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import stripe
from stripe.params import PaymentIntentSearchParams

from stripe_sandbox import Sandbox

from .conftest import SandboxFactory, sdk_client
from .helpers import authorized_intent


async def test_list_by_customer_newest_first_with_limit_and_starting_after(
    client: stripe.StripeClient,
) -> None:
    ada = await client.v1.customers.create_async({})
    bob = await client.v1.customers.create_async({})
    ada_ids = [(await authorized_intent(client, f"p{i}", customer=ada.id)).id for i in range(5)]
    await authorized_intent(client, "bob", customer=bob.id)

    first = await client.v1.payment_intents.list_async({"customer": ada.id, "limit": 2})
    assert first["object"] == "list"
    assert [pi.id for pi in first.data] == ada_ids[::-1][:2]
    assert first.has_more is True
    rest = await client.v1.payment_intents.list_async(
        {"customer": ada.id, "limit": 10, "starting_after": first.data[-1].id}
    )
    assert [pi.id for pi in rest.data] == ada_ids[::-1][2:]
    assert rest.has_more is False


async def test_list_by_an_unknown_customer_is_refused(client: stripe.StripeClient) -> None:
    """As Stripe answers a filter naming a customer it does not have: 400 resource_missing."""
    try:
        await client.v1.payment_intents.list_async({"customer": "cus_gone"})
    except stripe.InvalidRequestError as err:
        assert (err.http_status, err.code, err.param) == (400, "resource_missing", "customer")
    else:
        raise AssertionError("listing an unknown customer's PaymentIntents was answered")


async def test_list_default_limit_and_auto_paging_sync(client: stripe.StripeClient) -> None:
    ids = [(await authorized_intent(client, f"p{i}")).id for i in range(12)]
    page = await client.v1.payment_intents.list_async()
    assert len(page.data) == 10 and page.has_more

    def every_id() -> list[str]:
        listed = client.v1.payment_intents.list({"limit": 5})
        return [pi.id for pi in listed.auto_paging_iter()]

    assert await asyncio.to_thread(every_id) == ids[::-1]


async def test_list_by_created_range(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    old = await authorized_intent(client, "old")
    sandbox.clock.advance(timedelta(hours=2))
    boundary = sandbox.clock.now()
    new = await authorized_intent(client, "new")
    newer = await client.v1.payment_intents.list_async({"created": {"gte": boundary}})
    assert [pi.id for pi in newer.data] == [new.id]
    older = await client.v1.payment_intents.list_async({"created": {"lt": boundary}})
    assert [pi.id for pi in older.data] == [old.id]


async def test_search_on_metadata_and_customer(client: stripe.StripeClient) -> None:
    customer = await client.v1.customers.create_async({})
    wanted = await authorized_intent(client, "pay_7", customer=customer.id)
    await authorized_intent(client, "pay_8", customer=customer.id)
    await authorized_intent(client, "pay_7")
    found = await client.v1.payment_intents.search_async(
        {"query": f"metadata['payment_id']:'pay_7' AND customer:'{customer.id}'"}
    )
    assert found["object"] == "search_result"
    assert [pi.id for pi in found.data] == [wanted.id]
    assert found.has_more is False
    found_sync = await asyncio.to_thread(
        client.v1.payment_intents.search, {"query": "metadata['payment_id']:'pay_7'"}
    )
    assert len(found_sync.data) == 2


async def test_search_pages_with_next_page(client: stripe.StripeClient) -> None:
    ids = [(await authorized_intent(client, "same")).id for _ in range(3)]
    query = "metadata['payment_id']:'same'"
    first = await client.v1.payment_intents.search_async({"query": query, "limit": 2})
    assert first.has_more and first.next_page
    second = await client.v1.payment_intents.search_async(
        {"query": query, "limit": 2, "page": first.next_page}
    )
    assert [pi.id for pi in first.data + second.data] == ids[::-1]
    assert second.has_more is False


async def test_search_lags_writes_by_the_configured_delay(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox(search_lag_seconds=60.0)
    client = sdk_client(sandbox)
    intent = await authorized_intent(client, "pay_lag")
    query: PaymentIntentSearchParams = {
        "query": "metadata['payment_id']:'pay_lag' AND status:'requires_capture'"
    }
    assert (await client.v1.payment_intents.search_async(query)).data == []
    sandbox.clock.advance(timedelta(seconds=61))
    assert [pi.id for pi in (await client.v1.payment_intents.search_async(query)).data] == [
        intent.id
    ]
    # An update is indexed with the same lag: the old status still matches meanwhile.
    await client.v1.payment_intents.capture_async(intent.id)
    assert len((await client.v1.payment_intents.search_async(query)).data) == 1
    sandbox.clock.advance(timedelta(seconds=61))
    assert (await client.v1.payment_intents.search_async(query)).data == []


async def test_invalid_search_query_is_400(client: stripe.StripeClient) -> None:
    try:
        await client.v1.payment_intents.search_async({"query": "metadata['x'] ~ 'y'"})
    except stripe.InvalidRequestError as error:
        assert error.http_status == 400
        assert error.param == "query"
    else:
        raise AssertionError("expected a 400")


async def test_list_pages_backwards_with_ending_before(client: stripe.StripeClient) -> None:
    ids = [(await authorized_intent(client, f"p{i}")).id for i in range(4)]
    newest_first = ids[::-1]
    page = await client.v1.payment_intents.list_async(
        {"limit": 2, "ending_before": newest_first[3]}
    )
    assert [pi.id for pi in page.data] == newest_first[1:3]
    assert page.has_more is True
