"""A webhook endpoint registered in the sandbox, and the receiver (billing/webhooks.py) that
answers it in the test's process: for the tests of webhooks and of 3-D Secure."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from temporalio.testing import WorkflowEnvironment

from billing.ledger_stripe_events import StripeEventLedger
from billing.settings import WEBHOOK_PATH, Settings
from billing.stripe_client import make_stripe_client
from billing.webhooks import WebhookReceiver, listening, webhook_app
from local_stack.ports import LOOPBACK, free_port
from stripe_sandbox import Sandbox
from stripe_sandbox.webhooks import WebhookSettings

# Fast retries, and enough of them to outlast a receiver being restarted.
DELIVERY = WebhookSettings(retry_base_ms=50, max_attempts=10, timeout_ms=5000)
IDLE_WITHIN_S = 30


@dataclass
class Hooks:
    """A webhook endpoint registered in the sandbox, pointing at a receiver's port."""

    port: int
    secret: str
    env: WorkflowEnvironment
    pool: asyncpg.Pool
    sandbox: Sandbox

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{WEBHOOK_PATH}"

    @asynccontextmanager
    async def receiving(
        self, after_store: Callable[[str], Awaitable[None]] | None = None
    ) -> AsyncIterator[None]:
        receiver = WebhookReceiver(
            self.secret, StripeEventLedger(self.pool), self.env.client, after_store
        )
        async with listening(webhook_app(receiver), LOOPBACK, self.port):
            yield

    async def idle(self) -> None:
        """Every delivery answered, retries included."""
        async with asyncio.timeout(IDLE_WITHIN_S):
            await self.sandbox.webhooks.wait_idle()


async def register_endpoint(
    env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> Hooks:
    """An endpoint for every event type, on a free port, with fast delivery retries."""
    sandbox.webhooks.settings = DELIVERY
    port = free_port()
    stripe = make_stripe_client(settings)
    endpoint = await stripe.v1.webhook_endpoints.create_async(
        {"url": f"http://{LOOPBACK}:{port}{WEBHOOK_PATH}", "enabled_events": ["*"]}
    )
    assert endpoint.secret is not None and endpoint.secret.startswith("whsec_")
    return Hooks(port, endpoint.secret, env, pool, sandbox)
