"""Helpers shared by the integration tests."""

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from stripe import StripeClient
from temporalio.client import Client

from billing.ledger import Ledger
from billing.models import NewCustomer, PaymentRecord
from billing.settings import Settings
from stripe_sandbox import Sandbox
from worker import run_worker

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def running_worker(settings: Settings, client: Client) -> AsyncIterator[None]:
    """The real worker (`worker.run_worker`) in this process, stopped gracefully at the end."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(stop, settings, client))
    try:
        yield
    finally:
        stop.set()
        await task


async def add_customer(
    ledger: Ledger, stripe: StripeClient, card: str, *, amount: int = 2500
) -> str:
    """A Stripe customer with `card` attached, imported into the ledger; returns its email."""
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    customer = await stripe.v1.customers.create_async({"email": email})
    method = await stripe.v1.payment_methods.attach_async(card, {"customer": customer.id})
    await ledger.upsert_customers(
        [
            NewCustomer(
                email=email,
                stripe_customer_id=customer.id,
                payment_method_id=method.id,
                monthly_amount=amount,
                currency="usd",
            )
        ]
    )
    return email


def intents_of(sandbox: Sandbox, payment_id: str) -> list[dict[str, Any]]:
    """The sandbox's PaymentIntents created for one payment, oldest first."""
    return [i for i in sandbox.payment_intents() if i["metadata"].get("payment_id") == payment_id]


async def pass_3d_secure(payment: PaymentRecord, outcome: str = "complete") -> None:
    """The customer opens the URL an `action_required` payment recorded, on the sandbox,
    and passes 3-D Secure (`outcome` "fail": fails it)."""
    intent = payment.stripe_payment_intent_id
    assert payment.next_action_url is not None and intent is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(payment.next_action_url) as page:
            assert page.status == 200
            assert intent in await page.text()
        base = payment.next_action_url.split("/_sandbox/")[0]
        async with http.post(f"{base}/_sandbox/payment_intents/{intent}/3ds/{outcome}") as done:
            assert done.status == 200, await done.text()


def worker_env(settings: Settings, temporal_address: str) -> dict[str, str]:
    assert settings.database_url and settings.stripe_api_base
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "STRIPE_API_KEY": settings.resolved_stripe_key(),
        "STRIPE_API_BASE": settings.stripe_api_base,
        "TASK_QUEUE": settings.task_queue,
        "TEMPORAL_ADDRESS": temporal_address,
        "METRICS_PORT": str(settings.metrics_port),
    }


class WorkerProcesses:
    """`python worker.py` processes, one after another; every one is gone at the end."""

    def __init__(self, environ: dict[str, str], log_dir: Path) -> None:
        self.environ = environ
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"worker-{len(self.started) + 1}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "worker.py"], cwd=ROOT, env=self.environ, stdout=out, stderr=out
            )
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.log_dir.glob("worker-*.log"))
        )

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@contextmanager
def worker_processes(environ: dict[str, str], log_dir: Path) -> Iterator[WorkerProcesses]:
    workers = WorkerProcesses(environ, log_dir)
    try:
        yield workers
    finally:
        workers.stop_all()
