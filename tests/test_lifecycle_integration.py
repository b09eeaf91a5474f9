"""The lifecycle against the real worker, dev server, PostgreSQL and the sandbox's faults."""

import asyncio
import time
from datetime import timedelta

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus
from billing.ledger import Ledger
from billing.models import PaymentRecord
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import FaultRule, RequestInfo, Sandbox
from stripe_sandbox.faults import FaultKind
from tests.support import add_customer, intents_of, running_worker

PERIOD = "2026-11"
WINDOW = ["--capture-after", "1h"]


async def bill_one(
    env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    *,
    card: str = "pm_card_visa",
    extra: list[str] | None = None,
) -> PaymentRecord:
    """Bill one customer's payment and wait until it ends."""
    ledger = Ledger(pool)
    await add_customer(ledger, make_stripe_client(settings), card)
    async with running_worker(settings, env.client):
        assert await execute(["bill", PERIOD, "--wait", *(extra or [])], settings, env.client) == 0
    [payment] = await ledger.period_payments(PERIOD)
    return payment


def assert_captured_once(sandbox: Sandbox, payment: PaymentRecord) -> None:
    assert payment.status == PaymentStatus.SUCCEEDED
    intents = intents_of(sandbox, payment.id)
    captured = [i for i in intents if i["status"] == "succeeded"]
    assert len(captured) == 1, intents
    assert captured[0]["id"] == payment.stripe_payment_intent_id
    assert captured[0]["amount_received"] == payment.amount == payment.amount_received
    assert not [i for i in intents if i["status"] == "requires_capture"]


@pytest.mark.parametrize("kind", ["error_before", "drop_after", "error_after"])
@pytest.mark.parametrize("endpoint", ["payment_intents.create", "payment_intents.capture"])
async def test_faults_on_authorize_and_capture_never_charge_twice(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    endpoint: str,
    kind: FaultKind,
) -> None:
    sandbox.add_fault(FaultRule(kind=kind, endpoint=endpoint, times=1))
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    assert_captured_once(sandbox, payment)
    assert sandbox.stats()["faults"] == {kind: 1}


async def test_a_lost_authorization_is_found_by_listing_not_doubled(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """error_after poisons the key; the list that converges also fails once."""
    sandbox.add_fault(FaultRule(kind="error_after", endpoint="payment_intents.create", times=1))
    sandbox.add_fault(FaultRule(kind="drop_after", endpoint="payment_intents.list", times=1))
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    assert_captured_once(sandbox, payment)
    assert len(intents_of(sandbox, payment.id)) == 1
    assert payment.generation == 2  # adopted under a new generation


async def test_an_expired_authorization_is_reauthorized_and_captured_once(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    def expire_everything(_: RequestInfo) -> None:
        sandbox.clock.advance(timedelta(days=8))

    sandbox.add_hook(endpoint="payment_intents.capture", when="before", callback=expire_everything)
    payment = await bill_one(temporal_env, pool, sandbox, settings)

    assert_captured_once(sandbox, payment)
    first, second = intents_of(sandbox, payment.id)
    assert (first["status"], first["cancellation_reason"]) == ("canceled", "automatic")
    assert second["status"] == "succeeded"
    assert payment.generation == 2
    events = [e.to_status for e in await Ledger(pool).events(payment.id)]
    assert events == [
        "pending",
        "authorized",
        "capturing",
        "pending",
        "authorized",
        "capturing",
        "succeeded",
    ]


async def wait_for_status(ledger: Ledger, status: PaymentStatus) -> PaymentRecord:
    for _ in range(200):
        [payment] = await ledger.period_payments(PERIOD)
        if payment.status == status:
            return payment
        await asyncio.sleep(0.1)
    raise AssertionError(f"payment never became {status}")


async def cancel(
    payment_id: str,
    settings: Settings,
    env: WorkflowEnvironment,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str]:
    capsys.readouterr()
    code = await execute(["cancel", payment_id], settings, env.client)
    return code, capsys.readouterr().out.strip()


@pytest.mark.parametrize("fault", [None, "error_before", "drop_after", "error_after"])
async def test_cancel_in_the_window_voids_once(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    fault: FaultKind | None,
) -> None:
    ledger = Ledger(pool)
    await add_customer(ledger, make_stripe_client(settings), "pm_card_visa")
    if fault:
        sandbox.add_fault(FaultRule(kind=fault, endpoint="payment_intents.cancel", times=1))
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD, *WINDOW], settings, temporal_env.client) == 0
        payment = await wait_for_status(ledger, PaymentStatus.AUTHORIZED)
        assert await cancel(payment.id, settings, temporal_env, capsys) == (0, "cancelled")
        assert await cancel(payment.id, settings, temporal_env, capsys) == (
            3,
            "already cancelled",
        )

    [intent] = intents_of(sandbox, payment.id)
    assert (intent["status"], intent["cancellation_reason"]) == (
        "canceled",
        "requested_by_customer",
    )
    [payment] = await ledger.period_payments(PERIOD)
    assert payment.status == PaymentStatus.CANCELLED
    events = [e.to_status for e in await ledger.events(payment.id)]
    assert events == ["pending", "authorized", "cancelled"]


