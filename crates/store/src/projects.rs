//! Project settings: name, time zone, test-account filters, ingestion, data retention (changes are audited).

use serde::Serialize;
use serde_json::Value;

use crate::features::{append_audit, Actor};
use crate::{on_conn, on_pool};
use crate::{Result, Store};

/// A project's settings, as the API shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectSettings {
    pub id: i64,
    pub name: String,
    /// IANA time zone of the project's days, weeks and months (`UTC` by default).
    pub time_zone: String,
    /// Property filters (the insight `properties` format) that leave out test accounts.
    pub test_account_filters: Value,
    /// Ingestion settings overriding the server's (`capture_ip`, `scrub_properties`, `capture_events_per_second`).
    pub ingestion: Value,
    /// Events older than this many days are dropped by the retention job (`None`: kept forever).
    pub retention_days: Option<i64>,
    pub created_at: String,
}

/// What an update changes (`None`: unchanged). Values are validated by the caller.
#[derive(Debug, Default, Clone)]
pub struct ProjectUpdate {
    pub name: Option<String>,
    pub time_zone: Option<String>,
    pub test_account_filters: Option<Value>,
    pub ingestion: Option<Value>,
    /// `Some(None)`: keep events forever.
    pub retention_days: Option<Option<i64>>,
}

/// A project whose events are kept for a limited time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub project_id: i64,
    pub retention_days: i64,
}

type Row = (i64, String, String, String, String, Option<i64>, String);

fn from_row(
    (id, name, time_zone, filters, ingestion, retention_days, created_at): Row,
) -> Result<ProjectSettings> {
    Ok(ProjectSettings {
        id,
        name,
        time_zone,
        test_account_filters: serde_json::from_str(&filters)?,
        ingestion: serde_json::from_str(&ingestion)?,
        retention_days,
        created_at,
    })
}

const COLUMNS: &str =
    "id, name, time_zone, test_account_filters, ingestion, retention_days, created_at";

impl Store {
    /// The projects with a retention period, by id.
    pub async fn retention_policies(&self) -> Result<Vec<RetentionPolicy>> {
        let rows: Vec<(i64, i64)> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT id, retention_days FROM projects WHERE retention_days IS NOT NULL ORDER BY id",
        )
        .fetch_all(c)
        .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(project_id, retention_days)| RetentionPolicy {
                project_id,
                retention_days,
            })
            .collect())
    }

    /// The settings of a project (`None`: no such project).
    pub async fn project_settings(&self, project_id: i64) -> Result<Option<ProjectSettings>> {
        let row: Option<Row> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM projects WHERE id = $1"
        ))
        .bind(project_id)
        .fetch_optional(c)
        .await)?;
        row.map(from_row).transpose()
    }

    /// Applies `update` and appends a `project.updated` audit entry (none when nothing changed).
    pub async fn update_project_settings(
        &self,
        project_id: i64,
        update: &ProjectUpdate,
        actor: &Actor,
    ) -> Result<Option<ProjectSettings>> {
        let mut tx = self.write_tx().await?;
        let row: Option<Row> = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM projects WHERE id = $1"
        ))
        .bind(project_id)
        .fetch_optional(c)
        .await)?;
        let Some(before) = row.map(from_row).transpose()? else {
            return Ok(None);
        };
        let after = ProjectSettings {
            name: update.name.clone().unwrap_or_else(|| before.name.clone()),
            time_zone: update
                .time_zone
                .clone()
                .unwrap_or_else(|| before.time_zone.clone()),
            test_account_filters: update
                .test_account_filters
                .clone()
                .unwrap_or_else(|| before.test_account_filters.clone()),
            ingestion: update
                .ingestion
                .clone()
                .unwrap_or_else(|| before.ingestion.clone()),
            retention_days: update.retention_days.unwrap_or(before.retention_days),
            ..before.clone()
        };
        if after != before {
            on_conn!(&mut tx, |c| {
                sqlx::query(
                "UPDATE projects SET name = $1, time_zone = $2, test_account_filters = $3, ingestion = $4, retention_days = $5
                 WHERE id = $6",
            )
            .bind(&after.name)
            .bind(&after.time_zone)
            .bind(after.test_account_filters.to_string())
            .bind(after.ingestion.to_string())
            .bind(after.retention_days)
            .bind(project_id)
            .execute(c)
            .await.map(|r| r.rows_affected())
            })?;
            let (b, a) = (
                serde_json::to_value(&before)?,
                serde_json::to_value(&after)?,
            );
            append_audit(
                &mut tx,
                project_id,
                actor,
                "project.updated",
                "project",
                &project_id.to_string(),
                Some(&b),
                Some(&a),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(after))
    }
}
