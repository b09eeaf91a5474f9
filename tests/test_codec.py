"""Payload encryption against the real dev server, worker, PostgreSQL and sandbox: histories
hold only ciphertext, the codec server decrypts over HTTP for those allowed, replay works, and
a rotated key still reads old histories."""

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import SecretStr, ValidationError
from temporalio.api.common.v1 import Payload, Payloads, WorkflowExecution
from temporalio.api.history.v1 import History, MarkerRecordedEventAttributes
from temporalio.api.workflowservice.v1 import (
    DescribeScheduleRequest,
    GetWorkflowExecutionHistoryRequest,
)
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from billing.codec import (
    ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    UnknownCodecKey,
    data_converter,
    new_key_entry,
    parse_codec_keys,
)
from billing.constants import PaymentStatus, workflow_id
from billing.ledger import Ledger
from billing.models import PaymentResult
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from local_stack.ports import free_port, port_accepts
from local_stack.temporal import temporal_cli_path
from starter import execute
from temporal_ops import SCHEDULE_ID, connect_temporal, create_schedule, monthly_schedule
from tests.support import ROOT, add_customer, running_worker
from workflows.payment import PaymentWorkflow
from workflows.stripe_queues import StripeQueues

PERIOD = "2026-11"
K1 = new_key_entry("k1")
K2 = new_key_entry("k2")
TOKEN = "codec-test-token"
UI_ORIGIN = "http://127.0.0.1:8233"


# Written by the SDK's core, outside the codec: a patch marker's id and a local activity
# marker's bookkeeping (seq, attempt, activity type, times). The local activity's result is in
# the marker's "result", which is encrypted.
CORE_MARKER_DETAILS = {"patch-data", "data"}


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload the codec handles in a history: all but the search attributes, which the
    server indexes in clear by design, and the core's marker bookkeeping."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None or field.name == "search_attributes":
            continue
        if field.message_type.GetOptions().map_entry:
            values = [
                each
                for name, each in value.items()
                if not (
                    isinstance(message, MarkerRecordedEventAttributes)
                    and name in CORE_MARKER_DETAILS
                )
            ]
        elif isinstance(value, Message):
            values = [value]
        else:
            values = list(value)
        for each in values:
            if isinstance(each, Message):
                yield from payloads_in(each)


async def raw_history(client: Client, workflow: str) -> History:
    """The history as the server stores it, read through the service API: nothing decodes."""
    response = await client.workflow_service.get_workflow_execution_history(
        GetWorkflowExecutionHistoryRequest(
            namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow)
        )
    )
    assert not response.next_page_token
    return response.history


@asynccontextmanager
async def encrypting(
    settings: Settings, keys: str, monkeypatch: pytest.MonkeyPatch, env: WorkflowEnvironment
) -> AsyncIterator[tuple[Settings, Client]]:
    """Settings with BILLING_CODEC_KEYS, the client `connect_temporal` makes from them, and
    the real worker on that client."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", env.client.service_client.config.target_host)
    keyed = settings.model_copy(update={"billing_codec_keys": SecretStr(keys)})
    client = await connect_temporal(keyed)
    async with running_worker(keyed, client):
        yield keyed, client


async def bill(settings: Settings, client: Client, pool: asyncpg.Pool, period: str) -> list[str]:
    """Bill `period` and wait; returns the payments' workflow ids."""
    assert await execute(["bill", period, "--wait"], settings, client) == 0
    return [workflow_id(p.id) for p in await Ledger(pool).period_payments(period)]


