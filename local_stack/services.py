"""The whole embedded stack of `make up`: PostgreSQL, Temporal, the Stripe sandbox and a worker.

Each service runs only where its setting is unset (DATABASE_URL, Temporal's envconfig address,
STRIPE_API_KEY); the worker always runs. With BILLING_CODEC_KEYS set, the codec server runs
too, and the dev server's Web UI decodes payloads through it.

The Stripe webhook receiver (`python -m billing.webhooks`) runs in two cases:
- on the embedded sandbox without STRIPE_WEBHOOK_SECRET, `up` registers the receiver's URL
  in the sandbox (every event type) and hands the signing secret it gets back to the
  receiver's environment only: it is never printed, logged or written to a file. The
  endpoint's id (not its secret) is kept in `webhook-endpoint`, so that `up` again keeps a
  running receiver whose endpoint is still the only one at its URL; otherwise it deletes the
  endpoints at that URL, registers a new one and restarts the receiver with its secret;
- with STRIPE_WEBHOOK_SECRET set, the receiver runs with it, and registering the endpoint is
  the operator's (docs/operations.md). With STRIPE_API_KEY and no secret, no receiver runs.

State, pids and logs live under `settings.data_dir`.
"""

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import stripe
from temporalio.envconfig import ClientConfigProfile

from billing.settings import Settings
from billing.stripe_client import (
    NoWebhookSecret,
    WebhookEndpoint,
    make_stripe_client,
    register_webhook_endpoint,
    webhook_endpoint_ids,
)
from local_stack.ports import LOOPBACK, port_accepts, wait_until_closed
from local_stack.postgres import EmbeddedPostgres
from local_stack.processes import BackgroundProcess, log_tail
from local_stack.temporal import EmbeddedTemporal

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKER_SCRIPT = PROJECT_ROOT / "worker.py"
LISTEN_TIMEOUT_S = 30.0
# The worker connects to Temporal and Postgres at start; if that fails it exits within this.
WORKER_SETTLE_S = 2.0
WORKER_STOP_TIMEOUT_S = 60.0
RECEIVER = "the Stripe webhook receiver"
SECRET_VARIABLE = "STRIPE_WEBHOOK_SECRET"


class StackError(RuntimeError):
    """A service of the embedded stack did not come up."""


@dataclass(frozen=True)
class ServiceState:
    name: str
    state: str  # "running", "stopped" or "external"
    detail: str

    def line(self) -> str:
        return f"{self.name:<15} {self.state:<8} {self.detail}"


def temporal_is_external() -> bool:
    """True when Temporal's own configuration (TEMPORAL_ADDRESS or a profile) names a server."""
    return bool(ClientConfigProfile.load().address)


