-- A user's access tokens carry the version they were issued under; a role
-- change bumps it, so older tokens are refused on every replica.
ALTER TABLE users ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;
-- Usernames are unique regardless of case (they are ASCII).
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));
