-- Organizations, projects and API keys.
CREATE TABLE organizations (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE projects (
    id               INTEGER PRIMARY KEY,
    organization_id  INTEGER NOT NULL REFERENCES organizations(id),
    name             TEXT NOT NULL,
    created_at       TEXT NOT NULL
);

-- Every key is stored as the SHA-256 digest of its text; the prefix is kept for display.
-- kind: 'project' (public, SDK capture/evaluation, bound to one project)
--       'personal' (secret, native API; organization-wide unless project_id restricts it)
CREATE TABLE api_keys (
    id               INTEGER PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('project', 'personal')),
    organization_id  INTEGER NOT NULL REFERENCES organizations(id),
    project_id       INTEGER REFERENCES projects(id),
    name             TEXT NOT NULL,
    key_hash         TEXT NOT NULL UNIQUE,
    key_prefix       TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    last_used_at     TEXT,
    revoked_at       TEXT,
    CHECK (kind = 'personal' OR project_id IS NOT NULL)
);

-- Persons and identity.
CREATE TABLE persons (
    id             INTEGER PRIMARY KEY,
    uuid           TEXT NOT NULL UNIQUE,
    project_id     INTEGER NOT NULL REFERENCES projects(id),
    properties     TEXT NOT NULL DEFAULT '{}',
    is_identified  INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    version        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX persons_project ON persons(project_id);

CREATE TABLE person_distinct_ids (
    project_id   INTEGER NOT NULL,
    distinct_id  TEXT NOT NULL,
    person_id    INTEGER NOT NULL REFERENCES persons(id),
    PRIMARY KEY (project_id, distinct_id)
) WITHOUT ROWID;
CREATE INDEX person_distinct_ids_person ON person_distinct_ids(person_id);

-- A merged-away person points at the person it was merged into (read-time override for events).
CREATE TABLE person_overrides (
    project_id        INTEGER NOT NULL,
    old_person_uuid   TEXT NOT NULL,
    new_person_uuid   TEXT NOT NULL,
    merged_at         TEXT NOT NULL,
    PRIMARY KEY (project_id, old_person_uuid)
) WITHOUT ROWID;

-- Groups (accounts): up to 5 group types per project, indexed 0..4.
CREATE TABLE group_types (
    project_id        INTEGER NOT NULL,
    group_type        TEXT NOT NULL,
    group_type_index  INTEGER NOT NULL CHECK (group_type_index BETWEEN 0 AND 4),
    PRIMARY KEY (project_id, group_type),
    UNIQUE (project_id, group_type_index)
) WITHOUT ROWID;

CREATE TABLE groups (
    project_id        INTEGER NOT NULL,
    group_type_index  INTEGER NOT NULL,
    group_key         TEXT NOT NULL,
    properties        TEXT NOT NULL DEFAULT '{}',
    created_at        TEXT NOT NULL,
    PRIMARY KEY (project_id, group_type_index, group_key)
) WITHOUT ROWID;

CREATE TABLE person_groups (
    person_id         INTEGER NOT NULL REFERENCES persons(id),
    group_type_index  INTEGER NOT NULL,
    group_key         TEXT NOT NULL,
    PRIMARY KEY (person_id, group_type_index, group_key)
) WITHOUT ROWID;

-- How far each derived consumer of the intake log has got (LSN just past the last applied batch).
CREATE TABLE intake_checkpoints (
    consumer  TEXT PRIMARY KEY,
    lsn       INTEGER NOT NULL
) WITHOUT ROWID;
