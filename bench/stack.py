"""The benchmark's own embedded stack: PostgreSQL and the persistent Temporal dev server in a
temporary folder on free ports (never the repo's `.data/`), and one Stripe sandbox process
per run so that its counters and rate-limit buckets start fresh."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from local_stack.postgres import EmbeddedPostgres
from local_stack.temporal import EmbeddedTemporal

SANDBOX_START_TIMEOUT_S = 30.0
SANDBOX_STOP_TIMEOUT_S = 10.0


class BenchStack:
    """PostgreSQL and Temporal under one temporary folder; `close()` stops both and removes it."""

    def __init__(self, temporal_args: tuple[str, ...] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="billing-bench-"))
        self.postgres = EmbeddedPostgres(self.root / "postgres")
        self.temporal = EmbeddedTemporal(self.root / "temporal", extra_args=temporal_args)

    def start(self) -> None:
        self.postgres.start()
        self.temporal.start()

    def close(self) -> None:
        try:
            self.temporal.stop()
        finally:
            try:
                self.postgres.stop()
            finally:
                shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self, name: str) -> str:
        self.postgres.ensure_database(name)
        return self.postgres.url(name)


@dataclass
class SandboxProcess:
    """A `python -m stripe_sandbox` child process and its control API."""

    process: asyncio.subprocess.Process
    url: str
    log_path: Path

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, f"{self.url}/_sandbox/{path}", json=body) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def configure(self, **settings: Any) -> None:
        await self.control("POST", "config", settings)

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.control("GET", "stats")
        return stats


@asynccontextmanager
async def sandbox_process(log_dir: Path, name: str) -> AsyncIterator[SandboxProcess]:
    """A sandbox on a free loopback port, with latency and rate limits off until configured.

    Its per-request log (stderr) goes to a file: the benchmark reads each payment's first
    authorization request from it."""
    log_path = log_dir / f"sandbox-{name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "stripe_sandbox", "--port", "0", "--mode", "live", "--no-rate-limits"),
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), SANDBOX_START_TIMEOUT_S)).decode()
        if "listening on " not in line:
            raise RuntimeError(f"the sandbox did not start: {line!r}; see {log_path}")
        url = line.split("listening on ")[1].split()[0]
        yield SandboxProcess(process, url, log_path)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), SANDBOX_STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
