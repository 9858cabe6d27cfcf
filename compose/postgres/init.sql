-- Runs once, when the data directory is created (docker-entrypoint-initdb.d).
-- pg_stat_statements is preloaded by the server's command line; the extension
-- exposes its view in the demo database.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
