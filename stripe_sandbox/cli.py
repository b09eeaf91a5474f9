"""Command line: `python -m stripe_sandbox [--port 12111] [--mode live|test] ...`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from .faults import FaultRule
from .routes import ENDPOINTS
from .sandbox import Sandbox
from .webhook_faults import WebhookFaultRule
from .webhooks import WebhookSettings

FAULT_SYNTAX = """\
--fault KIND:ENDPOINT[:OPTION,OPTION...]  (repeatable)
  KIND      error_before | drop_after | error_after | latency
  ENDPOINT  e.g. payment_intents.capture, or * for any endpoint
  OPTIONS   nth=N        only the Nth matching request (1-based)
            p=F          with probability F in [0, 1]
            times=N      fire at most N times (default: unlimited)
            key=TEXT     only requests whose Idempotency-Key contains TEXT
            ms=N         extra latency for KIND latency
examples: drop_after:payment_intents.capture:p=0.1
          error_before:payment_intents.create:nth=3
          latency:*:ms=500,p=0.2

--webhook-fault KIND:EVENT_TYPE[:OPTION,OPTION...]  (repeatable)
  KIND        drop | duplicate | delay | reorder
  EVENT_TYPE  e.g. payment_intent.succeeded, or * for any event
  OPTIONS     nth=N, p=F, times=N as above
              ms=N         the delay of KIND delay
              hold=N       how many deliveries KIND reorder holds before sending them
                           newest first (default 2)
examples: drop:payment_intent.amount_capturable_updated:nth=1
          delay:*:ms=2000,p=0.5
          reorder:*:hold=3,times=3"""


def parse_fault(spec: str) -> FaultRule:
    """Parse the --fault syntax above into a FaultRule (ValueError when malformed)."""
    parts = spec.split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"fault {spec!r}: expected KIND:ENDPOINT[:OPTIONS]")
    kind, endpoint = parts[0], parts[1]
    if endpoint not in ("*", "") and endpoint not in ENDPOINTS:
        raise ValueError(f"fault {spec!r}: unknown endpoint; one of {sorted(ENDPOINTS)}")
    options: dict[str, str] = {}
    if len(parts) == 3 and parts[2]:
        for option in parts[2].split(","):
            name, eq, value = option.partition("=")
            if not eq or name not in ("nth", "p", "times", "key", "ms"):
                raise ValueError(f"fault {spec!r}: bad option {option!r}")
            options[name] = value
    return FaultRule(
        kind=kind,  # type: ignore[arg-type]  # validated by FaultRule itself
        endpoint=None if endpoint in ("*", "") else endpoint,
        nth=int(options["nth"]) if "nth" in options else None,
        probability=float(options["p"]) if "p" in options else None,
        times=int(options["times"]) if "times" in options else None,
        key_contains=options.get("key"),
        latency_ms=int(options.get("ms", "0")),
    )


def parse_webhook_fault(spec: str) -> WebhookFaultRule:
    """Parse the --webhook-fault syntax above (ValueError when malformed)."""
    parts = spec.split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"webhook fault {spec!r}: expected KIND:EVENT_TYPE[:OPTIONS]")
    kind, event_type = parts[0], parts[1]
    options: dict[str, str] = {}
    if len(parts) == 3 and parts[2]:
        for option in parts[2].split(","):
            name, eq, value = option.partition("=")
            if not eq or name not in ("nth", "p", "times", "ms", "hold"):
                raise ValueError(f"webhook fault {spec!r}: bad option {option!r}")
            options[name] = value
    return WebhookFaultRule(
        kind=kind,  # type: ignore[arg-type]  # validated by WebhookFaultRule itself
        event_type=None if event_type in ("*", "") else event_type,
        nth=int(options["nth"]) if "nth" in options else None,
        probability=float(options["p"]) if "p" in options else None,
        times=int(options["times"]) if "times" in options else None,
        delay_ms=int(options.get("ms", "0")),
        hold=int(options.get("hold", "2")),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stripe_sandbox",
        description="A stateful fake of Stripe's API, on 127.0.0.1 only.",
        epilog=FAULT_SYNTAX,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=12111, help="0 picks a free port")
    parser.add_argument("--mode", choices=("test", "live"), default="test")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--jitter-ms", type=int, default=0)
    parser.add_argument("--no-rate-limits", action="store_true")
    parser.add_argument("--search-lag-seconds", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None, help="for reproducible ids/faults")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC")
    parser.add_argument("--webhook-fault", action="append", default=[], metavar="SPEC")
    defaults = WebhookSettings()
    parser.add_argument(
        "--webhook-retry-base-ms",
        type=int,
        default=defaults.retry_base_ms,
        help="wait before the first retry of a failed webhook delivery; doubles each time",
    )
    parser.add_argument(
        "--webhook-max-attempts",
        type=int,
        default=defaults.max_attempts,
        help="attempts per webhook delivery before it is given up",
    )
    parser.add_argument(
        "--webhook-timeout-ms",
        type=int,
        default=defaults.timeout_ms,
        help="how long one webhook attempt may take",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    return parser


async def serve(
    args: argparse.Namespace,
    faults: list[FaultRule],
    webhook_faults: list[WebhookFaultRule],
    webhook_settings: WebhookSettings,
) -> None:
    sandbox = Sandbox(
        mode=args.mode,
        rate_limits=not args.no_rate_limits,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        search_lag_seconds=args.search_lag_seconds,
        seed=args.seed,
        webhook_settings=webhook_settings,
    )
    for rule in faults:
        sandbox.add_fault(rule)
    for webhook_rule in webhook_faults:
        sandbox.webhooks.add_fault(webhook_rule)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sandbox.start(port=args.port)
    limits = "on" if sandbox.rate_limits else "off"
    print(
        f"stripe sandbox listening on {sandbox.url} (mode={args.mode}, rate limits {limits})",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await sandbox.stop()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        faults = [parse_fault(spec) for spec in args.fault]
        webhook_faults = [parse_webhook_fault(spec) for spec in args.webhook_fault]
        webhook_settings = WebhookSettings(
            retry_base_ms=args.webhook_retry_base_ms,
            max_attempts=args.webhook_max_attempts,
            timeout_ms=args.webhook_timeout_ms,
        )
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args, faults, webhook_faults, webhook_settings))
    return 0
