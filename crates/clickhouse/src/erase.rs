//! Deleting events from ClickHouse: a person's (GDPR erasure) and a project's older than its retention.
//!
//! Both are `ALTER TABLE … DELETE` mutations (ClickHouse ≥ 1.1.54388, so 18.16 too): ClickHouse accepts them at
//! once and rewrites the affected parts in the background; rows inserted after the statement are not touched, so
//! callers issue them once everything to delete has been shipped. [`pending`] tells when they are done.

use crate::schema::{ident, EVENTS, PERSON_OVERRIDES};
use crate::sql::quote;
use crate::{ClickHouseError, Client};

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
    let list = distinct_ids
        .iter()
        .map(|d| quote(d))
        .collect::<Vec<_>>()
        .join(", ");
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
