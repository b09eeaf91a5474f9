"""Replay recorded histories: a workflow change that breaks running payments fails here."""

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.record_histories import cases
from workflows.payment import PaymentWorkflow

HISTORIES = {
    path.stem: path.read_text()
    for path in sorted((Path(__file__).parent / "histories").glob("*.json"))
}


def test_histories_are_checked_in() -> None:
    assert set(HISTORIES) >= set(cases())


@pytest.mark.parametrize("name", HISTORIES)
async def test_history_replays(name: str) -> None:
    history = WorkflowHistory.from_json(name, HISTORIES[name])
    replayer = Replayer(workflows=[PaymentWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
