//! Copying an embedded deployment's metadata (SQLite) into PostgreSQL, for `flywheel migrate`
//! (docs/scale-out.md, "Migrating an embedded deployment").
//!
//! The tables and their columns are read from the two schemas, not listed here: a table a future migration adds
//! is copied without a change to this file, and a table one schema has and the other lacks is an error before
//! anything is written. Tables are copied parents first (SQLite's foreign keys), each in primary-key order, a chunk
//! per PostgreSQL transaction, with ids verbatim and `INSERT … ON CONFLICT DO NOTHING`: copying again after an
//! interruption skips what is there, so nothing is ever stored twice. A chunk that did not insert all of its rows
//! is compared with the rows PostgreSQL holds under the same keys, so a target holding *other* data (a database a
//! node already bootstrapped, another deployment's) is refused, naming the table and the key, instead of being
//! merged silently.
//!
//! Conversions: integer, real and text values as they are; the `BOOLEAN` columns from SQLite's 0/1 (PostgreSQL's
//! types decide, see docs/postgres.md); the consumer checkpoints (`intake_checkpoints`) become the node's
//! (`consumer@node`), as the store keys them on PostgreSQL. Triggers that fire on insert are off while a chunk is
//! written (inside its transaction): a copy replays rows, not the writes that made them, and the rows a trigger
//! made on SQLite (a project's default environments) are copied like any other. Afterwards every identity
//! sequence is moved past the table's highest id (and past SQLite's AUTOINCREMENT high-water mark, so an id
//! deleted on SQLite is not handed out again).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::types::Value as SqliteValue;
use sqlx::Row;

use crate::{on_pool, Backend, Store, StoreError};

/// Rows read from SQLite and written to PostgreSQL per transaction.
pub const CHUNK_ROWS: usize = 2_000;

/// The migrations seed these counters (`id_sequences`: 0004, 0007) in a fresh PostgreSQL database; the copy
/// replaces a seeded value with SQLite's when it is not greater (a counter only grows).
const COUNTERS: &[(&str, &str)] = &[("id_sequences", "last")];

/// Errors of a copy.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the source must be a SQLite store and the target a PostgreSQL store")]
    Backends,
    #[error("the schemas differ: {0} (run the same flywheel version on both)")]
    Schema(String),
    #[error(
        "the target database holds different data: {table} {key} {what} (migrate into an empty database, or \
         the one an interrupted migration of this data directory left)"
    )]
    Differs {
        table: String,
        key: String,
        what: String,
    },
    #[error("{table}.{column}: cannot store {value} in a {kind} column")]
    Value {
        table: String,
        column: String,
        value: String,
        kind: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl From<sqlx::Error> for TransferError {
    fn from(e: sqlx::Error) -> Self {
        TransferError::Store(StoreError::Database(e))
    }
}

/// A PostgreSQL column type the copy converts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Bool,
    Float,
    Text,
    Bytes,
}

impl Kind {
    fn from_pg(data_type: &str) -> Option<Kind> {
        Some(match data_type {
            "bigint" | "integer" | "smallint" => Kind::Int,
            "boolean" => Kind::Bool,
            "double precision" | "real" => Kind::Float,
            "text" | "character varying" => Kind::Text,
            "bytea" => Kind::Bytes,
            _ => return None,
        })
    }

    fn array(self) -> &'static str {
        match self {
            Kind::Int => "bigint[]",
            Kind::Bool => "boolean[]",
            Kind::Float => "double precision[]",
            Kind::Text => "text[]",
            Kind::Bytes => "bytea[]",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Int => "BIGINT",
            Kind::Bool => "BOOLEAN",
            Kind::Float => "DOUBLE PRECISION",
            Kind::Text => "TEXT",
            Kind::Bytes => "BYTEA",
        }
    }
}

