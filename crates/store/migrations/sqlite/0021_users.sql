-- People who sign in (dashboard sessions, personal keys of their own), their roles per organization, sessions and
-- team invitations. Passwords are argon2id PHC strings; session and invitation tokens are stored as SHA-256 digests.
CREATE TABLE users (
    id                   INTEGER PRIMARY KEY,
    email                TEXT NOT NULL UNIQUE COLLATE NOCASE,
    name                 TEXT NOT NULL DEFAULT '',
    password_hash        TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    password_changed_at  TEXT NOT NULL
);

-- role: owner > admin > member > viewer. `projects` is a JSON array of the project ids the member may open; NULL
-- means every project of the organization.
CREATE TABLE memberships (
    organization_id  INTEGER NOT NULL REFERENCES organizations(id),
    user_id          INTEGER NOT NULL REFERENCES users(id),
    role             TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    projects         TEXT,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (organization_id, user_id)
) WITHOUT ROWID;
CREATE INDEX memberships_user ON memberships(user_id);

CREATE TABLE sessions (
    id            INTEGER PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    user_id       INTEGER NOT NULL REFERENCES users(id),
    csrf_token    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL,
    source_ip     TEXT,
    user_agent    TEXT
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE team_invitations (
    id               INTEGER PRIMARY KEY,
    organization_id  INTEGER NOT NULL REFERENCES organizations(id),
    email            TEXT NOT NULL COLLATE NOCASE,
    role             TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    projects         TEXT,
    token_hash       TEXT NOT NULL UNIQUE,
    invited_by       TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    expires_at       TEXT NOT NULL,
    accepted_at      TEXT,
    accepted_by      INTEGER REFERENCES users(id),
    revoked_at       TEXT
);
CREATE INDEX team_invitations_org ON team_invitations(organization_id);

-- Changes to an organization (members, roles, invitations, projects, sign-ins): append-only like `audit_log`.
CREATE TABLE organization_audit_log (
    id               INTEGER PRIMARY KEY,
    organization_id  INTEGER NOT NULL,
    actor            TEXT NOT NULL,
    action           TEXT NOT NULL,
    entity_type      TEXT NOT NULL,
    entity_id        TEXT NOT NULL,
    before           TEXT,
    after            TEXT,
    source_ip        TEXT,
    at               TEXT NOT NULL
);
CREATE INDEX organization_audit_log_org ON organization_audit_log(organization_id, id);

-- A personal key made by a user acts with at most that user's role (NULL: the bootstrap key and keys made by it).
ALTER TABLE api_keys ADD COLUMN user_id INTEGER REFERENCES users(id);
