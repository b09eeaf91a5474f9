"""One trace follows a payment from `bill` to `finalize`, Stripe's requests included."""

from collections.abc import Iterator

import asyncpg
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus, workflow_id
from billing.ledger import Ledger
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from billing.tracing import start_tracing
from starter import execute
from temporal_ops import connect_temporal
from tests.support import add_customer, running_worker

PERIOD = "2026-11"
# Turns the interceptor on; the spans go to memory, not to this address.
COLLECTOR = "http://127.0.0.1:4318"


@pytest.fixture(scope="module")
def traces() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """The process's TracerProvider (there is one per process), exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = start_tracing(Settings(), "billing-test", exporter=exporter)
    assert provider is not None
    yield provider, exporter
    exporter.clear()


def spans_named(spans: list[ReadableSpan], name: str, workflow: str) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.name == name and s.attributes and s.attributes.get("temporalWorkflowID") == workflow
    ]


async def test_one_trace_from_bill_to_finalize(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    settings: Settings,
    traces: tuple[TracerProvider, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider, exporter = traces
    exporter.clear()
    traced = settings.model_copy(update={"otel_exporter_otlp_endpoint": COLLECTOR})
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    client = await connect_temporal(traced)  # the starter's and the worker's client alike
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_visa")
    async with running_worker(traced, client):
        assert await execute(["bill", PERIOD, "--wait"], traced, client) == 0
    [payment] = await Ledger(pool).period_payments(PERIOD)
    assert payment.status == PaymentStatus.SUCCEEDED
    assert provider.force_flush()
    spans = list(exporter.get_finished_spans())

    [bill] = [s for s in spans if s.name == "bill"]
    assert bill.parent is None
    trace_id = bill.context.trace_id
    payment_workflow = workflow_id(payment.id)
    steps = {
        step: spans_named(spans, f"RunActivity:{step}", payment_workflow)
        for step in ("authorize_unless_held", "capture", "finalize")
    }
    for step, found in steps.items():
        assert found, f"no span for {step}: {sorted({s.name for s in spans})}"
        assert {s.context.trace_id for s in found} == {trace_id}, step

    # Each Stripe request is a span of its own under the activity that sent it.
    stripe_spans = [s for s in spans if s.name.startswith("Stripe ")]
    by_key = {
        str(s.attributes.get("stripe.idempotency_key")): s for s in stripe_spans if s.attributes
    }
    authorize = by_key[f"pay_{payment.id}_auth_1"]
    capture = by_key[f"pay_{payment.id}_capture_1"]
    for request, step in ((authorize, "authorize_unless_held"), (capture, "capture")):
        assert request.context.trace_id == trace_id
        assert request.parent is not None
        assert request.parent.span_id == steps[step][0].context.span_id
        assert request.attributes is not None
        assert request.attributes["http.response.status_code"] == 200
    assert authorize.name == "Stripe POST /v1/payment_intents"
    assert capture.name == "Stripe POST /v1/payment_intents/{id}/capture"

    # No span holds the key; a Stripe span holds these attributes only, never the body.
    secret = settings.resolved_stripe_key()
    for span in spans:
        assert secret not in repr(dict(span.attributes or {})), span.name
    allowed = {
        "http.request.method",
        "url.path",
        "stripe.idempotency_key",
        "http.response.status_code",
        "stripe.request_id",
    }
    for span in stripe_spans:
        assert set(span.attributes or {}) <= allowed, span.name
