-- Webhooks: a project's subscriptions to outbox topics (patterns: `reward.approved`, `reward.*`, `*`), delivered
-- in outbox order per endpoint. `cursor` is the last outbox id the endpoint has taken (a subscription starts at the
-- outbox's end when created). The secret signs deliveries (HMAC-SHA256), so it is kept as it is; it is shown once.
CREATE TABLE webhooks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    url          TEXT NOT NULL,
    secret       TEXT NOT NULL,
    topics       TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    active       INTEGER NOT NULL DEFAULT 1,
    cursor       INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX webhooks_project ON webhooks (project_id);

-- One message (an outbox entry) for one endpoint: `pending` until a 2xx answer (`delivered`) or the last attempt
-- (`dead`: the dead-letter list, replayable by hand).
CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id      INTEGER NOT NULL REFERENCES webhooks(id),
    outbox_id       INTEGER NOT NULL REFERENCES outbox(id),
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (webhook_id, outbox_id)
);
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (webhook_id, status, outbox_id);

-- Every attempt: when, its id (sent as a header, unique), the answer's status or the error, how long it took.
CREATE TABLE webhook_attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  INTEGER NOT NULL REFERENCES webhook_deliveries(id),
    attempt_id   TEXT NOT NULL UNIQUE,
    at           TEXT NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    duration_ms  INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
