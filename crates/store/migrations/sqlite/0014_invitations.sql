-- In-product invitations to a group (an account): single-use, expiring. Only a hash of the token is kept (the token
-- is shown once, when the invitation is made or resent; resending replaces it). `status` is pending, accepted or
-- revoked; a pending invitation past `expires_at` is expired. The inviter → invitee edge is the growth graph's.
CREATE TABLE invitations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    group_type   TEXT NOT NULL,
    group_key    TEXT NOT NULL,
    email        TEXT NOT NULL,
    role         TEXT NOT NULL,
    inviter      TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    status       TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    resent       INTEGER NOT NULL DEFAULT 0,
    accepted_at  TEXT,
    accepted_by  TEXT
);
CREATE INDEX invitations_group ON invitations (project_id, group_type, group_key);

-- Email domains whose users join a group by themselves (auto-join), once verified by an admin.
CREATE TABLE group_domains (
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    domain       TEXT NOT NULL,
    group_type   TEXT NOT NULL,
    group_key    TEXT NOT NULL,
    role         TEXT NOT NULL,
    verified_at  TEXT NOT NULL,
    PRIMARY KEY (project_id, domain)
);
