-- PostgreSQL twin of sqlite/0016_pql_scores.sql. Product-qualified-lead scores: the last score of each entity under
-- each model, with its explanation; `qualified` (a BOOLEAN: the store binds and reads a bool).
CREATE TABLE pql_scores (
    project_id   BIGINT NOT NULL REFERENCES projects(id),
    model        TEXT NOT NULL,
    entity       TEXT NOT NULL,
    label        TEXT NOT NULL,
    score        DOUBLE PRECISION NOT NULL,
    qualified    BOOLEAN NOT NULL,
    version      BIGINT NOT NULL,
    explanation  TEXT NOT NULL,
    qualified_at TEXT,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (project_id, model, entity)
);
CREATE INDEX pql_scores_rank ON pql_scores (project_id, model, score DESC);
