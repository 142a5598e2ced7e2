-- PostgreSQL twin of sqlite/0019_webhook_events.sql. Captured events for webhooks: a subscription's filters
-- (JSON, as text), or NULL.
ALTER TABLE webhooks ADD COLUMN events TEXT;
