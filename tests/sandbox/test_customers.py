"""POST /v1/customers/{id} and GET /v1/customers through the SDK."""

from __future__ import annotations

import pytest
import stripe


async def test_update_changes_only_what_is_sent(client: stripe.StripeClient) -> None:
    customer = await client.v1.customers.create_async(
        {"email": "a@example.com", "name": "Ada", "metadata": {"plan": "pro", "seat": "3"}}
    )
    card = await client.v1.payment_methods.attach_async("pm_card_visa", {"customer": customer.id})
    updated = await client.v1.customers.update_async(
        customer.id,
        {
            "email": "ada@example.com",
            "metadata": {"seat": "", "team": "core"},
            "invoice_settings": {"default_payment_method": card.id},
        },
    )
    assert updated.email == "ada@example.com"
    assert updated.name == "Ada"
    assert updated.metadata is not None
    assert updated.metadata.to_dict() == {"plan": "pro", "team": "core"}
    assert updated.invoice_settings is not None
    assert updated.invoice_settings.default_payment_method == card.id
    fetched = await client.v1.customers.retrieve_async(customer.id)
    assert fetched.email == "ada@example.com"
    cleared = await client.v1.customers.update_async(customer.id, {"name": ""})
    assert cleared.name is None


async def test_default_payment_method_must_be_attached(client: stripe.StripeClient) -> None:
    customer = await client.v1.customers.create_async({})
    other = await client.v1.customers.create_async({})
    card = await client.v1.payment_methods.attach_async("pm_card_visa", {"customer": other.id})
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.customers.update_async(
            customer.id, {"invoice_settings": {"default_payment_method": card.id}}
        )
    assert failed.value.param == "invoice_settings[default_payment_method]"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        await client.v1.customers.update_async("cus_nope", {"name": "x"})
    assert unknown.value.http_status == 404


async def test_list_pages_newest_first_and_filters_by_email(client: stripe.StripeClient) -> None:
    made = [await client.v1.customers.create_async({"email": f"{n}@example.com"}) for n in range(5)]
    again = await client.v1.customers.create_async({"email": "2@example.com"})
    first = await client.v1.customers.list_async({"limit": 2})
    assert [c.id for c in first.data] == [again.id, made[4].id] and first.has_more
    second = await client.v1.customers.list_async({"limit": 2, "starting_after": made[4].id})
    assert [c.id for c in second.data] == [made[3].id, made[2].id]
    before = await client.v1.customers.list_async({"limit": 2, "ending_before": made[2].id})
    assert [c.id for c in before.data] == [made[4].id, made[3].id]
    by_email = await client.v1.customers.list_async({"email": "2@example.com"})
    assert [c.id for c in by_email.data] == [again.id, made[2].id]
    every = [
        c.id async for c in (await client.v1.customers.list_async({"limit": 2})).auto_paging_iter()
    ]
    assert every == [again.id, *reversed([c.id for c in made])]
