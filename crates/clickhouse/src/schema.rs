//! The tables of the ClickHouse event backend, as DDL (see `docs/clickhouse.md` for the reasoning).
//!
//! - `events`: one row per event, `MergeTree` partitioned by month, ordered by (project, event, day, distinct id,
//!   time). Times are `timestamp_us Int64` (microseconds since the epoch, UTC): ClickHouse 18.16 has no
//!   `DateTime64`, and funnels and first-event questions need the engine's microsecond order. `timestamp` is the
//!   same instant in whole seconds, a `MATERIALIZED` `DateTime('UTC')` for the partition and the primary key, so
//!   the two can never disagree. `person_id` is the person the event resolved to when it was written.
//! - `person_overrides`: when a merge re-points a distinct id to another person, one row (`distinct_id` →
//!   `person_id`, `version`) is appended here instead of rewriting the events. `ReplacingMergeTree(version)`
//!   keeps the newest row per distinct id after merges; readers never rely on merges having happened and take
//!   `argMax(person_id, version)` per distinct id, joined to the events at read time.
//! - `persons`: every person's current properties, indexed as the events' are (for person-property filters and
//!   breakdowns), one row per change: `ReplacingMergeTree(version)` ordered by (project, the metadata store's
//!   person id), `version` the identity change's number, `deleted = 1` once the person is erased. Readers take
//!   `argMax(…, version)` per person id; events reach it by their resolved person's uuid.

/// The events table.
pub const EVENTS: &str = "events";
/// The person-override table.
pub const PERSON_OVERRIDES: &str = "person_overrides";
/// The persons table (current properties of every person, by version).
pub const PERSONS: &str = "persons";
/// Table name of the shipments (what each node has sent from its intake log).
pub const SHIPMENTS: &str = "shipments";

/// `CREATE DATABASE IF NOT EXISTS`.
pub fn create_database(db: &str) -> String {
    format!("CREATE DATABASE IF NOT EXISTS {}", ident(db))
}

/// The events table, on one server. `engine` is `MergeTree` here; a cluster uses
/// [`events_table_with_engine`] with `ReplicatedMergeTree(…)`.
pub fn events_table(db: &str) -> String {
    events_table_with_engine(db, EVENTS, "MergeTree")
}

/// The events table under `name` with a given MergeTree-family `engine` (a cluster's local table is
/// `ReplicatedMergeTree('/clickhouse/tables/{shard}/events', '{replica}')`).
pub fn events_table_with_engine(db: &str, name: &str, engine: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{name} (
    uuid UUID,
    project_id UInt64,
    event String,
    distinct_id String,
    person_id UUID,
    timestamp_us Int64,
    timestamp DateTime('UTC') MATERIALIZED toDateTime(intDiv(timestamp_us, 1000000), 'UTC'),
    properties String,
    prop_keys Array(String),
    prop_texts Array(String),
    prop_numbers Array(Float64),
    prop_lower Array(String),
    inserted_at DateTime('UTC') DEFAULT now(),
    _node String DEFAULT '',
    _lsn UInt64 DEFAULT 0,
    _idx UInt32 DEFAULT 0
) ENGINE = {engine}
PARTITION BY toYYYYMM(timestamp)
ORDER BY (project_id, event, toDate(timestamp), distinct_id, timestamp_us, uuid)",
        db = ident(db),
        name = ident(name),
    )
}

/// The person-override table, on one server.
pub fn person_overrides_table(db: &str) -> String {
    person_overrides_table_with_engine(db, PERSON_OVERRIDES, "ReplacingMergeTree(version)")
}

/// The person-override table under `name` with a given engine (a cluster's local table is
/// `ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/person_overrides', '{replica}', version)`).
pub fn person_overrides_table_with_engine(db: &str, name: &str, engine: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{name} (
    project_id UInt64,
    distinct_id String,
    person_id UUID,
    version UInt64,
    created_at DateTime('UTC') DEFAULT now()
) ENGINE = {engine}
ORDER BY (project_id, distinct_id)",
        db = ident(db),
        name = ident(name),
    )
}

