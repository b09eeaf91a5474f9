-- A refund request's own id (`refund --request-id`, e.g. a support ticket): a repeat of the
-- request finds the refund it made, in flight or ended, and never refunds again. Without an id
-- a repeat attaches only to a refund still in flight.

ALTER TABLE refunds ADD COLUMN request_id text;
CREATE UNIQUE INDEX refunds_request_id ON refunds (payment_id, request_id)
    WHERE request_id IS NOT NULL;
