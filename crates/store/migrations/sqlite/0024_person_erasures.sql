-- Persons erased (GDPR), numbered by the identity change that erased them (the 'identity' sequence, 0007), so
-- that consumers following persons by that number see the erasure too: the ClickHouse persons table gets a deleted
-- row. Only the store's ids are kept: no uuid, no property.
CREATE TABLE person_erasures (
    person_id   INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL,
    seq         INTEGER NOT NULL
);
CREATE INDEX person_erasures_seq ON person_erasures(seq);
