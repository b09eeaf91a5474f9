"""The worker's Prometheus metrics, scraped over HTTP from a real `python worker.py`.

Four payments run through the worker: three paid (one capture answered with a 500 that Stripe
stored under its key) and one soft-declined card that is retried once and fails. The first
Stripe requests meet a 429. The billing counters must match the ledger and the sandbox's own
request counts, and the SDK's metrics must be there. A metrics endpoint that cannot listen
stops the worker at start with one line.
"""

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import stripe
from prometheus_client.parser import text_string_to_metric_families
from temporalio.testing import WorkflowEnvironment

from billing import metrics
from billing.constants import PaymentStatus
from billing.ledger import Ledger
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from local_stack.ports import free_port
from starter import execute
from stripe_sandbox import FaultRule, Sandbox
from tests.support import ROOT, add_customer, worker_env, worker_processes

PERIOD = "2026-11"
CAPTURE_WINDOW_S = 1
PAID_CARDS = ["pm_card_visa", "pm_card_mastercard", "pm_card_visa"]
SOFT_DECLINE = "pm_card_chargeDeclinedInsufficientFunds"
# The SDK's own metrics the dashboard reads (temporal_workflow_failed appears with a first
# failed workflow).
SDK_METRICS = (
    "temporal_workflow_completed",
    "temporal_workflow_task_queue_poll_succeed",
    "temporal_activity_schedule_to_start_latency_count",
    "temporal_workflow_task_schedule_to_start_latency_count",
    "temporal_worker_task_slots_available",
    "temporal_num_pollers",
    "temporal_request",
)
DEADLINE_S = 60.0
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "billing.json"
WORKER_429S = 1  # the worker's first Stripe request is refused, then the limiter refills


class HeldClock:
    """The sandbox rate limiter's clock, read once per request. Held still, the limiter's
    tokens run out and stay out; after `release_after(n)`, n more requests see the held time
    and are refused, and then real time runs again and refills them."""

    def __init__(self) -> None:
        self._held_at = time.monotonic()
        self._held_reads: int | None = None

    def __call__(self) -> float:
        if self._held_reads == 0:
            return time.monotonic()
        if self._held_reads is not None:
            self._held_reads -= 1
        return self._held_at

    def release_after(self, reads: int) -> None:
        self._held_reads = reads


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@pytest.fixture
def held_clock() -> HeldClock:
    return HeldClock()


@pytest.fixture
async def limited_sandbox(held_clock: HeldClock) -> AsyncIterator[Sandbox]:
    """A sandbox with Stripe's test-mode rate limit on, on a clock the test holds."""
    server = Sandbox(mode="test", rate_limits=True, monotonic=held_clock)
    await server.start(port=0)
    try:
        yield server
    finally:
        await server.stop()


