//! Identity resolution: distinct ids → persons, merges with PostHog's rules, person and group properties.
//!
//! The server turns each event of the intake log into [`IdentityOp`]s and hands them, batch by batch and in log
//! order, to the single [`IdentityWriter`]. The writer keeps a bounded cache of distinct id → person so that the
//! common event (a known distinct id, no property change) costs no database access at all.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::{Backend, Result, Store, BUSY_TIMEOUT};

/// How two distinct ids come to share a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMode {
    /// `$identify` with `$anon_distinct_id`, Segment `identify` with both ids.
    Identify,
    /// `$create_alias`, Segment `alias`.
    Alias,
    /// `$merge_dangerously`: merges even an already identified person.
    Dangerous,
}

/// One identity change derived from an event, applied in log order. `at` is the event time in microseconds since
/// the Unix epoch (it becomes a person's or group's `created_at`).
#[derive(Debug, Clone, PartialEq)]
pub enum IdentityOp {
    /// Make sure `distinct_id` has a person (every event with person processing does this).
    Touch {
        project_id: i64,
        distinct_id: String,
        at: i64,
    },
    /// Bring `other` into `target`'s person, following PostHog's rules (see [`IdentityWriter`]).
    Merge {
        project_id: i64,
        target: String,
        other: String,
        mode: MergeMode,
        at: i64,
    },
    /// `$set`, `$set_once`, `$unset` on the person of `distinct_id`.
    SetProperties {
        project_id: i64,
        distinct_id: String,
        set: Map<String, Value>,
        set_once: Map<String, Value>,
        unset: Vec<String>,
        at: i64,
    },
    /// `$groupidentify` / Segment `group`: group properties.
    GroupIdentify {
        project_id: i64,
        group_type: String,
        group_key: String,
        set: Map<String, Value>,
        at: i64,
    },
    /// The person of `distinct_id` belongs to these groups (`$groups` on an event): (group type, group key).
    LinkGroups {
        project_id: i64,
        distinct_id: String,
        groups: Vec<(String, String)>,
    },
}

/// A change of the distinct id → person mapping made by [`IdentityWriter::apply`], for consumers that keep the
/// mapping in memory (the event engine resolves each event's person from its distinct id at read time).
/// Taken with [`IdentityWriter::take_changes`] after a successful `apply`, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityChange {
    /// `distinct_id` now belongs to the person `person_id` (it had no person before).
    Assigned {
        project_id: i64,
        distinct_id: String,
        person_id: i64,
    },
    /// The person `from` was merged into `into`: every distinct id of `from` now belongs to `into`, and `from`
    /// no longer exists.
    Merged {
        project_id: i64,
        from: i64,
        into: i64,
    },
}

/// What one `apply` did, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub persons_created: u64,
    pub merges: u64,
    /// Merges refused because the other person was already identified (PostHog's rule).
    pub merges_refused: u64,
    pub property_updates: u64,
    /// Group types beyond the 5 a project may have.
    pub group_types_refused: u64,
}

/// Distinct ids that PostHog refuses to merge on: SDK placeholders that would glue unrelated people together.
fn is_illegal_merge_id(id: &str) -> bool {
    const ILLEGAL: &[&str] = &[
        "anonymous",
        "guest",
        "distinctid",
        "distinct_id",
        "id",
        "not_authenticated",
        "email",
        "undefined",
        "true",
        "false",
        "null",
        "none",
        "nan",
        "0",
        "[object object]",
    ];
    let id = id.trim();
    id.is_empty() || ILLEGAL.iter().any(|bad| id.eq_ignore_ascii_case(bad))
}

const MAX_GROUP_TYPES: i64 = 5;
const CACHE_LIMIT: usize = 250_000;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct PersonRef {
    id: i64,
    identified: bool,
}

/// The single writer of identity state. Not shared: one thread at a time owns it.
///
/// It has its own synchronous SQLite connection (not the store's sqlx pool): identity replay runs thousands of
/// small statements per batch, and sqlx runs each on its worker thread with a channel round trip, which cost more
/// than the statements themselves (see docs/architecture.md, "Identity writer"). Its methods block: call them
/// from a blocking thread (`tokio::task::spawn_blocking`), not from an async task.
pub struct IdentityWriter {
    conn: WriterConn,
    book: Bookkeeping,
}

/// Everything of the writer but its connection.
struct Bookkeeping {
    consumer: String,
    state: Resolver,
    last_checkpoint: Instant,
    /// The number of the last committed transaction that changed the mapping (see [`IdentityWriter::mapping_seq`]).
    committed_mapping_seq: Option<i64>,
    /// The store's invalidation epoch (see `Store::invalidate_identity_caches`) and the value the caches were
    /// built under.
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    seen_epoch: u64,
}

/// The writer's caches and bookkeeping, apart from the connection so that a transaction (which borrows the
/// connection) and the caches can be used together.
#[derive(Default)]
struct Resolver {
    /// project → distinct id → person id (nested so that lookups by `&str` need no allocation). The id may be
    /// of a person merged since: follow `merged_into`.
    persons: HashMap<i64, HashMap<String, i64>>,
    /// Merged person id → the person it was merged into (cached entries are not rewritten on a merge).
    merged_into: HashMap<i64, i64>,
    /// Whether each cached person is identified.
    identified: HashMap<i64, bool>,
    /// Changes of the mapping since the last `take_changes`, kept only when asked for.
    changes: Vec<IdentityChange>,
    record_changes: bool,
    /// The last person id handed out, once read in the current transaction (written back before commit).
    last_person_id: Option<i64>,
    /// `last_person_id` as read from the database in the current transaction.
    stored_person_id: Option<i64>,
    /// The number of the current transaction in the 'identity' sequence, once it changed the mapping or a person
    /// (migration 0007): set on every `person_distinct_ids` row it inserts or moves and every `persons` row it
    /// creates or changes the properties of, written back before commit.
    mapping_seq: Option<i64>,
    group_types: HashMap<(i64, String), Option<i64>>,
    links: HashSet<(i64, i64, String)>,
}

