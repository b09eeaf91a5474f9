"""A decline is the card answering, not a fault: one INFO line, no traceback, no warning."""

import logging

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus
from billing.ledger import Ledger
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import Sandbox
from tests.support import add_customer, running_worker

PERIOD = "2026-11"


async def test_a_decline_is_one_info_line_without_a_traceback(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_chargeDeclined")
    with caplog.at_level(logging.INFO):
        async with running_worker(settings, temporal_env.client):
            assert await execute(["bill", PERIOD, "--wait"], settings, temporal_env.client) == 0
    [payment] = await Ledger(pool).period_payments(PERIOD)
    assert payment.status == PaymentStatus.FAILED

    declines = [r for r in caplog.records if r.getMessage().startswith("card declined:")]
    assert len(declines) == 1
    assert declines[0].levelno == logging.INFO
    assert declines[0].exc_info is None
    # The SDK's "Completing activity as failed" warning, with its traceback, is gone.
    noisy = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "authorize" in r.getMessage()
    ]
    assert noisy == []
