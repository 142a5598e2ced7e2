-- Referrals: a referee (a person, by the uuid their distinct id had when attributed) credited to a referral code of a
-- program. One per (project, program, referee person). `status`: attributed → qualified (rewards written to the
-- ledger; `capped` when the referrer's cap was reached), or rejected (e.g. a self-referral); `signals` is the
-- JSON list of fraud signals found.
CREATE TABLE referrals (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id     INTEGER NOT NULL REFERENCES projects(id),
    program        TEXT NOT NULL,
    code_id        INTEGER NOT NULL REFERENCES referral_codes(id),
    referrer       TEXT NOT NULL,
    referee        TEXT NOT NULL,
    referee_person TEXT NOT NULL,
    click_token    TEXT,
    status         TEXT NOT NULL,
    signals        TEXT NOT NULL DEFAULT '[]',
    attributed_at  TEXT NOT NULL,
    qualified_at   TEXT,
    updated_at     TEXT NOT NULL,
    UNIQUE (project_id, program, referee_person)
);
CREATE INDEX referrals_referrer ON referrals (project_id, program, referrer);
