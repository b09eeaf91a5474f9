"""Helpers shared by the integration tests."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.client import Client

from billing.settings import Settings
from worker import run_worker


@asynccontextmanager
async def running_worker(settings: Settings, client: Client) -> AsyncIterator[None]:
    """The real worker (`worker.run_worker`) in this process, stopped gracefully at the end."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(stop, settings, client))
    try:
        yield
    finally:
        stop.set()
        await task
