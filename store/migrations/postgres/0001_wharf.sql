-- Every tenant of every relay sharing this database. Applied by `sqlx::migrate!` when a relay
-- starts; append new files, never edit this one.

-- A tenant: the remoteId every relay announces for it in Hello, and what an administrator
-- stored through the admin API.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    remote_id UUID NOT NULL,
    settings TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A log and its next sequence. A commit takes this row's lock (SELECT ... FOR NO KEY UPDATE) for
-- the whole transaction: relays appending to one log are serialized here, and `next_seq`
-- only moves in a transaction that committed. History starts at `first_seq`.
CREATE TABLE logs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    next_seq BIGINT NOT NULL DEFAULT 0,
    first_seq BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0,
    UNIQUE (tenant, public_key)
);

CREATE TABLE entries (
    log_id BIGINT NOT NULL REFERENCES logs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    entry_id BYTEA NOT NULL,
    iv BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    -- Commit time, Unix ms.
    at BIGINT NOT NULL,
    PRIMARY KEY (log_id, seq)
);
CREATE UNIQUE INDEX entries_by_id ON entries (log_id, entry_id);
-- The iv guardrail: "was this 12-byte AES-GCM iv used in this log?"
CREATE INDEX entries_by_gcm_iv ON entries (log_id, iv) WHERE length(iv) = 12;

-- Encrypted snapshots, opaque to the relay: the newest few per log.
CREATE TABLE snapshots (
    log_id BIGINT NOT NULL REFERENCES logs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    iv BYTEA NOT NULL,
    data BYTEA NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (log_id, seq)
);
