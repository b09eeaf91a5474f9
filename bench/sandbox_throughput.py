"""Requests/s of the Stripe sandbox with latency and rate limits off.

The sandbox runs as `python -m stripe_sandbox` in a child process pinned to one CPU core; this
process (pinned to another core when there is one) drives it over HTTP on 127.0.0.1 with
aiohttp and a bounded number of concurrent connections. Each simulated payment is four API
requests as the billing core makes them: create-and-authorize under an idempotency key, its
replay, capture under a key, and retrieve. The run stops after --requests requests or
--seconds seconds, whichever comes first.

It prints two figures: requests per wall-clock second, and requests per CPU-second the
sandbox process used. The second is what one fully available core sustains; it does not
depend on other load on the machine, which the first does.

    python -m bench.sandbox_throughput [--requests 20000] [--seconds 30] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass

import aiohttp
import psutil

HEADERS = {"Authorization": "Bearer sk_test_bench"}


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0


async def _start_sandbox() -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stripe_sandbox",
        "--port",
        "0",
        "--no-rate-limits",
        "--quiet",
        stdout=asyncio.subprocess.PIPE,
    )
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(process.pid, {0})
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    url = line.split("listening on ")[1].split()[0]
    return process, url


async def _payment(
    session: aiohttp.ClientSession, url: str, n: int, worker: int, tally: Tally
) -> None:
    key = f"bench_{worker}_{n}"
    form = {
        "amount": "2000",
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "off_session": "true",
        "capture_method": "manual",
        "metadata[payment_id]": key,
    }
    create_headers = {**HEADERS, "Idempotency-Key": key + "_auth"}
    intent_id = ""
    for _ in range(2):  # the second is an idempotent replay
        async with session.post(
            f"{url}/v1/payment_intents", data=form, headers=create_headers
        ) as response:
            body = await response.json()
            intent_id = body["id"]
            tally.errors += response.status != 200
    capture_headers = {**HEADERS, "Idempotency-Key": key + "_capture"}
    async with session.post(
        f"{url}/v1/payment_intents/{intent_id}/capture", headers=capture_headers
    ) as response:
        await response.read()
        tally.errors += response.status != 200
    async with session.get(f"{url}/v1/payment_intents/{intent_id}", headers=HEADERS) as response:
        await response.read()
        tally.errors += response.status != 200
    tally.requests += 4


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    worker: int,
    tally: Tally,
    budget: int,
    deadline: float,
) -> None:
    n = 0
    while tally.requests < budget and time.perf_counter() < deadline:
        await _payment(session, url, n, worker, tally)
        n += 1


async def run(requests: int, seconds: float, concurrency: int) -> float:
    process, url = await _start_sandbox()
    server = psutil.Process(process.pid)
    tally = Tally()
    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await _payment(session, url, -1, -1, Tally())  # warm up
            cpu_before = sum(server.cpu_times()[:2])
            started = time.perf_counter()
            deadline = started + seconds
            await asyncio.gather(
                *[
                    _worker(session, url, worker, tally, requests, deadline)
                    for worker in range(concurrency)
                ]
            )
            elapsed = time.perf_counter() - started
            server_cpu = sum(server.cpu_times()[:2]) - cpu_before
    finally:
        process.terminate()
        await process.wait()
    rate = tally.requests / elapsed
    per_cpu_second = tally.requests / server_cpu
    print(
        f"stripe sandbox: {tally.requests} requests in {elapsed:.2f} s = {rate:,.0f} requests/s "
        f"wall clock (server pinned to 1 core, {concurrency} connections, "
        f"{tally.errors} non-200 answers)\n"
        f"server CPU: {server_cpu:.2f} s = {per_cpu_second:,.0f} requests per CPU-second "
        f"({100 * server_cpu / elapsed:.0f}% of its core busy)"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.seconds, args.concurrency))


if __name__ == "__main__":
    main()