/// The writer's database: its own SQLite connection, or PostgreSQL's pool driven from the blocking thread.
enum WriterConn {
    Sqlite(rusqlite::Connection),
    /// Statements run on a connection of the pool inside one transaction per `apply`, each awaited with
    /// `handle.block_on` (the writer's methods run on a blocking thread).
    Postgres {
        pool: sqlx::PgPool,
        handle: tokio::runtime::Handle,
    },
}

/// A value bound to an identity statement.
#[derive(Debug, Clone, Copy)]
enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    Bool(bool),
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(match self {
            Arg::Int(i) => (*i).into(),
            Arg::Text(t) => (*t).into(),
            Arg::Bool(b) => (*b).into(),
        })
    }
}

/// A value read by an identity statement.
#[derive(Debug, Clone)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
}

impl Cell {
    fn int(&self) -> Result<i64> {
        match self {
            Cell::Int(i) => Ok(*i),
            other => Err(crate::StoreError::Task(format!(
                "identity writer: expected an integer, read {other:?}"
            ))),
        }
    }

    fn text(self) -> Result<String> {
        match self {
            Cell::Text(t) => Ok(t),
            other => Err(crate::StoreError::Task(format!(
                "identity writer: expected a text, read {other:?}"
            ))),
        }
    }
}

/// The transaction of one `apply`, on either backend. Statements use `$1, $2, …` in order of first appearance
/// (rusqlite numbers SQLite's `$N` parameters that way, so positional binding matches on both).
trait IdTx {
    fn exec(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<()>;
    /// The first row's columns, if any.
    fn row(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<Option<Vec<Cell>>>;
    fn commit(self) -> Result<()>;

    /// The persons of those of `distinct_ids` that have one (PostgreSQL: one round trip for them all).
    fn persons_of(
        &mut self,
        project_id: i64,
        distinct_ids: &[&str],
    ) -> Result<Vec<(String, PersonRef)>> {
        let mut out = Vec::new();
        for &d in distinct_ids {
            if let Some(row) = self.row(PERSON_OF, &[Arg::Int(project_id), Arg::Text(d)])? {
                let person = PersonRef {
                    id: row[0].int()?,
                    identified: row[1].int()? != 0,
                };
                out.push((d.to_owned(), person));
            }
        }
        Ok(out)
    }
}

/// The person of a distinct id.
const PERSON_OF: &str =
    "SELECT p.id, p.is_identified FROM person_distinct_ids d JOIN persons p ON p.id = d.person_id
                 WHERE d.project_id = $1 AND d.distinct_id = $2";

impl IdTx for rusqlite::Transaction<'_> {
    fn exec(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<()> {
        self.prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args.iter()))?;
        Ok(())
    }

