-- Announcements for the outside world (webhooks, once they land): written in the same transaction as the change
-- they announce, so none is lost and none announces a change that did not commit. `topic` is what happened
-- (`rollout.rolled_back`, …), `payload` the JSON message; `delivered_at` stays NULL until a deliverer sends it.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    topic        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX outbox_project ON outbox (project_id, id);
