-- Exactly once per (Stripe customer, period), and a guarded capture.
--
-- 1. One customer row per Stripe customer, and emails compared case-insensitively: two rows on
--    one Stripe customer meant two payments, and two charges, for one period.
-- 2. A payment records the Stripe customer it bills, copied at `bill` time, and a period holds
--    one payment per Stripe customer whatever happens to the customer rows later.
-- 3. Two statuses: `capturing` (the ledger allowed the capture before it was sent) and
--    `needs_attention` (the workflow met what it cannot settle alone and a person must look).

DO $$
DECLARE
    clash text;
BEGIN
    SELECT string_agg(format('%s (%s)', stripe_customer_id, emails), '; ') INTO clash
    FROM (SELECT stripe_customer_id, string_agg(email, ', ' ORDER BY email) AS emails
          FROM customers GROUP BY stripe_customer_id HAVING count(*) > 1) AS shared;
    IF clash IS NOT NULL THEN
        RAISE EXCEPTION 'customers share a Stripe customer: %; deactivate and merge them into '
            'one row each before upgrading', clash;
    END IF;
    SELECT string_agg(emails, '; ') INTO clash
    FROM (SELECT string_agg(email, ', ' ORDER BY email) AS emails
          FROM customers GROUP BY lower(email) HAVING count(*) > 1) AS shared;
    IF clash IS NOT NULL THEN
        RAISE EXCEPTION 'customers differ only in the case of their email: %; merge them into '
            'one row each before upgrading', clash;
    END IF;
END;
$$;

ALTER TABLE customers ADD CONSTRAINT customers_stripe_customer_id_key UNIQUE (stripe_customer_id);
CREATE UNIQUE INDEX customers_email_lower_key ON customers (lower(email));

ALTER TABLE payments ADD COLUMN stripe_customer_id text;
UPDATE payments p SET stripe_customer_id = c.stripe_customer_id
FROM customers c WHERE c.id = p.customer_id;
ALTER TABLE payments ALTER COLUMN stripe_customer_id SET NOT NULL;
ALTER TABLE payments ADD CONSTRAINT payments_stripe_customer_period_key
    UNIQUE (stripe_customer_id, billing_period);

ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('pending', 'retrying', 'authorized', 'capturing', 'succeeded', 'failed',
                      'cancelled', 'needs_attention'));
