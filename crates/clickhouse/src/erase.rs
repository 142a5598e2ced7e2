//! A person's events in ClickHouse: read for a GDPR export, deleted for an erasure; and a project's events older
//! than its retention deleted.
//!
//! Both are `ALTER TABLE … DELETE` mutations (ClickHouse ≥ 1.1.54388, so 18.16 too): ClickHouse accepts them at
//! once and rewrites the affected parts in the background; rows inserted after the statement are not touched, so
//! callers issue them once everything to delete has been shipped. [`pending`] tells when they are done.

use crate::schema::{ident, EVENTS, PERSON_OVERRIDES};
use crate::sql::quote;
use crate::{ClickHouseError, Client};

/// One stored event, as a GDPR export lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedEvent {
    pub uuid: String,
    pub event: String,
    pub distinct_id: String,
    pub timestamp_us: i64,
    /// The properties as captured (JSON text).
    pub properties: String,
}

/// Every event of `distinct_ids` in a project, oldest first (what every node shipped).
pub async fn events_of(
    client: &Client,
    db: &str,
    project_id: i64,
    distinct_ids: &[String],
) -> Result<Vec<ExportedEvent>, ClickHouseError> {
    if distinct_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query_rows(&format!(
            "SELECT toString(uuid), event, distinct_id, timestamp_us, properties FROM {}.{}
              WHERE project_id = {project_id} AND distinct_id IN ({})
              ORDER BY timestamp_us, uuid",
            ident(db),
            ident(EVENTS),
            in_list(distinct_ids)
        ))
        .await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.len() == 5)
        .map(|mut r| ExportedEvent {
            properties: r.pop().unwrap_or_default(),
            timestamp_us: r.pop().and_then(|t| t.parse().ok()).unwrap_or(0),
            distinct_id: r.pop().unwrap_or_default(),
            event: r.pop().unwrap_or_default(),
            uuid: r.pop().unwrap_or_default(),
        })
        .collect())
}

fn in_list(values: &[String]) -> String {
    values
        .iter()
        .map(|d| quote(d))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deletes the events of `distinct_ids` in a project, and their rows of the person mapping.
pub async fn erase_distinct_ids(
    client: &Client,
    db: &str,
    project_id: i64,
    distinct_ids: &[String],
) -> Result<(), ClickHouseError> {
    if distinct_ids.is_empty() {
        return Ok(());
    }
    let list = in_list(distinct_ids);
    for table in [EVENTS, PERSON_OVERRIDES] {
        client
            .execute(&format!(
                "ALTER TABLE {}.{} DELETE WHERE project_id = {project_id} AND distinct_id IN ({list})",
                ident(db),
                ident(table)
            ))
            .await?;
    }
    Ok(())
}

/// Deletes a project's events before `before_us` (µs since the epoch): how many there were (no mutation is
/// issued for none, so that nodes checking every hour do not rewrite parts for nothing).
pub async fn delete_before(
    client: &Client,
    db: &str,
    project_id: i64,
    before_us: i64,
) -> Result<u64, ClickHouseError> {
    let condition = format!("project_id = {project_id} AND timestamp_us < {before_us}");
    let table = format!("{}.{}", ident(db), ident(EVENTS));
    let n = count(
        client,
        &format!("SELECT count() FROM {table} WHERE {condition}"),
    )
    .await?;
    if n > 0 {
        client
            .execute(&format!("ALTER TABLE {table} DELETE WHERE {condition}"))
            .await?;
    }
    Ok(n)
}

/// Mutations of the database not finished yet.
pub async fn pending(client: &Client, db: &str) -> Result<u64, ClickHouseError> {
    count(
        client,
        &format!(
            "SELECT count() FROM system.mutations WHERE database = {} AND is_done = 0",
            quote(db)
        ),
    )
    .await
}

async fn count(client: &Client, sql: &str) -> Result<u64, ClickHouseError> {
    let rows = client.query_rows(sql).await?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}
