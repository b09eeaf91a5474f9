-- Stripe's events as the webhook receiver got them (billing/webhooks.py): one row per event id,
-- stored before it is handed on, so that a duplicate delivery is recognised and a crash
-- between storing and handing on is finished by Stripe's retry.
--
-- handed_to says where the event went: `workflow` (the `stripe_event` signal), `ledger` (a
-- payment_events row, the workflow being closed) or `ignored` (a type the receiver does not
-- handle). NULL while the hand-off is still to do. payment_id is NULL only for an ignored
-- event that concerns no payment of ours.

CREATE TABLE stripe_events (
    id           text PRIMARY KEY,
    type         text NOT NULL,
    created      timestamptz NOT NULL,
    livemode     boolean NOT NULL,
    payment_id   uuid REFERENCES payments (id),
    intent_id    text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    handed_at    timestamptz,
    handed_to    text CHECK (handed_to IN ('workflow', 'ledger', 'ignored')),
    payload      jsonb NOT NULL,
    CHECK ((handed_at IS NULL) = (handed_to IS NULL)),
    CHECK (payment_id IS NOT NULL OR handed_to = 'ignored')
);

-- A charge's or dispute's event finds its payment by the intent an earlier event named.
CREATE INDEX stripe_events_intent ON stripe_events (intent_id) WHERE payment_id IS NOT NULL;
-- Stored but not handed on yet: what a crash left for Stripe's retry.
CREATE INDEX stripe_events_not_handed ON stripe_events (received_at) WHERE handed_at IS NULL;
