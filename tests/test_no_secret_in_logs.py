"""No log line and no exported span ever holds the Stripe key, even at DEBUG, with the
Stripe SDK's own debug logging on, and when Stripe refuses the key."""

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus
from billing.ledger import Ledger
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from tests.support import ROOT, add_customer, worker_env, worker_processes

PERIOD = "2026-11"


class Collector:
    """An OTLP/HTTP trace collector that keeps the raw bodies it is sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def receive(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        return web.Response(content_type="application/x-protobuf", body=b"")


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    found = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", found.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield found, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def starter(environ: dict[str, str], *argv: str) -> tuple[int, str]:
    """`python starter.py …` as a process; its exit code and everything it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "starter.py",
        *argv,
        cwd=ROOT,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_a_full_flow_at_debug_logs_no_key(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    settings: Settings,
    collector: tuple[Collector, str],
    tmp_path: Path,
) -> None:
    found, collector_url = collector
    secret = settings.resolved_stripe_key()
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_visa")
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_chargeDeclined")
    environ = {
        **worker_env(settings, temporal_env.client.service_client.config.target_host),
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector_url,
    }
    with worker_processes(environ, tmp_path) as workers:
        worker = workers.start()
        code, printed = await starter(environ, "bill", PERIOD, "--wait")
        assert code == 0, printed + workers.logs()
        worker.send_signal(signal.SIGTERM)  # a clean stop sends the spans still buffered
        assert await asyncio.to_thread(worker.wait, 60) == 0, workers.logs()
        code, reconciled = await starter(environ, "reconcile", PERIOD)
    statuses = {p.status for p in await Ledger(pool).period_payments(PERIOD)}
    assert statuses == {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}
    worker_log = (tmp_path / "worker-1.log").read_text()

    records = [json.loads(line) for line in worker_log.splitlines()]
    loggers = {record["logger"] for record in records}
    # DEBUG was on, the Stripe SDK's own lines included, and every line is one JSON object.
    assert {"stripe", "billing.worker", "temporalio.activity"} <= loggers, loggers
    assert any(r["level"] == "DEBUG" and r["logger"] == "stripe" for r in records)
    for output in (worker_log, printed, reconciled):
        assert secret not in output
    # Both processes exported spans, and none holds the key.
    exported = b"".join(found.bodies)
    assert b"billing-worker" in exported and b"billing-starter" in exported
    assert b"pay_" in exported  # the idempotency keys of the Stripe requests
    assert secret.encode() not in exported


async def test_a_refused_key_is_not_printed(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    settings: Settings,
    tmp_path: Path,
) -> None:
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_visa")
    wrong = f"sk_test_wrong-{uuid.uuid4().hex}"  # a shape the sandbox refuses, as Stripe would
    environ = {
        **worker_env(settings, temporal_env.client.service_client.config.target_host),
        "STRIPE_API_KEY": wrong,
        "LOG_LEVEL": "DEBUG",
    }
    with worker_processes(environ, tmp_path) as workers:
        workers.start()
        code, printed = await starter(environ, "bill", PERIOD)
        assert code == 0, printed
        for _ in range(100):  # until the worker logs the refused authorization
            if "Invalid API Key" in workers.logs():
                break
            await asyncio.sleep(0.2)
        code, reconciled = await starter(environ, "reconcile", PERIOD)
    worker_log = (tmp_path / "worker-1.log").read_text()
    assert "Invalid API Key" in worker_log
    assert code != 0 and "Invalid API Key" in reconciled, reconciled
    for output in (worker_log, printed, reconciled):
        assert wrong not in output
