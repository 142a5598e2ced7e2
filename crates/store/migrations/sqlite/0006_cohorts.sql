-- Cohorts: saved, named sets of persons. A dynamic cohort is a definition (person properties and behaviour, in
-- `filters`, JSON) evaluated when it is used; a static cohort is a list of persons (`cohort_people`), uploaded.
-- `version` counts every change, including a static cohort's members, so cached answers that used a cohort are
-- keyed by it. Deleting a cohort marks it `deleted` (insights saved with it then answer 400, naming it).
CREATE TABLE cohorts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    is_static    INTEGER NOT NULL DEFAULT 0,
    filters      TEXT,
    version      INTEGER NOT NULL DEFAULT 1,
    deleted      INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX cohorts_project ON cohorts(project_id);

-- Members of static cohorts. Identity merges move the merged person's rows to the surviving person.
CREATE TABLE cohort_people (
    cohort_id  INTEGER NOT NULL REFERENCES cohorts(id),
    person_id  INTEGER NOT NULL,
    PRIMARY KEY (cohort_id, person_id)
) WITHOUT ROWID;
CREATE INDEX cohort_people_person ON cohort_people(person_id);
