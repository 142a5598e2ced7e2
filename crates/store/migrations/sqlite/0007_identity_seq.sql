-- Every identity transaction that changes the distinct id → person mapping or a person's properties is numbered,
-- so that consumers that keep them (the event engine persists the mapping next to its segments; insights keep
-- person-property columns) read only what changed since the number they hold. The identity writer takes the next
-- value of the 'identity' sequence once per such transaction and sets it on every `person_distinct_ids` row it
-- inserts or moves and every `persons` row it creates or whose properties it changes. Rows from before this
-- migration have 0.
ALTER TABLE person_distinct_ids ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX person_distinct_ids_seq ON person_distinct_ids(seq);
ALTER TABLE persons ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX persons_seq ON persons(seq);
INSERT INTO id_sequences (name, last) VALUES ('identity', 0);
