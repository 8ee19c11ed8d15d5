-- The revocation list, shared by every relay on this database (with SQLite it is the file
-- `data/auth/revocations.sqlite`). Relays poll `revocations_version`, which every change moves
-- in its own statement, and re-read the lists when it moved.

-- Revoked tokens, by `jti`.
CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL
);

-- Per tenant: every token issued before `not_before` (Unix seconds) is revoked.
CREATE TABLE tenant_not_before (
    tenant TEXT PRIMARY KEY,
    not_before BIGINT NOT NULL
);

CREATE TABLE revocations_version (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    version BIGINT NOT NULL
);
INSERT INTO revocations_version (version) VALUES (0);
