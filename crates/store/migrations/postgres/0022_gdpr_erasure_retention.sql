-- PostgreSQL twin of sqlite/0022_gdpr_erasure_retention.sql.

-- Data retention: a project's events older than this many days are dropped by the retention job (NULL: kept
-- forever).
ALTER TABLE projects ADD COLUMN retention_days BIGINT CHECK (retention_days IS NULL OR retention_days >= 1);

-- GDPR erasure rewrites the audit entries that name an erased person. An update is refused unless an erasure is in
-- progress in the same transaction (a row in `audit_redactions`), and even then the entry keeps its id, project,
-- action, entity type and time. Deletes are still refused. SQLite's `IS NOT` is `IS DISTINCT FROM`.
CREATE TABLE audit_redactions (
    erasure_id TEXT PRIMARY KEY
);
DROP TRIGGER audit_log_no_update ON audit_log;
CREATE FUNCTION audit_log_redaction_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_redactions)
        OR NEW.id IS DISTINCT FROM OLD.id
        OR NEW.project_id IS DISTINCT FROM OLD.project_id
        OR NEW.action IS DISTINCT FROM OLD.action
        OR NEW.entity_type IS DISTINCT FROM OLD.entity_type
        OR NEW.at IS DISTINCT FROM OLD.at
    THEN
        RAISE EXCEPTION 'the audit log is append-only';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_redaction_only();
