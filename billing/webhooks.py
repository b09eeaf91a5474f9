"""`python -m billing.webhooks`: the receiver of Stripe's webhooks, on
`WEBHOOK_HOST:WEBHOOK_PORT` at `/stripe/webhooks`.

Each delivery is verified against `STRIPE_WEBHOOK_SECRET` (the `Stripe-Signature` header,
`stripe.Webhook.construct_event`, 300 s tolerance), stored once by its event id in
`stripe_events`, then handed to the payment it concerns: the `stripe_event` signal while the
payment's workflow runs, else a fact in the ledger's `payment_events`. Answers:
- 200 stored and handed on, or a duplicate, or a type not handled (stored, ignored);
- 400 a missing or wrong signature, a stale timestamp, a body that is not a Stripe event;
- 404 a handled event that concerns no payment of ours (nothing stored);
- 503 PostgreSQL or Temporal failed; what was stored is handed on when Stripe retries.
Errors use Stripe's shape, `{"error": {"type", "code", "message"}}`.
"""

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import stripe
from aiohttp import web
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.service import RPCError

from billing.ledger import migrate, open_pool
from billing.ledger_stripe_events import StripeEventLedger
from billing.logs import configure_logging
from billing.settings import WEBHOOK_PATH, Settings, describe_invalid
from billing.stripe_event_facts import StripeEventEnvelope, fact_of, payment_id_hint
from temporal_ops import connect_temporal, signal_stripe_event

log = logging.getLogger("billing.webhooks")
# Stripe's events are a few kB; this leaves room and refuses anything absurd.
MAX_BODY_BYTES = 1024 * 1024
EXIT_BAD_SETTING = 2
CONNECT_TIMEOUT_S = 15

# Runs after an event is stored and before it is handed on: a seam for tests that kill the
# receiver there. Production passes none.
AfterStore = Callable[[str], Awaitable[None]]


def _error(
    status: int, message: str, code: str, kind: str = "invalid_request_error"
) -> web.Response:
    return web.json_response(
        {"error": {"type": kind, "code": code, "message": message}}, status=status
    )


@dataclass(frozen=True)
class WebhookReceiver:
    """Verifies, stores and hands on one delivery at a time (many run at once)."""

    secret: str
    events: StripeEventLedger
    client: Client
    after_store: AfterStore | None = None

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = body.decode("utf-8")
            stripe.Webhook.construct_event(
                payload, request.headers.get("Stripe-Signature"), self.secret
            )
            event = StripeEventEnvelope.model_validate_json(payload)
        except stripe.SignatureVerificationError as err:
            return _error(400, f"Stripe-Signature verification failed: {err}", "signature_invalid")
        except (ValueError, AttributeError, TypeError) as err:  # not UTF-8, not JSON, no event
            return _error(
                400, f"the body is not a Stripe event: {_first_line(err)}", "body_invalid"
            )
        try:
            return await self._store_and_hand_on(event, payload)
        except (asyncpg.PostgresError, OSError, RPCError) as err:
            log.warning("stripe event %s %s not handed on yet: %s", event.id, event.type, err)
            return _error(
                503,
                f"event {event.id} could not be stored or handed on ({type(err).__name__}); "
                "a retry of the delivery finishes it",
                "service_unavailable",
                "api_error",
            )

    async def _store_and_hand_on(self, event: StripeEventEnvelope, payload: str) -> web.Response:
        payment_id = await self.events.payment_of(event, payment_id_hint(event))
        if payment_id is None and event.handled:
            return _error(
                404,
                f"event {event.id} ({event.type}) concerns no payment of ours: neither its "
                "metadata.payment_id nor its PaymentIntent is in the ledger",
                "resource_missing",
            )
        stored = await self.events.store(event, payload, payment_id)
        handed_to = stored.handed_to
        if handed_to is None:
            assert payment_id is not None  # a handled event is stored only with its payment
            if self.after_store is not None:
                await self.after_store(event.id)
            fact = fact_of(event)
            handed_to = await self.events.hand_off(
                payment_id, fact, lambda: signal_stripe_event(self.client, payment_id, fact)
            )
        log.info(
            "stripe event %s %s payment %s: %s%s",
            event.id,
            event.type,
            payment_id or "-",
            handed_to.value,
            "" if stored.new else " (a duplicate delivery)",
        )
        return web.json_response(
            {"received": event.id, "handed_to": handed_to.value, "duplicate": not stored.new}
        )


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def webhook_app(receiver: WebhookReceiver) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post(WEBHOOK_PATH, receiver.receive)
    return app


@asynccontextmanager
async def listening(app: web.Application, host: str, port: int) -> AsyncIterator[None]:
    """Serve `app` on host:port until the block ends; requests in flight then are cut off."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()


async def serve(settings: Settings, secret: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pool = await asyncio.wait_for(
        open_pool(settings.resolved_database_url(), max_size=4), CONNECT_TIMEOUT_S
    )
    try:
        await migrate(pool)
        client = await connect_temporal(settings)
        receiver = WebhookReceiver(secret, StripeEventLedger(pool), client)
        async with listening(webhook_app(receiver), settings.webhook_host, settings.webhook_port):
            log.info("Stripe webhook receiver on %s", settings.webhook_url())
            await stop.wait()
            log.info("shutting down")
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m billing.webhooks",
        description="Receive Stripe's webhooks: verify, store once, hand on to the payment.",
    ).parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as err:
        print(f"error: {describe_invalid(err)}", file=sys.stderr)
        return EXIT_BAD_SETTING
    if settings.stripe_webhook_secret is None:
        print(
            "error: STRIPE_WEBHOOK_SECRET is not set; register the endpoint with "
            "POST /v1/webhook_endpoints and set it to the whsec_… secret returned "
            "(docs/operations.md, Stripe webhooks)",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTING
    configure_logging(settings)
    try:
        asyncio.run(serve(settings, settings.stripe_webhook_secret.get_secret_value()))
    except (OSError, asyncpg.PostgresError, TimeoutError, RuntimeError) as err:
        # The port is taken, PostgreSQL or Temporal is out of reach.
        print(f"error: {_first_line(err)}", file=sys.stderr)
        return EXIT_BAD_SETTING
    return 0


if __name__ == "__main__":
    sys.exit(main())
