"""Stripe calls. Each carries the idempotency key the workflow derived from the payment."""

import stripe
from temporalio import activity
from temporalio.exceptions import ApplicationError

from billing.constants import ErrorType
from billing.models import Authorization, AuthorizeInput, Capture, CaptureInput, Decline

CAPTURABLE = "requires_capture"
CAPTURED = "succeeded"


def business_failure(err: stripe.StripeError) -> ApplicationError | None:
    """The non-retryable failure a Stripe error stands for, or None when a retry may succeed.

    Network errors, 5xx, 409 (a concurrent request under the same key) and 429 are transient:
    the engine retries them with the same key. Auth errors are retried too, so that fixing the
    configuration resumes the run instead of failing payments.
    """
    if isinstance(err, stripe.CardError):
        intent = err.error.payment_intent if err.error else None
        decline = Decline(
            code=err.code or "card_declined",
            decline_code=(err.error.decline_code if err.error else None),
            message=err.user_message or str(err),
            intent_id=intent.id if intent else None,
        )
        return ApplicationError(
            decline.message, decline, type=ErrorType.CARD_DECLINED, non_retryable=True
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
    return None


class StripeActivities:
    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    @activity.defn(name="authorize")
    async def authorize(self, input: AuthorizeInput) -> Authorization:
        """Create and confirm an uncaptured PaymentIntent (capture_method=manual)."""
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
                    "metadata": {"payment_id": input.payment_id},
                },
                {"idempotency_key": input.idempotency_key},
            )
        except stripe.StripeError as err:
            raise business_failure(err) or err from err
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
        except stripe.InvalidRequestError as err:
            if err.code != "payment_intent_unexpected_state":
                raise business_failure(err) or err from err
            intent = await self._client.v1.payment_intents.retrieve_async(input.intent_id)
            if intent.status != CAPTURED:
                raise ApplicationError(
                    f"PaymentIntent {intent.id} is {intent.status} and cannot be captured",
                    type=ErrorType.INTENT_NOT_CAPTURABLE,
                    non_retryable=True,
                ) from err
        except stripe.StripeError as err:
            raise business_failure(err) or err from err
        return Capture(intent_id=intent.id, amount_received=intent.amount_received)
