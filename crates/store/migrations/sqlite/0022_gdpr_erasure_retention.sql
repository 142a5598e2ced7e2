-- Data retention: a project's events older than this many days are dropped by the retention job (NULL: kept
-- forever).
ALTER TABLE projects ADD COLUMN retention_days INTEGER CHECK (retention_days IS NULL OR retention_days >= 1);

-- GDPR erasure rewrites the audit entries that name an erased person (their identifiers replaced by tombstones).
-- The audit log stays append-only for everything else: an update is refused unless an erasure is in progress in
-- the same transaction (a row in `audit_redactions`, inserted and deleted by that transaction, so the table is
-- empty whenever no erasure runs), and even then the entry keeps its id, project, action, entity type and time.
-- Deletes are still refused.
CREATE TABLE audit_redactions (
    erasure_id TEXT PRIMARY KEY
);
DROP TRIGGER audit_log_no_update;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
WHEN NOT EXISTS (SELECT 1 FROM audit_redactions)
    OR NEW.id IS NOT OLD.id
    OR NEW.project_id IS NOT OLD.project_id
    OR NEW.action IS NOT OLD.action
    OR NEW.entity_type IS NOT OLD.entity_type
    OR NEW.at IS NOT OLD.at
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
