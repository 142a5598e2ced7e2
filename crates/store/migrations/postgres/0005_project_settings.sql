-- PostgreSQL twin of sqlite/0005_project_settings.sql. Project settings for insights: the IANA time zone that
-- days, weeks and months are counted in, and the filters that leave out test accounts (a JSON list, as text).
ALTER TABLE projects ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE projects ADD COLUMN test_account_filters TEXT NOT NULL DEFAULT '[]';
