"""`starter.py refund` against the real worker, dev server, PostgreSQL and the sandbox: full
and partial refunds, what is refused with nothing written, a repeated command, Stripe's
refusal, a refund the issuer sent back, faults on the refund call, and `status`."""

from typing import Any

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from activities.stripe_activities import refund_metadata
from billing.constants import PaymentStatus, RefundStatus, refund_key, refund_workflow_id
from billing.ledger import Ledger
from billing.ledger_refunds import RefundLedger
from billing.models import PaymentRecord, RefundInput
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import EXIT_REFUND_FAILED, EXIT_REFUND_IN_FLIGHT, execute
from stripe_sandbox import FaultRule, Sandbox
from stripe_sandbox.faults import FaultKind
from temporal_ops import start_refund
from tests.support import running_worker
from tests.test_lifecycle_integration import PERIOD, bill_one

S = PaymentStatus
CAPTURED = 2500  # tests.support.add_customer's amount: 25.00 USD


async def refund(env: WorkflowEnvironment, settings: Settings, payment_id: str, *args: str) -> int:
    return await execute(["refund", payment_id, *args], settings, env.client)


async def refund_with_worker(
    env: WorkflowEnvironment, settings: Settings, payment_id: str, *args: str
) -> int:
    async with running_worker(settings, env.client):
        return await refund(env, settings, payment_id, *args)


async def written(pool: asyncpg.Pool, payment: PaymentRecord, sandbox: Sandbox) -> Any:
    """Everything a refund could write: the payment row, its events, its refunds and
    Stripe's refunds."""
    ledger = Ledger(pool)
    return (
        await ledger.payment(payment.id),
        await ledger.events(payment.id),
        await RefundLedger(pool).refunds(payment.id),
        sandbox.refunds(),
    )


def stripe_refunds(sandbox: Sandbox, payment: PaymentRecord) -> list[tuple[int, str]]:
    return [
        (r["amount"], r["metadata"].get("refund_n", "-"))
        for r in sandbox.refunds()
        if r["payment_intent"] == payment.stripe_payment_intent_id
    ]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


