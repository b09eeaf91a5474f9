"""One workflow per payment: authorize -> record_authorization -> begin_capture -> capture ->
finalize.

Around that spine: a capture window (a durable timer), a `cancel` signal or update (or a
Temporal cancellation request) that voids an uncaptured authorization, dunning after soft
declines, and one re-authorization when an authorization expired before capture. Before the
first authorization and before any new key generation the payment converges to what Stripe
holds for its (Stripe customer, period): a capture there is recorded, never made again, and
one live authorization is adopted, never doubled. An error the workflow does not expect ends
the payment `needs_attention` after releasing every hold, never a failed workflow over an
open row.
"""

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import timedelta
from functools import partial
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ledger_activities import LedgerActivities
    from activities.stripe_activities import StripeActivities
    from billing import metrics
    from billing.constants import (
        AUTHENTICATION_REQUIRED,
        BILLING_PERIOD,
        PAYMENT_STATUS,
        SOFT_DECLINE_CODES,
        TERMINAL_STATUSES,
        CancelOutcome,
        ErrorType,
        PaymentStatus,
        idempotency_key,
        starting_search_attributes,
        void_key,
    )
    from billing.durations import format_duration
    from billing.models import (
        AttentionRecorded,
        AuthenticateInput,
        Authorization,
        AuthorizeInput,
        AuthorizeUnlessHeldInput,
        BeginAttemptInput,
        BeginCaptureInput,
        Capture,
        CaptureAllowed,
        CaptureInput,
        Decline,
        FinalizeInput,
        FindAuthorizationInput,
        FindPeriodIntentsInput,
        IntentState,
        PaymentInput,
        PaymentMethodUpdate,
        PaymentResult,
        PaymentState,
        PeriodIntents,
        ReadIntentInput,
        ReadPaymentInput,
        RecordActionRequiredInput,
        RecordAttentionInput,
        RecordAuthorizationInput,
        RecordCancellationInput,
        RecordDeclineInput,
        RecordFailureInput,
        RecordPaidInput,
        StripeEventFact,
        VoidInput,
    )
    from billing.period import period_start
    from billing.stripe_client import CAPTURABLE, CAPTURED, REQUIRES_ACTION
    from billing.summaries import (
        amount_text,
        authentication_wait_summary,
        capture_window_summary,
        dunning_wait_summary,
    )

NON_RETRYABLE = [t.value for t in ErrorType]
LedgerInput = TypeVar("LedgerInput")
T = TypeVar("T")

# Stripe: retried without limit, each attempt under the same idempotency key. The attempt
# timeout is short so that a crashed worker's call is re-run quickly.
STRIPE_TIMEOUT = timedelta(seconds=30)
# authorize_unless_held sends two requests (the list, then the create) in one attempt.
LIST_AND_CREATE_TIMEOUT = 2 * STRIPE_TIMEOUT
STRIPE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=NON_RETRYABLE,
)
# Payments started under this patch write the ledger through local activities (inside the
# workflow task: fewer events and tasks, see docs/performance.md) and trust the search
# attributes their launcher set at start. Without the marker (histories recorded before, or a
# payment begun by an older worker) they use regular activities and upsert the attributes.
# Roll workers forward only: a worker from before the patch cannot replay a patched history.
LOCAL_LEDGER_WRITES = "local-ledger-writes"
LEDGER_TIMEOUT = timedelta(seconds=15)
LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=NON_RETRYABLE,
)
LOCAL_RETRY_THRESHOLD = timedelta(seconds=10)
# Payments started under this patch read their row and converge per (Stripe customer, period)
# before authorizing, capture only after the ledger moved them to `capturing`, fence every
# ledger write by generation, treat a Temporal cancellation as `cancel`, and end an
# unexpected error `needs_attention`. Without the marker they run the path above unchanged.
EXACTLY_ONCE = "exactly-once-per-period"
# Payments started under this patch (besides EXACTLY_ONCE) resume from what their row records:
# converging keeps the recorded authorization when it is still capturable, capture counts as
# begun only on that authorization and no longer once an expired one was re-authorized, a
# held row adopting another authorization begins a new generation, and dunning goes on from
# the row's count of soft declines. Without the marker a resumed run behaves as before.
RESUME_AS_RECORDED = "resume-as-recorded"
# Payments started under this patch (besides RESUME_AS_RECORDED) whose row has no
# authorization yet list the period's intents and authorize in one activity,
# `authorize_unless_held`: one activity task and one workflow task fewer per payment (see
# docs/performance.md). Without the marker they converge, then authorize, as two activities.
AUTHORIZE_UNLESS_HELD = "authorize-unless-held"
# Payments started under this patch (besides RESUME_AS_RECORDED), with an authentication
# window in their policy, answer `authentication_required` with 3-D Secure: the intent is
# confirmed again on-session, the payment waits `action_required` for the customer, and goes
# on to capture once they authenticated. The marker is written only when a payment meets that
# decline; without it the decline is final, as before.
THREE_D_SECURE = "three-d-secure"
# A run resumed on a row that waits `action_required` (its run was terminated), whose intent
# Stripe still holds waiting for the customer, waits for them again on that intent instead of
# authorizing again: Stripe forgets the authorize key after 24 hours, and a second intent
# would follow. Without the marker a resumed run authorizes again under the row's generation.
RESUME_AUTHENTICATION = "resume-authentication"
# While a payment waits for the customer to authenticate, it reads the intent from Stripe
# when an event about it arrives (the webhook), at least this often, and at the deadline: a
# dropped webhook delays the capture, it never loses it.
AUTHENTICATION_CHECK_EVERY = timedelta(hours=1)
# How far before the period (or the run, if earlier) converging looks for its charges.
PERIOD_LOOKBACK = timedelta(days=35)
# Failures of authorize after which Stripe may hold an authorization the workflow never saw.
OUTCOME_UNKNOWN = frozenset(
    {
        ErrorType.STRIPE_OUTCOME_UNKNOWN,
        ErrorType.KEY_MAY_BE_FORGOTTEN,
        ErrorType.IDEMPOTENCY_CONFLICT,
    }
)
# New keys for one call whose earlier keys Stripe poisoned with a stored 500. For authorize
# each is a new generation, after converging found no authorization to adopt.
MAX_RESENDS = 5
# How far back payments begun before EXACTLY_ONCE list the customer's PaymentIntents.
CONVERGE_LOOKBACK = timedelta(days=1)

