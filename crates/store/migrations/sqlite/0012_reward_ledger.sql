-- The reward ledger: append-only (the store has no statement that updates or deletes its rows; GDPR erasure will
-- be the one exception, so no trigger forbids it). An entry (what is owed to whom, why) never changes; its life is a list of
-- transitions (pending → approved → fulfilled, or → reversed), each appended with who, when and why. The current
-- status is the last transition's. `idempotency_key` makes a retried write return the entry it already made.
CREATE TABLE reward_entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id      INTEGER NOT NULL REFERENCES projects(id),
    beneficiary     TEXT NOT NULL,
    amount          REAL NOT NULL,
    unit            TEXT NOT NULL,
    reason          TEXT NOT NULL,
    program         TEXT,
    idempotency_key TEXT NOT NULL,
    hold_until      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    UNIQUE (project_id, idempotency_key)
);
CREATE INDEX reward_entries_beneficiary ON reward_entries (project_id, beneficiary);

CREATE TABLE reward_transitions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id   INTEGER NOT NULL REFERENCES reward_entries(id),
    status     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE INDEX reward_transitions_entry ON reward_transitions (entry_id, id);
-- Work list, not ledger: the entries still pending, by when their hold ends (a row leaves when its entry is approved
-- or reversed), so the approver reads only what is due.
CREATE TABLE reward_holds (
    entry_id    INTEGER PRIMARY KEY REFERENCES reward_entries(id),
    project_id  INTEGER NOT NULL,
    hold_until  TEXT NOT NULL
);
CREATE INDEX reward_holds_due ON reward_holds (hold_until);
