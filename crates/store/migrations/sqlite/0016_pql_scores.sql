-- Product-qualified-lead scores: the last score of each entity (a person by its id, or a group key) under each PQL
-- model, with the explanation of how it was reached. `qualified` says the score was at the model's threshold when
-- last scored; the scorer announces an entity in the outbox (`pql.qualified`) when it becomes qualified, so a row
-- remembers that it was announced. `version` is the model's version that scored it.
CREATE TABLE pql_scores (
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    model        TEXT NOT NULL,
    entity       TEXT NOT NULL,
    label        TEXT NOT NULL,
    score        REAL NOT NULL,
    qualified    INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    explanation  TEXT NOT NULL,
    qualified_at TEXT,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (project_id, model, entity)
);
CREATE INDEX pql_scores_rank ON pql_scores (project_id, model, score DESC);
