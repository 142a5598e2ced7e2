-- Feature flags, environments, SDK connections and the append-only audit log.
CREATE TABLE environments (
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    key          TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL,
    PRIMARY KEY (project_id, key)
) WITHOUT ROWID;

-- Every project has production, staging and development.
INSERT INTO environments (project_id, key, created_at)
    SELECT p.id, e.key, p.created_at FROM projects p,
        (SELECT 'production' AS key UNION ALL SELECT 'staging' UNION ALL SELECT 'development') e;

CREATE TRIGGER projects_default_environments AFTER INSERT ON projects BEGIN
    INSERT INTO environments (project_id, key, created_at) VALUES
        (NEW.id, 'production', NEW.created_at),
        (NEW.id, 'staging', NEW.created_at),
        (NEW.id, 'development', NEW.created_at);
END;

-- A feature's whole definition is one JSON document (validated by the server); `version` grows by one per change.
CREATE TABLE features (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    key         TEXT NOT NULL,
    definition  TEXT NOT NULL,
    archived    INTEGER NOT NULL DEFAULT 0,
    version     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (project_id, key)
);

-- Client keys for SDKs (GrowthBook payload endpoint), one environment each. Stored hashed.
CREATE TABLE sdk_connections (
    id           INTEGER PRIMARY KEY,
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    environment  TEXT NOT NULL,
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    key_prefix   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT,
    FOREIGN KEY (project_id, environment) REFERENCES environments(project_id, key)
);

-- Append-only: the triggers refuse every update and delete.
CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY,
    project_id   INTEGER NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    entity_type  TEXT NOT NULL,
    entity_id    TEXT NOT NULL,
    before       TEXT,
    after        TEXT,
    diff         TEXT NOT NULL DEFAULT '[]',
    source_ip    TEXT,
    at           TEXT NOT NULL
);
CREATE INDEX audit_log_entity ON audit_log(project_id, entity_type, entity_id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