/// A value as PostgreSQL stores it.
#[derive(Clone, Debug)]
enum Cell {
    Null,
    Int(i64),
    Bool(bool),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl PartialEq for Cell {
    fn eq(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Null, Cell::Null) => true,
            (Cell::Int(a), Cell::Int(b)) => a == b,
            (Cell::Bool(a), Cell::Bool(b)) => a == b,
            (Cell::Float(a), Cell::Float(b)) => a.to_bits() == b.to_bits(),
            (Cell::Text(a), Cell::Text(b)) => a == b,
            (Cell::Bytes(a), Cell::Bytes(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => f.write_str("NULL"),
            Cell::Int(v) => write!(f, "{v}"),
            Cell::Bool(v) => write!(f, "{v}"),
            Cell::Float(v) => write!(f, "{v}"),
            Cell::Text(v) if v.chars().count() > 40 => {
                write!(f, "'{}…'", v.chars().take(40).collect::<String>())
            }
            Cell::Text(v) => write!(f, "'{v}'"),
            Cell::Bytes(v) => write!(f, "<{} bytes>", v.len()),
        }
    }
}

#[derive(Clone, Debug)]
struct Column {
    name: String,
    kind: Kind,
}

/// One table to copy, as both schemas describe it.
#[derive(Clone, Debug)]
pub struct Table {
    pub name: String,
    columns: Vec<Column>,
    /// Positions of the primary key's columns in `columns`, in key order.
    key: Vec<usize>,
    /// The identity column on PostgreSQL (a generated id), whose sequence is moved past the copied ids.
    identity: Option<String>,
    /// Triggers of the PostgreSQL table that fire on insert (off while a chunk is written).
    insert_triggers: Vec<String>,
}

/// `"name"`: an identifier for either dialect.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sqlite_pool(store: &Store) -> Result<&sqlx::SqlitePool, TransferError> {
    match store.backend() {
        Backend::Sqlite(p) => Ok(p),
        Backend::Postgres(_) => Err(TransferError::Backends),
    }
}

fn pg_pool(store: &Store) -> Result<&sqlx::PgPool, TransferError> {
    match store.backend() {
        Backend::Postgres(p) => Ok(p),
        Backend::Sqlite(_) => Err(TransferError::Backends),
    }
}

