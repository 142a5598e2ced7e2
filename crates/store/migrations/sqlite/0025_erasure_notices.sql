-- Erasures announced to every node sharing the metadata store (PostgreSQL): each node drops the erased distinct
-- ids' events from its own intake log and tables, and from what it shipped to ClickHouse. Only SHA-256 digests of
-- the ids are kept (`erasure::digest`); a node learns the ids themselves only from its own events. On SQLite (one
-- node) the table stays empty.
CREATE TABLE erasure_notices (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL,
    node        TEXT NOT NULL,   -- the node that erased: it has done its part
    digests     TEXT NOT NULL,   -- JSON array of lowercase hex digests
    created_at  TEXT NOT NULL
);
