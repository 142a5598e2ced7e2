-- Referrals: a referee (a person, by the uuid their distinct id had when attributed) credited to a referral code of a
-- program. One per (project, program, referee person). `status`: attributed → qualified (rewards written to the
-- ledger; `capped` when the referrer's cap was reached), `held` for review (then qualified or rejected by hand), or
-- rejected (a self-referral, or a risk score at the program's threshold); `signals` is the JSON list of fraud
-- signals found and `risk_score` their score.
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
    risk_score     INTEGER NOT NULL DEFAULT 0,
    attributed_at  TEXT NOT NULL,
    qualified_at   TEXT,
    updated_at     TEXT NOT NULL,
    UNIQUE (project_id, program, referee_person)
);
CREATE INDEX referrals_referrer ON referrals (project_id, program, referrer);