def scrape(port: int) -> list[Sample]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    # The parser names a counter's samples `<name>_total`; the worker exposes them as `<name>`.
    return [
        Sample(
            family.name if family.type == "counter" else sample.name,
            dict(sample.labels),
            sample.value,
        )
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def by_label(samples: list[Sample], name: str, *labels: str) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for s in samples:
        if s.name == name:
            counts[tuple(s.labels[label] for label in labels)] += int(s.value)
    return +counts


async def drain_rate_limit(client: stripe.StripeClient, customer: str) -> int:
    """Spend every token of the held limiter; returns the 429s this cost (one)."""
    while True:
        try:
            await client.v1.customers.retrieve_async(customer)
        except stripe.RateLimitError:
            return 1


async def wait_for(condition: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting until {condition}"
        await asyncio.sleep(0.2)


async def test_metrics_match_the_ledger_and_stripe(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    settings: Settings,
    limited_sandbox: Sandbox,
    held_clock: HeldClock,
    tmp_path: Path,
) -> None:
    sandbox = limited_sandbox
    port = free_port()
    settings = settings.model_copy(update={"metrics_port": port, "stripe_api_base": sandbox.url})
    stripe_client = make_stripe_client(settings)
    ledger = Ledger(pool)
    for card in [*PAID_CARDS, SOFT_DECLINE]:
        await add_customer(ledger, stripe_client, card)
    test_429s = await drain_rate_limit(stripe_client, sandbox.customers()[0]["id"])
    sandbox.add_fault(FaultRule(kind="error_after", endpoint="payment_intents.capture", times=1))

    environ = worker_env(settings, temporal_env.client.service_client.config.target_host)
    with worker_processes(environ, tmp_path) as workers:
        workers.start()
        await wait_for("the worker polls", lambda: "worker polling" in workers.logs())
        held_clock.release_after(WORKER_429S)
        billed = await execute(
            ["bill", PERIOD, "--capture-after", f"{CAPTURE_WINDOW_S}s", "--wait"],
            settings,
            temporal_env.client,
        )
        assert billed == 0, workers.logs()

        payments = await ledger.period_payments(PERIOD)
        assert Counter(p.status for p in payments) == {
            PaymentStatus.SUCCEEDED: len(PAID_CARDS),
            PaymentStatus.FAILED: 1,
        }

        def all_ended() -> bool:
            return total(scrape(port), metrics.PAYMENTS_ENDED) == len(payments)

        await wait_for("every payment's end is counted", all_ended)
        samples = await asyncio.to_thread(scrape, port)

    # Payments by final status and currency: as the ledger says.
    assert by_label(samples, metrics.PAYMENTS_ENDED, "status", "currency") == Counter(
        (str(p.status), p.currency) for p in payments
    )

    # Stripe requests: per endpoint, exactly what reached the sandbox (the test's own
    # requests were to customers and payment methods, which the worker never calls).
    stats = sandbox.stats()
    requests = by_label(samples, metrics.STRIPE_REQUESTS, "endpoint")
    reached = {
        (endpoint,): count
        for endpoint, count in stats["by_endpoint"].items()
        if endpoint.startswith("payment_intents.")
    }
    assert requests == reached
    outcomes = by_label(samples, metrics.STRIPE_REQUESTS, "endpoint", "outcome")
    assert stats["rate_limited"] - test_429s == WORKER_429S
    assert total(samples, metrics.STRIPE_REQUESTS, outcome="rate_limited") == WORKER_429S
    assert outcomes[("payment_intents.capture", "stored_server_error")] == 1
    # The soft decline, then its one dunning retry, declined again.
    assert outcomes[("payment_intents.create", "declined")] == 2
    assert total(samples, metrics.STRIPE_REQUESTS, outcome="server_error") == 0
    # The capture's stored 500 was read back.
    assert outcomes[("payment_intents.retrieve", "ok")] == 1

    # Latency: one observation per request, per endpoint.
    latency_counts = by_label(samples, f"{metrics.STRIPE_LATENCY}_count", "endpoint")
    assert latency_counts == requests
    assert total(samples, f"{metrics.STRIPE_LATENCY}_sum") > 0

    # Waits: a capture window for each authorization, one dunning wait, each as long as set.
    capture, dunning = str(metrics.Wait.CAPTURE_WINDOW), str(metrics.Wait.DUNNING)
    assert total(samples, metrics.WAITS_STARTED, wait=capture) == len(PAID_CARDS)
    assert total(samples, metrics.WAITS_STARTED, wait=dunning) == 1
    waited = f"{metrics.WAIT_DURATION}_count"
    assert total(samples, waited, wait=capture) == len(PAID_CARDS)
    assert total(samples, waited, wait=dunning) == 1
    window_ms = CAPTURE_WINDOW_S * 1000
    assert total(samples, f"{metrics.WAIT_DURATION}_sum", wait=capture) >= 3 * window_ms
    assert total(samples, f"{metrics.WAIT_DURATION}_sum", wait=dunning) >= 1000

    # The SDK's own metrics, from the same endpoint.
    names = {s.name for s in samples}
    missing = [name for name in SDK_METRICS if name not in names]
    assert not missing, f"SDK metrics missing: {missing}; present: {sorted(names)}"
    completed = total(samples, "temporal_workflow_completed", workflow_type="PaymentWorkflow")
    assert completed == len(payments)

    # The dashboard reads only metrics the worker exposes.
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    read = {name for expr in exprs for name in re.findall(r"\b(?:billing|temporal)_\w+", expr)}
    assert read - names <= {"temporal_workflow_failed"}, read - names


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("METRICS_PORT", "taken", "Address already in use"),
        ("METRICS_PORT", "70000", "less than or equal to 65535"),
        ("METRICS_HOST", "worker", "'worker' is not an IP address"),
    ],
)
def test_a_bad_metrics_setting_stops_the_worker_with_one_line(
    settings: Settings, variable: str, value: str, says: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if value == "taken":
            value = str(taken.getsockname()[1])
        # Nothing listens on Temporal's address: the worker must stop before connecting.
        environ = worker_env(settings, "127.0.0.1:9") | {"METRICS_PORT": "9464", variable: value}
        done = subprocess.run(
            [sys.executable, "worker.py"],
            cwd=ROOT,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {variable}: "), line
    assert says in line
    if variable == "METRICS_PORT" and value != "70000":
        assert "set METRICS_PORT to a free port, or to 0 to turn metrics off" in line
