"""The whole embedded stack of `make up`: PostgreSQL, Temporal, the Stripe sandbox and a worker.

Each service runs only where its setting is unset (DATABASE_URL, Temporal's envconfig address,
STRIPE_API_KEY); the worker always runs. With BILLING_CODEC_KEYS set, the codec server runs
too, and the dev server's Web UI decodes payloads through it. With STRIPE_WEBHOOK_SECRET set,
the Stripe webhook receiver runs (registering its endpoint at Stripe is left to the operator:
docs/operations.md). State, pids and logs live under `settings.data_dir`.
"""

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from temporalio.envconfig import ClientConfigProfile

from billing.settings import Settings
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
        self.receiving = settings.stripe_webhook_secret is not None
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
        if self.receiving:
            self._start_listening(
                self.webhooks, self.settings.webhook_port, "the Stripe webhook receiver"
            )
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
            detail = f"{self.settings.webhook_url()} (pid {self.webhooks.pid})"
            return ServiceState("webhooks", "running", detail)
        return ServiceState("webhooks", "stopped", f"log in {self.webhooks.log_path}")

    def _worker_state(self) -> ServiceState:
        if self.worker.is_alive():
            return ServiceState(
                "worker", "running", f"pid {self.worker.pid}, log in {self.worker.log_path}"
            )
        return ServiceState("worker", "stopped", f"log in {self.worker.log_path}")
