-- Customers, their monthly payments, and the append-only log of every payment transition.

CREATE TABLE customers (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email               text NOT NULL UNIQUE,
    stripe_customer_id  text NOT NULL,
    payment_method_id   text NOT NULL,
    monthly_amount      bigint NOT NULL CHECK (monthly_amount > 0),
    currency            char(3) NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    active              boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id               uuid NOT NULL REFERENCES customers (id),
    billing_period            char(7) NOT NULL CHECK (billing_period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    amount                    bigint NOT NULL CHECK (amount > 0),
    currency                  char(3) NOT NULL,
    status                    text NOT NULL DEFAULT 'pending',
    stripe_payment_intent_id  text UNIQUE,
    amount_received           bigint,
    failure_code              text,
    failure_message           text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    authorized_at             timestamptz,
    captured_at               timestamptz,
    UNIQUE (customer_id, billing_period),
    -- Named so that the lifecycle's new states replace this one constraint.
    CONSTRAINT payments_status_check
        CHECK (status IN ('pending', 'authorized', 'succeeded', 'failed', 'cancelled'))
);

CREATE INDEX payments_period_status ON payments (billing_period, status);

CREATE TABLE payment_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id   uuid NOT NULL REFERENCES payments (id),
    from_status  text,
    to_status    text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurred_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX payment_events_payment ON payment_events (payment_id, id);

-- Append-only: the log is evidence, so it may only grow.
CREATE FUNCTION payment_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'payment_events is append-only';
END;
$$;

CREATE TRIGGER payment_events_no_change
    BEFORE UPDATE OR DELETE ON payment_events
    FOR EACH ROW EXECUTE FUNCTION payment_events_append_only();
