-- Refunds of captured payments, and the two statuses they lead to.
--
-- A row is reserved (`requested`) before Stripe is asked, under the payment row's lock, so
-- that what is requested and refunded never exceeds what was captured; `n` numbers a
-- payment's refunds from 1 and names its workflow (`refund-<payment>-<n>`) and its Stripe
-- idempotency key (`pay_<payment>_refund_<n>`). At most one refund of a payment is in flight.

ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('pending', 'retrying', 'authorized', 'capturing', 'succeeded', 'failed',
                      'cancelled', 'needs_attention', 'partially_refunded', 'refunded'));

CREATE TABLE refunds (
    payment_id        uuid NOT NULL REFERENCES payments (id),
    n                 integer NOT NULL CHECK (n >= 1),
    amount            bigint NOT NULL CHECK (amount > 0),
    currency          char(3) NOT NULL,
    reason            text NOT NULL
        CHECK (reason IN ('requested_by_customer', 'duplicate', 'fraudulent')),
    status            text NOT NULL DEFAULT 'requested'
        CHECK (status IN ('requested', 'succeeded', 'failed')),
    stripe_refund_id  text UNIQUE,
    failure_code      text,
    failure_message   text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (payment_id, n),
    CHECK (status <> 'succeeded' OR stripe_refund_id IS NOT NULL)
);

CREATE UNIQUE INDEX refunds_one_in_flight ON refunds (payment_id) WHERE status = 'requested';
