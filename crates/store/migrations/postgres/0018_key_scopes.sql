-- PostgreSQL twin of sqlite/0018_key_scopes.sql. Scopes (a JSON array as text; NULL: every scope) and expiry of
-- personal keys.
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at TEXT;