    fn row(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<Option<Vec<Cell>>> {
        let mut stmt = self.prepare_cached(sql)?;
        let n = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        (0..n)
            .map(|i| {
                Ok(match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Integer(v) => Cell::Int(v),
                    rusqlite::types::ValueRef::Text(t) => {
                        Cell::Text(String::from_utf8_lossy(t).into_owned())
                    }
                    _ => Cell::Null,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn commit(self) -> Result<()> {
        Ok(rusqlite::Transaction::commit(self)?)
    }
}

/// PostgreSQL's side of [`IdTx`].
struct PgIdTx<'h> {
    handle: &'h tokio::runtime::Handle,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

fn pg_query<'q>(
    sql: &'q str,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match *a {
            Arg::Int(i) => q.bind(i),
            Arg::Text(t) => q.bind(t),
            Arg::Bool(b) => q.bind(b),
        };
    }
    q
}

/// Runs a future to completion from the writer's synchronous code: on a blocking thread (the server's
/// `spawn_blocking`), or on a worker of a multi-threaded runtime (which `block_in_place` hands its other tasks).
fn wait<F: std::future::Future>(handle: &tokio::runtime::Handle, f: F) -> F::Output {
    tokio::task::block_in_place(|| handle.block_on(f))
}

impl IdTx for PgIdTx<'_> {
    fn exec(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<()> {
        let tx = &mut self.tx;
        wait(self.handle, pg_query(sql, args).execute(&mut **tx))?;
        Ok(())
    }

    fn row(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<Option<Vec<Cell>>> {
        use sqlx::{Column, Row, TypeInfo};
        let tx = &mut self.tx;
        let Some(row) = wait(self.handle, pg_query(sql, args).fetch_optional(&mut **tx))? else {
            return Ok(None);
        };
        row.columns()
            .iter()
            .map(|c| {
                let i = c.ordinal();
                Ok(match c.type_info().name() {
                    "INT8" | "INT4" | "INT2" => row
                        .try_get::<Option<i64>, _>(i)
                        .or_else(|_| row.try_get::<Option<i32>, _>(i).map(|v| v.map(i64::from)))?
                        .map_or(Cell::Null, Cell::Int),
                    "BOOL" => row
                        .try_get::<Option<bool>, _>(i)?
                        .map_or(Cell::Null, |b| Cell::Int(b as i64)),
                    _ => row
                        .try_get::<Option<String>, _>(i)?
                        .map_or(Cell::Null, Cell::Text),
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn commit(self) -> Result<()> {
        wait(self.handle, self.tx.commit())?;
        Ok(())
    }

    fn persons_of(
        &mut self,
        project_id: i64,
        distinct_ids: &[&str],
    ) -> Result<Vec<(String, PersonRef)>> {
        let tx = &mut self.tx;
        let rows: Vec<(String, i64, bool)> = wait(
            self.handle,
            sqlx::query_as(
                "SELECT d.distinct_id, p.id, p.is_identified FROM person_distinct_ids d
                   JOIN persons p ON p.id = d.person_id
                  WHERE d.project_id = $1 AND d.distinct_id = ANY($2)",
            )
            .bind(project_id)
            .bind(distinct_ids)
            .fetch_all(&mut **tx),
        )?;
        Ok(rows
            .into_iter()
            .map(|(d, id, identified)| (d, PersonRef { id, identified }))
            .collect())
    }
}

/// Distinct statements the writer prepares (rusqlite caches 16 by default; a merge alone uses 8).
const STATEMENT_CACHE: usize = 32;

impl Store {
    /// The identity writer for the intake consumer named `consumer`, with its own connection to the store's
    /// database file (opened here; fails when the file cannot be opened).
    ///
    /// On PostgreSQL it drives the store's pool from its blocking thread: create it inside the Tokio runtime.
    /// Several nodes' writers take turns (each `apply` holds the metadata write lock) and trust no cache across
    /// transactions, since another node may have changed the mapping in between.
    pub fn identity_writer(&self, consumer: &str) -> Result<IdentityWriter> {
        let conn = match self.backend() {
            Backend::Sqlite(_) => WriterConn::Sqlite(open_connection(&self.sqlite_path()?)?),
            Backend::Postgres(pool) => WriterConn::Postgres {
                pool: pool.clone(),
                handle: tokio::runtime::Handle::try_current().map_err(|e| {
                    crate::StoreError::Task(format!("identity writer outside a Tokio runtime: {e}"))
                })?,
            },
        };
        Ok(IdentityWriter {
            conn,
            book: Bookkeeping {
                consumer: self.consumer_key(consumer),
                state: Resolver::default(),
                last_checkpoint: Instant::now() - CHECKPOINT_EVERY,
                committed_mapping_seq: None,
                epoch: self.identity_epoch.clone(),
                seen_epoch: self
                    .identity_epoch
                    .load(std::sync::atomic::Ordering::Acquire),
            },
        })
    }
}

/// Page cache of the identity writer's connection, in KiB.
const IDENTITY_CACHE_KIB: i64 = 64 * 1024;

/// A connection configured like the store's pool (see `Store::open`): WAL, `synchronous = NORMAL`, foreign keys,
/// `secure_delete = FAST`, 10 s busy timeout. The file exists and is migrated: `Store::open` did both.
fn open_connection(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // `journal_mode` answers with the mode in force; WAL is a property of the file, already set by the pool.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%mode, "identity writer: the metadata database is not in WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "secure_delete", "FAST")?;
    // Identity replay looks up and inserts distinct ids all over the persons and distinct-id B-trees; with
    // SQLite's default 2 MB page cache most lookups re-read pages from the OS (BENCHMARKS.md, "Identity replay").
    conn.pragma_update(None, "cache_size", -IDENTITY_CACHE_KIB)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

impl IdentityWriter {
    /// Keep the [`IdentityChange`]s of every `apply` for [`IdentityWriter::take_changes`].
    pub fn record_changes(&mut self) {
        self.book.state.record_changes = true;
    }

    /// The mapping changes made by the `apply` calls since the last call (empty unless
    /// [`IdentityWriter::record_changes`] was called). A failed `apply` contributes nothing.
    pub fn take_changes(&mut self) -> Vec<IdentityChange> {
        std::mem::take(&mut self.book.state.changes)
    }

    /// The number (in the 'identity' sequence, see `Store::read_distinct_ids`) of the last committed `apply`
    /// that changed the mapping or a person's properties; `None` until one did. A consumer that applied every
    /// [`IdentityChange`] taken so far holds every mapping row numbered up to it.
    pub fn mapping_seq(&self) -> Option<i64> {
        self.book.committed_mapping_seq
    }

    /// Applies `ops` in order in one transaction and records `lsn` as this consumer's checkpoint (written with
    /// any change, and at least once a second otherwise). On error nothing is applied and the caches are dropped.
    /// Blocks on SQLite.
    pub fn apply(&mut self, ops: &[IdentityOp], lsn: u64) -> Result<ApplyStats> {
        match &mut self.conn {
            WriterConn::Sqlite(conn) => {
                // `BEGIN IMMEDIATE`, as for every metadata write (see `Store::write_tx`).
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                self.book.apply_in(tx, false, ops, lsn)
            }
            WriterConn::Postgres { pool, handle } => {
                let tx = wait(handle, async {
                    let mut tx = pool.begin().await?;
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(crate::WRITE_LOCK)
                        .execute(&mut *tx)
                        .await?;
                    Ok::<_, sqlx::Error>(tx)
                })?;
                self.book.apply_in(PgIdTx { handle, tx }, true, ops, lsn)
            }
        }
    }

    /// Writes the checkpoint now (on shutdown). Blocks on SQLite.
    pub fn flush_checkpoint(&mut self, lsn: u64) -> Result<()> {
        self.book.last_checkpoint = Instant::now() - CHECKPOINT_EVERY;
        self.apply(&[], lsn).map(|_| ())
    }
}

impl Bookkeeping {
    /// `apply` in the transaction `tx`. `shared`: other writers (other nodes) may have changed the mapping since
    /// the last transaction, so the caches start empty.
    fn apply_in<T: IdTx>(
        &mut self,
        mut tx: T,
        shared: bool,
        ops: &[IdentityOp],
        lsn: u64,
    ) -> Result<ApplyStats> {
        let state = &mut self.state;
        let mut stats = ApplyStats::default();
        let changes_before = state.changes.len();
        // Read once the write lock is held: an erasure bumps it before it commits, so a transaction that waited
        // for the erasure sees the new value.
        let epoch = self.epoch.load(std::sync::atomic::Ordering::Acquire);
        if epoch != self.seen_epoch || shared {
            state.clear_caches();
            self.seen_epoch = epoch;
        }
        let mut wrote = false;
        // Shared store: the caches start empty, so the persons of the batch's distinct ids are read in one round
        // trip per project instead of one per id.
        let prefetched = if shared {
            state.prefetch(&mut tx, ops)
        } else {
            Ok(())
        };
        let mut result = prefetched
            .and_then(|()| {
                ops.iter().try_for_each(|op| {
                    wrote |= state.apply_one(&mut tx, op, &mut stats)?;
                    Ok(())
                })
            })
            .and_then(|()| state.write_sequences(&mut tx));
        let checkpoint = wrote || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        if result.is_ok() && checkpoint {
            result = write_checkpoint(&mut tx, &self.consumer, lsn).and_then(|()| tx.commit());
        }
        // Otherwise the transaction (no writes, no checkpoint due, or failed) rolls back when dropped.
        let mapping_seq = state.mapping_seq.take();
        if let Err(err) = result {
            state.clear_caches();
            state.changes.truncate(changes_before);
            return Err(err);
        }
        if checkpoint {
            self.last_checkpoint = Instant::now();
            if mapping_seq.is_some() {
                self.committed_mapping_seq = mapping_seq;
            }
        }
        state.trim_caches();
        Ok(stats)
    }
}

fn write_checkpoint(tx: &mut impl IdTx, consumer: &str, lsn: u64) -> Result<()> {
    tx.exec(
        "INSERT INTO intake_checkpoints (consumer, lsn) VALUES ($1, $2)
         ON CONFLICT (consumer) DO UPDATE SET lsn = excluded.lsn",
        &[Arg::Text(consumer), Arg::Int(lsn as i64)],
    )
}

impl Resolver {
    /// Bounds the caches (after a successful apply).
    fn trim_caches(&mut self) {
        if self.persons.values().map(HashMap::len).sum::<usize>() > CACHE_LIMIT
            || self.merged_into.len() > CACHE_LIMIT
        {
            self.persons.clear();
            self.merged_into.clear();
            self.identified.clear();
        }
        if self.links.len() > CACHE_LIMIT {
            self.links.clear();
        }
    }

    /// Writes back the person-id sequence if this transaction handed out ids, and the identity sequence if it
    /// changed the mapping (`mapping_seq` stays set for `apply` to see).
    fn write_sequences(&mut self, tx: &mut impl IdTx) -> Result<()> {
        let stored = self.stored_person_id.take();
        if let Some(last) = self.last_person_id.take().filter(|&l| Some(l) != stored) {
            tx.exec(
                "UPDATE id_sequences SET last = $1 WHERE name = 'persons'",
                &[Arg::Int(last)],
            )?;
        }
        if let Some(seq) = self.mapping_seq {
            tx.exec(
                "UPDATE id_sequences SET last = $1 WHERE name = 'identity'",
                &[Arg::Int(seq)],
            )?;
        }
        Ok(())
    }

    /// This transaction's number in the 'identity' sequence (read once per transaction).
    fn mapping_seq(&mut self, tx: &mut impl IdTx) -> Result<i64> {
        if let Some(seq) = self.mapping_seq {
            return Ok(seq);
        }
        let last = sequence(tx, "SELECT last FROM id_sequences WHERE name = 'identity'")?;
        self.mapping_seq = Some(last + 1);
        Ok(last + 1)
    }

    fn cache(&mut self, project_id: i64, distinct_id: &str, person: PersonRef) {
        self.persons
            .entry(project_id)
            .or_default()
            .insert(distinct_id.to_owned(), person.id);
        self.identified.insert(person.id, person.identified);
    }

    /// The cached person of `distinct_id`, merges followed.
    fn cached(&self, project_id: i64, distinct_id: &str) -> Option<PersonRef> {
        let mut id = *self.persons.get(&project_id)?.get(distinct_id)?;
        while let Some(&next) = self.merged_into.get(&id) {
            id = next;
        }
        let identified = *self.identified.get(&id)?;
        Some(PersonRef { id, identified })
    }

    /// Caches the persons of the distinct ids `ops` look up (those that have one), reading them in batches.
    fn prefetch(&mut self, tx: &mut impl IdTx, ops: &[IdentityOp]) -> Result<()> {
        let mut wanted: HashMap<i64, Vec<&str>> = HashMap::new();
        for op in ops {
            let (project_id, ids): (i64, [Option<&str>; 2]) = match op {
                IdentityOp::Touch {
                    project_id,
                    distinct_id,
                    ..
                }
                | IdentityOp::SetProperties {
                    project_id,
                    distinct_id,
                    ..
                }
                | IdentityOp::LinkGroups {
                    project_id,
                    distinct_id,
                    ..
                } => (*project_id, [Some(distinct_id.as_str()), None]),
                IdentityOp::Merge {
                    project_id,
                    target,
                    other,
                    ..
                } => (*project_id, [Some(target.as_str()), Some(other.as_str())]),
                _ => continue,
            };
            wanted
                .entry(project_id)
                .or_default()
                .extend(ids.into_iter().flatten());
        }
        for (project_id, mut ids) in wanted {
            ids.sort_unstable();
            ids.dedup();
            ids.retain(|d| self.cached(project_id, d).is_none());
            for chunk in ids.chunks(1000) {
                for (d, person) in tx.persons_of(project_id, chunk)? {
                    self.cache(project_id, &d, person);
                }
            }
        }
        Ok(())
    }

    fn clear_caches(&mut self) {
        self.last_person_id = None;
        self.stored_person_id = None;
        self.mapping_seq = None;
        self.persons.clear();
        self.merged_into.clear();
        self.identified.clear();
        self.group_types.clear();
        self.links.clear();
    }

    /// Returns whether anything was written.
    fn apply_one(
        &mut self,
        tx: &mut impl IdTx,
        op: &IdentityOp,
        stats: &mut ApplyStats,
    ) -> Result<bool> {
        match op {
            IdentityOp::Touch {
                project_id,
                distinct_id,
                at,
            } => {
                let (_, created) = self.ensure_person(tx, *project_id, distinct_id, *at)?;
                stats.persons_created += created as u64;
                Ok(created)
            }
            IdentityOp::Merge {
                project_id,
                target,
                other,
                mode,
                at,
            } => self.merge(tx, *project_id, target, other, *mode, *at, stats),
            IdentityOp::SetProperties {
                project_id,
                distinct_id,
                set,
                set_once,
                unset,
                at,
            } => {
                let (person, created) = self.ensure_person(tx, *project_id, distinct_id, *at)?;
                stats.persons_created += created as u64;
                if set.is_empty() && set_once.is_empty() && unset.is_empty() {
                    return Ok(created);
                }
                let text = first(
                    tx,
                    "SELECT properties FROM persons WHERE id = $1",
                    &[Arg::Int(person.id)],
                )?
                .swap_remove(0)
                .text()?;
                let mut props = parse_object(&text)?;
                let changed = update_properties(&mut props, set, set_once, unset);
                if changed {
                    let seq = self.mapping_seq(tx)?;
                    tx.exec(
                        "UPDATE persons SET properties = $1, version = version + 1, seq = $2 WHERE id = $3",
                        &[
                            Arg::Text(&Value::Object(props).to_string()),
                            Arg::Int(seq),
                            Arg::Int(person.id),
                        ],
                    )?;
                    stats.property_updates += 1;
                }
                Ok(created || changed)
            }
            IdentityOp::GroupIdentify {
                project_id,
                group_type,
                group_key,
                set,
                at,
            } => {
                let Some(index) = self.group_type_index(tx, *project_id, group_type)? else {
                    stats.group_types_refused += 1;
                    return Ok(false);
                };
                let existing = tx
                    .row(
                        "SELECT properties FROM groups WHERE project_id = $1 AND group_type_index = $2 AND group_key = $3",
                        &[Arg::Int(*project_id), Arg::Int(index), Arg::Text(group_key)],
                    )?
                    .map(|mut row| row.swap_remove(0).text())
                    .transpose()?;
                let mut props = match existing {
                    Some(text) => parse_object(&text)?,
                    None => Map::new(),
                };
                update_properties(&mut props, set, &Map::new(), &[]);
                tx.exec(
                    "INSERT INTO groups (project_id, group_type_index, group_key, properties, created_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (project_id, group_type_index, group_key) DO UPDATE SET properties = excluded.properties",
                    &[
                        Arg::Int(*project_id),
                        Arg::Int(index),
                        Arg::Text(group_key),
                        Arg::Text(&Value::Object(props).to_string()),
                        Arg::Text(&at_text(*at)),
                    ],
                )?;
                Ok(true)
            }
            IdentityOp::LinkGroups {
                project_id,
                distinct_id,
                groups,
            } => {
                let mut wrote = false;
                let Some(person) = self.person_of(tx, *project_id, distinct_id)? else {
                    return Ok(false);
                };
                for (group_type, group_key) in groups {
                    let Some(index) = self.group_type_index(tx, *project_id, group_type)? else {
                        stats.group_types_refused += 1;
                        continue;
                    };
                    let link = (person.id, index, group_key.clone());
                    if self.links.contains(&link) {
                        continue;
                    }
                    tx.exec(
                        "INSERT INTO person_groups (person_id, group_type_index, group_key) VALUES ($1, $2, $3)
                         ON CONFLICT DO NOTHING",
                        &[Arg::Int(person.id), Arg::Int(index), Arg::Text(group_key)],
                    )?;
                    self.links.insert(link);
                    wrote = true;
                }
                Ok(wrote)
            }
        }
    }

    fn person_of(
        &mut self,
        tx: &mut impl IdTx,
        project_id: i64,
        distinct_id: &str,
    ) -> Result<Option<PersonRef>> {
        if let Some(p) = self.cached(project_id, distinct_id) {
            return Ok(Some(p));
        }
        let found = tx
            .persons_of(project_id, &[distinct_id])?
            .pop()
            .map(|(_, person)| person);
        if let Some(p) = found {
            self.cache(project_id, distinct_id, p);
        }
        Ok(found)
    }

    /// The person of `distinct_id`, created if absent; the flag says whether it was created.
    fn ensure_person(
        &mut self,
        tx: &mut impl IdTx,
        project_id: i64,
        distinct_id: &str,
        at: i64,
    ) -> Result<(PersonRef, bool)> {
        if let Some(p) = self.person_of(tx, project_id, distinct_id)? {
            return Ok((p, false));
        }
        let p = self.create_person(tx, project_id, &[distinct_id], false, at)?;
        Ok((p, true))
    }

    fn create_person(
        &mut self,
        tx: &mut impl IdTx,
        project_id: i64,
        distinct_ids: &[&str],
        identified: bool,
        at: i64,
    ) -> Result<PersonRef> {
        // Never reuse an id (see migration 0004): take the next from the sequence, read once per transaction and
        // written back before it commits.
        let last = match self.last_person_id {
            Some(last) => last,
            None => {
                let stored = sequence(tx, "SELECT last FROM id_sequences WHERE name = 'persons'")?;
                self.stored_person_id = Some(stored);
                stored
            }
        };
        let id = last + 1;
        self.last_person_id = Some(id);
        let seq = self.mapping_seq(tx)?;
        tx.exec(
            "INSERT INTO persons (id, uuid, project_id, properties, is_identified, created_at, seq)
             VALUES ($1, $2, $3, '{}', $4, $5, $6)",
            &[
                Arg::Int(id),
                Arg::Text(&uuid::Uuid::now_v7().to_string()),
                Arg::Int(project_id),
                Arg::Bool(identified),
                Arg::Text(&at_text(at)),
                Arg::Int(seq),
            ],
        )?;
        let person = PersonRef { id, identified };
        for did in distinct_ids {
            self.add_distinct_id(tx, project_id, did, person)?;
        }
        Ok(person)
    }

    fn add_distinct_id(
        &mut self,
        tx: &mut impl IdTx,
        project_id: i64,
        distinct_id: &str,
        person: PersonRef,
    ) -> Result<()> {
        let seq = self.mapping_seq(tx)?;
        tx.exec(
            "INSERT INTO person_distinct_ids (project_id, distinct_id, person_id, seq) VALUES ($1, $2, $3, $4)",
            &[
                Arg::Int(project_id),
                Arg::Text(distinct_id),
                Arg::Int(person.id),
                Arg::Int(seq),
            ],
        )?;
        self.cache(project_id, distinct_id, person);
        if self.record_changes {
            self.changes.push(IdentityChange::Assigned {
                project_id,
                distinct_id: distinct_id.to_owned(),
                person_id: person.id,
            });
        }
        Ok(())
    }

    fn mark_identified(&mut self, tx: &mut impl IdTx, person: PersonRef) -> Result<bool> {
        if person.identified {
            return Ok(false);
        }
        tx.exec(
            "UPDATE persons SET is_identified = TRUE, version = version + 1 WHERE id = $1",
            &[Arg::Int(person.id)],
        )?;
        self.identified.insert(person.id, true);
        Ok(true)
    }

    /// PostHog's merge: `other` joins `target`'s person. When both already have different persons, the other
    /// person is merged into the target's unless it is already identified (only `$merge_dangerously` may merge
    /// identified persons). Target properties win over the other's; the earlier `created_at` is kept; the merged
    /// person's id is recorded as an override so events keep resolving.
    #[allow(clippy::too_many_arguments)]
    fn merge(
        &mut self,
        tx: &mut impl IdTx,
        project_id: i64,
        target: &str,
        other: &str,
        mode: MergeMode,
        at: i64,
        stats: &mut ApplyStats,
    ) -> Result<bool> {
        if target == other || is_illegal_merge_id(target) || is_illegal_merge_id(other) {
            let (_, created) = self.ensure_person(tx, project_id, target, at)?;
            stats.persons_created += created as u64;
            return Ok(created);
        }
        let other_person = self.person_of(tx, project_id, other)?;
        let target_person = self.person_of(tx, project_id, target)?;
        match (other_person, target_person) {
            (None, None) => {
                self.create_person(tx, project_id, &[target, other], true, at)?;
                stats.persons_created += 1;
                Ok(true)
            }
            (Some(o), None) => {
                self.add_distinct_id(tx, project_id, target, o)?;
                self.mark_identified(tx, o)?;
                Ok(true)
            }
            (None, Some(t)) => {
                self.add_distinct_id(tx, project_id, other, t)?;
                self.mark_identified(tx, t)?;
                Ok(true)
            }
            (Some(o), Some(t)) if o.id == t.id => self.mark_identified(tx, t),
            (Some(o), Some(t)) => {
                if o.identified && mode != MergeMode::Dangerous {
                    stats.merges_refused += 1;
                    return Ok(false);
                }
                self.merge_persons(tx, project_id, o, t, at)?;
                stats.merges += 1;
                Ok(true)
            }
        }
    }

    fn merge_persons(
        &mut self,
        tx: &mut impl IdTx,
        project_id: i64,
        from: PersonRef,
        into: PersonRef,
        at: i64,
    ) -> Result<()> {
        let mut person = |id: i64| -> Result<(String, String, String)> {
            let mut row = first(
                tx,
                "SELECT uuid, properties, created_at FROM persons WHERE id = $1",
                &[Arg::Int(id)],
            )?;
            let created = row.pop().map_or(Ok(String::new()), Cell::text)?;
            let properties = row.pop().map_or(Ok(String::new()), Cell::text)?;
            let uuid = row.pop().map_or(Ok(String::new()), Cell::text)?;
            Ok((uuid, properties, created))
        };
        let (from_uuid, from_props, from_created) = person(from.id)?;
        let (into_uuid, into_props, into_created) = person(into.id)?;
        let mut merged = parse_object(&from_props)?;
        for (k, v) in parse_object(&into_props)? {
            merged.insert(k, v);
        }
        let created = from_created.min(into_created);
        let seq = self.mapping_seq(tx)?;
        tx.exec(
            "UPDATE persons SET properties = $1, created_at = $2, is_identified = TRUE, version = version + 1, seq = $3
             WHERE id = $4",
            &[
                Arg::Text(&Value::Object(merged).to_string()),
                Arg::Text(&created),
                Arg::Int(seq),
                Arg::Int(into.id),
            ],
        )?;
        tx.exec(
            "UPDATE person_distinct_ids SET person_id = $1, seq = $2 WHERE person_id = $3",
            &[Arg::Int(into.id), Arg::Int(seq), Arg::Int(from.id)],
        )?;
        tx.exec(
            "INSERT INTO person_groups (person_id, group_type_index, group_key)
             SELECT $1, group_type_index, group_key FROM person_groups WHERE person_id = $2
             ON CONFLICT DO NOTHING",
            &[Arg::Int(into.id), Arg::Int(from.id)],
        )?;
        tx.exec(
            "DELETE FROM person_groups WHERE person_id = $1",
            &[Arg::Int(from.id)],
        )?;
        // Static cohorts keep the person: the merged person's memberships become the survivor's.
        tx.exec(
            "INSERT INTO cohort_people (cohort_id, person_id)
             SELECT cohort_id, $1 FROM cohort_people WHERE person_id = $2
             ON CONFLICT DO NOTHING",
            &[Arg::Int(into.id), Arg::Int(from.id)],
        )?;
        tx.exec(
            "DELETE FROM cohort_people WHERE person_id = $1",
            &[Arg::Int(from.id)],
        )?;
        tx.exec("DELETE FROM persons WHERE id = $1", &[Arg::Int(from.id)])?;
        // Flatten chains: whatever pointed at the merged person now points at the survivor.
        tx.exec(
            "UPDATE person_overrides SET new_person_uuid = $1 WHERE project_id = $2 AND new_person_uuid = $3",
            &[
                Arg::Text(&into_uuid),
                Arg::Int(project_id),
                Arg::Text(&from_uuid),
            ],
        )?;
        tx.exec(
            "INSERT INTO person_overrides (project_id, old_person_uuid, new_person_uuid, merged_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (project_id, old_person_uuid)
             DO UPDATE SET new_person_uuid = excluded.new_person_uuid, merged_at = excluded.merged_at",
            &[
                Arg::Int(project_id),
                Arg::Text(&from_uuid),
                Arg::Text(&into_uuid),
                Arg::Text(&at_text(at)),
            ],
        )?;
        // Cached distinct ids of the merged person follow `merged_into`; uncached ones resolve through the
        // database.
        self.merged_into.insert(from.id, into.id);
        self.identified.remove(&from.id);
        self.identified.insert(into.id, true);
        // `links` entries of `from` are left: person ids are never reused, so they can no longer match.
        if self.record_changes {
            self.changes.push(IdentityChange::Merged {
                project_id,
                from: from.id,
                into: into.id,
            });
        }
        Ok(())
    }

    fn group_type_index(
        &mut self,
        tx: &mut impl IdTx,
        project_id: i64,
        group_type: &str,
    ) -> Result<Option<i64>> {
        let key = (project_id, group_type.to_owned());
        if let Some(index) = self.group_types.get(&key) {
            return Ok(*index);
        }
        let existing = tx
            .row(
                "SELECT group_type_index FROM group_types WHERE project_id = $1 AND group_type = $2",
                &[Arg::Int(project_id), Arg::Text(group_type)],
            )?
            .map(|row| row[0].int())
            .transpose()?;
        let index = match existing {
            Some(i) => Some(i),
            None => {
                let next = first(
                    tx,
                    "SELECT COALESCE(MAX(group_type_index) + 1, 0) FROM group_types WHERE project_id = $1",
                    &[Arg::Int(project_id)],
                )?
                .swap_remove(0)
                .int()?;
                if next >= MAX_GROUP_TYPES {
                    None
                } else {
                    tx.exec(
                        "INSERT INTO group_types (project_id, group_type, group_type_index) VALUES ($1, $2, $3)",
                        &[Arg::Int(project_id), Arg::Text(group_type), Arg::Int(next)],
                    )?;
                    Some(next)
                }
            }
        };
        // A refused type is not cached: a later type deletion (admin) could free a slot.
        if index.is_some() {
            self.group_types.insert(key, index);
        }
        Ok(index)
    }
}

/// The row a statement must return.
fn first(tx: &mut impl IdTx, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<Cell>> {
    tx.row(sql, args)?
        .ok_or_else(|| crate::StoreError::Task(format!("identity writer: no row for {sql}")))
}

/// A sequence's `last` value.
fn sequence(tx: &mut impl IdTx, sql: &'static str) -> Result<i64> {
    first(tx, sql, &[])?[0].int()
}

fn at_text(at_us: i64) -> String {
    crate::time_text(chrono::DateTime::from_timestamp_micros(at_us).unwrap_or_default())
}

fn parse_object(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text)? {
        Value::Object(map) => Ok(map),
        _ => Ok(Map::new()),
    }
}

/// Applies `$set_once`, then `$set`, then `$unset`; returns whether anything changed.
fn update_properties(
    props: &mut Map<String, Value>,
    set: &Map<String, Value>,
    set_once: &Map<String, Value>,
    unset: &[String],
) -> bool {
    let mut changed = false;
    for (k, v) in set_once {
        if !props.contains_key(k) {
            props.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    for (k, v) in set {
        if props.get(k) != Some(v) {
            props.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    for k in unset {
        changed |= props.remove(k).is_some();
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::on_pool;
    use serde_json::json;

    #[test]
    fn property_updates_follow_set_once_set_unset() {
        let mut props = json!({"a": 1, "b": 2}).as_object().unwrap().clone();
        let set = json!({"b": 3, "c": 4}).as_object().unwrap().clone();
        let once = json!({"a": 9, "d": 5}).as_object().unwrap().clone();
        assert!(update_properties(
            &mut props,
            &set,
            &once,
            &["c".to_owned()]
        ));
        assert_eq!(
            Value::Object(props.clone()),
            json!({"a": 1, "b": 3, "d": 5})
        );
        assert!(!update_properties(
            &mut props,
            &set.clone().into_iter().filter(|(k, _)| k == "b").collect(),
            &Map::new(),
            &[]
        ));
    }

    /// The writer's connection is configured like the pool's (see `Store::open`).
    #[tokio::test]
    async fn writer_connection_matches_the_pool_settings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db")).await.unwrap();
        let w = store.identity_writer("test").unwrap();
        let WriterConn::Sqlite(conn) = &w.conn else {
            panic!("a SQLite store's writer has a SQLite connection")
        };
        let pragma = |name: &str| -> String {
            conn.query_row(&format!("PRAGMA {name}"), [], |row| {
                row.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .unwrap()
        };
        assert_eq!(pragma("journal_mode"), "wal");
        assert_eq!(pragma("synchronous"), "1", "NORMAL");
        assert_eq!(pragma("foreign_keys"), "1");
        assert_eq!(pragma("cache_size"), (-IDENTITY_CACHE_KIB).to_string());
        assert_eq!(pragma("busy_timeout"), BUSY_TIMEOUT.as_millis().to_string());
        assert_eq!(pragma("secure_delete"), "2", "FAST");
        let pool: i64 = on_pool!(store, |c| sqlx::query_scalar("PRAGMA secure_delete")
            .fetch_one(c)
            .await)
        .unwrap();
        assert_eq!(pool, 2);
    }

    /// A batch that fails half-way leaves nothing: no rows, no checkpoint, no changes, no cached person or
    /// person id, so the retry starts from the database.
    #[tokio::test]
    async fn a_failed_apply_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db")).await.unwrap();
        let p = store.bootstrap("o", "p").await.unwrap().project_id;
        let touch = |d: &str| IdentityOp::Touch {
            project_id: p,
            distinct_id: d.into(),
            at: 0,
        };
        let mut w = store.identity_writer("test").unwrap();
        w.record_changes();
        w.apply(&[touch("a")], 1).unwrap();
        let [IdentityChange::Assigned { person_id: a, .. }] = w.take_changes()[..] else {
            panic!("one assignment expected");
        };
        // Linking a group now fails after "b" got a person in the same transaction.
        on_pool!(store, |c| sqlx::query("DROP TABLE person_groups")
            .execute(c)
            .await
            .map(|r| r.rows_affected()))
        .unwrap();
        let link = IdentityOp::LinkGroups {
            project_id: p,
            distinct_id: "b".into(),
            groups: vec![("company".into(), "acme".into())],
        };
        assert!(matches!(
            w.apply(&[touch("b"), link], 2),
            Err(crate::StoreError::IdentityDatabase(_))
        ));
        assert!(w.take_changes().is_empty());
        assert_eq!(store.checkpoint("test").await.unwrap(), 1);
        let ids: i64 = on_pool!(store, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM person_distinct_ids"
        )
        .fetch_one(c)
        .await)
        .unwrap();
        assert_eq!(ids, 1);
        let types: i64 = on_pool!(store, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM group_types"
        )
        .fetch_one(c)
        .await)
        .unwrap();
        assert_eq!(types, 0);
        w.apply(&[touch("b")], 2).unwrap();
        assert_eq!(
            w.take_changes(),
            vec![IdentityChange::Assigned {
                project_id: p,
                distinct_id: "b".into(),
                person_id: a + 1,
            }]
        );
    }

    #[test]
    fn illegal_ids_are_recognised_case_insensitively() {
        assert!(is_illegal_merge_id("Anonymous"));
        assert!(is_illegal_merge_id(" undefined "));
        assert!(is_illegal_merge_id("[object Object]"));
        assert!(!is_illegal_merge_id("user-42"));
    }
}
