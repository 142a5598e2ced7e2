-- A project's ingestion settings, overriding the server's: `{"capture_ip": "full"|"truncated"|"off",
-- "scrub_properties": [...], "capture_events_per_second": n}` (each key optional; absent: the server's setting).
ALTER TABLE projects ADD COLUMN ingestion TEXT NOT NULL DEFAULT '{}';
