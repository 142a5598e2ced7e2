-- Captured events for webhooks: a subscription's filters (`[{"event", "properties"?}]`, JSON), or NULL.
ALTER TABLE webhooks ADD COLUMN events TEXT;
