"""Traces: on when OTEL_EXPORTER_OTLP_ENDPOINT is set.

The worker and the starter each install a TracerProvider exporting to that collector (OTLP,
protobuf over HTTP; the exporter reads the standard OTEL_EXPORTER_OTLP_* variables itself).
Temporal's TracingInterceptor, on the client, carries the trace from `bill` through the
billing run and its `launch_page` activity into every payment's workflow and activities.
"""

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from temporalio.client import Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor

from billing.settings import Settings

# The project's own spans (`bill`, the Stripe requests); a no-op until a provider is installed.
tracer = trace.get_tracer("billing")


def start_tracing(
    settings: Settings, service: str, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install the process's TracerProvider when tracing is on; `exporter` replaces the OTLP
    one (tests). Spans still buffered are sent when the process exits."""
    if exporter is None:
        if settings.otel_exporter_otlp_endpoint is None:
            return None
        exporter = OTLPSpanExporter()
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.otel_service_name or service})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def tracing_interceptors(settings: Settings) -> list[Interceptor]:
    """Temporal's tracing interceptor when tracing is on. Given to the client, it also serves
    every worker built on that client."""
    if settings.otel_exporter_otlp_endpoint is None:
        return []
    return [TracingInterceptor()]
