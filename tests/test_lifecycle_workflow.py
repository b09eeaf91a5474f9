"""The payment lifecycle with stub activities on the time-skipping server: windows, cancels,
dunning over days, expiry and lost answers."""

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from billing.constants import CancelOutcome, ErrorType, PaymentStatus, workflow_id
from billing.models import (
    Authorization,
    AuthorizeInput,
    BeginAttemptInput,
    BillingPolicy,
    Capture,
    CaptureInput,
    PaymentInput,
    PaymentMethodUpdate,
    PaymentResult,
    PaymentState,
    PeriodIntents,
    RecordAttentionInput,
    RecordAuthorizationInput,
    RecordCancellationInput,
    VoidInput,
)
from tests.stubs import StubActivities, business_error, declined, payment_input
from worker import WORKFLOW_RUNNER
from workflows.payment import MAX_RESENDS, PaymentWorkflow

DUNNING = (timedelta(days=1), timedelta(days=3), timedelta(days=5))
WAIT = 30  # seconds, for a stub activity to be reached


@pytest.fixture
def env(time_skipping_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return time_skipping_env


async def start(
    env: WorkflowEnvironment,
    task_queue: str,
    payment: PaymentInput,
    start_signal: str | None = None,
) -> WorkflowHandle[PaymentWorkflow, PaymentResult]:
    return await env.client.start_workflow(
        PaymentWorkflow.run,
        payment,
        id=workflow_id(payment.payment_id),
        task_queue=task_queue,
        start_signal=start_signal,
    )


def worker(env: WorkflowEnvironment, task_queue: str, stubs: StubActivities) -> Worker:
    return Worker(
        env.client,
        task_queue=task_queue,
        workflows=[PaymentWorkflow],
        activities=stubs.all(),
        workflow_runner=WORKFLOW_RUNNER,
    )


async def reached(stubs: StubActivities, name: str) -> None:
    await asyncio.wait_for(stubs.reached(name).wait(), timeout=WAIT)


async def cancel(handle: WorkflowHandle[PaymentWorkflow, PaymentResult]) -> CancelOutcome:
    outcome = await handle.execute_update("cancel_payment", result_type=CancelOutcome)
    return CancelOutcome(outcome)


async def test_capture_waits_for_the_window(env: WorkflowEnvironment, task_queue: str) -> None:
    stubs = StubActivities()
    payment = payment_input(BillingPolicy(capture_delay=timedelta(hours=2)))
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert result.status == PaymentStatus.SUCCEEDED
    [authorized_at] = stubs.when("record_authorization")
    [captured_at] = stubs.when("capture")
    assert captured_at - authorized_at >= timedelta(hours=2)


async def test_cancel_in_the_window_voids_the_authorization(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities()
    payment = payment_input(BillingPolicy(capture_delay=timedelta(hours=2)))
    async with worker(env, task_queue, stubs):
        handle = await start(env, task_queue, payment)
        await reached(stubs, "record_authorization")
        assert await cancel(handle) == CancelOutcome.CANCELLED
        result = await handle.result()
    assert result.status == PaymentStatus.CANCELLED
    assert "capture" not in stubs.names()
    assert stubs.keys("void") == [
        f"pay_{payment.payment_id}_void_pi_pay_{payment.payment_id}_auth_1"
    ]
    [cancellation] = stubs.inputs("record_cancellation")
    assert isinstance(cancellation, RecordCancellationInput)
    assert cancellation.intent_id == f"pi_pay_{payment.payment_id}_auth_1"


async def test_a_second_cancel_is_already_cancelled(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities()
    payment = payment_input(BillingPolicy(capture_delay=timedelta(hours=2)))
    async with worker(env, task_queue, stubs):
        handle = await start(env, task_queue, payment)
        await reached(stubs, "record_authorization")
        await handle.signal(PaymentWorkflow.cancel)
        assert await cancel(handle) == CancelOutcome.ALREADY_CANCELLED
        assert (await handle.result()).status == PaymentStatus.CANCELLED
    assert len(stubs.inputs("void")) == 1


async def test_cancel_before_authorization_never_touches_stripe(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities()
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        handle = await start(env, task_queue, payment, start_signal="cancel")
        result = await handle.result()
    assert result.status == PaymentStatus.CANCELLED
    assert stubs.names() == ["read_payment", "find_period_intents", "record_cancellation"]


async def test_cancel_after_capture_began_changes_nothing(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    gate = asyncio.Event()
    stubs = StubActivities(capture_gate=gate)
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        handle = await start(env, task_queue, payment)
        await reached(stubs, "capture")
        outcome = asyncio.create_task(cancel(handle))
        await asyncio.sleep(0.5)
        gate.set()
        assert await outcome == CancelOutcome.ALREADY_CAPTURED
        assert (await handle.result()).status == PaymentStatus.SUCCEEDED
    assert "void" not in stubs.names()
    assert "record_cancellation" not in stubs.names()


async def test_soft_declines_are_retried_on_the_dunning_schedule(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(
        authorize_errors=[declined("insufficient_funds"), declined("insufficient_funds"), None]
    )
    payment = payment_input(BillingPolicy(dunning_schedule=DUNNING))
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()

    assert result.status == PaymentStatus.SUCCEEDED
    prefix = f"pay_{payment.payment_id}"
    assert stubs.keys("authorize") == [f"{prefix}_auth_1", f"{prefix}_auth_2", f"{prefix}_auth_3"]
    assert stubs.keys("capture") == [f"{prefix}_capture_3"]
    assert len(stubs.inputs("record_decline")) == 2
    attempts = stubs.inputs("begin_attempt")
    assert [(a.generation, a.reason) for a in attempts if isinstance(a, BeginAttemptInput)] == [
        (2, "dunning"),
        (3, "dunning"),
    ]
    # converged before the first key and before each new one
    assert len(stubs.inputs("find_period_intents")) == 3
    first, second, third = stubs.when("authorize")
    assert timedelta(days=1) <= second - first < timedelta(days=2)
    assert timedelta(days=3) <= third - first < timedelta(days=4)


async def test_dunning_that_runs_out_fails_with_the_decline_code(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(authorize_errors=[declined("insufficient_funds")] * 4)
    payment = payment_input(BillingPolicy(dunning_schedule=DUNNING))
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert result.status == PaymentStatus.FAILED
    assert result.failure_code == "insufficient_funds"
    assert len(stubs.inputs("authorize")) == 4
    assert stubs.names()[-1] == "record_failure"


@pytest.mark.parametrize("code", ["stolen_card", "lost_card", "authentication_required"])
async def test_hard_declines_fail_at_once(
    env: WorkflowEnvironment, task_queue: str, code: str
) -> None:
    stubs = StubActivities(authorize_errors=[declined(code)])
    payment = payment_input(BillingPolicy(dunning_schedule=DUNNING))
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert (result.status, result.failure_code) == (PaymentStatus.FAILED, code)
    assert stubs.names() == ["read_payment", "find_period_intents", "authorize", "record_failure"]


async def test_a_new_payment_method_is_tried_at_once(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(authorize_errors=[declined("insufficient_funds"), None])
    payment = payment_input(BillingPolicy(dunning_schedule=DUNNING))
    async with worker(env, task_queue, stubs):
        handle = await start(env, task_queue, payment)
        await reached(stubs, "record_decline")
        await handle.signal(
            PaymentWorkflow.payment_method_updated, PaymentMethodUpdate(payment_method_id="pm_new")
        )
        result = await handle.result()
    assert result.status == PaymentStatus.SUCCEEDED
    _, second = stubs.inputs("authorize")
    assert isinstance(second, AuthorizeInput) and second.payment_method_id == "pm_new"
    [attempt] = stubs.inputs("begin_attempt")
    assert isinstance(attempt, BeginAttemptInput) and attempt.reason == "payment_method_updated"
    before, after = stubs.when("authorize")
    assert after - before < timedelta(days=1)


async def test_cancel_while_waiting_to_retry(env: WorkflowEnvironment, task_queue: str) -> None:
    stubs = StubActivities(authorize_errors=[declined("insufficient_funds")])
    payment = payment_input(BillingPolicy(dunning_schedule=DUNNING))
    async with worker(env, task_queue, stubs):
        handle = await start(env, task_queue, payment)
        await reached(stubs, "record_decline")
        assert await cancel(handle) == CancelOutcome.CANCELLED
        assert (await handle.result()).status == PaymentStatus.CANCELLED
    assert "void" not in stubs.names()  # a declined intent holds nothing to void
    assert stubs.names()[-1] == "record_cancellation"


async def test_an_expired_authorization_is_reauthorized_once(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(capture_errors=[business_error(ErrorType.AUTHORIZATION_EXPIRED)])
    payment = payment_input(
        BillingPolicy(capture_delay=timedelta(hours=1), reauthorize_expired=True)
    )
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    prefix = f"pay_{payment.payment_id}"
    assert result.status == PaymentStatus.SUCCEEDED
    assert result.stripe_payment_intent_id == f"pi_{prefix}_auth_2"
    assert stubs.keys("capture") == [f"{prefix}_capture_1", f"{prefix}_capture_2"]
    [attempt] = stubs.inputs("begin_attempt")
    assert isinstance(attempt, BeginAttemptInput)
    assert (attempt.generation, attempt.reason) == (2, "authorization_expired")
    _, recorded_again = stubs.inputs("record_authorization")
    assert isinstance(recorded_again, RecordAuthorizationInput)
    assert recorded_again.generation == 2
    first_capture, second_capture = stubs.when("capture")
    assert second_capture - first_capture < timedelta(hours=1)  # the window is not repeated


@pytest.mark.parametrize(
    ("reauthorize", "expiries"), [(False, 1), (True, 2)], ids=["policy-off", "twice"]
)
async def test_an_expired_authorization_otherwise_fails(
    env: WorkflowEnvironment, task_queue: str, reauthorize: bool, expiries: int
) -> None:
    stubs = StubActivities(
        capture_errors=[business_error(ErrorType.AUTHORIZATION_EXPIRED)] * expiries
    )
    payment = payment_input(BillingPolicy(reauthorize_expired=reauthorize))
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert result.status == PaymentStatus.FAILED
    assert result.failure_code == ErrorType.AUTHORIZATION_EXPIRED
    assert len(stubs.inputs("authorize")) == expiries


async def test_a_lost_authorization_answer_adopts_what_stripe_holds(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(
        authorize_errors=[business_error(ErrorType.STRIPE_OUTCOME_UNKNOWN)],
        existing_authorization=Authorization(intent_id="pi_found", amount_capturable=4200),
    )
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert result.status == PaymentStatus.SUCCEEDED
    assert result.stripe_payment_intent_id == "pi_found"
    assert len(stubs.inputs("authorize")) == 1
    [attempt] = stubs.inputs("begin_attempt")  # adopted under a new generation
    [recorded] = stubs.inputs("record_authorization")
    assert isinstance(attempt, BeginAttemptInput) and attempt.generation == 2
    assert isinstance(recorded, RecordAuthorizationInput)
    assert (recorded.intent_id, recorded.generation) == ("pi_found", 2)
    assert stubs.keys("capture") == [f"pay_{payment.payment_id}_capture_2"]


async def test_a_lost_answer_with_nothing_at_stripe_starts_a_new_generation(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(authorize_errors=[business_error(ErrorType.STRIPE_OUTCOME_UNKNOWN)])
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    prefix = f"pay_{payment.payment_id}"
    assert result.status == PaymentStatus.SUCCEEDED
    assert stubs.keys("authorize") == [f"{prefix}_auth_1", f"{prefix}_auth_2"]


async def test_a_poisoned_capture_key_is_resent_under_a_new_key(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(capture_errors=[business_error(ErrorType.STRIPE_OUTCOME_UNKNOWN)])
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    prefix = f"pay_{payment.payment_id}"
    assert result.status == PaymentStatus.SUCCEEDED
    assert stubs.keys("capture") == [f"{prefix}_capture_1", f"{prefix}_capture_1_r1"]


async def test_answers_lost_again_and_again_end_the_payment(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(
        authorize_errors=[business_error(ErrorType.STRIPE_OUTCOME_UNKNOWN)] * (MAX_RESENDS + 1)
    )
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert result.status == PaymentStatus.FAILED
    assert result.failure_code == ErrorType.STRIPE_OUTCOME_UNKNOWN
    assert len(stubs.inputs("authorize")) == MAX_RESENDS + 1
    # converged before the first key, before each new generation, and once more before
    # giving up
    assert len(stubs.inputs("find_period_intents")) == MAX_RESENDS + 2


@pytest.mark.parametrize(
    "error",
    [ErrorType.STRIPE_REJECTED, ErrorType.IDEMPOTENCY_CONFLICT, ErrorType.INTENT_NOT_CAPTURABLE],
)
async def test_a_capture_that_fails_for_good_voids_the_authorization(
    env: WorkflowEnvironment, task_queue: str, error: ErrorType
) -> None:
    stubs = StubActivities(capture_errors=[business_error(error)])
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert (result.status, result.failure_code) == (PaymentStatus.FAILED, error)
    assert stubs.names()[-3:] == ["capture", "void", "record_failure"]


@pytest.mark.parametrize("error", [ErrorType.KEY_MAY_BE_FORGOTTEN, ErrorType.IDEMPOTENCY_CONFLICT])
async def test_an_authorize_key_that_cannot_be_replayed_converges_then_moves_on(
    env: WorkflowEnvironment, task_queue: str, error: ErrorType
) -> None:
    """A key Stripe may have forgotten, or one used with other parameters (a new card on a
    resumed run): converge, then authorize under a new generation."""
    stubs = StubActivities(authorize_errors=[business_error(error), None])
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    prefix = f"pay_{payment.payment_id}"
    assert result.status == PaymentStatus.SUCCEEDED
    assert stubs.keys("authorize") == [f"{prefix}_auth_1", f"{prefix}_auth_2"]
    assert len(stubs.inputs("find_period_intents")) == 2


async def test_a_capture_stripe_already_holds_is_recorded_not_made_again(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(
        held_at_stripe=[
            PeriodIntents(captured=(Capture(intent_id="pi_paid", amount_received=4200),))
        ]
    )
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert (result.status, result.stripe_payment_intent_id) == (PaymentStatus.SUCCEEDED, "pi_paid")
    assert stubs.names() == ["read_payment", "find_period_intents", "record_paid"]


async def test_two_captures_for_one_period_end_needs_attention(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    paid = [Capture(intent_id=f"pi_{n}", amount_received=4200) for n in (1, 2)]
    stubs = StubActivities(
        held_at_stripe=[
            PeriodIntents(captured=tuple(paid)),
            PeriodIntents(capturable=(Authorization(intent_id="pi_3", amount_capturable=4200),)),
        ]
    )
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        handle = await start(env, task_queue, payment)
        result = await handle.result()
    assert (result.status, result.failure_code) == (
        PaymentStatus.NEEDS_ATTENTION,
        ErrorType.CHARGED_TWICE,
    )
    assert [v.intent_id for v in stubs.inputs("void") if isinstance(v, VoidInput)] == ["pi_3"]
    assert stubs.names()[-1] == "record_attention"
    assert "authorize" not in stubs.names()


async def test_a_run_resumed_after_capture_began_captures_despite_a_cancel(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """The closed run had moved the row to capturing: the capture may be at Stripe, so a
    cancel is too late, as it would have been for that run."""
    held = Authorization(intent_id="pi_held", amount_capturable=4200)
    stubs = StubActivities(
        row=PaymentState(
            status=PaymentStatus.CAPTURING,
            generation=1,
            intent_id="pi_held",
            payment_method_id="pm_card_visa",
        ),
        held_at_stripe=[PeriodIntents(capturable=(held,))],
    )
    payment = payment_input(BillingPolicy(capture_delay=timedelta(hours=2)))
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment, start_signal="cancel")).result()
    assert (result.status, result.stripe_payment_intent_id) == (PaymentStatus.SUCCEEDED, "pi_held")
    assert "void" not in stubs.names() and "authorize" not in stubs.names()
    assert result.note == "a cancel came after capture began; the payment was captured"


async def test_holds_that_cannot_be_listed_still_end_needs_attention(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """Stripe refused the list (a deleted customer): the workflow failed over an open row
    instead of ending needs_attention."""
    stubs = StubActivities(period_intents_error=business_error(ErrorType.STRIPE_REJECTED))
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert (result.status, result.failure_code) == (
        PaymentStatus.NEEDS_ATTENTION,
        ErrorType.STRIPE_REJECTED,
    )
    [attention] = stubs.inputs("record_attention")
    assert isinstance(attention, RecordAttentionInput)
    assert "could not list the period's holds" in attention.message
    assert "authorize" not in stubs.names() and "void" not in stubs.names()


async def test_a_run_a_newer_generation_overtook_neither_captures_nor_ends_the_row(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """The ledger refuses the capture of an older generation: the run stops there, leaving
    the row and Stripe to the generation that owns them."""
    stubs = StubActivities(begin_capture_error=business_error(ErrorType.FENCED))
    payment = payment_input()
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert (result.status, result.failure_code) == (PaymentStatus.NEEDS_ATTENTION, ErrorType.FENCED)
    assert stubs.names()[-1] == "begin_capture"
    assert not {"capture", "void", "record_attention"} & set(stubs.names())


def resumed_row(status: PaymentStatus, intent_id: str | None, **fields: int) -> PaymentState:
    return PaymentState(
        status=status,
        generation=fields.pop("generation", 1),
        intent_id=intent_id,
        payment_method_id="pm_card_visa",
        **fields,
    )


def held(*intent_ids: str) -> PeriodIntents:
    return PeriodIntents(
        capturable=tuple(Authorization(intent_id=i, amount_capturable=4200) for i in intent_ids)
    )


def voided(stubs: StubActivities) -> list[str]:
    return [v.intent_id for v in stubs.inputs("void") if isinstance(v, VoidInput)]


async def test_a_resumed_run_keeps_the_authorization_its_row_records(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """Converging kept the oldest live authorization and voided the one the row records."""
    stubs = StubActivities(
        row=resumed_row(PaymentStatus.CAPTURING, "pi_recorded"),
        held_at_stripe=[held("pi_older", "pi_recorded")],
    )
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment_input())).result()
    assert (result.status, result.stripe_payment_intent_id) == (
        PaymentStatus.SUCCEEDED,
        "pi_recorded",
    )
    assert voided(stubs) == ["pi_older"]
    assert "begin_attempt" not in stubs.names()


async def test_capture_began_only_on_the_authorization_the_row_records(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """A capturing row whose recorded authorization is gone, with another one live: the run
    took capture as begun and captured the other one despite a cancel."""
    stubs = StubActivities(
        row=resumed_row(PaymentStatus.CAPTURING, "pi_gone"),
        held_at_stripe=[held("pi_other")],
    )
    async with worker(env, task_queue, stubs):
        handle = await start(env, task_queue, payment_input(), start_signal="cancel")
        result = await handle.result()
    assert result.status == PaymentStatus.CANCELLED
    assert "capture" not in stubs.names()
    assert voided(stubs) == ["pi_other"]
    [attempt] = stubs.inputs("begin_attempt")  # the row is bound to pi_gone
    assert isinstance(attempt, BeginAttemptInput)
    assert (attempt.generation, attempt.reason) == (2, "adopted_after_resume")


async def test_capture_no_longer_counts_as_begun_once_reauthorized(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """Resumed after capture began, the authorization expired and converging adopted a new
    one: capture_begun stayed true and a cancel did not stop the new capture."""
    stubs = StubActivities(
        row=resumed_row(PaymentStatus.CAPTURING, "pi_held"),
        held_at_stripe=[held("pi_held"), held("pi_new")],
        capture_errors=[business_error(ErrorType.AUTHORIZATION_EXPIRED)],
    )
    payment = payment_input(BillingPolicy(reauthorize_expired=True))
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment, start_signal="cancel")).result()
    assert (result.status, result.stripe_payment_intent_id) == (PaymentStatus.CANCELLED, "pi_new")
    captured = [c.intent_id for c in stubs.inputs("capture") if isinstance(c, CaptureInput)]
    assert captured == ["pi_held"]  # the capture that was under way, and no other
    assert voided(stubs) == ["pi_new"]


async def test_a_resumed_payment_in_dunning_goes_on_from_its_soft_declines(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """A resumed `retrying` payment started its dunning count from zero: three more
    retries after two already made."""
    stubs = StubActivities(
        row=resumed_row(PaymentStatus.RETRYING, "pi_declined", dunning_attempts=2),
        authorize_errors=[declined("insufficient_funds")] * 5,
    )
    payment = payment_input(BillingPolicy(dunning_schedule=DUNNING))
    async with worker(env, task_queue, stubs):
        result = await (await start(env, task_queue, payment)).result()
    assert (result.status, result.failure_code) == (PaymentStatus.FAILED, "insufficient_funds")
    assert len(stubs.inputs("authorize")) == 2  # now, and after the schedule's last step
    first, last = stubs.when("authorize")
    assert last - first >= DUNNING[2] - DUNNING[1]
