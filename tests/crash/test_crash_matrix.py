"""The crash matrix: SIGKILL the real `python worker.py` at every point where money or the
ledger moves, start a fresh worker, and check the payment ends right with exactly one capture
(none for declines and cancels), as `reconcile` confirms.

Each kill is triggered from outside the product: by a sandbox request hook (before or after
Stripe executes), by a test-installed trigger that makes a ledger transition wait on an
advisory lock the test holds (before the UPDATE, or at COMMIT), or by the payment's state while
it waits in its capture window.
"""

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg
import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus, workflow_id
from billing.ledger import Ledger
from billing.models import PaymentResult
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import FaultRule, RequestInfo, Sandbox
from tests.crash.harness import (
    LedgerTrap,
    payment_status,
    play_the_servers_timeouts,
    wait_for_status,
)
from tests.support import add_customer, worker_env, worker_processes

PERIOD = "2026-11"
VISA = "pm_card_visa"
HARD_DECLINE = "pm_card_chargeDeclined"
SOFT_DECLINE = "pm_card_chargeDeclinedInsufficientFunds"
WINDOW = "3s"
LONG_WINDOW = "1h"
KILL_TIMEOUT_S = 60
END_TIMEOUT_S = 90
SIGKILLED = -9

When = Literal["before", "after"]
S = PaymentStatus


@dataclass(frozen=True)
class StripePoint:
    endpoint: str
    when: When


@dataclass(frozen=True)
class LedgerPoint:
    source: PaymentStatus
    target: PaymentStatus
    when: When


@dataclass(frozen=True)
class WindowPoint:
    pass


@dataclass(frozen=True)
class Case:
    id: str
    point: StripePoint | LedgerPoint | WindowPoint
    card: str
    expected: PaymentStatus
    cancel: bool = False  # the customer cancels while the payment waits in its window

    @property
    def captures(self) -> int:
        return 1 if self.expected == S.SUCCEEDED else 0


def stripe_cases(endpoint: str, name: str, card: str, expected: S, cancel: bool) -> list[Case]:
    return [
        Case(f"{name}-{when}", StripePoint(endpoint, when), card, expected, cancel)
        for when in ("before", "after")
    ]


def ledger_cases(source: S, target: S, card: str, expected: S, cancel: bool = False) -> list[Case]:
    return [
        Case(f"{source}-{target}-{when}", LedgerPoint(source, target, when), card, expected, cancel)
        for when in ("before", "after")
    ]


CASES = [
    *stripe_cases("payment_intents.create", "authorize", VISA, S.SUCCEEDED, False),
    Case(
        "authorize-declined-after",
        StripePoint("payment_intents.create", "after"),
        HARD_DECLINE,
        S.FAILED,
    ),
    *stripe_cases("payment_intents.capture", "capture", VISA, S.SUCCEEDED, False),
    *stripe_cases("payment_intents.cancel", "void", VISA, S.CANCELLED, True),
    *ledger_cases(S.PENDING, S.AUTHORIZED, VISA, S.SUCCEEDED),
    *ledger_cases(S.AUTHORIZED, S.SUCCEEDED, VISA, S.SUCCEEDED),
    *ledger_cases(S.PENDING, S.FAILED, HARD_DECLINE, S.FAILED),
    *ledger_cases(S.PENDING, S.RETRYING, SOFT_DECLINE, S.FAILED),
    *ledger_cases(S.RETRYING, S.PENDING, SOFT_DECLINE, S.FAILED),
    *ledger_cases(S.AUTHORIZED, S.CANCELLED, VISA, S.CANCELLED, cancel=True),
    Case("capture-window", WindowPoint(), VISA, S.SUCCEEDED),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_sigkill_at(
    case: Case,
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    database_url: str,
    sandbox: Sandbox,
    settings: Settings,
    tmp_path: Path,
) -> None:
    client = temporal_env.client
    await add_customer(Ledger(pool), make_stripe_client(settings), case.card)
    environ = worker_env(settings, client.service_client.config.target_host)
    trap = LedgerTrap(database_url)
    with worker_processes(environ, tmp_path) as workers:
        first = workers.start()
        killed = asyncio.Event()

        def kill_worker(_: RequestInfo | None = None) -> None:
            first.kill()
            killed.set()

        point = case.point
        if isinstance(point, StripePoint):
            sandbox.add_hook(point.endpoint, point.when, kill_worker)
            if point.when == "before":  # Stripe never executes this first request
                sandbox.add_fault(FaultRule("error_before", endpoint=point.endpoint, nth=1))
        elif isinstance(point, LedgerPoint):
            await trap.arm(point.source, point.target, point.when)

        window = LONG_WINDOW if case.cancel else WINDOW if isinstance(point, WindowPoint) else "0"
        billed = await execute(["bill", PERIOD, "--capture-after", window], settings, client)
        assert billed == 0
        [payment] = await Ledger(pool).period_payments(PERIOD)
        handle: WorkflowHandle[object, PaymentResult] = client.get_workflow_handle(
            workflow_id(payment.id), result_type=PaymentResult
        )
        try:
            if case.cancel:
                await wait_for_status(pool, payment.id, S.AUTHORIZED)
                await handle.signal("cancel")
            if isinstance(point, LedgerPoint):
                backend = await trap.wait_until_trapped()
                kill_worker()
                await asyncio.to_thread(first.wait, 30)
                await trap.release(backend)
                # The transition is undone if the kill came before it, kept if after.
                reached = point.source if point.when == "before" else point.target
                assert await payment_status(pool, payment.id) == reached
            elif isinstance(point, WindowPoint):
                await wait_for_status(pool, payment.id, S.AUTHORIZED)
                kill_worker()
            async with asyncio.timeout(KILL_TIMEOUT_S):
                await killed.wait()
            assert await asyncio.to_thread(first.wait, 30) == SIGKILLED

            workers.start()
            await play_the_servers_timeouts(client, handle)
            async with asyncio.timeout(END_TIMEOUT_S):
                result = await handle.result()
        except BaseException as err:
            raise AssertionError(f"{case.id}: {err!r}\n{workers.logs()}") from err
        finally:
            await trap.close()

    assert result.status == case.expected, workers.logs()
    record = await Ledger(pool).payment(payment.id)
    assert record is not None and record.status == case.expected
    intents = sandbox.payment_intents()
    captured = [i for i in intents if i["status"] == "succeeded"]
    assert len(captured) == case.captures, intents
    assert not [i for i in intents if i["status"] == "requires_capture"], intents
    if case.expected == S.SUCCEEDED:
        assert record.stripe_payment_intent_id == captured[0]["id"]
        assert record.amount_received == captured[0]["amount_received"] == record.amount
    if case.cancel:
        assert [i["status"] for i in intents] == ["canceled"]
    assert await execute(["reconcile", PERIOD], settings, client) == 0