/// The tables to copy, parents before children, after checking that both schemas have the same tables and
/// columns.
pub async fn plan(source: &Store, target: &Store) -> Result<Vec<Table>, TransferError> {
    let lite = sqlite_pool(source)?;
    let pg = pg_pool(target)?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
           AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(lite)
    .await?;
    // SQLite: columns (with their place in the primary key) and the tables each one references.
    let mut sqlite_columns: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in &names {
        let cols: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, pk FROM pragma_table_info($1) ORDER BY cid")
                .bind(name)
                .fetch_all(lite)
                .await?;
        let refs: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT \"table\" FROM pragma_foreign_key_list($1)")
                .bind(name)
                .fetch_all(lite)
                .await?;
        sqlite_columns.insert(name.clone(), cols);
        parents.insert(
            name.clone(),
            refs.into_iter().filter(|r| r != name).collect(),
        );
    }
    // PostgreSQL: column types, identity columns, insert triggers.
    let pg_rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_identity::text
           FROM information_schema.columns
          WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(pg)
    .await?;
    let mut pg_columns: BTreeMap<String, HashMap<String, (String, bool)>> = BTreeMap::new();
    for (table, column, data_type, identity) in pg_rows {
        pg_columns
            .entry(table)
            .or_default()
            .insert(column, (data_type, identity == "YES"));
    }
    let triggers: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, t.tgname::text FROM pg_trigger t
           JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE NOT t.tgisinternal AND n.nspname = current_schema() AND (t.tgtype & 4) <> 0
          ORDER BY 1, 2",
    )
    .fetch_all(pg)
    .await?;
    let only_pg: Vec<&String> = pg_columns
        .keys()
        .filter(|t| !sqlite_columns.contains_key(*t))
        .collect();
    if !only_pg.is_empty() {
        return Err(TransferError::Schema(format!(
            "PostgreSQL has tables SQLite lacks: {only_pg:?}"
        )));
    }
    let mut tables = BTreeMap::new();
    for (name, cols) in &sqlite_columns {
        let Some(pg_cols) = pg_columns.get(name) else {
            return Err(TransferError::Schema(format!(
                "table {name} is missing on PostgreSQL"
            )));
        };
        if pg_cols.len() != cols.len() {
            let lite: BTreeSet<&str> = cols.iter().map(|(c, _)| c.as_str()).collect();
            let pgs: BTreeSet<&str> = pg_cols.keys().map(String::as_str).collect();
            return Err(TransferError::Schema(format!(
                "{name} has columns {lite:?} on SQLite and {pgs:?} on PostgreSQL"
            )));
        }
        let mut columns = Vec::new();
        let mut key: Vec<(i64, usize)> = Vec::new();
        let mut identity = None;
        for (i, (column, pk)) in cols.iter().enumerate() {
            let Some((data_type, is_identity)) = pg_cols.get(column) else {
                return Err(TransferError::Schema(format!(
                    "column {name}.{column} is missing on PostgreSQL"
                )));
            };
            let Some(kind) = Kind::from_pg(data_type) else {
                return Err(TransferError::Schema(format!(
                    "{name}.{column} has type {data_type} on PostgreSQL, which the copy does not convert to"
                )));
            };
            if *is_identity {
                identity = Some(column.clone());
            }
            if *pk > 0 {
                key.push((*pk, i));
            }
            columns.push(Column {
                name: column.clone(),
                kind,
            });
        }
        if key.is_empty() {
            return Err(TransferError::Schema(format!(
                "{name} has no primary key (the copy resumes by key)"
            )));
        }
        key.sort_unstable();
        tables.insert(
            name.clone(),
            Table {
                name: name.clone(),
                columns,
                key: key.into_iter().map(|(_, i)| i).collect(),
                identity,
                insert_triggers: triggers
                    .iter()
                    .filter(|(t, _)| t == name)
                    .map(|(_, trigger)| trigger.clone())
                    .collect(),
            },
        );
    }
    // Parents first; ties by name, so the order is the same on every run.
    let mut ordered = Vec::with_capacity(tables.len());
    let mut done: BTreeSet<String> = BTreeSet::new();
    while done.len() < tables.len() {
        let ready: Vec<String> = tables
            .keys()
            .filter(|t| !done.contains(*t))
            .filter(|t| {
                parents[*t]
                    .iter()
                    .all(|p| done.contains(p) || !tables.contains_key(p))
            })
            .cloned()
            .collect();
        if ready.is_empty() {
            let left: Vec<&String> = tables.keys().filter(|t| !done.contains(*t)).collect();
            return Err(TransferError::Schema(format!(
                "foreign keys form a cycle among {left:?}"
            )));
        }
        for t in ready {
            ordered.push(tables[&t].clone());
            done.insert(t);
        }
    }
    Ok(ordered)
}

/// Rows in `table` of `store` (either backend).
pub async fn count_rows(store: &Store, table: &str) -> Result<u64, TransferError> {
    let sql = format!("SELECT COUNT(*) FROM {}", quoted(table));
    let n: i64 = on_pool!(store, |c| sqlx::query_scalar(&sql).fetch_one(c).await)?;
    Ok(n.max(0) as u64)
}

/// What copying one table did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Rows read from SQLite.
    pub read: u64,
    /// Rows PostgreSQL did not hold yet.
    pub inserted: u64,
}