async def test_a_full_refund_refunds_everything_once(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    assert await refund_with_worker(temporal_env, settings, payment.id) == 0

    after = await Ledger(pool).payment(payment.id)
    assert after is not None and after.status == S.REFUNDED
    assert after.amount_received == CAPTURED  # what was captured stays recorded
    [row] = await RefundLedger(pool).refunds(payment.id)
    assert (row.n, row.amount, row.status, row.reason) == (
        1,
        CAPTURED,
        RefundStatus.SUCCEEDED,
        "requested_by_customer",
    )
    [at_stripe] = sandbox.refunds()
    assert at_stripe["id"] == row.stripe_refund_id and at_stripe["amount"] == CAPTURED
    assert at_stripe["metadata"] == {"payment_id": payment.id, "refund_n": "1"}
    event = (await Ledger(pool).events(payment.id))[-1]
    assert (event.from_status, event.to_status) == (S.SUCCEEDED, S.REFUNDED)
    assert event.detail["stripe_refund_id"] == row.stripe_refund_id


async def test_cancel_of_a_refunded_payment_points_to_refund(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    assert await refund_with_worker(temporal_env, settings, payment.id, "--amount", "1") == 0
    capsys.readouterr()
    assert await execute(["cancel", payment.id], settings, temporal_env.client) == 4
    assert f"use `refund {payment.id}`" in capsys.readouterr().out


async def test_two_partial_refunds_add_up_to_a_full_one(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    async with running_worker(settings, temporal_env.client):
        assert await refund(temporal_env, settings, payment.id, "--amount", "10.00") == 0
        status = await Ledger(pool).payment(payment.id)
        assert status is not None and status.status == S.PARTIALLY_REFUNDED
        assert (
            await refund(
                temporal_env, settings, payment.id, "--amount", "15", "--reason", "duplicate"
            )
            == 0
        )
    after = await Ledger(pool).payment(payment.id)
    assert after is not None and after.status == S.REFUNDED
    refunds = await RefundLedger(pool).refunds(payment.id)
    assert [(r.n, r.amount, r.reason.value) for r in refunds] == [
        (1, 1000, "requested_by_customer"),
        (2, 1500, "duplicate"),
    ]
    assert sorted(stripe_refunds(sandbox, payment)) == [(1000, "1"), (1500, "2")]
    moves = [(e.from_status, e.to_status) for e in await Ledger(pool).events(payment.id)]
    assert moves[-2:] == [(S.SUCCEEDED, S.PARTIALLY_REFUNDED), (S.PARTIALLY_REFUNDED, S.REFUNDED)]

    capsys.readouterr()
    assert await execute(["status", payment.id], settings, temporal_env.client) == 0
    shown = capsys.readouterr().out
    assert "refund 1  10.00 USD requested_by_customer succeeded re_" in shown
    assert refund_workflow_id(payment.id, 2) in shown


async def test_more_than_remains_is_refused_and_nothing_is_written(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    assert await refund_with_worker(temporal_env, settings, payment.id, "--amount", "20") == 0
    before = await written(pool, payment, sandbox)
    capsys.readouterr()

    assert await refund(temporal_env, settings, payment.id, "--amount", "5.01") == 2
    assert "only 5.00 USD of 25.00 USD remains" in one_line_error(capsys)
    assert await written(pool, payment, sandbox) == before
    assert await refund_with_worker(temporal_env, settings, payment.id, "--amount", "5") == 0
    after = await Ledger(pool).payment(payment.id)
    assert after is not None and after.status == S.REFUNDED


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--amount", "ten"], "invalid amount 'ten'"),
        (["--amount", "0"], "must be above 0"),
        (["--amount", "1.234"], "2 decimals for USD"),
        (["--amount", "-1"], "invalid amount '-1'"),
        (["--reason", "changed_mind"], "invalid reason 'changed_mind'"),
    ],
)
async def test_bad_input_is_refused_with_one_line_and_nothing_written(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    says: str,
) -> None:
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    before = await written(pool, payment, sandbox)
    capsys.readouterr()
    assert await refund(temporal_env, settings, payment.id, *args) == 2
    assert says in one_line_error(capsys)
    assert await written(pool, payment, sandbox) == before


async def test_an_unknown_or_uncaptured_payment_is_refused(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    for unknown in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        assert await refund(temporal_env, settings, unknown) == 2
        assert "unknown payment" in one_line_error(capsys)
    declined = await bill_one(temporal_env, pool, sandbox, settings, card="pm_card_chargeDeclined")
    assert declined.status == S.FAILED
    capsys.readouterr()
    assert await refund(temporal_env, settings, declined.id) == 2
    assert "is failed; only a succeeded or partially_refunded" in one_line_error(capsys)
    assert await RefundLedger(pool).refunds(declined.id) == []
    assert sandbox.refunds() == []


async def test_a_repeated_command_attaches_and_refunds_once(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No worker at first: the command leaves refund 1 in flight; the same command again
    attaches to it, another amount is refused; with a worker, it ends, once."""
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    timeout = ["--timeout", "0.5"]
    assert await refund(temporal_env, settings, payment.id, *timeout) == EXIT_REFUND_IN_FLIGHT
    assert await refund(temporal_env, settings, payment.id, *timeout) == EXIT_REFUND_IN_FLIGHT
    assert "already in flight" in capsys.readouterr().out
    assert await refund(temporal_env, settings, payment.id, "--amount", "1", *timeout) == 2
    assert "still in flight" in one_line_error(capsys)
    [row] = await RefundLedger(pool).refunds(payment.id)
    assert row.status == RefundStatus.REQUESTED and sandbox.refunds() == []

    assert await refund_with_worker(temporal_env, settings, payment.id) == 0
    assert stripe_refunds(sandbox, payment) == [(CAPTURED, "1")]
    [row] = await RefundLedger(pool).refunds(payment.id)
    assert row.status == RefundStatus.SUCCEEDED
    capsys.readouterr()
    assert await refund(temporal_env, settings, payment.id) == 2  # nothing remains
    assert "nothing left to refund" in one_line_error(capsys)


async def test_stripes_refusal_ends_the_refund_failed_with_its_reason(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Someone refunded everything in Stripe's dashboard: Stripe refuses the refund."""
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    assert payment.stripe_payment_intent_id is not None
    await make_stripe_client(settings).v1.refunds.create_async(
        {"payment_intent": payment.stripe_payment_intent_id}
    )
    capsys.readouterr()
    assert await refund_with_worker(temporal_env, settings, payment.id) == EXIT_REFUND_FAILED
    assert "charge_already_refunded" in capsys.readouterr().out
    [row] = await RefundLedger(pool).refunds(payment.id)
    assert row.status == RefundStatus.FAILED and row.failure_code == "charge_already_refunded"
    after = await Ledger(pool).payment(payment.id)
    assert after is not None and after.status == S.SUCCEEDED  # the ledger's refund failed
    assert len(sandbox.refunds()) == 1


@pytest.mark.parametrize("kind", ["error_before", "drop_after", "error_after"])
async def test_faults_on_the_refund_call_never_refund_twice(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    kind: FaultKind,
) -> None:
    """A lost answer, a 500 before Stripe acted, and a 500 stored after it acted."""
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    sandbox.add_fault(FaultRule(kind=kind, endpoint="refunds.create", times=1))
    assert await refund_with_worker(temporal_env, settings, payment.id, "--amount", "7") == 0
    assert stripe_refunds(sandbox, payment) == [(700, "1")]
    [row] = await RefundLedger(pool).refunds(payment.id)
    assert row.status == RefundStatus.SUCCEEDED
    assert row.stripe_refund_id == sandbox.refunds()[0]["id"]
    assert sandbox.stats()["faults"] == {kind: 1}


def test_the_refund_key_derives_from_the_payment_and_n() -> None:
    assert refund_key("p1", 2) == "pay_p1_refund_2"
    assert refund_key("p1", 2, resend=1) == "pay_p1_refund_2_r1"
    assert refund_workflow_id("p1", 2) == "refund-p1-2"


async def test_a_completed_refund_run_is_never_run_again(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """A second start of refund n after its run completed (a command that reserved before the
    run recorded Stripe's answer) started a new run, which sent refund n's key again."""
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    assert await refund_with_worker(temporal_env, settings, payment.id) == 0
    [row] = await RefundLedger(pool).refunds(payment.id)
    first = temporal_env.client.get_workflow_handle(refund_workflow_id(payment.id, 1))
    first_run = (await first.describe()).run_id
    again = RefundInput(
        payment_id=payment.id,
        n=1,
        amount=row.amount,
        currency=row.currency,
        reason=row.reason,
        intent_id=payment.stripe_payment_intent_id or "",
        billing_period=payment.billing_period,
        customer_id=payment.customer_id,
    )

    handle = await start_refund(temporal_env.client, again, settings.task_queue, S.REFUNDED)

    assert (await handle.describe()).run_id == first_run
    result = await handle.result()
    assert (result.status, result.stripe_refund_id) == (
        RefundStatus.SUCCEEDED,
        row.stripe_refund_id,
    )
    assert len(stripe_refunds(sandbox, payment)) == 1


async def test_a_refund_found_failed_at_stripe_is_recorded_as_a_refusal(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refund 1's first attempt reached Stripe and its worker died; before the retry, the
    card's issuer sent the refund back. The retry lists it, failed: refund 1 ends `failed`
    with Stripe's `failure_reason`, nothing is sent again, the payment keeps its money
    recorded, and reconcile agrees. Refund 2 then gives it back."""
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    assert payment.stripe_payment_intent_id is not None
    waiting = ["--timeout", "0.5"]
    assert await refund(temporal_env, settings, payment.id, *waiting) == EXIT_REFUND_IN_FLIGHT
    made = await make_stripe_client(settings).v1.refunds.create_async(
        {
            "payment_intent": payment.stripe_payment_intent_id,
            "amount": CAPTURED,
            "reason": "requested_by_customer",
            "metadata": refund_metadata(payment.id, 1),
        },
        {"idempotency_key": refund_key(payment.id, 1)},
    )
    sandbox.fail_refund(made.id, "expired_or_canceled_card")
    capsys.readouterr()

    assert await refund_with_worker(temporal_env, settings, payment.id) == EXIT_REFUND_FAILED
    assert "refund 1 failed: expired_or_canceled_card" in capsys.readouterr().out
    [row] = await RefundLedger(pool).refunds(payment.id)
    assert (row.status, row.failure_code) == (RefundStatus.FAILED, "expired_or_canceled_card")
    assert made.id in (row.failure_message or "")
    after = await Ledger(pool).payment(payment.id)
    assert after is not None and after.status == S.SUCCEEDED
    assert [r["id"] for r in sandbox.refunds()] == [made.id]
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 0

    assert await refund_with_worker(temporal_env, settings, payment.id) == 0
    after = await Ledger(pool).payment(payment.id)
    assert after is not None and after.status == S.REFUNDED
    assert sorted(stripe_refunds(sandbox, payment)) == [(CAPTURED, "1"), (CAPTURED, "2")]
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 0


async def test_a_partial_refund_repeated_with_its_request_id_refunds_once(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator re-runs a partial refund after it ended (say its first run timed out at
    the prompt): with the same --request-id nothing is refunded again; another id is another
    refund; a bad id is refused with one line."""
    payment = await bill_one(temporal_env, pool, sandbox, settings)
    ticket = ["--amount", "5.00", "--request-id", "ticket-42"]
    async with running_worker(settings, temporal_env.client):
        assert await refund(temporal_env, settings, payment.id, *ticket) == 0
        assert await refund(temporal_env, settings, payment.id, *ticket) == 0
        assert "nothing is refunded again" in capsys.readouterr().out
        assert (
            await refund(
                temporal_env, settings, payment.id, "--amount", "6", "--request-id", "ticket-42"
            )
            == 2
        )
        assert "another request id" in one_line_error(capsys)
        assert (
            await refund(
                temporal_env, settings, payment.id, "--amount", "5", "--request-id", "ticket-43"
            )
            == 0
        )
    assert sorted(stripe_refunds(sandbox, payment)) == [(500, "1"), (500, "2")]
    with pytest.raises(SystemExit):
        await refund(temporal_env, settings, payment.id, "--request-id", "two words")
    assert "invalid request id" in capsys.readouterr().err
