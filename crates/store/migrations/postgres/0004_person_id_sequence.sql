-- PostgreSQL twin of sqlite/0004_person_id_sequence.sql. Person ids are never reused: they come from this table
-- (as in SQLite, so the store's statements stay the same; a PostgreSQL SEQUENCE would do too, see
-- docs/postgres.md).
CREATE TABLE id_sequences (
    name  TEXT PRIMARY KEY,
    last  BIGINT NOT NULL
);
INSERT INTO id_sequences (name, last) SELECT 'persons', COALESCE(MAX(id), 0) FROM persons;