/// Converts a SQLite value to the PostgreSQL column's type.
fn cell(table: &str, column: &Column, value: SqliteValue) -> Result<Cell, TransferError> {
    let bad = |value: &SqliteValue| TransferError::Value {
        table: table.to_owned(),
        column: column.name.clone(),
        value: format!("{value:?}"),
        kind: column.kind.name(),
    };
    Ok(match (column.kind, value) {
        (_, SqliteValue::Null) => Cell::Null,
        (Kind::Int, SqliteValue::Integer(v)) => Cell::Int(v),
        (Kind::Int, SqliteValue::Real(v)) if v.fract() == 0.0 && v.abs() < 9.0e18 => {
            Cell::Int(v as i64)
        }
        (Kind::Bool, SqliteValue::Integer(v)) => Cell::Bool(v != 0),
        (Kind::Float, SqliteValue::Real(v)) => Cell::Float(v),
        (Kind::Float, SqliteValue::Integer(v)) => Cell::Float(v as f64),
        (Kind::Text, SqliteValue::Text(v)) => Cell::Text(v),
        // SQLite's TEXT affinity stores numbers given as numbers as they came.
        (Kind::Text, SqliteValue::Integer(v)) => Cell::Text(v.to_string()),
        (Kind::Text, SqliteValue::Real(v)) => Cell::Text(v.to_string()),
        (Kind::Text, SqliteValue::Blob(v)) => match String::from_utf8(v) {
            Ok(s) => Cell::Text(s),
            Err(e) => return Err(bad(&SqliteValue::Blob(e.into_bytes()))),
        },
        (Kind::Bytes, SqliteValue::Blob(v)) => Cell::Bytes(v),
        (Kind::Bytes, SqliteValue::Text(v)) => Cell::Bytes(v.into_bytes()),
        (_, other) => return Err(bad(&other)),
    })
}

