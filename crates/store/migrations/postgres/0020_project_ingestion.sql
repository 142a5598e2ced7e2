-- PostgreSQL twin of sqlite/0020_project_ingestion.sql. A project's ingestion settings overriding the server's
-- (a JSON object, as text).
ALTER TABLE projects ADD COLUMN ingestion TEXT NOT NULL DEFAULT '{}';
