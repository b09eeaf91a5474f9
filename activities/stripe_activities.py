"""Stripe calls. Each carries the idempotency key the workflow derived from the payment."""

import random
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import stripe
from stripe.params import PaymentIntentConfirmParams
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from billing.constants import RATE_LIMITED, ErrorType
from billing.models import (
    AuthenticateInput,
    Authorization,
    AuthorizeInput,
    AuthorizeUnlessHeldInput,
    Capture,
    CaptureInput,
    Decline,
    FindAuthorizationInput,
    FindPeriodIntentsInput,
    IntentState,
    PeriodIntents,
    ReadIntentInput,
    RefundMade,
    RefundRefusal,
    RefundRequest,
    VoidInput,
)
from billing.stripe_client import (
    CANCELED,
    CAPTURABLE,
    CAPTURED,
    REQUIRES_ACTION,
    ReadBackFailed,
    cancel_and_read_back,
    list_customer_intents,
    list_intent_refunds,
    needs_read_back,
    read_once,
    redirect_url,
    stored_server_error,
)

EXPIRED_REASON = "automatic"
# Stripe keeps an idempotency key for 24 hours. An authorize attempt later than this after
# the first one is not sent: Stripe may have forgotten the key and would authorize again.
AUTHORIZE_KEY_LIFETIME = timedelta(hours=23)


def rate_limit_delay(err: stripe.RateLimitError) -> timedelta:
    """Back off with jitter; sooner when Stripe says a retry should succeed."""
    if (err.headers or {}).get("stripe-should-retry") == "true":
        return timedelta(milliseconds=random.uniform(100, 500))
    attempt = activity.info().attempt
    return timedelta(seconds=min(2 ** (attempt - 1), 30) * random.uniform(0.5, 1.0))


def business_failure(err: stripe.StripeError, *, keyed: bool = True) -> ApplicationError | None:
    """The failure a Stripe error stands for, or None to let the engine retry it as it is.

    `keyed` is False for reads: they carry no idempotency key, so nothing is stored and a 5xx
    is always worth retrying.

    Network errors, 5xx, 409 (a concurrent request under the same key) and 429 are transient
    and retried with the same key; a 429 never fails a payment. Auth errors are retried too,
    so that fixing the configuration resumes the run instead of failing payments.
    """
    if isinstance(err, stripe.CardError):
        intent = err.error.payment_intent if err.error else None
        decline = Decline(
            code=err.code or "card_declined",
            decline_code=(err.error.decline_code if err.error else None),
            message=err.user_message or str(err),
            intent_id=intent.id if intent else None,
        )
        # Benign: a decline is the customer's card answering, not a fault. The SDK logs it at
        # DEBUG, without the traceback of a failed activity; `fail_for` logs one INFO line.
        return ApplicationError(
            decline.message,
            decline,
            type=ErrorType.CARD_DECLINED,
            non_retryable=True,
            category=ApplicationErrorCategory.BENIGN,
        )
    if isinstance(err, stripe.RateLimitError):
        return ApplicationError(
            "Stripe rate limit", type=RATE_LIMITED, next_retry_delay=rate_limit_delay(err)
        )
    if isinstance(err, stripe.IdempotencyError):
        return ApplicationError(
            f"Stripe rejected the idempotency key: {err.user_message}",
            type=ErrorType.IDEMPOTENCY_CONFLICT,
            non_retryable=True,
        )
    if isinstance(err, stripe.InvalidRequestError) and err.http_status in (400, 404):
        return ApplicationError(
            f"Stripe rejected the request ({err.code}): {err.user_message}",
            type=ErrorType.STRIPE_REJECTED,
            non_retryable=True,
        )
    if keyed and stored_server_error(err):
        return ApplicationError(
            f"Stripe stored a server error under this key: {err.user_message}",
            type=ErrorType.STRIPE_OUTCOME_UNKNOWN,
            non_retryable=True,
        )
    return None


def fail_for(err: stripe.StripeError, *, keyed: bool = True) -> NoReturn:
    """Raise the business failure `err` stands for, or `err` itself for the engine to retry.
    Never `err` as its own cause: the failure converter would recurse on it."""
    failure = business_failure(err, keyed=keyed)
    if failure is None:
        raise err
    if failure.type == ErrorType.CARD_DECLINED:
        activity.logger.info("card declined: %s", failure.message)
    raise failure from err


