"""The billing metrics in one place: names, labels and buckets, and the Temporal runtime that
serves them, with the SDK's own, at `/metrics` for Prometheus.

They are recorded through the SDK's metric meters: `workflow.metric_meter()` in the payment
workflow, which records nothing while a history is replayed, and `activity.metric_meter()`
where the Stripe requests are sent. Labels take a few fixed values each, never an id.
Durations are in milliseconds, like the SDK's own latencies.
"""

import logging
from datetime import timedelta
from enum import StrEnum

from temporalio import activity
from temporalio.common import MetricMeter
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from billing.settings import Settings

PAYMENTS_ENDED = "billing_payments_ended"
STRIPE_REQUESTS = "billing_stripe_requests"
STRIPE_LATENCY = "billing_stripe_request_latency"
WAITS_STARTED = "billing_waits_started"
WAIT_DURATION = "billing_wait_duration"

# Histogram buckets in milliseconds. The SDK matches an override to every histogram whose name
# begins with its key, so no name above may begin with another's.
STRIPE_LATENCY_BUCKETS_MS = [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000]
WAIT_BUCKETS = [
    timedelta(seconds=1),
    timedelta(seconds=10),
    timedelta(minutes=1),
    timedelta(minutes=10),
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(days=1),
    timedelta(days=2),
    timedelta(days=3),
    timedelta(days=4),
    timedelta(days=5),
    timedelta(days=7),
]
DURATION = "duration"  # the SDK's unit for a timedelta histogram, exported in ms


class Wait(StrEnum):
    """The durable waits of a payment, as the `wait` label names them."""

    CAPTURE_WINDOW = "capture_window"
    DUNNING = "dunning"
    AUTHENTICATION = "authentication"


class MetricsUnavailable(Exception):
    """The metrics endpoint cannot listen, e.g. its port is taken."""


def worker_runtime(settings: Settings) -> Runtime:
    """The Temporal runtime the worker's client connects with. The SDK core's own log lines
    (poll and connection warnings) go through Python's logging as `temporalio.core`, so
    LOG_FORMAT and LOG_LEVEL apply to them too. Prometheus metrics are served at
    METRICS_HOST:METRICS_PORT, unless METRICS_PORT is 0."""
    core_logs = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )
    address = settings.metrics_address()
    if address is None:
        return Runtime(telemetry=TelemetryConfig(logging=core_logs))
    buckets = {
        STRIPE_LATENCY: [float(ms) for ms in STRIPE_LATENCY_BUCKETS_MS],
        WAIT_DURATION: [wait.total_seconds() * 1000 for wait in WAIT_BUCKETS],
    }
    config = PrometheusConfig(bind_address=address, histogram_bucket_overrides=buckets)
    try:
        return Runtime(telemetry=TelemetryConfig(logging=core_logs, metrics=config))
    except ValueError as err:
        reason = str(err).removeprefix("Failed starting Prometheus exporter: ")
        raise MetricsUnavailable(
            f"METRICS_PORT: cannot serve metrics on {address}: {reason}; "
            "set METRICS_PORT to a free port, or to 0 to turn metrics off"
        ) from err


def payment_ended(meter: MetricMeter, status: str, currency: str) -> None:
    meter.create_counter(
        PAYMENTS_ENDED, "Payments whose workflow ended, by final status and currency."
    ).add(1, {"status": str(status), "currency": currency})


def wait_started(meter: MetricMeter, wait: Wait) -> None:
    meter.create_counter(
        WAITS_STARTED, "Capture windows and dunning waits that began, by wait."
    ).add(1, {"wait": str(wait)})


def wait_ended(meter: MetricMeter, wait: Wait, waited: timedelta) -> None:
    """A wait that ended: its timer ran out, or a cancel or a new card cut it short."""
    meter.create_histogram_timedelta(
        WAIT_DURATION, "How long capture windows and dunning waits lasted, by wait.", DURATION
    ).record(waited, {"wait": str(wait)})


def stripe_request(endpoint: str, outcome: str, latency: timedelta) -> None:
    """One Stripe request sent from an activity; the CLI's requests are not counted."""
    if not activity.in_activity():
        return
    meter = activity.metric_meter()
    meter.create_counter(STRIPE_REQUESTS, "Stripe requests, by endpoint and outcome.").add(
        1, {"endpoint": endpoint, "outcome": outcome}
    )
    meter.create_histogram_timedelta(
        STRIPE_LATENCY, "Time to Stripe's answer (or the error), by endpoint.", DURATION
    ).record(latency, {"endpoint": endpoint})
