-- Sticky bucketing of server-side evaluations (GrowthBook's sticky bucket documents): per project and hash
-- attribute value (`attribute_key` = "<attribute>||<value>"), the variation each experiment (by
-- "<experiment key>__<bucket version>") assigned, as a JSON object. Users keep their variation when an experiment's
-- weights or coverage change.
CREATE TABLE sticky_assignments (
    project_id    INTEGER NOT NULL REFERENCES projects(id),
    attribute_key TEXT NOT NULL,
    assignments   TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (project_id, attribute_key)
);
