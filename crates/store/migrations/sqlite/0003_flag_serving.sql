-- Encrypted SDK payloads and saved groups (reusable audiences).

-- The AES key (base64) of a connection whose payload is served encrypted; NULL for plain payloads.
ALTER TABLE sdk_connections ADD COLUMN encryption_key TEXT;

-- A saved group is either a list of values of one attribute (`kind` 'list': `attribute`, `items`) or a reusable
-- condition (`kind` 'condition': `condition`). Features reference it by key; a referenced group cannot be deleted.
CREATE TABLE saved_groups (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    key         TEXT NOT NULL,
    definition  TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (project_id, key)
);
