"""Real services for the tests: PostgreSQL, the Temporal dev server and the Stripe sandbox."""

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from billing.constants import SEARCH_ATTRIBUTES, billing_run_id
from billing.ledger import migrate, open_pool
from billing.settings import Settings
from local_stack.postgres import EmbeddedPostgres
from local_stack.temporal import start_local_environment, test_server_path
from stripe_sandbox import Sandbox
from temporal_ops import SCHEDULE_ID, schedule_handle
from tests.webhook_support import Hooks, register_endpoint

# One quick dunning retry, so that integration tests see a soft decline retried and fail.
DUNNING_RETRY_AFTER = timedelta(seconds=1)
# A billing run reads its counts this often in tests, so that `bill --wait` returns soon.
RUN_POLL_INTERVAL = timedelta(milliseconds=500)


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="billing-test-pg-"))
    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def database_url(postgres: EmbeddedPostgres) -> str:
    """A fresh, empty database for each test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    postgres.ensure_database(name)
    return postgres.url(name)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(database_url)
    await migrate(pool)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_local_environment(data_converter=pydantic_data_converter)
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(autouse=True)
async def no_billing_run_left_running(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A period has one billing run in the namespace the tests share; one a test left waiting
    (payments in a capture window) would be attached to by the next test's `bill`. After the
    test, its periods' runs are ended by id (visibility may not list a run started just now)."""
    if "temporal_env" not in request.fixturenames:
        yield
        return
    env: WorkflowEnvironment = request.getfixturevalue("temporal_env")
    url = (
        request.getfixturevalue("database_url") if "database_url" in request.fixturenames else None
    )
    yield
    periods: list[str] = []
    if url is not None:
        conn = await asyncpg.connect(url)
        with contextlib.suppress(asyncpg.UndefinedTableError):
            rows = await conn.fetch("SELECT DISTINCT billing_period FROM payments")
            periods = [row[0] for row in rows]
        await conn.close()
    for period in periods:
        with contextlib.suppress(RPCError):  # never started, or already closed
            await env.client.get_workflow_handle(billing_run_id(period)).terminate("test ended")


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server, for timers measured in hours and days."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_path(), data_converter=pydantic_data_converter
    )
    try:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    key.name: IndexedValueType.ValueType(key.indexed_value_type)
                    for key in SEARCH_ATTRIBUTES
                },
            )
        )
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    """Each test polls its own queue, so no test's worker runs another test's workflows."""
    return f"billing-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """A fresh Stripe sandbox with its rate limits off."""
    server = Sandbox(mode="test", rate_limits=False)
    await server.start(port=0)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def settings(database_url: str, sandbox: Sandbox, task_queue: str) -> Settings:
    """Worker and starter settings for one test, with a secret no history may contain.
    Metrics are off: tests run many workers, and each would take port 9464."""
    return Settings(
        metrics_port=0,
        dunning_schedule=[DUNNING_RETRY_AFTER],
        database_url=database_url,
        stripe_api_key=SecretStr(f"sk_test_secret_{uuid.uuid4().hex}"),
        stripe_api_base=sandbox.url,
        task_queue=task_queue,
        run_poll_interval=RUN_POLL_INTERVAL,
    )


@pytest.fixture
async def no_schedule(temporal_env: WorkflowEnvironment) -> AsyncIterator[None]:
    """One Schedule per namespace: start without it, and leave none behind."""
    await _delete_schedule(temporal_env.client)
    yield
    await _delete_schedule(temporal_env.client)


async def _delete_schedule(client: Client) -> None:
    async for listed in await client.list_schedules():
        if listed.id == SCHEDULE_ID:
            await schedule_handle(client).delete()


@pytest.fixture
async def hooks(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> Hooks:
    """A webhook endpoint in the sandbox; `hooks.receiving()` runs its receiver."""
    return await register_endpoint(temporal_env, pool, sandbox, settings)
