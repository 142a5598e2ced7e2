//! Identity resolution: distinct ids → persons, merges with PostHog's rules, person and group properties.
//!
//! The server turns each event of the intake log into [`IdentityOp`]s and hands them, batch by batch and in log
//! order, to the single [`IdentityWriter`]. The writer keeps a bounded cache of distinct id → person so that the
//! common event (a known distinct id, no property change) costs no database access at all.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use crate::{Result, Store, BUSY_TIMEOUT};

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
    conn: rusqlite::Connection,
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

/// Distinct statements the writer prepares (rusqlite caches 16 by default; a merge alone uses 8).
const STATEMENT_CACHE: usize = 32;

impl Store {
    /// The identity writer for the intake consumer named `consumer`, with its own connection to the store's
    /// database file (opened here; fails when the file cannot be opened).
    pub fn identity_writer(&self, consumer: &str) -> Result<IdentityWriter> {
        Ok(IdentityWriter {
            conn: open_connection(self.path())?,
            consumer: consumer.to_owned(),
            state: Resolver::default(),
            last_checkpoint: Instant::now() - CHECKPOINT_EVERY,
            committed_mapping_seq: None,
            epoch: self.identity_epoch.clone(),
            seen_epoch: self
                .identity_epoch
                .load(std::sync::atomic::Ordering::Acquire),
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
        self.state.record_changes = true;
    }

    /// The mapping changes made by the `apply` calls since the last call (empty unless
    /// [`IdentityWriter::record_changes`] was called). A failed `apply` contributes nothing.
    pub fn take_changes(&mut self) -> Vec<IdentityChange> {
        std::mem::take(&mut self.state.changes)
    }

    /// The number (in the 'identity' sequence, see `Store::read_distinct_ids`) of the last committed `apply`
    /// that changed the mapping or a person's properties; `None` until one did. A consumer that applied every
    /// [`IdentityChange`] taken so far holds every mapping row numbered up to it.
    pub fn mapping_seq(&self) -> Option<i64> {
        self.committed_mapping_seq
    }

    /// Applies `ops` in order in one transaction and records `lsn` as this consumer's checkpoint (written with
    /// any change, and at least once a second otherwise). On error nothing is applied and the caches are dropped.
    /// Blocks on SQLite.
    pub fn apply(&mut self, ops: &[IdentityOp], lsn: u64) -> Result<ApplyStats> {
        let mut stats = ApplyStats::default();
        let changes_before = self.state.changes.len();
        // `BEGIN IMMEDIATE`, as for every metadata write (see `Store::write_tx`).
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Read once the write lock is held: an erasure bumps it before it commits, so a transaction that waited
        // for the erasure sees the new value.
        let epoch = self.epoch.load(std::sync::atomic::Ordering::Acquire);
        if epoch != self.seen_epoch {
            self.state.clear_caches();
            self.seen_epoch = epoch;
        }
        let state = &mut self.state;
        let mut wrote = false;
        let mut result = ops
            .iter()
            .try_for_each(|op| {
                wrote |= state.apply_one(&tx, op, &mut stats)?;
                Ok(())
            })
            .and_then(|()| state.write_sequences(&tx));
        let checkpoint = wrote || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        if result.is_ok() && checkpoint {
            result = write_checkpoint(&tx, &self.consumer, lsn)
                .and_then(|()| tx.commit().map_err(Into::into));
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

    /// Writes the checkpoint now (on shutdown). Blocks on SQLite.
    pub fn flush_checkpoint(&mut self, lsn: u64) -> Result<()> {
        self.last_checkpoint = Instant::now() - CHECKPOINT_EVERY;
        self.apply(&[], lsn).map(|_| ())
    }
}

fn write_checkpoint(tx: &Connection, consumer: &str, lsn: u64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO intake_checkpoints (consumer, lsn) VALUES (?, ?)
         ON CONFLICT (consumer) DO UPDATE SET lsn = excluded.lsn",
    )?
    .execute(params![consumer, lsn as i64])?;
    Ok(())
}

/// Runs a cached statement that returns no rows.
fn exec(tx: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<()> {
    tx.prepare_cached(sql)?.execute(params)?;
    Ok(())
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
    fn write_sequences(&mut self, tx: &Connection) -> Result<()> {
        let stored = self.stored_person_id.take();
        if let Some(last) = self.last_person_id.take().filter(|&l| Some(l) != stored) {
            exec(
                tx,
                "UPDATE id_sequences SET last = ? WHERE name = 'persons'",
                [last],
            )?;
        }
        if let Some(seq) = self.mapping_seq {
            exec(
                tx,
                "UPDATE id_sequences SET last = ? WHERE name = 'identity'",
                [seq],
            )?;
        }
        Ok(())
    }

    /// This transaction's number in the 'identity' sequence (read once per transaction).
    fn mapping_seq(&mut self, tx: &Connection) -> Result<i64> {
        if let Some(seq) = self.mapping_seq {
            return Ok(seq);
        }
        let last: i64 = tx
            .prepare_cached("SELECT last FROM id_sequences WHERE name = 'identity'")?
            .query_row([], |row| row.get(0))?;
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
        tx: &Connection,
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
                let text: String = tx
                    .prepare_cached("SELECT properties FROM persons WHERE id = ?")?
                    .query_row([person.id], |row| row.get(0))?;
                let mut props = parse_object(&text)?;
                let changed = update_properties(&mut props, set, set_once, unset);
                if changed {
                    let seq = self.mapping_seq(tx)?;
                    exec(
                        tx,
                        "UPDATE persons SET properties = ?, version = version + 1, seq = ? WHERE id = ?",
                        params![Value::Object(props).to_string(), seq, person.id],
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
                let existing: Option<String> = tx
                    .prepare_cached(
                        "SELECT properties FROM groups WHERE project_id = ? AND group_type_index = ? AND group_key = ?",
                    )?
                    .query_row(params![project_id, index, group_key], |row| row.get(0))
                    .optional()?;
                let mut props = match existing {
                    Some(text) => parse_object(&text)?,
                    None => Map::new(),
                };
                update_properties(&mut props, set, &Map::new(), &[]);
                exec(
                    tx,
                    "INSERT INTO groups (project_id, group_type_index, group_key, properties, created_at)
                     VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (project_id, group_type_index, group_key) DO UPDATE SET properties = excluded.properties",
                    params![
                        project_id,
                        index,
                        group_key,
                        Value::Object(props).to_string(),
                        at_text(*at)
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
                    exec(
                        tx,
                        "INSERT OR IGNORE INTO person_groups (person_id, group_type_index, group_key) VALUES (?, ?, ?)",
                        params![person.id, index, group_key],
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
        tx: &Connection,
        project_id: i64,
        distinct_id: &str,
    ) -> Result<Option<PersonRef>> {
        if let Some(p) = self.cached(project_id, distinct_id) {
            return Ok(Some(p));
        }
        let found = tx
            .prepare_cached(
                "SELECT p.id, p.is_identified FROM person_distinct_ids d JOIN persons p ON p.id = d.person_id
                 WHERE d.project_id = ? AND d.distinct_id = ?",
            )?
            .query_row(params![project_id, distinct_id], |row| {
                Ok(PersonRef {
                    id: row.get(0)?,
                    identified: row.get(1)?,
                })
            })
            .optional()?;
        if let Some(p) = found {
            self.cache(project_id, distinct_id, p);
        }
        Ok(found)
    }

    /// The person of `distinct_id`, created if absent; the flag says whether it was created.
    fn ensure_person(
        &mut self,
        tx: &Connection,
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
        tx: &Connection,
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
                let stored: i64 = tx
                    .prepare_cached("SELECT last FROM id_sequences WHERE name = 'persons'")?
                    .query_row([], |row| row.get(0))?;
                self.stored_person_id = Some(stored);
                stored
            }
        };
        let id = last + 1;
        self.last_person_id = Some(id);
        let seq = self.mapping_seq(tx)?;
        exec(
            tx,
            "INSERT INTO persons (id, uuid, project_id, properties, is_identified, created_at, seq) VALUES (?, ?, ?, '{}', ?, ?, ?)",
            params![
                id,
                uuid::Uuid::now_v7().to_string(),
                project_id,
                identified,
                at_text(at),
                seq
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
        tx: &Connection,
        project_id: i64,
        distinct_id: &str,
        person: PersonRef,
    ) -> Result<()> {
        let seq = self.mapping_seq(tx)?;
        exec(
            tx,
            "INSERT INTO person_distinct_ids (project_id, distinct_id, person_id, seq) VALUES (?, ?, ?, ?)",
            params![project_id, distinct_id, person.id, seq],
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

    fn mark_identified(&mut self, tx: &Connection, person: PersonRef) -> Result<bool> {
        if person.identified {
            return Ok(false);
        }
        exec(
            tx,
            "UPDATE persons SET is_identified = 1, version = version + 1 WHERE id = ?",
            [person.id],
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
        tx: &Connection,
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
        tx: &Connection,
        project_id: i64,
        from: PersonRef,
        into: PersonRef,
        at: i64,
    ) -> Result<()> {
        let person = |id: i64| -> Result<(String, String, String)> {
            Ok(tx
                .prepare_cached("SELECT uuid, properties, created_at FROM persons WHERE id = ?")?
                .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?)
        };
        let (from_uuid, from_props, from_created) = person(from.id)?;
        let (into_uuid, into_props, into_created) = person(into.id)?;
        let mut merged = parse_object(&from_props)?;
        for (k, v) in parse_object(&into_props)? {
            merged.insert(k, v);
        }
        let created = from_created.min(into_created);
        exec(
            tx,
            "UPDATE persons SET properties = ?, created_at = ?, is_identified = 1, version = version + 1, seq = ? WHERE id = ?",
            params![Value::Object(merged).to_string(), created, self.mapping_seq(tx)?, into.id],
        )?;
        let seq = self.mapping_seq(tx)?;
        exec(
            tx,
            "UPDATE person_distinct_ids SET person_id = ?, seq = ? WHERE person_id = ?",
            [into.id, seq, from.id],
        )?;
        exec(
            tx,
            "INSERT OR IGNORE INTO person_groups (person_id, group_type_index, group_key)
             SELECT ?, group_type_index, group_key FROM person_groups WHERE person_id = ?",
            [into.id, from.id],
        )?;
        exec(
            tx,
            "DELETE FROM person_groups WHERE person_id = ?",
            [from.id],
        )?;
        // Static cohorts keep the person: the merged person's memberships become the survivor's.
        exec(
            tx,
            "INSERT OR IGNORE INTO cohort_people (cohort_id, person_id)
             SELECT cohort_id, ? FROM cohort_people WHERE person_id = ?",
            [into.id, from.id],
        )?;
        exec(
            tx,
            "DELETE FROM cohort_people WHERE person_id = ?",
            [from.id],
        )?;
        exec(tx, "DELETE FROM persons WHERE id = ?", [from.id])?;
        // Flatten chains: whatever pointed at the merged person now points at the survivor.
        exec(
            tx,
            "UPDATE person_overrides SET new_person_uuid = ? WHERE project_id = ? AND new_person_uuid = ?",
            params![into_uuid, project_id, from_uuid],
        )?;
        exec(
            tx,
            "INSERT OR REPLACE INTO person_overrides (project_id, old_person_uuid, new_person_uuid, merged_at)
             VALUES (?, ?, ?, ?)",
            params![project_id, from_uuid, into_uuid, at_text(at)],
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
        tx: &Connection,
        project_id: i64,
        group_type: &str,
    ) -> Result<Option<i64>> {
        let key = (project_id, group_type.to_owned());
        if let Some(index) = self.group_types.get(&key) {
            return Ok(*index);
        }
        let existing: Option<i64> = tx
            .prepare_cached(
                "SELECT group_type_index FROM group_types WHERE project_id = ? AND group_type = ?",
            )?
            .query_row(params![project_id, group_type], |row| row.get(0))
            .optional()?;
        let index = match existing {
            Some(i) => Some(i),
            None => {
                let next: i64 = tx
                    .prepare_cached(
                        "SELECT COALESCE(MAX(group_type_index) + 1, 0) FROM group_types WHERE project_id = ?",
                    )?
                    .query_row([project_id], |row| row.get(0))?;
                if next >= MAX_GROUP_TYPES {
                    None
                } else {
                    exec(
                        tx,
                        "INSERT INTO group_types (project_id, group_type, group_type_index) VALUES (?, ?, ?)",
                        params![project_id, group_type, next],
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
        let pragma = |name: &str| -> String {
            w.conn
                .query_row(&format!("PRAGMA {name}"), [], |row| {
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
        let pool: i64 = sqlx::query_scalar("PRAGMA secure_delete")
            .fetch_one(store.pool())
            .await
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
        sqlx::query("DROP TABLE person_groups")
            .execute(store.pool())
            .await
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
        let ids: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM person_distinct_ids")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(ids, 1);
        let types: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM group_types")
            .fetch_one(store.pool())
            .await
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
