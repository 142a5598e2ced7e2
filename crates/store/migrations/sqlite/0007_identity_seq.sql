-- Every change of the distinct id → person mapping is numbered, so that a consumer that keeps the mapping (the
-- event engine persists it next to its segments) can read only what changed since the number it holds. The
-- identity writer numbers each transaction that inserts or moves distinct ids with the next value of the
-- 'identity' sequence and sets it on the rows it touches. Rows from before this migration have 0.
ALTER TABLE person_distinct_ids ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX person_distinct_ids_seq ON person_distinct_ids(seq);
INSERT INTO id_sequences (name, last) VALUES ('identity', 0);
