-- PostgreSQL twin of sqlite/0007_identity_seq.sql. Every identity transaction that changes the distinct id →
-- person mapping or a person's properties is numbered (the 'identity' row of `id_sequences`); rows carry the number
-- of the transaction that last changed them.
ALTER TABLE person_distinct_ids ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX person_distinct_ids_seq ON person_distinct_ids(seq);
ALTER TABLE persons ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX persons_seq ON persons(seq);
INSERT INTO id_sequences (name, last) VALUES ('identity', 0);
