-- Referral codes and clicks (growth loops). A code belongs to one program of a project and one referrer (a
-- distinct id); codes are unique across the installation, without case (`code_key` is the lower-case form), because
-- the public link `/r/{code}` names no project. At most one generated code per (program, referrer); vanity codes
-- are extra. A click keeps a salted hash of the visitor's IP address and user agent (`fingerprint`): fraud checks
-- compare fingerprints, nobody can read an address back.
CREATE TABLE referral_codes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    program     TEXT NOT NULL,
    code        TEXT NOT NULL,
    code_key    TEXT NOT NULL UNIQUE,
    referrer    TEXT NOT NULL,
    vanity      INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL
);
CREATE INDEX referral_codes_referrer ON referral_codes (project_id, program, referrer);

CREATE TABLE referral_clicks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    code_id     INTEGER NOT NULL REFERENCES referral_codes(id),
    token       TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX referral_clicks_code ON referral_clicks (code_id, id);

-- Secrets of the installation (e.g. the salt of click fingerprints), created once.
CREATE TABLE install_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
