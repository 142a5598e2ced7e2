//! Sticky bucket assignments of server-side evaluations (migration 0010): one JSON object of
//! `"<experiment>__<bucket version>" → variation key` per project and hash attribute value.

use crate::{now_text, Result, Store};
use crate::{on_conn, on_pool};

/// One stored document: (project, `"<attribute>||<value>"`, assignments as a JSON object text).
pub type StickyRow = (i64, String, String);

impl Store {
    /// Every stored assignment document.
    pub async fn sticky_assignments(&self) -> Result<Vec<StickyRow>> {
        Ok(on_pool!(self, |c| sqlx::query_as(
            "SELECT project_id, attribute_key, assignments FROM sticky_assignments"
        )
        .fetch_all(c)
        .await)?)
    }

    /// Inserts or replaces documents, in one transaction; a document without assignments (`{}`) is deleted.
    pub async fn save_sticky_assignments(&self, rows: &[StickyRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        let now = now_text();
        for (project_id, key, assignments) in rows {
            if assignments == "{}" {
                on_conn!(&mut tx, |c| sqlx::query(
                    "DELETE FROM sticky_assignments WHERE project_id = $1 AND attribute_key = $2",
                )
                .bind(project_id)
                .bind(key)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                continue;
            }
            on_conn!(&mut tx, |c| {
                sqlx::query(
                "INSERT INTO sticky_assignments (project_id, attribute_key, assignments, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (project_id, attribute_key)
                 DO UPDATE SET assignments = excluded.assignments, updated_at = excluded.updated_at",
            )
            .bind(project_id)
            .bind(key)
            .bind(assignments)
            .bind(&now)
            .execute(c)
            .await.map(|r| r.rows_affected())
            })?;
        }
        tx.commit().await?;
        Ok(())
    }
}