async def test_cancel_before_billing_starts_the_payment_cancelled(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger = Ledger(pool)
    await add_customer(ledger, make_stripe_client(settings), "pm_card_visa")
    await ledger.create_period_payments(PERIOD)
    [payment] = await ledger.period_payments(PERIOD)
    async with running_worker(settings, temporal_env.client):
        assert await cancel(payment.id, settings, temporal_env, capsys) == (0, "cancelled")
        assert await execute(["bill", PERIOD, "--wait"], settings, temporal_env.client) == 0
    assert intents_of(sandbox, payment.id) == []
    [payment] = await ledger.period_payments(PERIOD)
    assert payment.status == PaymentStatus.CANCELLED


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        (
            "pm_card_visa",
            (4, "already captured (too late); use `refund {id}` to give money back"),
        ),
        ("pm_card_chargeDeclined", (5, "failed")),
    ],
)
async def test_cancel_after_the_end_says_how_it_ended(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    card: str,
    expected: tuple[int, str],
) -> None:
    payment = await bill_one(temporal_env, pool, sandbox, settings, card=card)
    code, says = expected
    assert await cancel(payment.id, settings, temporal_env, capsys) == (
        code,
        says.format(id=payment.id),
    )
    [after] = await Ledger(pool).period_payments(PERIOD)
    assert after.status == payment.status


async def test_cancel_of_an_unknown_payment(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    assert await cancel(unknown, settings, temporal_env, capsys) == (2, "unknown payment")


async def test_rate_limits_slow_a_month_down_but_fail_no_payment(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, settings: Settings
) -> None:
    """Test mode's 25 requests/s, on a rate-limit clock at 1/20 speed: 1.25/s after a burst."""
    start = time.monotonic()
    limited = Sandbox(mode="test", monotonic=lambda: start + (time.monotonic() - start) / 20)
    await limited.start(port=0)
    try:
        settings = settings.model_copy(update={"stripe_api_base": limited.url})
        ledger = Ledger(pool)
        stripe = make_stripe_client(settings)
        limited.rate_limits = False
        await asyncio.gather(*(add_customer(ledger, stripe, "pm_card_visa") for _ in range(20)))
        limited.rate_limits = True
        async with running_worker(settings, temporal_env.client):
            assert await execute(["bill", PERIOD, "--wait"], settings, temporal_env.client) == 0
        payments = await ledger.period_payments(PERIOD)
        assert len(payments) == 20
        for payment in payments:
            assert_captured_once(limited, payment)
        assert limited.stats()["rate_limited"] > 0
    finally:
        await limited.stop()
