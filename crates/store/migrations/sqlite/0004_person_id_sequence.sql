-- Person ids are never reused. SQLite gives a new row max(id) + 1, so deleting the newest person (a merge deletes
-- the merged-away person) let the next person take its id; consumers that keep "person X was merged into Y" in
-- memory (the event engine) would then send the new person's events to Y. Ids now come from this sequence.
CREATE TABLE id_sequences (
    name  TEXT PRIMARY KEY,
    last  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO id_sequences (name, last) SELECT 'persons', COALESCE(MAX(id), 0) FROM persons;
