"""`python -m local_stack up` and Stripe's webhooks. On the embedded sandbox `up` registers the
receiver's endpoint itself and hands its secret to the receiver only; `up` again leaves one
endpoint at that URL. With STRIPE_WEBHOOK_SECRET set, registering is the operator's, as
docs/operations.md tells."""

import asyncio
from pathlib import Path

import asyncpg
import psutil
from stripe import StripeClient

from billing.settings import SANDBOX_API_KEY, WEBHOOK_PATH
from local_stack.ports import port_accepts
from local_stack.processes import BackgroundProcess
from tests.stack.test_stack_cli import (
    EMBEDDED_SERVICES,
    stack,
    stack_env,
    stack_ports,
    states,
)

SECRET_VARIABLE = "STRIPE_WEBHOOK_SECRET"


async def stored_event_types(database_url: str, at_least: int) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(200):  # deliveries run in the sandbox's background
            rows = await connection.fetch("SELECT type FROM stripe_events ORDER BY received_at")
            if len(rows) >= at_least:
                break
            await asyncio.sleep(0.1)
        return [row["type"] for row in rows]
    finally:
        await connection.close()


def process(data_dir: Path, name: str) -> BackgroundProcess:
    """A process `up` started, found by its pid file."""
    return BackgroundProcess(name, [], data_dir)


def secret_of_receiver(data_dir: Path) -> str:
    pid = process(data_dir, "webhooks").pid
    assert pid is not None
    secret: str = psutil.Process(pid).environ()[SECRET_VARIABLE]
    return secret


def files_holding(data_dir: Path, text: str) -> list[Path]:
    needle = text.encode()
    return [p for p in data_dir.rglob("*") if p.is_file() and needle in p.read_bytes()]


def webhook_endpoint_ids(stripe: StripeClient, url: str) -> list[str]:
    """What the sandbox lists at `url` (the stack's own helper is async)."""
    endpoints = stripe.v1.webhook_endpoints.list({"limit": 100}).auto_paging_iter()
    return [endpoint.id for endpoint in endpoints if endpoint.url == url]


def make_an_intent(stripe: StripeClient) -> None:
    customer = stripe.v1.customers.create({"email": "hooks@example.com"})
    stripe.v1.payment_intents.create({"amount": 500, "currency": "usd", "customer": customer.id})


def test_up_registers_the_endpoint_and_gives_its_secret_to_the_receiver_only(
    scratch_dir: Path,
) -> None:
    ports = stack_ports()
    data_dir = scratch_dir / "data"
    env = stack_env(data_dir, ports)
    receiver_url = f"http://127.0.0.1:{ports['webhook_port']}{WEBHOOK_PATH}"
    stripe = StripeClient(
        SANDBOX_API_KEY, base_addresses={"api": f"http://127.0.0.1:{ports['sandbox_port']}"}
    )
    database_url = f"postgresql://postgres@127.0.0.1:{ports['embedded_postgres_port']}/billing"
    outputs = []
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Stripe webhooks received at {receiver_url}" in up.stdout
        [endpoint] = webhook_endpoint_ids(stripe, receiver_url)
        status = stack("status", env)
        assert states(status.stdout) == dict.fromkeys(EMBEDDED_SERVICES, "running")
        assert f"{receiver_url}, endpoint {endpoint} in the sandbox" in status.stdout
        receiver_pid = process(data_dir, "webhooks").pid

        secret = secret_of_receiver(data_dir)
        assert secret.startswith("whsec_")
        worker_pid = process(data_dir, "worker").pid
        assert worker_pid is not None
        assert SECRET_VARIABLE not in psutil.Process(worker_pid).environ()
        make_an_intent(stripe)  # the receiver verifies the sandbox's signature with it
        assert asyncio.run(stored_event_types(database_url, 1)) == ["payment_intent.created"]

        # Again: the receiver and its endpoint are kept.
        again = stack("up", env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert webhook_endpoint_ids(stripe, receiver_url) == [endpoint]
        assert process(data_dir, "webhooks").pid == receiver_pid

        # A second endpoint at the URL (signing with another secret): `up` leaves one.
        stripe.v1.webhook_endpoints.create({"url": receiver_url, "enabled_events": ["*"]})
        replaced = stack("up", env)
        assert replaced.returncode == 0, replaced.stdout + replaced.stderr
        [new_endpoint] = webhook_endpoint_ids(stripe, receiver_url)
        assert new_endpoint != endpoint
        assert secret_of_receiver(data_dir) != secret

        # The sandbox restarted forgets its endpoints: `up` registers one again.
        process(data_dir, "stripe-sandbox").stop()
        restarted = stack("up", env)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert len(webhook_endpoint_ids(stripe, receiver_url)) == 1
        make_an_intent(stripe)
        assert asyncio.run(stored_event_types(database_url, 2)) == ["payment_intent.created"] * 2

        last_secret = secret_of_receiver(data_dir)
        outputs = [up, status, again, replaced, restarted, stack("status", env)]
    finally:
        down = stack("down", env)
    assert down.returncode == 0, down.stdout + down.stderr
    for shown in (*outputs, down):
        assert "whsec_" not in shown.stdout + shown.stderr
    for written in (secret, last_secret):
        assert files_holding(data_dir, written) == []
    assert "webhooks        stopped" in down.stdout
    assert not (data_dir / "webhook-endpoint").exists()
    assert not any(port_accepts(port) for port in ports.values())


def test_up_with_a_webhook_secret_runs_the_receiver_with_it(scratch_dir: Path) -> None:
    ports = stack_ports()
    data_dir = scratch_dir / "data"
    env = stack_env(data_dir, ports)
    env[SECRET_VARIABLE] = "whsec_set_by_the_operator"
    receiver_url = f"http://127.0.0.1:{ports['webhook_port']}{WEBHOOK_PATH}"
    stripe = StripeClient(
        SANDBOX_API_KEY, base_addresses={"api": f"http://127.0.0.1:{ports['sandbox_port']}"}
    )
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert states(stack("status", env).stdout) == dict.fromkeys(EMBEDDED_SERVICES, "running")
        assert webhook_endpoint_ids(stripe, receiver_url) == []  # registering is the operator's
        assert secret_of_receiver(data_dir) == env[SECRET_VARIABLE]

        # The operator registers the endpoint and restarts the receiver with its secret.
        endpoint = stripe.v1.webhook_endpoints.create(
            {"url": receiver_url, "enabled_events": ["*"]}
        )
        assert endpoint.secret is not None
        env[SECRET_VARIABLE] = endpoint.secret
        process(data_dir, "webhooks").stop()
        again = stack("up", env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert webhook_endpoint_ids(stripe, receiver_url) == [endpoint.id]

        make_an_intent(stripe)
        database_url = f"postgresql://postgres@127.0.0.1:{ports['embedded_postgres_port']}/billing"
        types = asyncio.run(stored_event_types(database_url, 1))
        assert types == ["payment_intent.created"]  # ours or not, a type stored and ignored
    finally:
        down = stack("down", env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "webhooks        stopped" in down.stdout
    assert not any(port_accepts(port) for port in ports.values())
