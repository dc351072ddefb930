-- Tenant Plane schema (SQLite). Timestamps are Unix milliseconds (BIGINT)
-- so both backends share one representation.


CREATE TABLE plane_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     BIGINT NOT NULL,
    last_used_at   BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT,
    user_agent     TEXT,
    client_ip      TEXT
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);

-- Ended sessions and revoked API keys, polled by every replica.
-- subject is 's:<session id>' or 'k:<api key id>'.
CREATE TABLE revocations (
    subject    TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revocations_revoked_at_idx ON revocations (revoked_at);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    secret_hash  TEXT NOT NULL,
    created_by   TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT
);

CREATE TABLE collections (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    dimension  INTEGER NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    metric     TEXT NOT NULL CHECK (metric IN ('cosine', 'l2', 'inner_product')),
    created_at BIGINT NOT NULL
);

-- Vectors are little-endian f32 blobs, searched exactly from memory.

CREATE TABLE documents (
    collection_id TEXT NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    id            TEXT NOT NULL,
    embedding     BLOB NOT NULL,
    content       TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (collection_id, id)
);

CREATE TABLE secrets (
    name       TEXT PRIMARY KEY,
    ciphertext BLOB NOT NULL,
    nonce      BLOB NOT NULL,
    key_id     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT
);

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL
);
