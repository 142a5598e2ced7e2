-- PostgreSQL twin of sqlite/0010_sticky_assignments.sql. Sticky bucketing documents: per project and hash
-- attribute value, the variation each experiment assigned, as a JSON object (text).
CREATE TABLE sticky_assignments (
    project_id    BIGINT NOT NULL REFERENCES projects(id),
    attribute_key TEXT NOT NULL,
    assignments   TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (project_id, attribute_key)
);