/// The persons table, on one server.
pub fn persons_table(db: &str) -> String {
    persons_table_with_engine(db, PERSONS, "ReplacingMergeTree(version)")
}

/// The persons table under `name` with a given engine (a cluster's, replicated to every server like the overrides:
/// `ReplicatedReplacingMergeTree('/clickhouse/tables/all/persons', '{replica}', version)`).
///
/// `id` is the metadata store's person id (it never changes; a person's uuid does not either). The property
/// arrays are built like the events' ([`crate::row`]); a deleted row (an erased person) has none.
pub fn persons_table_with_engine(db: &str, name: &str, engine: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{name} (
    project_id UInt64,
    id Int64,
    uuid UUID,
    prop_keys Array(String),
    prop_texts Array(String),
    prop_numbers Array(Float64),
    prop_lower Array(String),
    deleted UInt8,
    version UInt64,
    inserted_at DateTime('UTC') DEFAULT now()
) ENGINE = {engine}
ORDER BY (project_id, id)",
        db = ident(db),
        name = ident(name),
    )
}

/// What each node has shipped from its intake log (see `ship`): one row per block, small.
pub fn shipments_table(db: &str) -> String {
    shipments_table_with_engine(db, SHIPMENTS, "MergeTree")
}

/// The shipments table under `name` with a given engine.
pub fn shipments_table_with_engine(db: &str, name: &str, engine: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{name} (
    node String,
    start_lsn UInt64,
    end_lsn UInt64,
    rows UInt64,
    shipped_at DateTime('UTC') DEFAULT now()
) ENGINE = {engine}
ORDER BY (node, end_lsn)",
        db = ident(db),
        name = ident(name),
    )
}

/// Every statement that creates the schema on one server, in order.
pub fn create_all(db: &str) -> Vec<String> {
    vec![
        create_database(db),
        events_table(db),
        person_overrides_table(db),
        shipments_table(db),
        persons_table(db),
    ]
}

/// Columns `events` gained after tables were first created in deployments: added to an older table on start.
const EVENTS_ADDED: &[(&str, &str)] = &[("_idx", "UInt32 DEFAULT 0")];

/// Brings tables created by an earlier version up to this one's columns (after [`create_all`]). ClickHouse 18.16
/// has no `ADD COLUMN IF NOT EXISTS`: `system.columns` says what is missing.
pub async fn upgrade(client: &crate::Client, db: &str) -> Result<(), crate::ClickHouseError> {
    for (column, definition) in EVENTS_ADDED {
        let found = client
            .query_rows(&format!(
                "SELECT count() FROM system.columns WHERE database = {} AND table = {} AND name = {}",
                crate::sql::quote(db),
                crate::sql::quote(EVENTS),
                crate::sql::quote(column)
            ))
            .await?;
        if found.first().and_then(|r| r.first()).map(String::as_str) == Some("0") {
            client
                .execute(&format!(
                    "ALTER TABLE {}.{} ADD COLUMN {} {definition}",
                    ident(db),
                    ident(EVENTS),
                    ident(column)
                ))
                .await?;
        }
    }
    Ok(())
}

/// A database or table name, back-quoted (ClickHouse identifiers; a back quote or backslash is escaped).
pub fn ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('`');
    for c in name.chars() {
        if c == '`' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('`');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("flywheel"), "`flywheel`");
        assert_eq!(ident("a`b"), "`a\\`b`");
    }

    #[test]
    fn events_are_partitioned_by_month_and_ordered_for_the_insights() {
        let ddl = events_table("fw");
        assert!(ddl.contains("PARTITION BY toYYYYMM(timestamp)"));
        assert!(ddl.contains("ORDER BY (project_id, event, toDate(timestamp), distinct_id"));
        assert!(person_overrides_table("fw").contains("ReplacingMergeTree(version)"));
        assert!(
            persons_table("fw").contains("ReplacingMergeTree(version)\nORDER BY (project_id, id)")
        );
        assert!(create_all("fw")
            .iter()
            .any(|s| s.contains("`fw`.`persons`")));
    }
}
