//! A person's events in ClickHouse: read for a GDPR export, deleted for an erasure; and a project's events older
//! than its retention deleted.
//!
//! Both are `ALTER TABLE … DELETE` mutations (ClickHouse ≥ 1.1.54388, so 18.16 too): ClickHouse accepts them at
//! once and rewrites the affected parts in the background; rows inserted after the statement are not touched, so
//! callers issue them once everything to delete has been shipped. [`pending`] tells when they are done.

use serde_json::Value;

use crate::row::PropIndex;
use crate::schema::{ident, EVENTS, PERSONS, PERSON_OVERRIDES};
use crate::sql::{float, quote};
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

/// Statement text per masking mutation (ClickHouse parses the whole statement in memory; the client raises
/// `max_query_size` to 16 MiB).
const MASK_STATEMENT_BYTES: usize = 1 << 20;

/// Masks mentions of an erased person inside *other* events of a project (their own are deleted by
/// [`erase_distinct_ids`]): reads the rows whose properties contain one of `needles` (plain spellings), asks `mask`
/// for each one's new properties (the embedded engine's rules, so both stores agree; `None`: nothing to mask there),
/// and rewrites those rows in place with `ALTER TABLE … UPDATE` mutations choosing each row's new JSON and property
/// index by uuid. The rows keep everything else (node, log position, order), so no reader ever sees one twice or
/// misses it, and a masking cut short is completed by running it again (masked rows no longer match). Returns how
/// many rows were masked.
pub async fn mask_mentions(
    client: &Client,
    db: &str,
    project_id: i64,
    needles: &[String],
    mask: impl Fn(&str) -> Option<String>,
) -> Result<u64, ClickHouseError> {
    let needles: Vec<&String> = needles.iter().filter(|n| !n.is_empty()).collect();
    if needles.is_empty() {
        return Ok(0);
    }
    let mentions = needles
        .iter()
        .map(|n| format!("position(properties, {}) > 0", quote(n)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let table = format!("{}.{}", ident(db), ident(EVENTS));
    let rows = client
        .query_rows(&format!(
            "SELECT toString(uuid), properties FROM {table} WHERE project_id = {project_id} AND ({mentions})"
        ))
        .await?;
    let mut batch = Masking::default();
    let mut masked = 0;
    for row in rows {
        let [uuid, properties] =
            <[String; 2]>::try_from(row).map_err(|r| ClickHouseError::Decode {
                statement: "mask_mentions".into(),
                message: format!("expected (uuid, properties), got {} fields", r.len()),
            })?;
        let Some(new) = mask(&properties) else {
            continue;
        };
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&new) else {
            continue;
        };
        batch.push(&uuid, &new, &PropIndex::new(&map));
        masked += 1;
        if batch.bytes >= MASK_STATEMENT_BYTES {
            client.execute(&batch.statement(&table, project_id)).await?;
            batch = Masking::default();
        }
    }
    if !batch.uuids.is_empty() {
        client.execute(&batch.statement(&table, project_id)).await?;
    }
    Ok(masked)
}

/// The literals of one masking mutation: per row, its uuid, new JSON and property index.
#[derive(Default)]
struct Masking {
    uuids: Vec<String>,
    properties: Vec<String>,
    keys: Vec<String>,
    texts: Vec<String>,
    numbers: Vec<String>,
    lower: Vec<String>,
    bytes: usize,
}

impl Masking {
    fn push(&mut self, uuid: &str, properties: &str, ix: &PropIndex) {
        let strings = |xs: &[String]| {
            format!(
                "[{}]",
                xs.iter().map(|x| quote(x)).collect::<Vec<_>>().join(",")
            )
        };
        self.uuids.push(quote(uuid));
        self.properties.push(quote(properties));
        self.keys.push(strings(&ix.keys));
        self.texts.push(strings(&ix.texts));
        self.lower.push(strings(&ix.lower));
        let numbers: Vec<String> = ix.numbers.iter().map(|n| float(n.0)).collect();
        self.numbers.push(format!("[{}]", numbers.join(",")));
        self.bytes += properties.len() * 3 + 64;
    }

    /// `ALTER TABLE … UPDATE` of the rows by uuid. Each array column is chosen from a constant array of arrays
    /// (typed by `CAST`, so rows whose index is empty type too).
    fn statement(&self, table: &str, project_id: i64) -> String {
        let uuids = format!("[{}]", self.uuids.join(","));
        let at = format!("indexOf({uuids}, toString(uuid))");
        let pick = |values: &[String], ty: &str| {
            format!(
                "arrayElement(CAST([{}] AS Array({ty})), {at})",
                values.join(",")
            )
        };
        format!(
            "ALTER TABLE {table} UPDATE properties = {}, prop_keys = {}, prop_texts = {}, prop_numbers = {}, \
             prop_lower = {} WHERE project_id = {project_id} AND has({uuids}, toString(uuid))",
            pick(&self.properties, "String"),
            pick(&self.keys, "Array(String)"),
            pick(&self.texts, "Array(String)"),
            pick(&self.numbers, "Array(Float64)"),
            pick(&self.lower, "Array(String)"),
        )
    }
}

/// Deletes the property-bearing rows of an erased person in `persons` — by store id, and by uuid for the persons
/// merged into them (rows that are never read again, but hold property values) — keeping erasure markers
/// (`deleted = 1`). Without it the older rows would keep the values until ClickHouse merges the parts, which it does
/// when it likes.
pub async fn drop_person_history(
    client: &Client,
    db: &str,
    project_id: i64,
    person_ids: &[i64],
    uuids: &[String],
) -> Result<(), ClickHouseError> {
    if person_ids.is_empty() && uuids.is_empty() {
        return Ok(());
    }
    let ids = person_ids
        .iter()
        .map(i64::to_string)
        .chain(std::iter::once("-1".to_owned()))
        .collect::<Vec<_>>()
        .join(", ");
    let uuids = in_list(&[uuids, &[String::new()]].concat());
    client
        .execute(&format!(
            "ALTER TABLE {}.{} DELETE WHERE project_id = {project_id} AND deleted = 0 \
             AND (id IN ({ids}) OR toString(uuid) IN ({uuids}))",
            ident(db),
            ident(PERSONS)
        ))
        .await
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
