-- The payment lifecycle: dunning (`retrying`) and authorization generations.

ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('pending', 'retrying', 'authorized', 'succeeded', 'failed', 'cancelled'));

ALTER TABLE payments ADD COLUMN generation integer NOT NULL DEFAULT 1 CHECK (generation >= 1);
ALTER TABLE payments ADD COLUMN cancelled_at timestamptz;
