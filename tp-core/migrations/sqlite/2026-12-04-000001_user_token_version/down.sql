DROP INDEX users_username_lower_key;
ALTER TABLE users DROP COLUMN token_version;
