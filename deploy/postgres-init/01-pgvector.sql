-- Runs once, when the "db" service initialises an empty data volume
-- (docker-entrypoint-initdb.d), in the POSTGRES_DB database as POSTGRES_USER.
-- The tenant plane's migrations also create the extension if it is missing;
-- doing it here means the application role never needs the privilege.
CREATE EXTENSION IF NOT EXISTS vector;
