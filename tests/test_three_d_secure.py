"""3-D Secure in the payment workflow, against the real worker, dev server, PostgreSQL, the
sandbox and (where the test says so) the webhook receiver: a card whose bank asks the customer
to authenticate moves the payment to `action_required` with the URL to visit; the customer
passing it (seen by webhook, or by the workflow's own read at its deadline) leads to one
capture; failing it, letting the deadline pass, or a cancel leaves nothing held."""

import time
from datetime import timedelta

import asyncpg
import pytest
import stripe
from temporalio.testing import WorkflowEnvironment

from activities.stripe_activities import intent_state
from billing.constants import ErrorType, PaymentStatus, workflow_id
from billing.ledger import Ledger
from billing.models import PaymentRecord
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute, main
from stripe_sandbox import Sandbox
from temporal_ops import payment_stripe_events
from tests.crash.harness import wait_for_status
from tests.support import add_customer, intents_of, pass_3d_secure, running_worker
from tests.webhook_support import Hooks

PERIOD = "2026-11"
NEEDS_3DS = "pm_card_authenticationRequired"
# Declines with insufficient funds once the customer has authenticated.
NEEDS_3DS_THEN_SOFT_DECLINE = "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds"
LONG = timedelta(hours=1)  # longer than any test: only an event or a cancel ends the wait
SHORT = timedelta(seconds=4)  # the deadline comes within the test


def with_window(settings: Settings, window: timedelta) -> Settings:
    return settings.model_copy(update={"authentication_window": window})


async def bill_and_wait_for_action(
    env: WorkflowEnvironment, pool: asyncpg.Pool, settings: Settings, card: str = NEEDS_3DS
) -> PaymentRecord:
    """Bill one customer with `card`; returns its row once it is `action_required`."""
    ledger = Ledger(pool)
    await add_customer(ledger, make_stripe_client(settings), card)
    assert await execute(["bill", PERIOD], settings, env.client) == 0
    [payment] = await ledger.period_payments(PERIOD)
    await wait_for_status(pool, payment.id, PaymentStatus.ACTION_REQUIRED)
    row = await ledger.payment(payment.id)
    assert row is not None
    return row


async def ended(env: WorkflowEnvironment, pool: asyncpg.Pool, payment_id: str) -> PaymentRecord:
    await env.client.get_workflow_handle(workflow_id(payment_id)).result()
    row = await Ledger(pool).payment(payment_id)
    assert row is not None
    return row


def statuses(sandbox: Sandbox, payment_id: str) -> list[str]:
    return [i["status"] for i in intents_of(sandbox, payment_id)]


