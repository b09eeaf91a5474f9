"""A webhook endpoint for the tests: an HTTP server on 127.0.0.1 that records what it gets."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Delivery:
    payload: str
    signature: str
    headers: dict[str, str]

    @property
    def event(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.payload)
        return loaded

    @property
    def type(self) -> str:
        return str(self.event["type"])


@dataclass
class Receiver:
    """Answers each POST with the next of `answers` (200 once they run out); `gate`, when
    set, is awaited before answering."""

    answers: list[int] = field(default_factory=list)
    gate: asyncio.Event | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.ServerRunner | None = None
    _port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/webhooks"

    async def start(self) -> None:
        runner = web.ServerRunner(web.Server(self._handle), shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        payload = await request.text()
        async with self._arrived:
            self.deliveries.append(
                Delivery(
                    payload, request.headers.get("Stripe-Signature", ""), dict(request.headers)
                )
            )
            self._arrived.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        status = self.answers.pop(0) if self.answers else 200
        return web.Response(status=status, text="ok")

    async def wait_for(self, count: int) -> list[Delivery]:
        """The first `count` deliveries, once they have arrived (5 s at most)."""
        async with asyncio.timeout(5), self._arrived:
            await self._arrived.wait_for(lambda: len(self.deliveries) >= count)
        return self.deliveries[:count]

    def types(self) -> list[str]:
        return [delivery.type for delivery in self.deliveries]
