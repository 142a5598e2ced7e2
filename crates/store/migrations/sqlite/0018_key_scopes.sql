-- Scopes and expiry of keys of kind 'personal'. `scopes` is a JSON array (`["features:read", "insights:read"]`);
-- NULL means every scope (keys made before scopes existed, and the bootstrap key). An expired key authenticates
-- nothing.
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at TEXT;
