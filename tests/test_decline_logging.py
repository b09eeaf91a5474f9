"""A decline is the card answering, not a fault: one INFO line, no traceback, no warning."""

import io
import json
import logging

import asyncpg
import pytest
from temporalio import activity, workflow
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus, workflow_id
from billing.ledger import Ledger
from billing.logs import log_handler
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


async def test_json_lines_carry_the_payment_and_the_decline_stays_one_line(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """LOG_FORMAT=json: one object per line; a workflow's and an activity's lines name the
    payment and its workflow in fields of their own, not in the message."""
    as_json = settings.model_copy(update={"log_format": "json"})
    monkeypatch.setattr(workflow.logger, "workflow_info_on_message", False)
    monkeypatch.setattr(activity.logger, "activity_info_on_message", False)
    stream = io.StringIO()
    handler = log_handler(as_json, stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_chargeDeclined")
        with caplog.at_level(logging.INFO):
            async with running_worker(as_json, temporal_env.client):
                assert await execute(["bill", PERIOD, "--wait"], as_json, temporal_env.client) == 0
    finally:
        root.removeHandler(handler)
    [payment] = await Ledger(pool).period_payments(PERIOD)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    [decline] = [line for line in lines if line["message"].startswith("card declined:")]
    assert decline["level"] == "INFO"
    assert decline["payment_id"] == payment.id
    assert decline["workflow_id"] == workflow_id(payment.id)
    assert decline["activity_type"] == "authorize_unless_held"  # a payment's first attempt
    assert decline["run_id"]
    assert "exception" not in decline
    assert "{" not in decline["message"]  # the SDK's context dict is not on the message


def test_an_exception_is_one_json_line(settings: Settings) -> None:
    stream = io.StringIO()
    logger = logging.getLogger("billing.test_json")
    logger.addHandler(log_handler(settings.model_copy(update={"log_format": "json"}), stream))
    logger.propagate = False
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "it failed"
    assert record["level"] == "ERROR"
    assert "ValueError: boom" in record["exception"]
    assert "Traceback" in record["exception"]