class EmbeddedStack:
    """The services of `make up`, built from the same settings the worker and starter read."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        data_dir = settings.data_dir.absolute()
        self.data_dir = data_dir
        self.postgres = EmbeddedPostgres(data_dir / "postgres", settings.embedded_postgres_port)
        self.encrypting = bool(settings.codec_keys())
        self.temporal = EmbeddedTemporal(
            data_dir / "temporal",
            settings.embedded_temporal_port,
            settings.embedded_temporal_ui_port,
            run_dir=data_dir,
            extra_args=(
                ("--ui-codec-endpoint", settings.codec_server_url()) if self.encrypting else ()
            ),
        )
        python_env = {"PYTHONUNBUFFERED": "1"}
        self.codec_server = BackgroundProcess(
            "codec-server",
            [sys.executable, "-m", "billing.codec_server"],
            data_dir,
            env=python_env,
            cwd=Path.cwd(),
        )
        self.sandbox = BackgroundProcess(
            "stripe-sandbox",
            [sys.executable, "-m", "stripe_sandbox", "--port", str(settings.sandbox_port)],
            data_dir,
            env=python_env,
            cwd=Path.cwd(),
        )
        # Registering the endpoint is ours on the embedded sandbox, else the operator's.
        self.registering = settings.stripe_webhook_secret is None and not self.stripe_external
        self.receiving = settings.stripe_webhook_secret is not None or self.registering
        self.endpoint_file = data_dir / "webhook-endpoint"
        self.webhooks = BackgroundProcess(
            "webhooks",
            [sys.executable, "-m", "billing.webhooks"],
            data_dir,
            env=python_env,
            cwd=Path.cwd(),
        )
        self.worker = BackgroundProcess(
            "worker", [sys.executable, str(WORKER_SCRIPT)], data_dir, env=python_env, cwd=Path.cwd()
        )

    @property
    def postgres_external(self) -> bool:
        return self.settings.database_url is not None

    @property
    def temporal_external(self) -> bool:
        return temporal_is_external()

    @property
    def stripe_external(self) -> bool:
        return self.settings.stripe_api_key is not None

    def up(self, report: Callable[[str], None] = print) -> None:
        """Start whatever is not running yet, wait for each, and report one line per service."""
        if not self.postgres_external:
            self.postgres.start()
        if self.encrypting:
            self._start_listening(
                self.codec_server, self.settings.codec_server_port, "the codec server"
            )
        if not self.temporal_external:
            self.temporal.start()
        if not self.stripe_external:
            self._start_listening(self.sandbox, self.settings.sandbox_port, "the Stripe sandbox")
        self._start_worker()
        if self.registering:
            self._start_receiver_of_sandbox()
        elif self.receiving:
            self._start_listening(self.webhooks, self.settings.webhook_port, RECEIVER)
        for state in self.status():
            report(state.line())
        if not self.temporal_external:
            report(f"Temporal Web UI: {self.temporal.ui_url}")
        if self.encrypting:
            report(f"payloads encrypted; codec server {self.settings.codec_server_url()}")
        if self.receiving:
            report(f"Stripe webhooks received at {self.settings.webhook_url()}")

    def down(self, report: Callable[[str], None] = print) -> None:
        """Stop the worker first (gracefully), then the services it used. Idempotent."""
        steps: list[tuple[str, bool, Callable[[], None]]] = [
            ("worker", self.worker.is_alive(), lambda: self.worker.stop(WORKER_STOP_TIMEOUT_S)),
            ("webhooks", self.webhooks.is_alive(), self.webhooks.stop),
            ("stripe-sandbox", self.sandbox.is_alive(), self._stop_sandbox),
            ("temporal", self.temporal.is_running(), self.temporal.stop),
            ("codec-server", self.codec_server.is_alive(), self.codec_server.stop),
            ("postgres", self.postgres.is_running(), self.postgres.stop),
        ]
        for name, running, stop in steps:
            stop()
            report(f"{name:<15} {'stopped' if running else 'was not running'}")
        self.endpoint_file.unlink(missing_ok=True)  # the sandbox forgot its endpoints

    def status(self) -> list[ServiceState]:
        states = [
            self._postgres_state(),
            self._temporal_state(),
            self._sandbox_state(),
            self._worker_state(),
        ]
        if self.encrypting or self.codec_server.is_alive():
            states.append(self._codec_server_state())
        if self.receiving or self.webhooks.is_alive():
            states.append(self._webhooks_state())
        return states

    def _start_listening(self, process: BackgroundProcess, port: int, what: str) -> None:
        """Start `process` unless it runs, and wait until it listens on `port`."""
        if not process.is_alive() and port_accepts(port):
            raise StackError(f"port {port} for {what} is taken by another process")
        process.start()
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while not port_accepts(port):
            if not process.is_alive():
                raise StackError(self._died(what, process))
            if time.monotonic() >= deadline:
                process.stop()
                raise StackError(
                    f"{what} did not listen on port {port} within "
                    f"{LISTEN_TIMEOUT_S:.0f}s; {process.log_path} ends with:\n"
                    f"{log_tail(process.log_path)}"
                )
            time.sleep(0.1)

    def _start_receiver_of_sandbox(self) -> None:
        """Keep the running receiver while its endpoint is the only one at its URL; else
        register a new endpoint (deleting the others there) and restart the receiver with the
        new secret, which goes into the receiver's environment and nowhere else."""
        url = self.settings.webhook_url()
        try:
            endpoint = asyncio.run(self._endpoint_to_start_with(url))
        except (stripe.StripeError, NoWebhookSecret) as err:
            raise StackError(f"could not register {url} in the Stripe sandbox: {err}") from err
        if endpoint is None:
            return
        self.endpoint_file.write_text(f"{endpoint.id}\n")
        self.webhooks.env[SECRET_VARIABLE] = endpoint.secret
        try:
            self._start_listening(self.webhooks, self.settings.webhook_port, RECEIVER)
        finally:
            del self.webhooks.env[SECRET_VARIABLE]

    async def _endpoint_to_start_with(self, url: str) -> WebhookEndpoint | None:
        """None while the running receiver's endpoint is the only one at `url`; else stop the
        receiver and register a new endpoint there."""
        client = make_stripe_client(self.settings)
        at_url = await webhook_endpoint_ids(client, url)
        if self.webhooks.is_alive() and at_url == [self._registered_endpoint()]:
            return None
        self.webhooks.stop()
        wait_until_closed(self.settings.webhook_port, timeout=10)
        if port_accepts(self.settings.webhook_port):
            raise StackError(f"port {self.settings.webhook_port} for {RECEIVER} is taken")
        return await register_webhook_endpoint(client, url)

    def _registered_endpoint(self) -> str | None:
        """The id of the endpoint `up` registered last, if any."""
        try:
            return self.endpoint_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _stop_sandbox(self) -> None:
        self.sandbox.stop()
        wait_until_closed(self.settings.sandbox_port, timeout=10)

    def _start_worker(self) -> None:
        if self.worker.is_alive():
            return
        if not WORKER_SCRIPT.exists():
            raise StackError(f"{WORKER_SCRIPT} is missing")
        self.worker.start()
        time.sleep(WORKER_SETTLE_S)
        if not self.worker.is_alive():
            raise StackError(self._died("the worker", self.worker))

    @staticmethod
    def _died(what: str, process: BackgroundProcess) -> str:
        tail = log_tail(process.log_path)
        return f"{what} exited during start; {process.log_path} ends with:\n{tail}"

    def _postgres_state(self) -> ServiceState:
        if self.postgres_external:
            return ServiceState("postgres", "external", "DATABASE_URL is set")
        if self.postgres.is_running():
            return ServiceState(
                "postgres", "running", f"{self.postgres.url()} (pid {self.postgres.pid})"
            )
        return ServiceState("postgres", "stopped", f"data in {self.postgres.pgdata}")

    def _temporal_state(self) -> ServiceState:
        if self.temporal_external:
            return ServiceState("temporal", "external", "address from Temporal's configuration")
        if self.temporal.is_running():
            detail = (
                f"{self.temporal.address}, Web UI {self.temporal.ui_url} (pid {self.temporal.pid})"
            )
            return ServiceState("temporal", "running", detail)
        return ServiceState("temporal", "stopped", f"data in {self.temporal.db_file}")

    def _sandbox_state(self) -> ServiceState:
        if self.stripe_external:
            return ServiceState("stripe-sandbox", "external", "STRIPE_API_KEY is set")
        if self.sandbox.is_alive():
            url = f"http://{LOOPBACK}:{self.settings.sandbox_port}"
            return ServiceState("stripe-sandbox", "running", f"{url} (pid {self.sandbox.pid})")
        return ServiceState("stripe-sandbox", "stopped", f"log in {self.sandbox.log_path}")

    def _codec_server_state(self) -> ServiceState:
        if self.codec_server.is_alive():
            detail = f"{self.settings.codec_server_url()} (pid {self.codec_server.pid})"
            return ServiceState("codec-server", "running", detail)
        return ServiceState("codec-server", "stopped", f"log in {self.codec_server.log_path}")

    def _webhooks_state(self) -> ServiceState:
        if self.webhooks.is_alive():
            endpoint = self._registered_endpoint() if self.registering else None
            registered = f", endpoint {endpoint} in the sandbox" if endpoint else ""
            detail = f"{self.settings.webhook_url()}{registered} (pid {self.webhooks.pid})"
            return ServiceState("webhooks", "running", detail)
        return ServiceState("webhooks", "stopped", f"log in {self.webhooks.log_path}")

    def _worker_state(self) -> ServiceState:
        if self.worker.is_alive():
            return ServiceState(
                "worker", "running", f"pid {self.worker.pid}, log in {self.worker.log_path}"
            )
        return ServiceState("worker", "stopped", f"log in {self.worker.log_path}")