Converged = Authorization | Capture | None


async def wait_until(
    condition: Callable[[], bool], *, at_most: timedelta, summary: str | None = None
) -> None:
    """A durable timer that ends early when `condition` holds; `summary` names the timer in
    the Web UI."""
    with suppress(TimeoutError):
        await workflow.wait_condition(condition, timeout=at_most, timeout_summary=summary)


def business_failure(err: ActivityError) -> ApplicationError | None:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.non_retryable:
        return cause
    return None


def _failure_type(err: ActivityError | ApplicationError) -> str | None:
    cause = err.cause if isinstance(err, ActivityError) else err
    return cause.type if isinstance(cause, ApplicationError) else None


def decline_of(failure: ApplicationError) -> Decline | None:
    if failure.type == ErrorType.CARD_DECLINED and failure.details:
        return Decline.model_validate(failure.details[0])
    return None


@workflow.defn(name="PaymentWorkflow")
class PaymentWorkflow:
    @workflow.init
    def __init__(self, input: PaymentInput) -> None:
        self._input = input
        self._step = "starting"
        self._generation = 1
        self._payment_method = input.payment_method_id
        self._payment_method_updated = False
        self._cancel_requested = False
        self._dunning_attempts = 0
        self._lost_answers = 0
        self._result: PaymentResult | None = None
        self._local_ledger = False  # set by run(): see LOCAL_LEDGER_WRITES
        self._exactly_once = False  # set by run(): see EXACTLY_ONCE
        self._as_recorded = False  # set by run(): see RESUME_AS_RECORDED
        self._unless_held = False  # set by run(): see AUTHORIZE_UNLESS_HELD
        self._converge_first = False  # the next authorize lists the period's intents first
        self._stored_method = input.payment_method_id  # the customer's card as last read
        # What Stripe's events said, by event id, in the order they arrived (`stripe_event`).
        self._stripe_events: dict[str, StripeEventFact] = {}

    @workflow.query(name="current_step")
    def current_step(self) -> str:
        return self._step

    @workflow.signal(name="cancel")
    def cancel(self) -> None:
        """Void the authorization unless capture has begun; after that, change nothing."""
        self._cancel_requested = True

    @workflow.update(name="cancel_payment")
    async def cancel_payment(self) -> CancelOutcome:
        """`cancel`, then wait until the payment has ended and say what happened."""
        already_requested = self._cancel_requested
        self._cancel_requested = True
        await workflow.wait_condition(lambda: self._result is not None)
        assert self._result is not None
        status = self._result.status
        if status == PaymentStatus.CANCELLED:
            return CancelOutcome.ALREADY_CANCELLED if already_requested else CancelOutcome.CANCELLED
        if status == PaymentStatus.SUCCEEDED:
            return CancelOutcome.ALREADY_CAPTURED
        if status == PaymentStatus.NEEDS_ATTENTION:
            return CancelOutcome.NEEDS_ATTENTION
        return CancelOutcome.FAILED

    @workflow.signal(name="payment_method_updated")
    def payment_method_updated(self, update: PaymentMethodUpdate) -> None:
        """The customer has a new card: a payment waiting to retry tries it at once."""
        self._payment_method = update.payment_method_id
        self._payment_method_updated = True

    @workflow.signal(name="stripe_event")
    def stripe_event(self, fact: StripeEventFact) -> None:
        """A Stripe event about this payment, from the webhook receiver. Kept, not acted on:
        the workflow's commands do not depend on it. The receiver hands an event on at least
        once, so a second signal of one event id changes nothing."""
        self._stripe_events.setdefault(fact.event_id, fact)

    @workflow.query(name="stripe_events")
    def stripe_events(self) -> list[StripeEventFact]:
        """The Stripe events received, each once, in the order they arrived (Stripe does not
        promise order: `created` says when each happened)."""
        return list(self._stripe_events.values())

    @workflow.run
    async def run(self, input: PaymentInput) -> PaymentResult:
        self._local_ledger = workflow.patched(LOCAL_LEDGER_WRITES)
        self._exactly_once = workflow.patched(EXACTLY_ONCE)
        self._as_recorded = self._exactly_once and workflow.patched(RESUME_AS_RECORDED)
        self._unless_held = self._as_recorded and workflow.patched(AUTHORIZE_UNLESS_HELD)
        started_with_attributes = workflow.info().typed_search_attributes.get(BILLING_PERIOD)
        if not (self._local_ledger and started_with_attributes):
            starting = starting_search_attributes(input.billing_period, input.customer_id)
            workflow.upsert_search_attributes([pair.key.value_set(pair.value) for pair in starting])
        if self._exactly_once:
            self._result = await self._charge_until_ended()
        else:
            self._result = await self._charge()
        self._step = "done"
        metrics.payment_ended(workflow.metric_meter(), self._result.status, input.currency)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._result

    async def _charge_until_ended(self) -> PaymentResult:
        """`_charge`, where a Temporal cancellation request (the Web UI's "Request
        Cancellation", `temporal workflow cancel`) means `cancel`, and where an error the
        workflow does not expect ends the payment in a visible state."""
        charge = asyncio.create_task(self._charge_or_settle())
        while True:
            try:
                # Shielded: the request must not cancel a capture or a ledger write midway.
                return await asyncio.shield(charge)
            except asyncio.CancelledError:
                if charge.cancelled():  # never expected (see _wait_until): do not spin on it
                    raise
                workflow.logger.info("cancellation requested: cancelling the payment")
                self._cancel_requested = True

    async def _wait_until(
        self,
        condition: Callable[[], bool],
        *,
        at_most: timedelta,
        summary: str,
        wait: metrics.Wait,
    ) -> None:
        """`wait_until`, where a Temporal cancellation request that ends the wait (as the SDK
        does when it applies an activation's jobs as one batch) means `cancel`. The wait's
        start and length are recorded as metrics (none while a history replays)."""
        meter = workflow.metric_meter()
        metrics.wait_started(meter, wait)
        began = workflow.now()
        try:
            await wait_until(condition, at_most=at_most, summary=summary)
        except asyncio.CancelledError:
            if not self._exactly_once:
                raise
            self._cancel_requested = True
        # Not in a `finally`: when a worker drops a cached run, its coroutine is closed from
        # outside the workflow's event loop, where `workflow.now()` cannot be read.
        metrics.wait_ended(meter, wait, workflow.now() - began)

    async def _charge_or_settle(self) -> PaymentResult:
        try:
            return await self._charge()
        except (ActivityError, ApplicationError) as err:
            if _failure_type(err) == ErrorType.UNKNOWN_PAYMENT:
                return self._row_lost()
            if _failure_type(err) == ErrorType.FENCED:
                return self._fenced(err)
            return await self._needs_attention(err)

    def _fenced(self, err: ActivityError | ApplicationError) -> PaymentResult:
        """A newer generation owns the row (this run was overtaken, e.g. by a write a
        terminated run's worker made late): this run neither captures nor ends the row, and
        leaves Stripe alone. The row stays open; if no run holds it, `reconcile` reports it
        stranded and `bill` resumes it from the row's generation."""
        cause = err.cause if isinstance(err, ActivityError) and err.cause else err
        workflow.logger.warning("a newer generation owns the payment: %s", cause)
        return PaymentResult(
            payment_id=self._input.payment_id,
            status=PaymentStatus.NEEDS_ATTENTION,
            failure_code=ErrorType.FENCED,
            note=f"this run (generation {self._generation}) stopped without writing: {cause}",
        )

    def _row_lost(self) -> PaymentResult:
        """The payment's row is gone (a restore from a backup, a truncated table). Stripe is
        left alone: `bill` makes the row again, and its run finds what Stripe holds for the
        period, including any authorization this run made; `reconcile` reports it meanwhile."""
        workflow.logger.warning("the payment's row is gone; leaving Stripe to the row made again")
        return PaymentResult(
            payment_id=self._input.payment_id,
            status=PaymentStatus.NEEDS_ATTENTION,
            failure_code=ErrorType.UNKNOWN_PAYMENT,
            note="the payment row is gone; `bill` makes it again and that run takes over",
        )

    async def _charge(self) -> PaymentResult:
        policy = self._input.policy
        reauthorized = False
        window_done = policy.capture_delay <= timedelta(0)
        authorization: Converged = None
        capture_begun = False  # by a run before this one: a cancel is then too late
        if self._exactly_once:
            begun = await self._begin()
            if isinstance(begun, PaymentResult):
                return begun
            authorization, capture_begun = begun
            window_done = window_done or capture_begun
        while True:
            if isinstance(authorization, Capture):
                return await self._record_paid(authorization)
            if self._cancel_requested and authorization is None:
                if self._converge_first:  # what Stripe holds decides what a cancel voids
                    self._converge_first = False
                    authorization = await self._converge()
                    continue
                return await self._cancel(intent_id=None)
            if authorization is None:
                outcome = await self._authorize()
                if isinstance(outcome, ApplicationError):
                    recovered = await self._recover(outcome)
                    if isinstance(recovered, PaymentResult):
                        return recovered
                    authorization = recovered
                    continue
                authorization = outcome
                if not isinstance(authorization, Authorization):
                    continue  # Stripe already held the period's capture

            intent_id = authorization.intent_id
            self._step = "record_authorization"
            await self._move(
                LedgerActivities.record_authorization,
                RecordAuthorizationInput(
                    payment_id=self._input.payment_id,
                    intent_id=intent_id,
                    generation=self._generation,
                ),
                PaymentStatus.AUTHORIZED,
            )

            if not window_done:
                self._step = "capture_window"
                await self._wait_until(
                    lambda: self._cancel_requested,
                    at_most=policy.capture_delay,
                    summary=capture_window_summary(workflow.now(), policy.capture_delay),
                    wait=metrics.Wait.CAPTURE_WINDOW,
                )
                window_done = True
            if self._cancel_requested and not capture_begun:
                return await self._cancel(intent_id=intent_id)

            if self._exactly_once:
                self._step = "begin_capture"
                allowed = await self._begin_capture(intent_id)
                if not allowed.allowed:
                    return await self._yield_to_ledger(allowed.status, intent_id)

            self._step = "capture"
            captured = await self._capture(intent_id)
            if isinstance(captured, ApplicationError):
                expired = captured.type == ErrorType.AUTHORIZATION_EXPIRED
                if expired and policy.reauthorize_expired and not reauthorized:
                    reauthorized = True
                    authorization = await self._new_generation("authorization_expired")
                    # The new authorization's capture has not begun: a cancel now voids it.
                    capture_begun = capture_begun and not self._as_recorded
                    continue
                if not expired:  # an expired authorization holds nothing to void
                    self._step = "void"
                    await self._void(intent_id)
                return await self._fail(captured, intent_id=intent_id)

            self._step = "finalize"
            await self._move(
                LedgerActivities.finalize,
                FinalizeInput(
                    payment_id=self._input.payment_id,
                    intent_id=intent_id,
                    amount_received=captured.amount_received,
                    generation=self._fenced_generation(),
                ),
                PaymentStatus.SUCCEEDED,
            )
            late = "a cancel came after capture began; the payment was captured"
            return PaymentResult(
                payment_id=self._input.payment_id,
                status=PaymentStatus.SUCCEEDED,
                stripe_payment_intent_id=intent_id,
                amount_received=captured.amount_received,
                note=late if self._cancel_requested and self._exactly_once else None,
            )

    async def _begin(self) -> PaymentResult | tuple[Converged, bool]:
        """Read the row, then converge with Stripe before anything is sent. A run that
        resumes a stranded payment, or a payment whose row was lost and made again, finds
        what Stripe already holds for its (Stripe customer, period) and never charges twice.

        Returns the row's outcome when it has already ended, or what converging found and
        whether capture had already begun.
        """
        state = await self._read_payment()
        if state.status in TERMINAL_STATUSES:
            return PaymentResult(
                payment_id=self._input.payment_id,
                status=state.status,
                stripe_payment_intent_id=state.intent_id,
                note="the payment had already ended in the ledger",
            )
        self._generation = state.generation
        self._adopt_stored_method(state)
        if self._as_recorded:
            self._dunning_attempts = state.dunning_attempts
        if self._unless_held and state.status == PaymentStatus.PENDING and not state.intent_id:
            # Nothing recorded to resume: the first authorization converges by itself.
            self._converge_first = True
            return None, False
        if state.status == PaymentStatus.ACTION_REQUIRED and workflow.patched(
            RESUME_AUTHENTICATION
        ):
            self._step = "converge"
            intents = await self._period_intents()
            found = await self._keep_one(intents, prefer=state.intent_id)
            if found is None and state.intent_id in intents.awaiting_action:
                assert state.intent_id is not None
                resumed = await self._resume_authentication(state.intent_id)
                return resumed if isinstance(resumed, PaymentResult) else (resumed, False)
        else:
            found = await self._converge(prefer=state.intent_id if self._as_recorded else None)
        recorded = isinstance(found, Authorization) and found.intent_id == state.intent_id
        if isinstance(found, Authorization) and state.status == PaymentStatus.RETRYING:
            await self._begin_generation("adopted_after_resume")
        held = state.status in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURING)
        if found is None and held:
            # The recorded authorization is gone (voided or expired before the run that
            # held it closed): its key would only replay it. Authorize, if at all, anew.
            await self._begin_generation("resumed_without_hold")
        elif self._as_recorded and held and isinstance(found, Authorization) and not recorded:
            # Another live authorization than the one recorded: adopt it under a new
            # generation (the row is bound to the recorded one).
            await self._begin_generation("adopted_after_resume")
        if self._as_recorded:  # capture began only on the authorization the row records
            return found, state.status == PaymentStatus.CAPTURING and recorded
        return found, state.status == PaymentStatus.CAPTURING and found is not None

    async def _authorize(self) -> Converged | ApplicationError:
        """Authorize under the current generation's key. The first authorization of a
        payment whose row recorded none converges in the same activity, and may return what
        Stripe already held for the period instead."""
        self._step = "authorize"
        self._payment_method_updated = False
        authorize = AuthorizeInput(
            payment_id=self._input.payment_id,
            amount=self._input.amount,
            currency=self._input.currency,
            stripe_customer_id=self._input.stripe_customer_id,
            payment_method_id=self._payment_method,
            idempotency_key=idempotency_key(self._input.payment_id, "auth", self._generation),
            billing_period=self._input.billing_period,
            customer_id=self._input.customer_id,
        )
        summary = (
            f"authorize {amount_text(self._input.amount, self._input.currency)} "
            f"on {self._payment_method}"
        )
        combined = self._converge_first
        self._converge_first = False
        try:
            if not combined:
                return await workflow.execute_activity_method(
                    StripeActivities.authorize,
                    authorize,
                    start_to_close_timeout=STRIPE_TIMEOUT,
                    retry_policy=STRIPE_RETRY,
                    summary=summary,
                )
            held = await workflow.execute_activity_method(
                StripeActivities.authorize_unless_held,
                AuthorizeUnlessHeldInput(find=self._period_query(), authorize=authorize),
                start_to_close_timeout=LIST_AND_CREATE_TIMEOUT,
                retry_policy=STRIPE_RETRY,
                summary=(
                    f"{summary}, unless Stripe holds a {self._input.billing_period} charge "
                    f"of {self._input.stripe_customer_id}"
                ),
            )
        except ActivityError as err:
            failure = business_failure(err)
            if failure is None:
                raise
            if combined and decline_of(failure) is None and failure.type not in OUTCOME_UNKNOWN:
                # The list or the create refused: take them one at a time, as a payment
                # without the patch does (the create replays its answer under its key).
                return await self._converge() or await self._authorize()
            return failure
        return await self._keep_one(held)

    async def _recover(self, failure: ApplicationError) -> Converged | PaymentResult:
        """After an authorization failed: adopt what Stripe holds, retry on the dunning
        schedule (None: authorize again), or end the payment."""
        unknown = OUTCOME_UNKNOWN if self._exactly_once else {ErrorType.STRIPE_OUTCOME_UNKNOWN}
        if failure.type in unknown:
            if self._lost_answers < MAX_RESENDS:
                self._lost_answers += 1
                return await self._new_generation("authorize_outcome_unknown")
            existing = await self._converge()  # the last lost answer may have authorized
            if existing is not None:
                return existing
        decline = decline_of(failure)
        if decline is not None and self._may_authenticate(decline):
            authenticated = await self._authenticate(decline)
            if not isinstance(authenticated, ApplicationError):
                return authenticated
            failure, decline = authenticated, decline_of(authenticated)
        if decline is None or not self._may_retry(decline):
            return await self._fail(failure, intent_id=None)
        await self._wait_to_retry(decline)
        if self._cancel_requested:
            return await self._cancel(intent_id=None)
        reason = "payment_method_updated" if self._payment_method_updated else "dunning"
        return await self._new_generation(reason)

    def _may_authenticate(self, decline: Decline) -> bool:
        """The bank asks the customer to authenticate, and the policy gives them time."""
        return (
            (decline.decline_code or decline.code) == AUTHENTICATION_REQUIRED
            and decline.intent_id is not None
            and self._input.policy.authentication_window > timedelta(0)
            and not self._cancel_requested
            and self._as_recorded
            and workflow.patched(THREE_D_SECURE)
        )

    async def _authenticate(self, decline: Decline) -> Converged | PaymentResult | ApplicationError:
        """3-D Secure: confirm the declined intent again on-session, record
        `action_required` with the URL where the customer authenticates, then wait for them
        up to the policy's authentication window. What Stripe holds for the intent decides,
        read when an event about it arrives, every AUTHENTICATION_CHECK_EVERY and at the
        deadline: authorized goes on to capture; a decline (a failed authentication, or the
        card declining after it) is returned for `_recover`; still waiting at the deadline
        cancels the intent and fails the payment. A cancel voids the intent."""
        assert decline.intent_id is not None
        intent_id = decline.intent_id
        # Counted before asking: an event that arrives from here on wakes the wait, even one
        # that comes before the wait begins.
        events_before = len(self._stripe_events)
        self._step = "request_authentication"
        state = await self._resending(
            lambda key, resend: workflow.execute_activity_method(
                StripeActivities.request_authentication,
                AuthenticateInput(
                    intent_id=intent_id,
                    payment_method_id=self._payment_method,
                    return_url=self._input.policy.authentication_return_url,
                    idempotency_key=idempotency_key(
                        self._input.payment_id, "authenticate", self._generation, resend
                    ),
                ),
                start_to_close_timeout=STRIPE_TIMEOUT,
                retry_policy=STRIPE_RETRY,
                summary=f"ask the customer to authenticate {intent_id}" + key,
            )
        )
        if isinstance(state, IntentState) and state.status == REQUIRES_ACTION:
            self._step = "record_action_required"
            await self._move(
                LedgerActivities.record_action_required,
                RecordActionRequiredInput(
                    payment_id=self._input.payment_id,
                    generation=self._generation,
                    decline=decline,
                    next_action_url=state.next_action_url,
                ),
                PaymentStatus.ACTION_REQUIRED,
            )
            waited = await self._await_authentication(intent_id, events_before)
            if waited is None:
                return await self._cancel(intent_id=intent_id)
            state = waited
        if isinstance(state, ApplicationError):
            return state
        return await self._authentication_outcome(intent_id, state)

    async def _resume_authentication(self, intent_id: str) -> Converged | PaymentResult:
        """A resumed run: the customer has not authenticated `intent_id` yet. Wait for them
        again (a whole window), and go on as `_authenticate` does once they have. Any event
        this run has received wakes the wait."""
        waited = await self._await_authentication(intent_id, 0)
        if waited is None:
            return await self._cancel(intent_id=intent_id)
        outcome = await self._authentication_outcome(intent_id, waited)
        if isinstance(outcome, ApplicationError):
            return await self._recover(outcome)
        return outcome

    async def _authentication_outcome(
        self, intent_id: str, state: IntentState
    ) -> Converged | ApplicationError:
        """What the intent's state after the wait means: an authorization, a capture, or a
        failure for `_recover` (the deadline passed: the intent is voided)."""
        if state.status == CAPTURABLE:
            return Authorization(intent_id=intent_id, amount_capturable=state.amount_capturable)
        if state.status == CAPTURED:
            return Capture(intent_id=intent_id, amount_received=state.amount_received)
        if state.status == REQUIRES_ACTION:  # the deadline passed
            self._step = "void"
            await self._void(intent_id)
            window = format_duration(self._input.policy.authentication_window)
            return ApplicationError(
                f"the customer did not authenticate {intent_id} within {window}; "
                "the PaymentIntent was cancelled",
                type=ErrorType.AUTHENTICATION_EXPIRED,
                non_retryable=True,
            )
        failed = Decline(
            code=state.error_code or state.status,
            decline_code=state.decline_code,
            message=state.error_message or f"the PaymentIntent is {state.status}",
            intent_id=intent_id,
        )
        return ApplicationError(
            failed.message, failed, type=ErrorType.CARD_DECLINED, non_retryable=True
        )

    async def _await_authentication(self, intent_id: str, events_seen: int) -> IntentState | None:
        """Wait for the customer to authenticate: the intent as Stripe holds it once it no
        longer waits or the window has passed, or None on a cancel. A Stripe event beyond
        the first `events_seen` ends a wait early; each read counts the events before it
        starts, so that one arriving while the read is under way is not missed."""
        deadline = workflow.now() + self._input.policy.authentication_window
        while True:
            woken = partial(self._woken_by, events_seen)
            wait = min(deadline - workflow.now(), AUTHENTICATION_CHECK_EVERY)
            self._step = "waiting_for_authentication"
            await self._wait_until(
                woken,
                at_most=wait,
                summary=authentication_wait_summary(intent_id, workflow.now(), wait),
                wait=metrics.Wait.AUTHENTICATION,
            )
            if self._cancel_requested:
                return None
            self._step = "read_intent"
            events_seen = len(self._stripe_events)
            state = await workflow.execute_activity_method(
                StripeActivities.read_intent,
                ReadIntentInput(intent_id=intent_id),
                start_to_close_timeout=STRIPE_TIMEOUT,
                retry_policy=STRIPE_RETRY,
                summary=f"read {intent_id}",
            )
            if state.status != REQUIRES_ACTION or workflow.now() >= deadline:
                return state

    def _woken_by(self, events_seen: int) -> bool:
        """A cancel, or a Stripe event since `events_seen` of them had arrived."""
        return self._cancel_requested or len(self._stripe_events) > events_seen

    def _may_retry(self, decline: Decline) -> bool:
        if (decline.decline_code or decline.code) not in SOFT_DECLINE_CODES:
            return False
        return self._dunning_attempts < len(self._input.policy.dunning_schedule)

    async def _wait_to_retry(self, decline: Decline) -> None:
        """Record the soft decline, then sleep until the next dunning time, a new payment
        method or a cancel, whichever comes first."""
        self._step = "record_decline"
        await self._move(
            LedgerActivities.record_decline,
            RecordDeclineInput(
                payment_id=self._input.payment_id, generation=self._generation, decline=decline
            ),
            PaymentStatus.RETRYING,
        )
        schedule = self._input.policy.dunning_schedule
        attempt = self._dunning_attempts
        self._dunning_attempts += 1
        wait = schedule[attempt] - (schedule[attempt - 1] if attempt else timedelta(0))
        self._step = "waiting_to_retry"
        await self._wait_until(
            lambda: self._cancel_requested or self._payment_method_updated,
            at_most=wait,
            summary=dunning_wait_summary(attempt + 1, len(schedule), workflow.now(), wait),
            wait=metrics.Wait.DUNNING,
        )

    async def _new_generation(self, reason: str) -> Converged:
        """Converge with Stripe, then begin a new authorization generation.

        Returns the payment's capturable authorization if Stripe already holds one (an
        answer that was lost); the caller then records it, under the new generation,
        instead of authorizing again. Returns the period's capture if Stripe holds one; the
        caller records it and charges nothing.
        """
        existing = await self._converge()
        if isinstance(existing, Capture):
            return existing
        if self._exactly_once:
            await self._refresh_payment_method()
        await self._begin_generation(reason)
        return existing

    async def _begin_generation(self, reason: str) -> None:
        self._generation += 1
        self._step = "begin_attempt"
        await self._move(
            LedgerActivities.begin_attempt,
            BeginAttemptInput(
                payment_id=self._input.payment_id, generation=self._generation, reason=reason
            ),
            PaymentStatus.PENDING,
        )

    async def _refresh_payment_method(self) -> None:
        """A card changed through `customers import` reaches the next attempt. A card sent
        by the `payment_method_updated` signal stays until the stored one changes again."""
        self._adopt_stored_method(await self._read_payment())

    def _adopt_stored_method(self, state: PaymentState) -> None:
        if state.payment_method_id != self._stored_method:
            self._stored_method = self._payment_method = state.payment_method_id

    async def _converge(self, *, prefer: str | None = None) -> Converged:
        """What Stripe holds for this payment: a capture of its (Stripe customer, period),
        else its one capturable authorization (any other is voided), else None. The one kept
        is `prefer` (the authorization the row records) when it is capturable, else the
        oldest."""
        self._step = "converge"
        if not self._exactly_once:
            return await self._find_authorization()
        return await self._keep_one(await self._period_intents(), prefer=prefer)

    async def _keep_one(self, held: PeriodIntents, *, prefer: str | None = None) -> Converged:
        """Of what Stripe holds for the period: its capture, else one capturable
        authorization (`prefer` if among them, else the oldest); any other is voided."""
        if len(held.captured) > 1:
            ids = ", ".join(c.intent_id for c in held.captured)
            raise ApplicationError(
                f"Stripe holds {len(held.captured)} captures for this customer and period: {ids}",
                type=ErrorType.CHARGED_TWICE,
                non_retryable=True,
            )
        keep = None
        if held.capturable and not held.captured:
            recorded = [a for a in held.capturable if prefer and a.intent_id == prefer]
            keep = recorded[0] if recorded else held.capturable[0]
        for extra in held.capturable:
            if extra != keep:
                await self._void(extra.intent_id)
        return held.captured[0] if held.captured else keep

    def _period_query(self) -> FindPeriodIntentsInput:
        start = min(period_start(self._input.billing_period), workflow.info().start_time)
        return FindPeriodIntentsInput(
            payment_id=self._input.payment_id,
            stripe_customer_id=self._input.stripe_customer_id,
            billing_period=self._input.billing_period,
            created_after=int((start - PERIOD_LOOKBACK).timestamp()),
        )

    async def _period_intents(self) -> PeriodIntents:
        return await workflow.execute_activity_method(
            StripeActivities.find_period_intents,
            self._period_query(),
            start_to_close_timeout=STRIPE_TIMEOUT,
            retry_policy=STRIPE_RETRY,
            summary=(
                f"find {self._input.billing_period} charges of {self._input.stripe_customer_id}"
            ),
        )

    async def _find_authorization(self) -> Authorization | None:
        created_after = workflow.info().start_time - CONVERGE_LOOKBACK
        existing = await workflow.execute_activity_method(
            StripeActivities.find_authorization,
            FindAuthorizationInput(
                payment_id=self._input.payment_id,
                stripe_customer_id=self._input.stripe_customer_id,
                created_after=int(created_after.timestamp()),
            ),
            start_to_close_timeout=STRIPE_TIMEOUT,
            retry_policy=STRIPE_RETRY,
            summary=f"find authorizations of {self._input.stripe_customer_id}",
        )
        return existing

    async def _capture(self, intent_id: str) -> Capture | ApplicationError:
        return await self._resending(
            lambda key, resend: workflow.execute_activity_method(
                StripeActivities.capture,
                CaptureInput(
                    intent_id=intent_id,
                    idempotency_key=idempotency_key(
                        self._input.payment_id, "capture", self._generation, resend
                    ),
                ),
                start_to_close_timeout=STRIPE_TIMEOUT,
                retry_policy=STRIPE_RETRY,
                summary=f"capture {intent_id}" + key,
            )
        )

    async def _resending(self, call: Callable[[str, int], Awaitable[T]]) -> T | ApplicationError:
        """A keyed Stripe call, `call(summary suffix, resend)`, sent under a new key (up to
        MAX_RESENDS times) while Stripe answers the key with a stored 500 that did not take
        effect. Returns its result, or the business failure it ended with."""
        for resend in range(MAX_RESENDS + 1):
            try:
                return await call(f" (new key {resend})" if resend else "", resend)
            except ActivityError as err:
                failure = business_failure(err)
                if failure is None:
                    raise
                if failure.type != ErrorType.STRIPE_OUTCOME_UNKNOWN or resend == MAX_RESENDS:
                    return failure
        raise AssertionError("unreachable")

    async def _void(self, intent_id: str) -> None:
        for resend in range(MAX_RESENDS + 1):
            try:
                await workflow.execute_activity_method(
                    StripeActivities.void,
                    VoidInput(
                        intent_id=intent_id,
                        idempotency_key=(
                            void_key(self._input.payment_id, intent_id, resend)
                            if self._exactly_once
                            else idempotency_key(
                                self._input.payment_id, "void", self._generation, resend
                            )
                        ),
                    ),
                    start_to_close_timeout=STRIPE_TIMEOUT,
                    retry_policy=STRIPE_RETRY,
                    summary=f"void {intent_id}" + (f" (new key {resend})" if resend else ""),
                )
                return
            except ActivityError as err:
                failure = business_failure(err)
                if failure is None or failure.type != ErrorType.STRIPE_OUTCOME_UNKNOWN:
                    raise
                if resend == MAX_RESENDS:
                    raise
        raise AssertionError("unreachable")

    async def _cancel(self, *, intent_id: str | None) -> PaymentResult:
        if intent_id is not None:
            self._step = "void"
            await self._void(intent_id)
        self._step = "record_cancellation"
        await self._move(
            LedgerActivities.record_cancellation,
            RecordCancellationInput(
                payment_id=self._input.payment_id,
                intent_id=intent_id,
                generation=self._fenced_generation(),
            ),
            PaymentStatus.CANCELLED,
        )
        return PaymentResult(
            payment_id=self._input.payment_id,
            status=PaymentStatus.CANCELLED,
            stripe_payment_intent_id=intent_id,
        )

    async def _fail(self, failure: ApplicationError, *, intent_id: str | None) -> PaymentResult:
        """End the payment `failed`, recording Stripe's decline code when there is one."""
        code = failure.type or "failed"
        decline = decline_of(failure)
        if decline is not None:
            code = decline.decline_code or decline.code
            intent_id = intent_id or decline.intent_id
        self._step = "record_failure"
        await self._move(
            LedgerActivities.record_failure,
            RecordFailureInput(
                payment_id=self._input.payment_id,
                failure_code=code,
                failure_message=failure.message,
                intent_id=intent_id,
                generation=self._fenced_generation(),
            ),
            PaymentStatus.FAILED,
        )
        return PaymentResult(
            payment_id=self._input.payment_id,
            status=PaymentStatus.FAILED,
            stripe_payment_intent_id=intent_id,
            failure_code=code,
        )

    async def _record_paid(self, capture: Capture) -> PaymentResult:
        """Stripe already holds this period's capture: record it and charge nothing."""
        self._step = "record_paid"
        await self._move(
            LedgerActivities.record_paid,
            RecordPaidInput(
                payment_id=self._input.payment_id,
                intent_id=capture.intent_id,
                amount_received=capture.amount_received,
                generation=self._generation,
            ),
            PaymentStatus.SUCCEEDED,
        )
        return PaymentResult(
            payment_id=self._input.payment_id,
            status=PaymentStatus.SUCCEEDED,
            stripe_payment_intent_id=capture.intent_id,
            amount_received=capture.amount_received,
            note="Stripe already held this period's capture; nothing was charged again",
        )

    async def _begin_capture(self, intent_id: str) -> CaptureAllowed:
        return await self._ledger(
            LedgerActivities.begin_capture,
            BeginCaptureInput(
                payment_id=self._input.payment_id, intent_id=intent_id, generation=self._generation
            ),
        )

    async def _read_payment(self) -> PaymentState:
        self._step = "read_payment"
        return await self._ledger(
            LedgerActivities.read_payment, ReadPaymentInput(payment_id=self._input.payment_id)
        )

    async def _yield_to_ledger(self, status: PaymentStatus, intent_id: str) -> PaymentResult:
        """Something moved the row before capture (an operator's cancel in SQL): release the
        authorization and end as the ledger says. Anything but a cancel or a failure there
        is unexpected."""
        self._step = "void"
        await self._void(intent_id)
        if status not in (PaymentStatus.CANCELLED, PaymentStatus.FAILED):
            raise ApplicationError(
                f"the ledger moved the payment to {status} before capture",
                type=ErrorType.FORBIDDEN_TRANSITION,
                non_retryable=True,
            )
        workflow.upsert_search_attributes([PAYMENT_STATUS.value_set(status)])
        return PaymentResult(
            payment_id=self._input.payment_id,
            status=status,
            stripe_payment_intent_id=intent_id,
            note=f"the ledger said {status} before capture; the authorization was voided",
        )

    async def _needs_attention(self, err: ActivityError | ApplicationError) -> PaymentResult:
        """An error the workflow does not expect: void every live authorization of the
        (Stripe customer, period), then record `needs_attention` with the reason."""
        cause = err.cause if isinstance(err, ActivityError) and err.cause else err
        reason = _failure_type(err) or type(cause).__name__
        message = str(cause)
        workflow.logger.warning("payment needs attention: %s: %s", reason, message)
        self._step = "release_holds"
        try:
            held = await self._period_intents()
        except ActivityError as list_err:  # e.g. Stripe no longer knows the customer
            held = PeriodIntents()
            message += f"; could not list the period's holds, none was voided: {list_err.cause}"
        for intent_id in [a.intent_id for a in held.capturable] + list(held.awaiting_action):
            try:
                await self._void(intent_id)
            except ActivityError as void_err:
                message += f"; could not void {intent_id}: {void_err.cause}"
        self._step = "record_attention"
        try:
            recorded: AttentionRecorded | None = await self._write(
                LedgerActivities.record_attention,
                RecordAttentionInput(
                    payment_id=self._input.payment_id,
                    reason=reason,
                    message=message,
                    generation=self._generation,
                ),
            )
        except ActivityError as write_err:
            if _failure_type(write_err) != ErrorType.FENCED:
                raise
            return self._fenced(write_err)
        if recorded is not None and not recorded.recorded:
            # The row had already ended (an operator's SQL, say): its status stands.
            workflow.upsert_search_attributes([PAYMENT_STATUS.value_set(recorded.status)])
            return PaymentResult(
                payment_id=self._input.payment_id,
                status=recorded.status,
                stripe_payment_intent_id=recorded.intent_id,
                failure_code=reason,
                note=f"the ledger had already ended the payment {recorded.status}; "
                f"needs_attention was not recorded over it: {message}",
            )
        workflow.upsert_search_attributes([PAYMENT_STATUS.value_set(PaymentStatus.NEEDS_ATTENTION)])
        return PaymentResult(
            payment_id=self._input.payment_id,
            status=PaymentStatus.NEEDS_ATTENTION,
            failure_code=reason,
            note=message,
        )

    def _fenced_generation(self) -> int | None:
        """The generation a ledger write carries: None on the path of older payments."""
        return self._generation if self._exactly_once else None

    async def _ledger(
        self,
        activity: Callable[[LedgerActivities, LedgerInput], Awaitable[T]],
        input: LedgerInput,
    ) -> T:
        """A ledger read or write as a local activity. Retries further apart than
        LOCAL_RETRY_THRESHOLD wait on a durable timer, so a long database outage does not
        hold the workflow task open."""
        return await workflow.execute_local_activity_method(
            activity,
            input,
            start_to_close_timeout=LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY,
            local_retry_threshold=LOCAL_RETRY_THRESHOLD,
            summary=f"ledger: {activity.__name__.replace('_', ' ')}",
        )

    async def _move(
        self,
        activity: Callable[[LedgerActivities, LedgerInput], Awaitable[None]],
        input: LedgerInput,
        status: PaymentStatus,
    ) -> None:
        """Record a transition in the ledger, then show the new status in the Web UI."""
        await self._write(activity, input)
        workflow.upsert_search_attributes([PAYMENT_STATUS.value_set(status)])

    async def _write(
        self,
        activity: Callable[[LedgerActivities, LedgerInput], Awaitable[T]],
        input: LedgerInput,
    ) -> T:
        """A ledger write: a local activity, or a regular one on the path of older payments."""
        if self._local_ledger:
            return await self._ledger(activity, input)
        return await workflow.execute_activity_method(
            activity, input, start_to_close_timeout=LEDGER_TIMEOUT, retry_policy=LEDGER_RETRY
        )