def not_capturable(intent: stripe.PaymentIntent) -> ApplicationError:
    expired = intent.status == CANCELED and intent.cancellation_reason == EXPIRED_REASON
    return ApplicationError(
        f"PaymentIntent {intent.id} is {intent.status} and cannot be captured",
        type=ErrorType.AUTHORIZATION_EXPIRED if expired else ErrorType.INTENT_NOT_CAPTURABLE,
        non_retryable=True,
    )


# Refunds Stripe did not make, or reversed: they gave nothing back.
REFUND_NOT_MADE = frozenset({"failed", "canceled"})


def refund_refused(code: str, message: str) -> ApplicationError:
    """Stripe refused the refund (`charge_already_refunded`, `amount_too_large`…): final."""
    refusal = RefundRefusal(code=code, message=message)
    return ApplicationError(message, refusal, type=ErrorType.REFUND_REFUSED, non_retryable=True)


def refund_metadata(payment_id: str, n: int) -> dict[str, str]:
    """What names refund n of a payment at Stripe, whichever key made it."""
    return {"payment_id": payment_id, "refund_n": str(n)}


class StripeActivities:
    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    @activity.defn(name="authorize")
    async def authorize(self, input: AuthorizeInput) -> Authorization:
        """Create and confirm an uncaptured PaymentIntent (capture_method=manual)."""
        info = activity.info()
        # Now, not the attempt's schedule time: a retry queued early may run a day later.
        if datetime.now(UTC) - info.scheduled_time > AUTHORIZE_KEY_LIFETIME:
            raise ApplicationError(
                f"authorize key {input.idempotency_key} was first sent at "
                f"{info.scheduled_time:%Y-%m-%d %H:%M} UTC; Stripe may have forgotten it",
                type=ErrorType.KEY_MAY_BE_FORGOTTEN,
                non_retryable=True,
            )
        metadata = {"payment_id": input.payment_id}
        if input.billing_period is not None and input.customer_id is not None:
            metadata |= {"billing_period": input.billing_period, "customer_id": input.customer_id}
        try:
            intent = await self._client.v1.payment_intents.create_async(
                {
                    "amount": input.amount,
                    "currency": input.currency,
                    "customer": input.stripe_customer_id,
                    "payment_method": input.payment_method_id,
                    "confirm": True,
                    "off_session": True,
                    "capture_method": "manual",
                    "metadata": metadata,
                },
                {"idempotency_key": input.idempotency_key},
            )
        except stripe.StripeError as err:
            fail_for(err)
        if intent.status != CAPTURABLE:
            decline = Decline(
                code=intent.status,
                message=f"authorization ended in status {intent.status}",
                intent_id=intent.id,
            )
            raise ApplicationError(
                decline.message, decline, type=ErrorType.CARD_DECLINED, non_retryable=True
            )
        return Authorization(intent_id=intent.id, amount_capturable=intent.amount_capturable)

    @activity.defn(name="capture")
    async def capture(self, input: CaptureInput) -> Capture:
        """Capture the authorization. An intent that is already captured is success."""
        try:
            intent = await self._client.v1.payment_intents.capture_async(
                input.intent_id, options={"idempotency_key": input.idempotency_key}
            )
        except stripe.StripeError as err:
            if not needs_read_back(err):
                fail_for(err)
            intent = await self._retrieve(input.intent_id)
            if intent.status == CAPTURABLE:  # the stored 500 was before Stripe captured
                fail_for(err)
            if intent.status != CAPTURED:
                raise not_capturable(intent) from err
        return Capture(intent_id=intent.id, amount_received=intent.amount_received)

    @activity.defn(name="void")
    async def void(self, input: VoidInput) -> None:
        """Cancel an uncaptured authorization. An intent already cancelled is success."""
        try:
            answer = await cancel_and_read_back(
                self._client,
                input.intent_id,
                reason="requested_by_customer",
                idempotency_key=input.idempotency_key,
                read=read_once,
            )
        except ReadBackFailed as failed:
            fail_for(failed.error, keyed=False)
        except stripe.StripeError as err:
            fail_for(err)
        if answer.captured:
            raise ApplicationError(
                f"PaymentIntent {input.intent_id} is already captured; it cannot be voided",
                type=ErrorType.ALREADY_CAPTURED,
                non_retryable=True,
            )
        if not answer.cancelled and answer.error is not None:
            fail_for(answer.error)  # the stored 500 was before Stripe cancelled

    @activity.defn(name="find_authorization")
    async def find_authorization(self, input: FindAuthorizationInput) -> Authorization | None:
        """The payment's capturable authorization at Stripe, if one exists.

        Lists the customer's PaymentIntents (not search, which lags writes) and matches the
        payment's metadata. Run before any new key generation, so that an authorization whose
        answer was lost is adopted instead of doubled.
        """
        found = [
            i
            for i in await self._customer_intents(input.stripe_customer_id, input.created_after)
            if i.status == CAPTURABLE and i.metadata.to_dict().get("payment_id") == input.payment_id
        ]
        if len(found) > 1:
            ids = ", ".join(i.id for i in found)
            raise ApplicationError(
                f"payment {input.payment_id} holds several capturable authorizations: {ids}",
                type=ErrorType.INTENT_NOT_CAPTURABLE,
                non_retryable=True,
            )
        return (
            Authorization(intent_id=found[0].id, amount_capturable=found[0].amount_capturable)
            if found
            else None
        )

    @activity.defn(name="find_period_intents")
    async def find_period_intents(self, input: FindPeriodIntentsInput) -> PeriodIntents:
        """What Stripe holds for this (Stripe customer, period): its captures and its live
        authorizations, whichever payment row made them. Run before the first authorization
        and before every new generation, so that a charge is never made twice, even when the
        payment row was lost or the customer was billed through another row."""
        ours = [
            i
            for i in await self._customer_intents(input.stripe_customer_id, input.created_after)
            if _belongs_to(i, input.billing_period, input.payment_id)
        ]
        ours.sort(key=lambda i: (i.created, i.id))
        return PeriodIntents(
            captured=tuple(
                Capture(intent_id=i.id, amount_received=i.amount_received)
                for i in ours
                if i.status == CAPTURED
            ),
            capturable=tuple(
                Authorization(intent_id=i.id, amount_capturable=i.amount_capturable)
                for i in ours
                if i.status == CAPTURABLE
            ),
            awaiting_action=tuple(i.id for i in ours if i.status == REQUIRES_ACTION),
        )

    @activity.defn(name="authorize_unless_held")
    async def authorize_unless_held(self, input: AuthorizeUnlessHeldInput) -> PeriodIntents:
        """A payment's first authorization in one task: `find_period_intents`, and when
        Stripe holds nothing for the period, `authorize`. Returns what Stripe holds after it,
        so a new authorization comes back as the one capturable intent. A retried attempt
        lists again and finds what an earlier attempt authorized; a decline fails as
        `authorize` fails."""
        held = await self.find_period_intents(input.find)
        if held.captured or held.capturable:
            return held
        return PeriodIntents(capturable=(await self.authorize(input.authorize),))

    @activity.defn(name="request_authentication")
    async def request_authentication(self, input: AuthenticateInput) -> IntentState:
        """Confirm again, on-session, an intent that failed off-session with
        `authentication_required`, so that the bank's 3-D Secure challenge goes to the
        customer: Stripe answers `requires_action` with the URL where they authenticate. A
        card that needs no challenge on-session is authorized at once (`requires_capture`),
        and a decline fails as `authorize` fails. After a stored 500, or when the intent is
        no longer confirmable, the intent is read: it tells what holds."""
        params: PaymentIntentConfirmParams = {
            "payment_method": input.payment_method_id,
            "off_session": False,
        }
        if input.return_url is not None:
            params["return_url"] = input.return_url
        try:
            intent = await self._client.v1.payment_intents.confirm_async(
                input.intent_id, params, {"idempotency_key": input.idempotency_key}
            )
        except stripe.StripeError as err:
            if not needs_read_back(err):
                fail_for(err)
            intent = await self._retrieve(input.intent_id)
            if intent.status not in (REQUIRES_ACTION, CAPTURABLE):
                fail_for(err)
        return intent_state(intent)

    @activity.defn(name="read_intent")
    async def read_intent(self, input: ReadIntentInput) -> IntentState:
        """The intent as Stripe holds it now: what a payment awaiting authentication reads
        when an event about it arrives, and at its deadline."""
        return intent_state(await self._retrieve(input.intent_id))

    @activity.defn(name="refund")
    async def refund(self, input: RefundRequest) -> RefundMade:
        """Refund n of a payment. The intent's refunds are listed first: one that Stripe
        holds for this refund (its metadata names the payment and n) is returned, whatever
        key made it, so a retry after a lost answer, or a day later, refunds nothing twice.
        Otherwise it is created under the refund's key. Stripe's refusal fails for good."""
        made = await self._refund_made(input)
        if made is not None:
            return made
        try:
            refund = await self._client.v1.refunds.create_async(
                {
                    "payment_intent": input.intent_id,
                    "amount": input.amount,
                    "reason": input.reason.value,
                    "metadata": refund_metadata(input.payment_id, input.n),
                },
                {"idempotency_key": input.idempotency_key},
            )
        except stripe.IdempotencyError as err:
            fail_for(err)
        except stripe.InvalidRequestError as err:
            if err.http_status != 400:
                fail_for(err)
            raise refund_refused(err.code or "invalid_request", str(err.user_message)) from err
        except stripe.StripeError as err:
            if stored_server_error(err) and (made := await self._refund_made(input)):
                return made  # the stored 500 came after Stripe refunded
            fail_for(err)
        if refund.status in REFUND_NOT_MADE:
            code = refund.failure_reason or refund.status
            raise refund_refused(code, f"Stripe's refund {refund.id} is {refund.status}")
        return RefundMade(refund_id=refund.id, amount=refund.amount, status=refund.status or "")

    async def _refund_made(self, input: RefundRequest) -> RefundMade | None:
        try:
            refunds = await list_intent_refunds(self._client, input.intent_id, read=read_once)
        except stripe.StripeError as err:
            fail_for(err, keyed=False)
        wanted = refund_metadata(input.payment_id, input.n)
        ours = [
            r
            for r in refunds
            if all(
                (r.metadata.to_dict() if r.metadata else {}).get(k) == v for k, v in wanted.items()
            )
        ]
        for refund in ours:
            if refund.status not in REFUND_NOT_MADE:
                return RefundMade(
                    refund_id=refund.id, amount=refund.amount, status=refund.status or ""
                )
        if ours:  # Stripe made refund n and it failed: its key would only replay the old answer
            failed = ours[-1]
            code = failed.failure_reason or failed.status or "failed"
            raise refund_refused(code, f"Stripe's refund {failed.id} is {failed.status}")
        return None

    async def _customer_intents(
        self, customer: str, created_after: int
    ) -> list[stripe.PaymentIntent]:
        """A failed read fails the attempt; the engine retries it."""
        try:
            return await list_customer_intents(
                self._client, customer, created_after, read=read_once
            )
        except stripe.StripeError as err:
            fail_for(err, keyed=False)

    async def _retrieve(self, intent_id: str) -> stripe.PaymentIntent:
        try:
            return await self._client.v1.payment_intents.retrieve_async(intent_id)
        except stripe.StripeError as err:
            fail_for(err, keyed=False)


def intent_state(intent: stripe.PaymentIntent) -> IntentState:
    # Stripe leaves out the fields an error does not have (a failed authentication has no
    # `decline_code`), and the SDK's object raises AttributeError for them: read it as a dict.
    error = intent.last_payment_error.to_dict() if intent.last_payment_error else {}
    return IntentState(
        intent_id=intent.id,
        status=intent.status,
        amount_capturable=intent.amount_capturable or 0,
        amount_received=intent.amount_received or 0,
        next_action_url=redirect_url(intent),
        error_code=error.get("code"),
        decline_code=error.get("decline_code"),
        error_message=error.get("message"),
    )


def _belongs_to(intent: stripe.PaymentIntent, period: str, payment_id: str) -> bool:
    metadata = intent.metadata.to_dict() if intent.metadata else {}
    return metadata.get("billing_period") == period or metadata.get("payment_id") == payment_id
