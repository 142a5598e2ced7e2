-- Share links: a sharer's link to a product object (a document, a dashboard…), with the views of the link and
-- the persons who came through it (a visitor who is identified has signed up). One link per (sharer, object).
CREATE TABLE share_links (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    token        TEXT NOT NULL UNIQUE,
    sharer       TEXT NOT NULL,
    object_type  TEXT NOT NULL,
    object_id    TEXT NOT NULL,
    url          TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (project_id, sharer, object_type, object_id)
);
CREATE TABLE share_views (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    link_id      INTEGER NOT NULL REFERENCES share_links(id),
    fingerprint  TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX share_views_link ON share_views (link_id);
CREATE TABLE share_visitors (
    link_id      INTEGER NOT NULL REFERENCES share_links(id),
    person_uuid  TEXT NOT NULL,
    distinct_id  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (link_id, person_uuid)
);