async def test_the_customer_authenticates_and_the_webhook_leads_to_one_capture(
    hooks: Hooks, settings: Settings, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = with_window(settings, LONG)
    async with running_worker(settings, hooks.env.client), hooks.receiving():
        payment = await bill_and_wait_for_action(hooks.env, hooks.pool, settings)
        intent = payment.stripe_payment_intent_id
        assert payment.next_action_url == f"{sandbox.url}/_sandbox/3ds/{intent}"
        assert payment.failure_code == "authentication_required"
        capsys.readouterr()
        assert await execute(["status", payment.id], settings, hooks.env.client) == 0
        shown = capsys.readouterr().out
        assert "action_required" in shown and payment.next_action_url in shown

        began = time.monotonic()
        await pass_3d_secure(payment)
        row = await ended(hooks.env, hooks.pool, payment.id)
        # The webhook woke the workflow: it did not wait for its hourly read.
        assert time.monotonic() - began < 60
        types = [f.type for f in await payment_stripe_events(hooks.env.client, payment.id)]
    assert "payment_intent.amount_capturable_updated" in types
    assert (row.status, row.stripe_payment_intent_id) == (PaymentStatus.SUCCEEDED, intent)
    assert (row.amount_received, row.next_action_url, row.failure_code) == (2500, None, None)
    assert statuses(sandbox, payment.id) == ["succeeded"]  # one intent, captured once


async def test_without_webhooks_the_deadline_read_finds_the_authentication(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, settings: Settings, sandbox: Sandbox
) -> None:
    settings = with_window(settings, SHORT)
    async with running_worker(settings, temporal_env.client):
        payment = await bill_and_wait_for_action(temporal_env, pool, settings)
        await pass_3d_secure(payment)
        row = await ended(temporal_env, pool, payment.id)
    assert row.status == PaymentStatus.SUCCEEDED
    assert statuses(sandbox, payment.id) == ["succeeded"]


async def test_the_deadline_cancels_the_intent_and_fails_the_payment(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, settings: Settings, sandbox: Sandbox
) -> None:
    settings = with_window(settings, SHORT)
    async with running_worker(settings, temporal_env.client):
        payment = await bill_and_wait_for_action(temporal_env, pool, settings)
        row = await ended(temporal_env, pool, payment.id)
    assert row.status == PaymentStatus.FAILED
    assert row.failure_code == ErrorType.AUTHENTICATION_EXPIRED
    assert row.next_action_url is None
    assert statuses(sandbox, payment.id) == ["canceled"]
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 0


async def test_a_failed_authentication_fails_the_payment(
    hooks: Hooks, settings: Settings, sandbox: Sandbox
) -> None:
    settings = with_window(settings, LONG)
    async with running_worker(settings, hooks.env.client), hooks.receiving():
        payment = await bill_and_wait_for_action(hooks.env, hooks.pool, settings)
        await pass_3d_secure(payment, "fail")
        row = await ended(hooks.env, hooks.pool, payment.id)
    assert row.status == PaymentStatus.FAILED
    assert row.failure_code == "payment_intent_authentication_failure"
    assert statuses(sandbox, payment.id) == ["requires_payment_method"]  # holds nothing


async def test_a_soft_decline_after_authentication_goes_to_dunning(
    hooks: Hooks, settings: Settings, sandbox: Sandbox
) -> None:
    """The card declines once authenticated: dunning retries it (off-session, so the bank
    asks again), and with the one retry of the tests' schedule used up, it fails."""
    settings = with_window(settings, LONG)
    ledger = Ledger(hooks.pool)
    async with running_worker(settings, hooks.env.client), hooks.receiving():
        payment = await bill_and_wait_for_action(
            hooks.env, hooks.pool, settings, NEEDS_3DS_THEN_SOFT_DECLINE
        )
        await pass_3d_secure(payment)
        await wait_for_status(hooks.pool, payment.id, PaymentStatus.RETRYING)
        retried = await ledger.payment(payment.id)
        assert retried is not None and retried.failure_code == "insufficient_funds"
        await wait_for_status(hooks.pool, payment.id, PaymentStatus.ACTION_REQUIRED)
        again = await ledger.payment(payment.id)
        assert again is not None and again.generation == 2
        await pass_3d_secure(again)
        row = await ended(hooks.env, hooks.pool, payment.id)
    assert (row.status, row.failure_code) == (PaymentStatus.FAILED, "insufficient_funds")
    assert statuses(sandbox, payment.id) == ["requires_payment_method"] * 2


async def test_a_cancel_while_waiting_voids_the_intent(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, settings: Settings, sandbox: Sandbox
) -> None:
    settings = with_window(settings, LONG)
    async with running_worker(settings, temporal_env.client):
        payment = await bill_and_wait_for_action(temporal_env, pool, settings)
        assert await execute(["cancel", payment.id], settings, temporal_env.client) == 0
        row = await ended(temporal_env, pool, payment.id)
        # Authenticating after the cancel charges nothing: the intent is gone.
        with pytest.raises(AssertionError):
            await pass_3d_secure(payment)
    assert row.status == PaymentStatus.CANCELLED
    assert statuses(sandbox, payment.id) == ["canceled"]


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("AUTHENTICATION_WINDOW", "soon", "invalid duration 'soon'"),
        ("AUTHENTICATION_WINDOW", "-1d", "invalid duration '-1d'"),
        ("AUTHENTICATION_RETURN_URL", "ftp://example.com", "not an http(s) URL"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    says: str,
) -> None:
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr("sys.argv", ["starter.py", "report", PERIOD])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert variable in line and says in line, line


def test_an_intent_without_a_redirect_or_a_decline_code_reads_as_none() -> None:
    """Stripe leaves out what an object lacks: a `use_stripe_sdk` next action has no URL (no
    `return_url` was given), and a failed authentication's error has no decline code."""
    intent = stripe.PaymentIntent.construct_from(
        {
            "id": "pi_1",
            "object": "payment_intent",
            "status": "requires_action",
            "amount_capturable": 0,
            "amount_received": 0,
            "next_action": {"type": "use_stripe_sdk", "use_stripe_sdk": {}},
            "last_payment_error": {"code": "payment_intent_authentication_failure"},
        },
        "sk_test_unused",
    )
    state = intent_state(intent)
    assert (state.next_action_url, state.decline_code, state.error_message) == (None, None, None)
    assert state.error_code == "payment_intent_authentication_failure"