async def customer_ids(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch("SELECT stripe_customer_id, payment_method_id FROM customers")
    return [value for row in rows for value in row.values()]


# ----- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("", "is empty"),
        ("k1:not*base64", "'k1' is not valid base64"),
        ("k1:" + "QUJD", "'k1' is 3 bytes, not 32"),
        ("no-colon", "entry 1 is not `id:<base64 key>`"),
        (f"{K1},{K1}", "names key id 'k1' twice"),
    ],
)
def test_a_malformed_key_list_fails_at_startup_saying_what_to_do(
    value: str, complaint: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(billing_codec_keys=SecretStr(value))
    assert complaint in str(raised.value)
    assert "input_value" not in str(raised.value)  # a key is never echoed

    server = subprocess.run(
        [sys.executable, "-m", "billing.codec_server"],
        cwd=ROOT,
        env={**os.environ, "BILLING_CODEC_KEYS": value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert server.returncode == 2
    [line] = server.stderr.splitlines()
    assert line.startswith("error: BILLING_CODEC_KEYS") and complaint in line


def test_new_key_makes_a_usable_entry() -> None:
    made = subprocess.run(
        [sys.executable, "-m", "billing.codec_server", "--new-key", "2026-11"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [key] = parse_codec_keys(made.stdout.strip())
    assert key.key_id == "2026-11" and len(key.secret) == 32


def test_without_keys_payloads_stay_plain() -> None:
    assert data_converter(Settings()) is pydantic_data_converter


def test_a_truncated_payload_is_refused_naming_its_key() -> None:
    [key] = parse_codec_keys(new_key_entry("k1"))
    codec = EncryptionCodec([key])
    whole = codec.encrypt(Payload(metadata={"encoding": b"json/plain"}, data=b'"cus_1"'))
    for cut in (5, 12, 20):
        truncated = Payload(metadata=whole.metadata, data=whole.data[:cut])
        with pytest.raises(UnknownCodecKey, match="'k1'"):
            codec.decrypt(truncated)


def test_an_empty_codec_server_token_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose passes CODEC_SERVER_TOKEN through empty when .env sets none."""
    monkeypatch.setenv("CODEC_SERVER_TOKEN", "")
    assert Settings().codec_server_token is None


# ----- at rest, replay, the codec server ----------------------------------------------------


async def test_payloads_are_encrypted_at_rest_and_replay_with_the_codec(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stripe = make_stripe_client(settings)
    await add_customer(Ledger(pool), stripe, "pm_card_visa")
    await add_customer(Ledger(pool), stripe, "pm_card_chargeDeclined")
    async with encrypting(settings, K1, monkeypatch, temporal_env) as (keyed, client):
        workflows = await bill(keyed, client, pool, PERIOD)
    statuses = {p.status for p in await Ledger(pool).period_payments(PERIOD)}
    assert statuses == {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}

    secrets = await customer_ids(pool)
    assert len(secrets) == 4
    for workflow in workflows:
        history = await raw_history(temporal_env.client, workflow)
        payloads = list(payloads_in(history))
        assert len(payloads) > 10
        assert {p.metadata["encoding"] for p in payloads} == {ENCODING}
        assert {p.metadata[KEY_ID_METADATA] for p in payloads} == {b"k1"}
        stored = history.SerializeToString()
        for secret in secrets:
            assert secret.encode() not in stored
        assert b"declined" not in stored  # the decline's failure message is encrypted too

        replayable = WorkflowHistory.from_json(workflow, json_format.MessageToJson(history))
        replayer = Replayer(
            workflows=[PaymentWorkflow],
            interceptors=[StripeQueues()],
            data_converter=data_converter(keyed),
        )
        await replayer.replay_workflow(replayable)


@asynccontextmanager
async def codec_server(keys: str, token: str | None) -> AsyncIterator[str]:
    """`python -m billing.codec_server` on a free port; yields its URL."""
    port = free_port()
    environ = {**os.environ, "BILLING_CODEC_KEYS": keys, "CODEC_SERVER_PORT": str(port)}
    environ.pop("CODEC_SERVER_TOKEN", None)
    if token is not None:
        environ["CODEC_SERVER_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "billing.codec_server", cwd=ROOT, env=environ
    )
    try:
        for _ in range(200):
            if port_accepts(port):
                break
            assert process.returncode is None, "the codec server exited during start"
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()


async def test_the_codec_server_decodes_for_the_ui_and_cli_with_the_token(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_visa")
    async with encrypting(settings, K1, monkeypatch, temporal_env) as (keyed, client):
        [workflow] = await bill(keyed, client, pool, PERIOD)
    stripe_customer, payment_method = await customer_ids(pool)
    history = await raw_history(temporal_env.client, workflow)
    started = history.events[0].workflow_execution_started_event_attributes.input
    body = json_format.MessageToJson(started)
    headers = {"Content-Type": "application/json", "X-Namespace": "default"}
    bearer = {**headers, "Authorization": f"Bearer {TOKEN}"}

    async with codec_server(K1, TOKEN) as url, aiohttp.ClientSession() as http:
        async with http.options(
            f"{url}/decode",
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
            },
        ) as preflight:
            assert preflight.status == 204
            assert preflight.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
            assert "X-Namespace" in preflight.headers["Access-Control-Allow-Headers"]
            assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        async with http.options(
            f"{url}/decode", headers={"Origin": "http://evil.example"}
        ) as foreign:
            assert "Access-Control-Allow-Origin" not in foreign.headers

        for refused in (headers, {**headers, "Authorization": "Bearer wrong"}):
            async with http.post(f"{url}/decode", data=body, headers=refused) as answer:
                assert answer.status == 401
                assert stripe_customer not in await answer.text()

        async with http.post(
            f"{url}/decode", data=body, headers={**bearer, "Origin": UI_ORIGIN}
        ) as answer:
            assert answer.status == 200
            assert answer.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
            decoded = json_format.Parse(await answer.text(), Payloads())
        [payment_input] = decoded.payloads
        assert payment_input.metadata["encoding"] == b"json/plain"
        assert stripe_customer.encode() in payment_input.data
        assert payment_method.encode() in payment_input.data

        async with http.post(f"{url}/encode", data=await answer.text(), headers=bearer) as again:
            assert again.status == 200
            [sealed] = json_format.Parse(await again.text(), Payloads()).payloads
            assert sealed.metadata["encoding"] == ENCODING

        # The Temporal CLI, through the same protocol, shows the history in clear.
        cli = await asyncio.create_subprocess_exec(
            temporal_cli_path(),
            *("workflow", "show", "--workflow-id", workflow, "--output", "json"),
            *("--address", temporal_env.client.service_client.config.target_host),
            *("--codec-endpoint", url, "--codec-auth", f"Bearer {TOKEN}"),
            stdout=asyncio.subprocess.PIPE,
        )
        shown, _ = await cli.communicate()
        assert cli.returncode == 0
        in_clear = list(payloads_in(json_format.Parse(shown, History())))
        assert ENCODING not in {p.metadata["encoding"] for p in in_clear}
        assert stripe_customer.encode() in b"".join(p.data for p in in_clear)


# ----- rotation -----------------------------------------------------------------------------


async def test_a_rotated_key_still_reads_old_histories(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stripe = make_stripe_client(settings)
    await add_customer(Ledger(pool), stripe, "pm_card_visa")
    async with encrypting(settings, K1, monkeypatch, temporal_env) as (keyed, client):
        [old] = await bill(keyed, client, pool, PERIOD)

    async with encrypting(settings, f"{K2},{K1}", monkeypatch, temporal_env) as (keyed, client):
        [new] = await bill(keyed, client, pool, "2026-12")
        old_result = await client.get_workflow_handle(old, result_type=PaymentResult).result()
        assert old_result.status == PaymentStatus.SUCCEEDED
        old_history = await client.get_workflow_handle(old).fetch_history()
        await Replayer(
            workflows=[PaymentWorkflow],
            interceptors=[StripeQueues()],
            data_converter=data_converter(keyed),
        ).replay_workflow(old_history)

    new_history = await raw_history(temporal_env.client, new)
    assert {p.metadata[KEY_ID_METADATA] for p in payloads_in(new_history)} == {b"k2"}
    old_payloads = list(payloads_in(await raw_history(temporal_env.client, old)))
    assert {p.metadata[KEY_ID_METADATA] for p in old_payloads} == {b"k1"}

    with pytest.raises(UnknownCodecKey, match=r"codec key id 'k1'.*holds k2"):
        await EncryptionCodec(parse_codec_keys(K2)).decode(old_payloads)
    only_k2 = settings.model_copy(update={"billing_codec_keys": SecretStr(K2)})
    client = await connect_temporal(only_k2)
    with pytest.raises(UnknownCodecKey, match="codec key id 'k1'"):
        await client.get_workflow_handle(old, result_type=PaymentResult).result()
    wrong_k1 = new_key_entry("k1")  # the right id, another secret
    with pytest.raises(UnknownCodecKey, match="does not decrypt with codec key id 'k1'"):
        await EncryptionCodec(parse_codec_keys(wrong_k1)).decode(old_payloads)


async def test_schedule_create_re_encrypts_the_schedule_under_the_new_key(
    temporal_env: WorkflowEnvironment,
    settings: Settings,
    no_schedule: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Schedule keeps its action's input as encrypted when it was created. Step 2 of a
    rotation re-runs `schedule create`, which must store it under the new key, or the
    Schedule's fires fail once the old key is dropped."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    k1, k2 = new_key_entry("k1"), new_key_entry("k2")
    for keys, expected in ((k1, b"k1"), (f"{k2},{k1}", b"k2")):
        keyed = settings.model_copy(update={"billing_codec_keys": SecretStr(keys)})
        client = await connect_temporal(keyed)
        await create_schedule(client, monthly_schedule(keyed, keyed.billing_policy()))
        described = await temporal_env.client.workflow_service.describe_schedule(
            DescribeScheduleRequest(
                namespace=temporal_env.client.namespace, schedule_id=SCHEDULE_ID
            )
        )
        [stored] = described.schedule.action.start_workflow.input.payloads
        assert stored.metadata["encoding"] == ENCODING
        assert stored.metadata[KEY_ID_METADATA] == expected
