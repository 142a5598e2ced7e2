-- PostgreSQL twin of sqlite/0024_person_erasures.sql: persons erased (GDPR), numbered by the identity change that
-- erased them, for consumers that follow persons by that number. Only the store's ids are kept.
CREATE TABLE person_erasures (
    person_id   BIGINT PRIMARY KEY,
    project_id  BIGINT NOT NULL,
    seq         BIGINT NOT NULL
);
CREATE INDEX person_erasures_seq ON person_erasures(seq);
