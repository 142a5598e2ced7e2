-- Named configuration objects of a project whose content is a JSON document validated by the server: experiment
-- metrics (`kind = 'metric'`) and experiments (`kind = 'experiment'`), more kinds later. One table and one store
-- API for all of them: a key unique per (project, kind), a name, the document, a version that counts every change
-- (optimistic concurrency: a stale update gets 409), archiving instead of deletion (audit entries keep naming it).
CREATE TABLE documents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    name        TEXT NOT NULL,
    body        TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    archived    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (project_id, kind, key)
);