/// A column of a chunk as one PostgreSQL array parameter.
fn bind_column<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    kind: Kind,
    cells: impl Iterator<Item = &'q Cell>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match kind {
        Kind::Int => q.bind(
            cells
                .map(|c| match c {
                    Cell::Int(v) => Some(*v),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Kind::Bool => q.bind(
            cells
                .map(|c| match c {
                    Cell::Bool(v) => Some(*v),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Kind::Float => q.bind(
            cells
                .map(|c| match c {
                    Cell::Float(v) => Some(*v),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Kind::Text => q.bind(
            cells
                .map(|c| match c {
                    Cell::Text(v) => Some(v.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Kind::Bytes => q.bind(
            cells
                .map(|c| match c {
                    Cell::Bytes(v) => Some(v.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
    }
}

fn decode(row: &sqlx::postgres::PgRow, i: usize, kind: Kind) -> Result<Cell, sqlx::Error> {
    Ok(match kind {
        Kind::Int => row.try_get::<Option<i64>, _>(i)?.map(Cell::Int),
        Kind::Bool => row.try_get::<Option<bool>, _>(i)?.map(Cell::Bool),
        Kind::Float => row.try_get::<Option<f64>, _>(i)?.map(Cell::Float),
        Kind::Text => row.try_get::<Option<String>, _>(i)?.map(Cell::Text),
        Kind::Bytes => row.try_get::<Option<Vec<u8>>, _>(i)?.map(Cell::Bytes),
    }
    .unwrap_or(Cell::Null))
}

/// Reads up to `limit` rows of `table` after the key `after`, in key order.
fn read_chunk(
    conn: &rusqlite::Connection,
    table: &Table,
    after: Option<&[SqliteValue]>,
    limit: usize,
) -> rusqlite::Result<Vec<Vec<SqliteValue>>> {
    let columns: Vec<String> = table.columns.iter().map(|c| quoted(&c.name)).collect();
    let key: Vec<&str> = table
        .key
        .iter()
        .map(|&i| columns[i].as_str())
        .collect::<Vec<_>>();
    let key_list = key.join(", ");
    let filter = match after {
        Some(_) => {
            let params: Vec<String> = (1..=key.len()).map(|i| format!("?{i}")).collect();
            format!("WHERE ({key_list}) > ({})", params.join(", "))
        }
        None => String::new(),
    };
    let sql = format!(
        "SELECT {} FROM {} {filter} ORDER BY {key_list} LIMIT {limit}",
        columns.join(", "),
        quoted(&table.name)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let n = table.columns.len();
    let map = |row: &rusqlite::Row<'_>| -> rusqlite::Result<Vec<SqliteValue>> {
        (0..n).map(|i| row.get::<_, SqliteValue>(i)).collect()
    };
    let rows = match after {
        Some(after) => stmt
            .query_map(rusqlite::params_from_iter(after.iter()), map)?
            .collect(),
        None => stmt.query_map([], map)?.collect(),
    };
    rows
}

/// Copies `table` from SQLite (`source`) into PostgreSQL (`target`, opened for `node`: the node whose intake log
/// the checkpoints are of). `on_chunk` gets the rows read so far after each chunk. Safe to run again: rows
/// PostgreSQL already holds are checked, not written twice.
pub async fn copy_table(
    source: &Store,
    target: &Store,
    table: &Table,
    node: &str,
    mut on_chunk: impl FnMut(u64),
) -> Result<Copied, TransferError> {
    sqlite_pool(source)?;
    let pg = pg_pool(target)?;
    let path = source.sqlite_path()?;
    let mut conn = Some(
        tokio::task::spawn_blocking(move || crate::persons::read_connection(&path))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??,
    );
    let names: Vec<String> = table.columns.iter().map(|c| quoted(&c.name)).collect();
    let arrays: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, c.kind.array()))
        .collect();
    let insert = format!(
        "INSERT INTO {} ({}) SELECT * FROM UNNEST({}) ON CONFLICT DO NOTHING",
        quoted(&table.name),
        names.join(", "),
        arrays.join(", ")
    );
    let checkpoints = table.name == "intake_checkpoints";
    let consumer = table.columns.iter().position(|c| c.name == "consumer");
    let mut after: Option<Vec<SqliteValue>> = None;
    let mut copied = Copied::default();
    loop {
        let reading = conn
            .take()
            .expect("the connection is returned after each chunk");
        let spec = table.clone();
        let from = after.clone();
        let (returned, read) = tokio::task::spawn_blocking(move || {
            let read = read_chunk(&reading, &spec, from.as_deref(), CHUNK_ROWS);
            (reading, read)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        conn = Some(returned);
        let raw = read?;
        let Some(last) = raw.last() else {
            return Ok(copied);
        };
        after = Some(table.key.iter().map(|&i| last[i].clone()).collect());
        let n = raw.len();
        let mut rows: Vec<Vec<Cell>> = Vec::with_capacity(n);
        for values in raw {
            let mut row = Vec::with_capacity(values.len());
            for (column, value) in table.columns.iter().zip(values) {
                row.push(cell(&table.name, column, value)?);
            }
            if let (true, Some(i)) = (checkpoints, consumer) {
                if let Cell::Text(name) = &row[i] {
                    if !name.contains('@') {
                        row[i] = Cell::Text(format!("{name}@{node}"));
                    }
                }
            }
            rows.push(row);
        }
        let mut tx = pg.begin().await?;
        // The metadata write lock: no node writes meanwhile (none should run on the target yet).
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(crate::WRITE_LOCK)
            .execute(&mut *tx)
            .await?;
        for trigger in &table.insert_triggers {
            let sql = format!(
                "ALTER TABLE {} DISABLE TRIGGER {}",
                quoted(&table.name),
                quoted(trigger)
            );
            sqlx::query(&sql).execute(&mut *tx).await?;
        }
        let mut q = sqlx::query(&insert);
        for (i, column) in table.columns.iter().enumerate() {
            q = bind_column(q, column.kind, rows.iter().map(|r| &r[i]));
        }
        let inserted = q.execute(&mut *tx).await?.rows_affected();
        if (inserted as usize) < n {
            reconcile(&mut tx, table, &rows).await?;
        }
        for trigger in &table.insert_triggers {
            let sql = format!(
                "ALTER TABLE {} ENABLE TRIGGER {}",
                quoted(&table.name),
                quoted(trigger)
            );
            sqlx::query(&sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        copied.read += n as u64;
        copied.inserted += inserted;
        on_chunk(copied.read);
        if n < CHUNK_ROWS {
            return Ok(copied);
        }
    }
}

/// Some rows of a chunk were already there: each must be equal to the SQLite row (an interrupted copy of this
/// same data), apart from the seeded counters, which take SQLite's value.
async fn reconcile(
    tx: &mut sqlx::PgConnection,
    table: &Table,
    rows: &[Vec<Cell>],
) -> Result<(), TransferError> {
    let names: Vec<String> = table.columns.iter().map(|c| quoted(&c.name)).collect();
    let key_names: Vec<&str> = table.key.iter().map(|&i| names[i].as_str()).collect();
    let keys: Vec<String> = (1..=table.key.len()).map(|i| format!("k{i}")).collect();
    let arrays: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("${}::{}", n + 1, table.columns[i].kind.array()))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE ({}) IN (SELECT {} FROM UNNEST({}) AS k({}))",
        names.join(", "),
        quoted(&table.name),
        key_names.join(", "),
        keys.join(", "),
        arrays.join(", "),
        keys.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for &i in &table.key {
        q = bind_column(q, table.columns[i].kind, rows.iter().map(|r| &r[i]));
    }
    let mut present: HashMap<Vec<String>, Vec<Cell>> = HashMap::new();
    for row in q.fetch_all(&mut *tx).await? {
        let mut cells = Vec::with_capacity(table.columns.len());
        for (i, c) in table.columns.iter().enumerate() {
            cells.push(decode(&row, i, c.kind)?);
        }
        let key = table
            .key
            .iter()
            .map(|&i| format!("{:?}", cells[i]))
            .collect();
        present.insert(key, cells);
    }
    let counter = COUNTERS
        .iter()
        .find(|(t, _)| *t == table.name)
        .and_then(|(_, c)| table.columns.iter().position(|col| col.name == *c));
    for row in rows {
        let key: Vec<String> = table.key.iter().map(|&i| format!("{:?}", row[i])).collect();
        let shown = || {
            let parts: Vec<String> = table
                .key
                .iter()
                .map(|&i| format!("{}={}", table.columns[i].name, row[i]))
                .collect();
            format!("({})", parts.join(", "))
        };
        let Some(there) = present.get(&key) else {
            return Err(TransferError::Differs {
                table: table.name.clone(),
                key: shown(),
                what: "conflicts with another row (a unique column holds the same value)".into(),
            });
        };
        if there == row {
            continue;
        }
        if let Some(c) = counter {
            let same_elsewhere = (0..row.len()).all(|i| i == c || row[i] == there[i]);
            if let (true, Cell::Int(ours), Cell::Int(theirs)) = (same_elsewhere, &row[c], &there[c])
            {
                if theirs <= ours {
                    let key_filter: Vec<String> = key_names
                        .iter()
                        .enumerate()
                        .map(|(n, k)| format!("{k} = ${}", n + 2))
                        .collect();
                    let sql = format!(
                        "UPDATE {} SET {} = $1 WHERE {}",
                        quoted(&table.name),
                        names[c],
                        key_filter.join(" AND ")
                    );
                    let mut q = sqlx::query(&sql).bind(*ours);
                    for &i in &table.key {
                        q = match &row[i] {
                            Cell::Int(v) => q.bind(*v),
                            Cell::Text(v) => q.bind(v.clone()),
                            other => q.bind(other.to_string()),
                        };
                    }
                    q.execute(&mut *tx).await?;
                    continue;
                }
            }
        }
        let column = (0..row.len())
            .find(|&i| row[i] != there[i])
            .map(|i| {
                let (theirs, ours) = difference(&there[i], &row[i]);
                format!(
                    "has {} = {theirs} there, {ours} here",
                    table.columns[i].name
                )
            })
            .unwrap_or_default();
        return Err(TransferError::Differs {
            table: table.name.clone(),
            key: shown(),
            what: column,
        });
    }
    Ok(())
}

/// Two differing values as shown in an error: texts from a little before their first difference.
fn difference(theirs: &Cell, ours: &Cell) -> (String, String) {
    if let (Cell::Text(a), Cell::Text(b)) = (theirs, ours) {
        let at = a
            .chars()
            .zip(b.chars())
            .take_while(|(x, y)| x == y)
            .count()
            .saturating_sub(10);
        let cut = |s: &str| {
            let rest: String = s.chars().skip(at).collect();
            let shown = Cell::Text(rest).to_string();
            if at > 0 {
                format!("…{shown}")
            } else {
                shown
            }
        };
        return (cut(a), cut(b));
    }
    (theirs.to_string(), ours.to_string())
}

/// Moves every identity sequence of the target past its table's highest id and SQLite's AUTOINCREMENT
/// high-water mark, so that rows created on PostgreSQL never take a copied (or a deleted) id.
pub async fn advance_sequences(
    source: &Store,
    target: &Store,
    tables: &[Table],
) -> Result<(), TransferError> {
    let lite = sqlite_pool(source)?;
    let pg = pg_pool(target)?;
    let high_water: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT name, seq FROM sqlite_sequence")
            .fetch_all(lite)
            .await
            // No AUTOINCREMENT table was ever written: SQLite has not created `sqlite_sequence`.
            .unwrap_or_default()
            .into_iter()
            .collect();
    for table in tables {
        let Some(id) = &table.identity else {
            continue;
        };
        let sql = format!("SELECT MAX({}) FROM {}", quoted(id), quoted(&table.name));
        let max: Option<i64> = sqlx::query_scalar(&sql).fetch_one(pg).await?;
        let last = max
            .unwrap_or(0)
            .max(high_water.get(&table.name).copied().unwrap_or(0));
        if last < 1 {
            continue;
        }
        sqlx::query("SELECT setval(pg_get_serial_sequence($1, $2), $3)")
            .bind(quoted(&table.name))
            .bind(id)
            .bind(last)
            .execute(pg)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(kind: Kind) -> Column {
        Column {
            name: "c".into(),
            kind,
        }
    }

    #[test]
    fn differing_texts_are_shown_from_where_they_differ() {
        let a = Cell::Text(format!("{}-created-at-2026", "x".repeat(60)));
        let b = Cell::Text(format!("{}-created-at-2025", "x".repeat(60)));
        assert_eq!(
            difference(&a, &b),
            ("…'ted-at-2026'".to_owned(), "…'ted-at-2025'".to_owned())
        );
        assert_eq!(
            difference(&Cell::Int(1), &Cell::Null),
            ("1".to_owned(), "NULL".to_owned())
        );
    }

    #[test]
    fn sqlite_values_become_the_postgres_column_types() {
        let c = |kind, v| cell("t", &column(kind), v).unwrap();
        assert_eq!(c(Kind::Bool, SqliteValue::Integer(1)), Cell::Bool(true));
        assert_eq!(c(Kind::Bool, SqliteValue::Integer(0)), Cell::Bool(false));
        assert_eq!(c(Kind::Int, SqliteValue::Integer(-7)), Cell::Int(-7));
        assert_eq!(c(Kind::Float, SqliteValue::Integer(2)), Cell::Float(2.0));
        assert_eq!(
            c(Kind::Float, SqliteValue::Real(0.1 + 0.2)),
            Cell::Float(0.1 + 0.2)
        );
        assert_eq!(
            c(Kind::Text, SqliteValue::Integer(42)),
            Cell::Text("42".into())
        );
        assert_eq!(c(Kind::Bool, SqliteValue::Null), Cell::Null);
        let err = cell("t", &column(Kind::Int), SqliteValue::Text("x".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.c: cannot store Text(\"x\") in a BIGINT column"
        );
    }
}
