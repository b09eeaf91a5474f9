"""`make demo` as the README's quick start runs it, on a stack of its own, with a deadline.
Its customers asked for 3-D Secure pass it at their payment's page, and the webhook receiver
that `make up` registered wakes their payments, which capture."""

import asyncio
import re
import subprocess
import time
from pathlib import Path

import asyncpg
from stripe import StripeClient

from billing.demo import DEMO_CUSTOMERS, NEEDS_3DS, demo_card
from billing.settings import SANDBOX_API_KEY
from tests.stack.test_stack_cli import stack, stack_env, stack_ports
from tests.support import ROOT

# The demo itself waits at most DEMO_WAIT (40 s) for the payments; seeding and billing 50
# customers take seconds. The deadline leaves room for a slow, shared machine.
DEADLINE_S = 150
THROUGH_3DS = sum(demo_card(n) == NEEDS_3DS for n in range(1, DEMO_CUSTOMERS + 1))
PASSED = re.compile(r"payment (\S+): the customer passed 3-D Secure at (\S+)")

PAYMENTS_THROUGH_3DS = """
SELECT p.id::text, p.status, p.amount, p.stripe_customer_id, p.stripe_payment_intent_id
FROM payments p
WHERE EXISTS (
    SELECT FROM payment_events e WHERE e.payment_id = p.id AND e.to_status = 'action_required'
)
"""


async def payments_through_3ds(database_url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return list(await connection.fetch(PAYMENTS_THROUGH_3DS))
    finally:
        await connection.close()


def test_make_demo_returns_with_the_report(scratch_dir: Path) -> None:
    assert THROUGH_3DS == 4  # "a few", as the README says
    ports = stack_ports()
    env = stack_env(scratch_dir / "data", ports)
    sandbox = f"http://127.0.0.1:{ports['sandbox_port']}"
    database_url = f"postgresql://postgres@127.0.0.1:{ports['embedded_postgres_port']}/billing"
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        started = time.monotonic()
        demo = subprocess.run(
            ["make", "-s", "demo"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=False,
        )
        took = time.monotonic() - started
        through_3ds = asyncio.run(payments_through_3ds(database_url))
        stripe = StripeClient(SANDBOX_API_KEY, base_addresses={"api": sandbox})
        intents = {
            row["id"]: stripe.v1.payment_intents.list({"customer": row["stripe_customer_id"]}).data
            for row in through_3ds
        }
    finally:
        stack("down", env)
    output = demo.stdout
    assert demo.returncode == 0, output + demo.stderr
    print(f"{output}\nmake demo returned in {took:.1f} s once the stack was up")
    assert "seeded 50 demo customers" in output
    assert "demo dunning schedule" in output
    assert "report" in output and "succeeded" in output
    assert "payments failed with insufficient_funds" in output  # after its dunning retries
    assert "payments failed with generic_decline" in output  # a hard decline, at once
    assert f"{THROUGH_3DS} payments went through 3-D Secure" in output
    assert f"http://127.0.0.1:{ports['embedded_temporal_ui_port']}/namespaces/" in output

    # One line per payment: its id and the page it recorded; then the webhook woke it.
    passed = dict(PASSED.findall(output))
    assert set(passed) == {row["id"] for row in through_3ds}
    assert len(through_3ds) == THROUGH_3DS
    for row in through_3ds:
        assert row["status"] == "succeeded", row
        assert passed[row["id"]] == f"{sandbox}/_sandbox/3ds/{row['stripe_payment_intent_id']}"
        [intent] = intents[row["id"]]  # one intent, captured once
        assert intent.id == row["stripe_payment_intent_id"]
        assert (intent.status, intent.amount_received) == ("succeeded", row["amount"])
