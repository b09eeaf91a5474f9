-- What `reconcile --fix` did at Stripe. Evidence, so append-only like payment_events.
-- payment_id is text, not a reference: an orphan may name a payment the ledger never had.

CREATE TABLE reconcile_actions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    billing_period  char(7) NOT NULL,
    intent_id       text NOT NULL,
    payment_id      text,
    action          text NOT NULL,
    outcome         text NOT NULL,
    amount          bigint,
    currency        char(3),
    occurred_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX reconcile_actions_intent ON reconcile_actions (intent_id);

CREATE FUNCTION reconcile_actions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'reconcile_actions is append-only';
END;
$$;

CREATE TRIGGER reconcile_actions_no_change
    BEFORE UPDATE OR DELETE ON reconcile_actions
    FOR EACH ROW EXECUTE FUNCTION reconcile_actions_append_only();
