-- The webhook outbox: what each endpoint has yet to be told about each log. A commit upserts
-- its row per (log, endpoint) in its own transaction (new entries coalesce into a pending
-- row). A relay delivering a row claims it by moving `due_at` past the delivery's time limit
-- (SELECT ... FOR UPDATE SKIP LOCKED), so relays serving one tenant never deliver a row at
-- once. A relay that stops releases its claims; one that dies leaves its rows due again when
-- the claims run out.
CREATE TABLE webhook_outbox (
    log_id BIGINT NOT NULL REFERENCES logs (id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq BIGINT NOT NULL,
    count BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Unix ms: when it is due (or, while a relay delivers it, when that relay's claim ends).
    due_at BIGINT NOT NULL,
    -- The relay process delivering it (its claim is released when that relay stops).
    claimed_by UUID,
    PRIMARY KEY (log_id, endpoint)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (due_at);
