"""`python -m local_stack up` and Stripe's webhooks, as docs/operations.md tells an operator:
bring the stack up, register the endpoint at the sandbox, set STRIPE_WEBHOOK_SECRET to the
secret it returned and `up` again; the receiver then stores what the sandbox delivers."""

import asyncio
from pathlib import Path

import asyncpg
from stripe import StripeClient

from billing.settings import SANDBOX_API_KEY, WEBHOOK_PATH
from local_stack.ports import free_port, port_accepts
from tests.stack.test_stack_cli import SERVICES, stack, stack_env, states


async def stored_event_types(database_url: str, at_least: int) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(100):  # deliveries run in the sandbox's background
            rows = await connection.fetch("SELECT type FROM stripe_events ORDER BY received_at")
            if len(rows) >= at_least:
                break
            await asyncio.sleep(0.1)
        return [row["type"] for row in rows]
    finally:
        await connection.close()


def test_up_with_a_webhook_secret_runs_the_receiver(scratch_dir: Path) -> None:
    ports = {
        "embedded_postgres_port": free_port(),
        "embedded_temporal_port": free_port(),
        "embedded_temporal_ui_port": free_port(),
        "sandbox_port": free_port(),
        "webhook_port": free_port(),
    }
    env = stack_env(scratch_dir / "data", ports)
    receiver_url = f"http://127.0.0.1:{ports['webhook_port']}{WEBHOOK_PATH}"
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "webhooks" not in states(stack("status", env).stdout)
        assert not port_accepts(ports["webhook_port"])  # `up` registers nothing by itself

        stripe = StripeClient(
            SANDBOX_API_KEY, base_addresses={"api": f"http://127.0.0.1:{ports['sandbox_port']}"}
        )
        endpoint = stripe.v1.webhook_endpoints.create(
            {"url": receiver_url, "enabled_events": ["*"]}
        )
        assert endpoint.secret is not None
        env["STRIPE_WEBHOOK_SECRET"] = endpoint.secret
        again = stack("up", env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"Stripe webhooks received at {receiver_url}" in again.stdout
        assert states(stack("status", env).stdout) == dict.fromkeys(
            (*SERVICES, "webhooks"), "running"
        )

        customer = stripe.v1.customers.create({"email": "hooks@example.com"})
        stripe.v1.payment_intents.create(
            {"amount": 500, "currency": "usd", "customer": customer.id}
        )
        database_url = f"postgresql://postgres@127.0.0.1:{ports['embedded_postgres_port']}/billing"
        types = asyncio.run(stored_event_types(database_url, 1))
        assert types == ["payment_intent.created"]  # ours or not, a type stored and ignored
    finally:
        down = stack("down", env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "webhooks        stopped" in down.stdout
    assert not any(port_accepts(port) for port in ports.values())
