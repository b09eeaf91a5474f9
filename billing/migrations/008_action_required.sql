-- 3-D Secure: a payment whose card's bank asks the customer to authenticate waits in
-- `action_required`, with the URL the customer must visit (Stripe's
-- `next_action.redirect_to_url.url`) kept in `next_action_url`. The URL is set by the move
-- into `action_required` and cleared by any move out of it.

ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('pending', 'retrying', 'action_required', 'authorized', 'capturing',
                      'succeeded', 'failed', 'cancelled', 'needs_attention',
                      'partially_refunded', 'refunded'));

ALTER TABLE payments ADD COLUMN next_action_url text;
ALTER TABLE payments ADD CONSTRAINT payments_next_action_url_check
    CHECK (next_action_url IS NULL OR status = 'action_required');
