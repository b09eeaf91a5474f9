"""Fixtures for the sandbox contract tests: a fresh sandbox per test, and the real SDK on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import stripe

from stripe_sandbox import Sandbox

from .webhook_receiver import Receiver

API_KEY = "sk_test_sandbox"

SandboxFactory = Callable[..., Awaitable[Sandbox]]


def sdk_client(sandbox: Sandbox, api_key: str = API_KEY) -> stripe.StripeClient:
    return stripe.StripeClient(api_key, base_addresses={"api": sandbox.url})


@pytest.fixture
async def make_sandbox() -> AsyncIterator[SandboxFactory]:
    """Start sandboxes with custom settings; every one is stopped after the test."""
    started: list[Sandbox] = []

    async def make(**settings: Any) -> Sandbox:
        settings.setdefault("rate_limits", False)
        settings.setdefault("seed", 7)
        sandbox = Sandbox(**settings)
        await sandbox.start(port=0)
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        await sandbox.stop()


@pytest.fixture
async def sandbox(make_sandbox: SandboxFactory) -> Sandbox:
    return await make_sandbox()


@pytest.fixture
def client(sandbox: Sandbox) -> stripe.StripeClient:
    return sdk_client(sandbox)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(api_key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook endpoint on 127.0.0.1 that records every delivery."""
    started = Receiver()
    await started.start()
    yield started
    await started.stop()
