//! GDPR in the metadata store: what it holds about a person, for an export (every row of the growth tables that
//! names the person, by their distinct ids or person uuid, as JSON objects by table), and the erasure of a person
//! (see [`Store::erase_person`]).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sqlx::{Column, Row, TypeInfo, ValueRef};

use crate::{Result, Store};

/// A row as a JSON object (INTEGER, REAL, TEXT and NULL columns; anything else as null).
fn row_json<R>(row: &R) -> Value
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let value = match row.try_get_raw(i) {
            // SQLite's and PostgreSQL's type names (the flags are BOOLEAN on PostgreSQL, 0/1 on SQLite).
            Ok(raw) if !raw.is_null() => match raw.type_info().name() {
                "BOOL" => row
                    .try_get::<bool, _>(i)
                    .map(Value::from)
                    .unwrap_or(Value::Null),
                "INTEGER" | "BOOLEAN" | "INT8" => row
                    .try_get::<i64, _>(i)
                    .map(Value::from)
                    .unwrap_or(Value::Null),
                "REAL" | "FLOAT8" => row
                    .try_get::<f64, _>(i)
                    .map(Value::from)
                    .unwrap_or(Value::Null),
                "TEXT" => row
                    .try_get::<String, _>(i)
                    .map(Value::from)
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            },
            _ => Value::Null,
        };
        out.insert(col.name().to_owned(), value);
    }
    Value::Object(out)
}

impl Store {
    /// The growth records of a person — referrals (as referee or referrer), referral codes, reward entries with their
    /// transitions, invitations (sent or accepted), share links and visits, PQL scores — as (table, row) pairs.
    /// `person_uuid` and `person_number` identify the person; `distinct_ids` are all of theirs.
    pub async fn person_growth_records(
        &self,
        project_id: i64,
        person_uuid: &str,
        person_number: Option<i64>,
        distinct_ids: &[String],
    ) -> Result<Vec<(&'static str, Value)>> {
        let ids = if distinct_ids.is_empty() {
            "NULL".to_owned()
        } else {
            vec!["?"; distinct_ids.len()].join(",")
        };
        let number = person_number.map(|n| n.to_string()).unwrap_or_default();
        // (table, statement); `{ids}` is the distinct ids' placeholders, bound after the listed scalars.
        let queries: [(&'static str, String, Vec<&str>); 8] = [
            ("referrals", format!("SELECT * FROM referrals WHERE project_id = ? AND (referee_person = ? OR referrer IN ({ids}) OR referee IN ({ids}))"), vec![person_uuid]),
            ("referral_codes", format!("SELECT * FROM referral_codes WHERE project_id = ? AND referrer IN ({ids})"), vec![]),
            ("reward_entries", format!("SELECT * FROM reward_entries WHERE project_id = ? AND beneficiary IN ({ids})"), vec![]),
            ("reward_transitions", format!("SELECT t.* FROM reward_transitions t JOIN reward_entries e ON e.id = t.entry_id WHERE e.project_id = ? AND e.beneficiary IN ({ids})"), vec![]),
            ("invitations", format!("SELECT id, group_type, group_key, email, role, inviter, status, expires_at, created_at, resent, accepted_at, accepted_by FROM invitations WHERE project_id = ? AND (inviter IN ({ids}) OR accepted_by IN ({ids}))"), vec![]),
            ("share_links", format!("SELECT * FROM share_links WHERE project_id = ? AND sharer IN ({ids})"), vec![]),
            ("share_visitors", format!("SELECT v.* FROM share_visitors v JOIN share_links l ON l.id = v.link_id WHERE l.project_id = ? AND (v.person_uuid = ? OR v.distinct_id IN ({ids}))"), vec![person_uuid]),
            ("pql_scores", format!("SELECT * FROM pql_scores WHERE project_id = ? AND (entity = ? OR label IN ({ids}))"), vec![number.as_str()]),
        ];
        let mut out = Vec::new();
        for (table, sql, scalars) in &queries {
            // Each `IN ({ids})` takes the distinct ids once (none when the list is `NULL`).
            let lists = if distinct_ids.is_empty() {
                0
            } else {
                sql.matches("IN (").count()
            };
            let sql = crate::numbered(sql);
            let rows: Vec<Value> = on_pool!(self, |c| {
                let mut q = sqlx::query(&sql).bind(project_id);
                for s in scalars {
                    q = q.bind(*s);
                }
                for _ in 0..lists {
                    for d in distinct_ids {
                        q = q.bind(d);
                    }
                }
                q.fetch_all(c)
                    .await
                    .map(|rows| rows.iter().map(row_json).collect())
            })?;
            out.extend(rows.into_iter().map(|row| (*table, row)));
        }
        Ok(out)
    }
}

impl Store {
    /// Appends an audit entry (and its `audit.<action>` announcement) on its own, for actions that change nothing
    /// else in the store (an export). `after` must carry no personal data.
    pub async fn record_audit(
        &self,
        project_id: i64,
        actor: &crate::Actor,
        action: &str,
        entity_type: &str,
        entity_id: &str,
        after: &Value,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        crate::features::append_audit(
            &mut tx,
            project_id,
            actor,
            action,
            entity_type,
            entity_id,
            None,
            Some(after),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Erasure

/// The person a GDPR erasure is about, as the store knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureSubject {
    /// The store's person id.
    pub person_id: i64,
    pub uuid: String,
    /// Every distinct id of the person (those of persons merged into it included: merges move them).
    pub distinct_ids: Vec<String>,
    /// Uuids of the persons merged into this one (`person_overrides`).
    pub merged_uuids: Vec<String>,
    /// Identifying values of the person's properties (email addresses; `email`, `name`, `phone`, `username` and
    /// the like), masked wherever other records mention them.
    pub identifying: Vec<String>,
}

impl ErasureSubject {
    /// Everything that names the person: distinct ids, person uuids, identifying property values (deduplicated,
    /// longest first).
    pub fn identifiers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .distinct_ids
            .iter()
            .chain(std::iter::once(&self.uuid))
            .chain(&self.merged_uuids)
            .chain(&self.identifying)
            .filter(|v| !v.is_empty())
            .cloned()
            .collect();
        out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        out.dedup();
        out
    }
}

/// Property keys whose string values identify a person (compared without case and without a leading `$`).
const IDENTIFYING_KEYS: &[&str] = &[
    "email",
    "name",
    "first_name",
    "last_name",
    "full_name",
    "phone",
    "phone_number",
    "username",
];

/// Whether `v` looks like an email address (`local@domain.tld`).
fn looks_like_email(v: &str) -> bool {
    v.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
    }) && !v.contains(char::is_whitespace)
}

/// The identifying values among a person's properties (top level and one level of nesting).
fn identifying_values(properties: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut visit = |k: &str, v: &Value| {
        let Some(s) = v.as_str().map(str::trim) else {
            return;
        };
        let key = k.trim_start_matches('$').to_ascii_lowercase();
        if s.len() >= 3 && (IDENTIFYING_KEYS.contains(&key.as_str()) || looks_like_email(s)) {
            out.push(s.to_owned());
        }
    };
    if let Some(map) = properties.as_object() {
        for (k, v) in map {
            visit(k, v);
            if let Some(inner) = v.as_object() {
                for (k2, v2) in inner {
                    visit(k2, v2);
                }
            }
        }
    }
    out
}

/// What an erasure changed in the metadata store, by table.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErasureCounts {
    /// Rows deleted.
    pub deleted: BTreeMap<&'static str, u64>,
    /// Rows kept with the person's identifiers replaced by tombstones (ledger rows, others' records that named
    /// them, audit entries, outbox messages).
    pub tombstoned: BTreeMap<&'static str, u64>,
}

impl ErasureCounts {
    pub fn records_removed(&self) -> u64 {
        self.deleted.values().sum()
    }

    pub fn records_tombstoned(&self) -> u64 {
        self.tombstoned.values().sum()
    }

    fn delete(&mut self, table: &'static str, n: u64) {
        if n > 0 {
            *self.deleted.entry(table).or_default() += n;
        }
    }

    fn tombstone(&mut self, table: &'static str, n: u64) {
        if n > 0 {
            *self.tombstoned.entry(table).or_default() += n;
        }
    }
}

/// Values shorter than this are replaced only where they are a whole value (or a `:`-separated part of an
/// idempotency key), never inside longer text (a short distinct id such as `42` would hit unrelated text).
pub const SUBSTRING_MIN: usize = 8;

/// Identifier → its tombstone (`erased:<erasure id>-<n>`: random, so it cannot be traced back; one per identifier,
/// so rows that had different identifiers stay distinct where a unique key needs it).
struct Tombs {
    pairs: Vec<(String, String)>,
}

impl Tombs {
    fn new(identifiers: Vec<String>, erasure_id: &str) -> Tombs {
        Tombs {
            pairs: identifiers
                .into_iter()
                .enumerate()
                .map(|(k, v)| (v, format!("erased:{erasure_id}-{k}")))
                .collect(),
        }
    }

    fn exact(&self, v: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(id, _)| id == v)
            .map(|(_, t)| t.as_str())
    }

    /// `text` with whole-value matches and long identifiers inside it replaced.
    fn plain(&self, text: &str) -> Option<String> {
        if let Some(t) = self.exact(text) {
            return Some(t.to_owned());
        }
        let mut out = std::borrow::Cow::Borrowed(text);
        for (id, t) in &self.pairs {
            if id.len() >= SUBSTRING_MIN && out.contains(id.as_str()) {
                out = std::borrow::Cow::Owned(out.replace(id.as_str(), t));
            }
        }
        match out {
            std::borrow::Cow::Owned(s) => Some(s),
            std::borrow::Cow::Borrowed(_) => None,
        }
    }

    /// An idempotency key (`referral:12:referrer`, `tier:program:<distinct id>:2`, or a client's key): parts
    /// between `:` equal to an identifier are replaced, then long identifiers anywhere.
    fn key(&self, text: &str) -> Option<String> {
        let parts: Vec<&str> = text.split(':').collect();
        let mut changed = false;
        let joined: Vec<&str> = parts
            .iter()
            .map(|p| match self.exact(p) {
                Some(t) => {
                    changed = true;
                    t
                }
                None => p,
            })
            .collect();
        let joined = joined.join(":");
        match self.plain(&joined) {
            Some(s) => Some(s),
            None => changed.then_some(joined),
        }
    }

    fn value(&self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => match self.plain(s) {
                Some(t) => {
                    *s = t;
                    true
                }
                None => false,
            },
            Value::Array(items) => {
                let mut changed = false;
                for i in items {
                    changed |= self.value(i);
                }
                changed
            }
            Value::Object(map) => {
                let mut changed = false;
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    changed |= self.value(&mut v);
                    let k = match self.plain(&k) {
                        Some(t) => {
                            changed = true;
                            t
                        }
                        None => k,
                    };
                    map.insert(k, v);
                }
                changed
            }
            _ => false,
        }
    }

    /// JSON text with the identifiers replaced in every string and key, or plain text as [`Tombs::plain`].
    fn text(&self, text: &str) -> Option<String> {
        match serde_json::from_str::<Value>(text) {
            Ok(mut v) if v.is_object() || v.is_array() => self.value(&mut v).then(|| v.to_string()),
            _ => self.plain(text),
        }
    }
}

use crate::Tx;
use crate::{on_conn, on_pool};

/// `(?, ?, …)` for `n` values (`(NULL)` when none).
fn list(n: usize) -> String {
    if n == 0 {
        "(NULL)".to_owned()
    } else {
        format!("({})", vec!["?"; n].join(","))
    }
}

#[allow(clippy::too_many_arguments)]
/// Rows of `table` in `scope` (a condition binding the project id once) whose `columns` mention an identifier:
/// each text rewritten with [`Tombs::text`] (or `rewrite`, per column), the row updated when one changed.
/// Returns the rows changed.
async fn sweep(
    tx: &mut Tx,
    table: &'static str,
    key: &str,
    columns: &[&str],
    scope: &str,
    project_id: i64,
    tombs: &Tombs,
    extra_set: &str,
) -> Result<u64> {
    if tombs.pairs.is_empty() {
        return Ok(0);
    }
    let mentions: Vec<String> = columns
        .iter()
        .flat_map(|c| {
            let d = tx.dialect();
            tombs.pairs.iter().map(move |_| d.contains(c, "?"))
        })
        .collect();
    let sql = crate::numbered(&format!(
        "SELECT {key}, {} FROM {table} WHERE {scope} AND ({})",
        columns.join(", "),
        mentions.join(" OR ")
    ));
    // (key, the columns' texts)
    let rows: Vec<(i64, Vec<Option<String>>)> = on_conn!(tx, |c| {
        let mut q = sqlx::query(&sql).bind(project_id);
        for _ in columns {
            for (id, _) in &tombs.pairs {
                q = q.bind(id);
            }
        }
        let rows = q.fetch_all(c).await?;
        rows.iter()
            .map(|row| {
                let texts = (1..=columns.len())
                    .map(|i| row.try_get(i))
                    .collect::<std::result::Result<_, _>>()?;
                Ok::<_, sqlx::Error>((row.try_get(0)?, texts))
            })
            .collect::<std::result::Result<_, _>>()
    })?;
    let mut changed = 0;
    for (id, texts) in rows {
        let mut sets = Vec::new();
        let mut values = Vec::new();
        for (c, text) in columns.iter().zip(texts) {
            if let Some(new) = text.as_deref().and_then(|t| tombs.text(t)) {
                sets.push(format!("{c} = ?"));
                values.push(new);
            }
        }
        if sets.is_empty() {
            continue;
        }
        let sql = crate::numbered(&format!(
            "UPDATE {table} SET {}{extra_set} WHERE {key} = ?",
            sets.join(", ")
        ));
        on_conn!(tx, |c| {
            let mut q = sqlx::query(&sql);
            for v in values {
                q = q.bind(v);
            }
            q.bind(id).execute(c).await.map(|r| r.rows_affected())
        })?;
        changed += 1;
    }
    Ok(changed)
}

impl Store {
    /// The person `distinct_id` belongs to in `project_id`, with everything an erasure needs to find their data.
    pub async fn erasure_subject(
        &self,
        project_id: i64,
        distinct_id: &str,
    ) -> Result<Option<ErasureSubject>> {
        let mut conn = self.conn().await?;
        let row: Option<(i64, String, String)> = on_conn!(&mut conn, |c| {
            sqlx::query_as(
            "SELECT p.id, p.uuid, p.properties FROM person_distinct_ids d JOIN persons p ON p.id = d.person_id
             WHERE d.project_id = $1 AND d.distinct_id = $2",
        )
        .bind(project_id)
        .bind(distinct_id)
        .fetch_optional(c)
        .await
        })?;
        let Some((person_id, uuid, properties)) = row else {
            return Ok(None);
        };
        let distinct_ids: Vec<String> = on_conn!(&mut conn, |c| {
            sqlx::query_scalar(
            "SELECT distinct_id FROM person_distinct_ids WHERE person_id = $1 ORDER BY distinct_id",
        )
        .bind(person_id)
        .fetch_all(c)
        .await
        })?;
        let merged_uuids: Vec<String> = on_conn!(&mut conn, |c| {
            sqlx::query_scalar(
            "SELECT old_person_uuid FROM person_overrides WHERE project_id = $1 AND new_person_uuid = $2
             ORDER BY old_person_uuid",
        )
        .bind(project_id)
        .bind(&uuid)
        .fetch_all(c)
        .await
        })?;
        let properties: Value = serde_json::from_str(&properties)?;
        Ok(Some(ErasureSubject {
            person_id,
            uuid,
            distinct_ids,
            merged_uuids,
            identifying: identifying_values(&properties),
        }))
    }

    /// Erases a person from the metadata store in one transaction: deletes the person, their distinct ids,
    /// overrides, group links, static-cohort memberships and growth records (referrals as referee, share links
    /// and their views and visits, PQL scores, sticky assignments of their ids, unreferenced referral codes and
    /// their clicks), replaces their identifiers by tombstones in what must stay (reward ledger entries and their
    /// transitions, referrals they referred, referral codes others' referrals point at, invitations they sent or
    /// accepted) and in every text that mentions them (other persons' and groups' properties, outbox messages —
    /// their captured events' messages lose their content —, webhook errors, audit entries), and appends the
    /// `person.erased` audit entry (entity: `erasure_id`; `summary` plus the store's counts, no personal data).
    /// Deleted content is overwritten (`secure_delete`) and the identity writer drops its caches. `None` when the
    /// person no longer exists. The subject is read again inside the transaction: distinct ids added since it
    /// was first read are erased too.
    pub async fn erase_person(
        &self,
        project_id: i64,
        person_id: i64,
        erasure_id: &str,
        actor: &crate::Actor,
        summary: &Value,
    ) -> Result<Option<(ErasureSubject, ErasureCounts)>> {
        let mut tx = self.write_tx().await?;
        // SQLite: deleted cells are zeroed as they are deleted. PostgreSQL keeps dead rows until VACUUM reclaims
        // them (see docs/postgres.md, "GDPR").
        let secure_before: Option<i64> = match &mut tx {
            Tx::Sqlite(t) => {
                let before = sqlx::query_scalar("PRAGMA secure_delete")
                    .fetch_one(&mut **t)
                    .await?;
                sqlx::query("PRAGMA secure_delete = ON")
                    .execute(&mut **t)
                    .await?;
                Some(before)
            }
            Tx::Postgres(_) => None,
        };
        let result = erase_in(&mut tx, project_id, person_id, erasure_id, actor, summary).await;
        // The connection goes back to the pool as it was.
        if let (Tx::Sqlite(t), Some(before)) = (&mut tx, secure_before) {
            sqlx::query(&format!("PRAGMA secure_delete = {before}"))
                .execute(&mut **t)
                .await?;
        }
        let Some(done) = result? else {
            return Ok(None);
        };
        // Before the commit: an identity transaction that waited for this one must not use a cached person.
        self.invalidate_identity_caches();
        tx.commit().await?;
        // Old page images in the write-ahead log are dropped (best effort: readers may keep it busy).
        if let Some(pool) = self.sqlite() {
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await;
        }
        Ok(Some(done))
    }
}

async fn erase_in(
    tx: &mut Tx,
    project_id: i64,
    person_id: i64,
    erasure_id: &str,
    actor: &crate::Actor,
    summary: &Value,
) -> Result<Option<(ErasureSubject, ErasureCounts)>> {
    let row: Option<(String, String)> = on_conn!(tx, |c| sqlx::query_as(
        "SELECT uuid, properties FROM persons WHERE id = $1 AND project_id = $2"
    )
    .bind(person_id)
    .bind(project_id)
    .fetch_optional(c)
    .await)?;
    let Some((uuid, properties)) = row else {
        return Ok(None);
    };
    let distinct_ids: Vec<String> = on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT distinct_id FROM person_distinct_ids WHERE person_id = $1 ORDER BY distinct_id",
    )
    .bind(person_id)
    .fetch_all(c)
    .await)?;
    let merged_uuids: Vec<String> = on_conn!(tx, |c| {
        sqlx::query_scalar(
        "SELECT old_person_uuid FROM person_overrides WHERE project_id = $1 AND new_person_uuid = $2
         ORDER BY old_person_uuid",
    )
    .bind(project_id)
    .bind(&uuid)
    .fetch_all(c)
    .await
    })?;
    let subject = ErasureSubject {
        person_id,
        uuid: uuid.clone(),
        distinct_ids,
        merged_uuids,
        identifying: identifying_values(&serde_json::from_str(&properties)?),
    };
    let tombs = Tombs::new(subject.identifiers(), erasure_id);
    let ids = &subject.distinct_ids;
    let mut uuids = vec![uuid.clone()];
    uuids.extend(subject.merged_uuids.iter().cloned());
    let mut counts = ErasureCounts::default();

    // A statement with the project id, then `lists` of values bound in order.
    async fn run(tx: &mut Tx, sql: &str, project_id: i64, lists: &[&[String]]) -> Result<u64> {
        let sql = crate::numbered(sql);
        Ok(on_conn!(tx, |c| {
            let mut q = sqlx::query(&sql).bind(project_id);
            for l in lists {
                for v in *l {
                    q = q.bind(v);
                }
            }
            q.execute(c).await.map(|r| r.rows_affected())
        })?)
    }
    let (il, ul) = (list(ids.len()), list(uuids.len()));

    // Referrals in which they were referred: theirs, deleted.
    let n = run(
        tx,
        &format!("DELETE FROM referrals WHERE project_id = ? AND (referee IN {il} OR referee_person IN {ul})"),
        project_id,
        &[ids, &uuids],
    )
    .await?;
    counts.delete("referrals", n);
    // Their referral codes: clicks deleted; codes deleted unless others' referrals point at them (then
    // tombstoned: the link stops working, the referee's record keeps its code row).
    let n = run(
        tx,
        &format!(
            "DELETE FROM referral_clicks WHERE code_id IN
               (SELECT id FROM referral_codes WHERE project_id = ? AND referrer IN {il})"
        ),
        project_id,
        &[ids],
    )
    .await?;
    counts.delete("referral_clicks", n);
    let n = run(
        tx,
        &format!(
            "DELETE FROM referral_codes WHERE project_id = ? AND referrer IN {il}
               AND id NOT IN (SELECT code_id FROM referrals)"
        ),
        project_id,
        &[ids],
    )
    .await?;
    counts.delete("referral_codes", n);
    let codes: Vec<(i64, String)> = {
        let sql = crate::numbered(&format!(
            "SELECT id, referrer FROM referral_codes WHERE project_id = ? AND referrer IN {il}"
        ));
        on_conn!(tx, |c| {
            let mut q = sqlx::query_as(&sql).bind(project_id);
            for d in ids {
                q = q.bind(d);
            }
            q.fetch_all(c).await
        })?
    };
    for (k, (id, referrer)) in codes.iter().enumerate() {
        let tomb = tombs.exact(referrer).unwrap_or("erased");
        let code = format!("erased-{erasure_id}-{k}");
        on_conn!(tx, |c| sqlx::query(
            "UPDATE referral_codes SET referrer = $1, code = $2, code_key = $3 WHERE id = $4"
        )
        .bind(tomb)
        .bind(&code)
        .bind(code.to_lowercase())
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    }
    counts.tombstone("referral_codes", codes.len() as u64);
    // Referrals they made: the referee's record stays, the referrer is a tombstone.
    for d in ids {
        let tomb = tombs.exact(d).unwrap_or("erased");
        let n = on_conn!(tx, |c| sqlx::query(
            "UPDATE referrals SET referrer = $1 WHERE project_id = $2 AND referrer = $3"
        )
        .bind(tomb)
        .bind(project_id)
        .bind(d)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        counts.tombstone("referrals", n);
    }
    let n = sweep(
        tx,
        "referrals",
        "id",
        &["signals"],
        "project_id = ?",
        project_id,
        &tombs,
        "",
    )
    .await?;
    counts.tombstone("referrals", n);

    // The reward ledger stays for accounting: beneficiary and keys tombstoned, entries and transitions kept.
    let entries: Vec<(i64, String, String, String)> = on_conn!(tx, |c| {
        sqlx::query_as(
        "SELECT id, beneficiary, idempotency_key, reason FROM reward_entries WHERE project_id = $1",
    )
    .bind(project_id)
    .fetch_all(c)
    .await
    })?;
    for (id, beneficiary, key, reason) in entries {
        let b = tombs
            .exact(&beneficiary)
            .filter(|_| ids.contains(&beneficiary))
            .map(str::to_owned);
        let k = tombs.key(&key);
        let r = tombs.plain(&reason);
        if b.is_none() && k.is_none() && r.is_none() {
            continue;
        }
        on_conn!(tx, |c| {
            sqlx::query(
            "UPDATE reward_entries SET beneficiary = $1, idempotency_key = $2, reason = $3 WHERE id = $4",
        )
        .bind(b.unwrap_or(beneficiary))
        .bind(k.unwrap_or(key))
        .bind(r.unwrap_or(reason))
        .bind(id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        counts.tombstone("reward_entries", 1);
    }
    let n = sweep(
        tx,
        "reward_transitions",
        "id",
        &["reason", "actor"],
        "entry_id IN (SELECT id FROM reward_entries WHERE project_id = ?)",
        project_id,
        &tombs,
        "",
    )
    .await?;
    counts.tombstone("reward_transitions", n);

    // Invitations they sent or accepted, or addressed to their email: the other side's record stays.
    let invitations: Vec<(i64, String, String, Option<String>)> =
        on_conn!(tx, |c| sqlx::query_as(
            "SELECT id, email, inviter, accepted_by FROM invitations WHERE project_id = $1",
        )
        .bind(project_id)
        .fetch_all(c)
        .await)?;
    for (id, email, inviter, accepted_by) in invitations {
        let named = |v: &str| ids.contains(&v.to_owned());
        let email_theirs = subject
            .identifying
            .iter()
            .any(|v| v.eq_ignore_ascii_case(email.trim()))
            || accepted_by.as_deref().is_some_and(named);
        if !(email_theirs || named(&inviter) || accepted_by.as_deref().is_some_and(named)) {
            continue;
        }
        let tomb = |v: &str| tombs.exact(v).unwrap_or("erased").to_owned();
        let email = if email_theirs {
            format!("{}@erased.invalid", tomb(&email).replace(':', "-"))
        } else {
            email
        };
        let inviter = if named(&inviter) {
            tomb(&inviter)
        } else {
            inviter
        };
        let accepted_by = accepted_by.map(|a| if named(&a) { tomb(&a) } else { a });
        on_conn!(tx, |c| sqlx::query(
            "UPDATE invitations SET email = $1, inviter = $2, accepted_by = $3 WHERE id = $4"
        )
        .bind(email)
        .bind(inviter)
        .bind(accepted_by)
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        counts.tombstone("invitations", 1);
    }

    // Share links they made (with their views and visitors), and their visits to others' links.
    let link_scope = format!("SELECT id FROM share_links WHERE project_id = ? AND sharer IN {il}");
    let n = run(
        tx,
        &format!("DELETE FROM share_views WHERE link_id IN ({link_scope})"),
        project_id,
        &[ids],
    )
    .await?;
    counts.delete("share_views", n);
    let n = run(
        tx,
        &format!("DELETE FROM share_visitors WHERE link_id IN ({link_scope})"),
        project_id,
        &[ids],
    )
    .await?;
    counts.delete("share_visitors", n);
    let n = run(
        tx,
        &format!("DELETE FROM share_links WHERE project_id = ? AND sharer IN {il}"),
        project_id,
        &[ids],
    )
    .await?;
    counts.delete("share_links", n);
    let n = run(
        tx,
        &format!(
            "DELETE FROM share_visitors WHERE link_id IN (SELECT id FROM share_links WHERE project_id = ?)
               AND (person_uuid IN {ul} OR distinct_id IN {il})"
        ),
        project_id,
        &[&uuids, ids],
    )
    .await?;
    counts.delete("share_visitors", n);
    let n = sweep(
        tx,
        "share_links",
        "id",
        &["url"],
        "project_id = ?",
        project_id,
        &tombs,
        "",
    )
    .await?;
    counts.tombstone("share_links", n);

    // PQL scores (a person entity is the person id; the label is a distinct id).
    let number = [person_id.to_string()];
    let n = run(
        tx,
        &format!(
            "DELETE FROM pql_scores WHERE project_id = ? AND (entity IN {} OR label IN {il})",
            list(1)
        ),
        project_id,
        &[&number, ids],
    )
    .await?;
    counts.delete("pql_scores", n);

    // Sticky bucketing documents keyed by one of their ids or identifying values (`<attribute>||<value>`).
    let values: Vec<String> = tombs.pairs.iter().map(|(v, _)| v.clone()).collect();
    let n = run(
        tx,
        &format!(
            "DELETE FROM sticky_assignments WHERE project_id = ?
               AND substr(attribute_key, {} + 2) IN {}",
            tx.dialect().position("attribute_key", "'||'"),
            list(values.len())
        ),
        project_id,
        &[&values],
    )
    .await?;
    counts.delete("sticky_assignments", n);

    // Identity: static cohorts (their versions move, so cached answers are not reused), groups, overrides,
    // distinct ids, the person.
    on_conn!(tx, |c| {
        sqlx::query(
        "UPDATE cohorts SET version = version + 1 WHERE id IN (SELECT cohort_id FROM cohort_people WHERE person_id = $1)",
    )
    .bind(person_id)
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    let n = on_conn!(tx, |c| sqlx::query(
        "DELETE FROM cohort_people WHERE person_id = $1"
    )
    .bind(person_id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    counts.delete("cohort_people", n);
    let n = on_conn!(tx, |c| sqlx::query(
        "DELETE FROM person_groups WHERE person_id = $1"
    )
    .bind(person_id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    counts.delete("person_groups", n);
    let n = run(
        tx,
        &format!(
            "DELETE FROM person_overrides WHERE project_id = ? AND (new_person_uuid IN {ul} OR old_person_uuid IN {ul})"
        ),
        project_id,
        &[&uuids, &uuids],
    )
    .await?;
    counts.delete("person_overrides", n);
    let n = on_conn!(tx, |c| sqlx::query(
        "DELETE FROM person_distinct_ids WHERE person_id = $1"
    )
    .bind(person_id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    counts.delete("person_distinct_ids", n);
    let n = on_conn!(tx, |c| sqlx::query("DELETE FROM persons WHERE id = $1")
        .bind(person_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    counts.delete("persons", n);

    // Texts that mention them elsewhere. Other persons' properties get a new identity sequence number, so that
    // consumers reading changes by number see the masked values; so does the erasure itself (`person_erasures`).
    let seq: i64 = on_conn!(tx, |c| sqlx::query_scalar(
        "UPDATE id_sequences SET last = last + 1 WHERE name = 'identity' RETURNING last",
    )
    .fetch_one(c)
    .await)?;
    // Consumers that follow persons by that number learn of the erasure (the store's ids only).
    on_conn!(tx, |c| sqlx::query(
        "INSERT INTO person_erasures (person_id, project_id, seq) VALUES ($1, $2, $3)"
    )
    .bind(person_id)
    .bind(project_id)
    .bind(seq)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    let n = sweep(
        tx,
        "persons",
        "id",
        &["properties"],
        "project_id = ?",
        project_id,
        &tombs,
        &format!(", version = version + 1, seq = {seq}"),
    )
    .await?;
    counts.tombstone("persons", n);
    let groups: Vec<(i64, String, String)> = on_conn!(tx, |c| sqlx::query_as(
        "SELECT group_type_index, group_key, properties FROM groups WHERE project_id = $1",
    )
    .bind(project_id)
    .fetch_all(c)
    .await)?;
    for (index, key, props) in groups {
        if let Some(new) = tombs.text(&props) {
            on_conn!(tx, |c| {
                sqlx::query(
                "UPDATE groups SET properties = $1 WHERE project_id = $2 AND group_type_index = $3 AND group_key = $4",
            )
            .bind(new)
            .bind(project_id)
            .bind(index)
            .bind(key)
            .execute(c)
            .await.map(|r| r.rows_affected())
            })?;
            counts.tombstone("groups", 1);
        }
    }
    // Outbox: their captured events' messages keep only the event name and the subscriptions; other messages are
    // masked.
    let events: Vec<(i64, String, String)> = on_conn!(tx, |c| sqlx::query_as(
        "SELECT id, topic, payload FROM outbox WHERE project_id = $1 AND topic LIKE 'event.%'",
    )
    .bind(project_id)
    .fetch_all(c)
    .await)?;
    for (id, topic, payload) in events {
        let Ok(v) = serde_json::from_str::<Value>(&payload) else {
            continue;
        };
        if !v["distinct_id"]
            .as_str()
            .is_some_and(|d| ids.iter().any(|i| i == d))
        {
            continue;
        }
        let erased = serde_json::json!({"erased": true, "event": topic.trim_start_matches("event."),
            "webhooks": v.get("webhooks").cloned().unwrap_or(Value::Null)});
        on_conn!(tx, |c| sqlx::query(
            "UPDATE outbox SET payload = $1 WHERE id = $2"
        )
        .bind(erased.to_string())
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        counts.tombstone("outbox", 1);
    }
    let n = sweep(
        tx,
        "outbox",
        "id",
        &["payload"],
        "project_id = ?",
        project_id,
        &tombs,
        "",
    )
    .await?;
    counts.tombstone("outbox", n);
    let n = sweep(
        tx,
        "webhook_deliveries",
        "id",
        &["last_error"],
        "webhook_id IN (SELECT id FROM webhooks WHERE project_id = ?)",
        project_id,
        &tombs,
        "",
    )
    .await?;
    counts.tombstone("webhook_deliveries", n);
    let n = sweep(
        tx,
        "webhook_attempts",
        "id",
        &["error"],
        "delivery_id IN (SELECT d.id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                         WHERE w.project_id = ?)",
        project_id,
        &tombs,
        "",
    )
    .await?;
    counts.tombstone("webhook_attempts", n);
    // The audit log: updates are allowed while this erasure's marker row exists (migration 0022).
    on_conn!(tx, |c| sqlx::query(
        "INSERT INTO audit_redactions (erasure_id) VALUES ($1)"
    )
    .bind(erasure_id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    let n = sweep(
        tx,
        "audit_log",
        "id",
        &["entity_id", "before", "after", "diff"],
        "project_id = ?",
        project_id,
        &tombs,
        "",
    )
    .await?;
    counts.tombstone("audit_log", n);
    on_conn!(tx, |c| sqlx::query(
        "DELETE FROM audit_redactions WHERE erasure_id = $1"
    )
    .bind(erasure_id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;

    let mut after = summary.clone();
    if !after.is_object() {
        after = Value::Object(Map::new());
    }
    after["records_removed"] = Value::from(counts.records_removed());
    after["records_tombstoned"] = Value::from(counts.records_tombstoned());
    after["distinct_ids"] = Value::from(subject.distinct_ids.len());
    crate::features::append_audit(
        tx,
        project_id,
        actor,
        "person.erased",
        "erasure",
        erasure_id,
        None,
        Some(&after),
    )
    .await?;
    Ok(Some((subject, counts)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Actor, IdentityOp, MergeMode};
    use serde_json::json;

    #[test]
    fn tombstones_replace_whole_values_key_parts_and_long_mentions_only() {
        let t = Tombs::new(
            vec!["user-erase-1".into(), "42".into(), "me@x.io".into()],
            "abc",
        );
        assert_eq!(t.plain("42").as_deref(), Some("erased:abc-1"));
        assert_eq!(t.plain("1420"), None, "short ids only as whole values");
        assert_eq!(
            t.plain("see https://x.io/?u=user-erase-1").as_deref(),
            Some("see https://x.io/?u=erased:abc-0")
        );
        assert_eq!(
            t.key("tier:p:42:1").as_deref(),
            Some("tier:p:erased:abc-1:1")
        );
        assert_eq!(t.key("referral:42x:referrer"), None);
        let v = t
            .text(r#"{"entity_id": "42", "list": ["me@x.io", 42], "user-erase-1": {"n": "4242"}}"#)
            .unwrap();
        let v: Value = serde_json::from_str(&v).unwrap();
        assert_eq!(
            v,
            json!({"entity_id": "erased:abc-1", "list": ["erased:abc-2", 42], "erased:abc-0": {"n": "4242"}})
        );
        assert!(
            looks_like_email("a.b@c.io") && !looks_like_email("a@b") && !looks_like_email("@x.io")
        );
        assert_eq!(
            identifying_values(
                &json!({"$email": "a@b.io", "plan": "pro", "Name": "Ann Lee",
                                       "nested": {"contact": "c@d.io"}, "n": 3})
            ),
            vec!["a@b.io".to_owned(), "Ann Lee".into(), "c@d.io".into()]
        );
    }

    #[tokio::test]
    async fn erasure_deletes_the_person_masks_the_audit_log_and_resets_the_identity_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db")).await.unwrap();
        let boot = store.bootstrap("o", "p").await.unwrap();
        let p = boot.project_id;
        let mut writer = store.identity_writer("identity").unwrap();
        let touch = |d: &str| IdentityOp::Touch {
            project_id: p,
            distinct_id: d.into(),
            at: 1,
        };
        writer
            .apply(
                &[
                    touch("anon-erase-1"),
                    touch("other"),
                    IdentityOp::Merge {
                        project_id: p,
                        target: "user-erase-1".into(),
                        other: "anon-erase-1".into(),
                        mode: MergeMode::Identify,
                        at: 2,
                    },
                    IdentityOp::SetProperties {
                        project_id: p,
                        distinct_id: "user-erase-1".into(),
                        set: json!({"email": "marker@x.io"}).as_object().unwrap().clone(),
                        set_once: Map::new(),
                        unset: vec![],
                        at: 3,
                    },
                ],
                10,
            )
            .unwrap();
        let subject = store
            .erasure_subject(p, "anon-erase-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(subject.distinct_ids, ["anon-erase-1", "user-erase-1"]);
        assert_eq!(subject.identifying, ["marker@x.io"]);
        let actor = Actor {
            label: "personal_key:1".into(),
            source_ip: None,
        };
        store
            .record_audit(
                p,
                &actor,
                "person.exported",
                "person",
                &subject.uuid,
                &json!({"events": 1}),
            )
            .await
            .unwrap();
        // The audit log refuses updates outside an erasure.
        let refused = on_pool!(store, |c| sqlx::query(
            "UPDATE audit_log SET entity_id = 'x'"
        )
        .execute(c)
        .await
        .map(|r| r.rows_affected()));
        assert!(refused.is_err());

        let (_, counts) = store
            .erase_person(
                p,
                subject.person_id,
                "e1",
                &actor,
                &json!({"events_removed": 0}),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(counts.deleted["persons"], 1);
        assert_eq!(counts.deleted["person_distinct_ids"], 2);
        assert!(counts.tombstoned["audit_log"] >= 1, "{counts:?}");
        assert!(store
            .erasure_subject(p, "user-erase-1")
            .await
            .unwrap()
            .is_none());
        assert!(store.erasure_subject(p, "other").await.unwrap().is_some());
        let audit: Vec<(String, String, Option<String>)> = on_pool!(store, |c| sqlx::query_as(
            "SELECT action, entity_id, after FROM audit_log ORDER BY id"
        )
        .fetch_all(c)
        .await)
        .unwrap();
        let text = format!("{audit:?}");
        assert!(!text.contains(&subject.uuid), "{text}");
        let erased = audit.iter().find(|a| a.0 == "person.erased").unwrap();
        assert_eq!(erased.1, "e1");
        let after: Value = serde_json::from_str(erased.2.as_deref().unwrap()).unwrap();
        assert_eq!(after["records_removed"], counts.records_removed());
        let empty: i64 = on_pool!(store, |c| sqlx::query_scalar(
            "SELECT count(*) FROM audit_redactions"
        )
        .fetch_one(c)
        .await)
        .unwrap();
        assert_eq!(empty, 0);
        // Erasing again finds nobody.
        assert!(store
            .erase_person(p, subject.person_id, "e2", &actor, &json!({}))
            .await
            .unwrap()
            .is_none());
        // The writer had the person cached: after the erasure the id gets a new person.
        writer.apply(&[touch("user-erase-1")], 11).unwrap();
        let again = store
            .erasure_subject(p, "user-erase-1")
            .await
            .unwrap()
            .unwrap();
        assert_ne!(again.uuid, subject.uuid);
        assert_eq!(again.distinct_ids, ["user-erase-1"]);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Erasures announced to the other nodes (migration 0025)

/// An erasure announced to every node sharing this store: the digests ([`erasure_digest`]) of the distinct ids
/// whose events each node drops from its own log, tables and shipped rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureNotice {
    pub id: i64,
    pub project_id: i64,
    /// The node that erased (it has done its part).
    pub node: String,
    pub digests: Vec<String>,
}

/// The digest a notice keeps of a distinct id: lowercase hex SHA-256 of `<project id>:<distinct id>` (the id itself
/// is not kept; a node recognises it among its own events).
pub fn erasure_digest(project_id: i64, distinct_id: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(project_id.to_string().as_bytes());
    h.update(b":");
    h.update(distinct_id.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Announces an erasure of `distinct_ids` (digested here) done by `node`; the notice's number.
    pub async fn announce_erasure(
        &self,
        project_id: i64,
        node: &str,
        distinct_ids: &[String],
    ) -> Result<i64> {
        let digests: Vec<String> = distinct_ids
            .iter()
            .map(|d| erasure_digest(project_id, d))
            .collect();
        let digests = serde_json::to_string(&digests).unwrap_or_else(|_| "[]".into());
        let now = crate::now_text();
        Ok(on_pool!(self, |c| {
            sqlx::query_scalar(
            "INSERT INTO erasure_notices (project_id, node, digests, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING id"
        )
        .bind(project_id)
        .bind(node)
        .bind(&digests)
        .bind(&now)
        .fetch_one(c)
        .await
        })?)
    }

    /// Notices after number `after`, oldest first, at most `limit`.
    pub async fn erasure_notices_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ErasureNotice>> {
        let rows: Vec<(i64, i64, String, String)> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT id, project_id, node, digests FROM erasure_notices WHERE id > $1 ORDER BY id LIMIT $2"
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(c)
        .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(id, project_id, node, digests)| ErasureNotice {
                id,
                project_id,
                node,
                digests: serde_json::from_str(&digests).unwrap_or_default(),
            })
            .collect())
    }

    /// The newest notice's number (0: none).
    pub async fn last_erasure_notice(&self) -> Result<i64> {
        let last: Option<i64> = on_pool!(self, |c| sqlx::query_scalar(
            "SELECT MAX(id) FROM erasure_notices"
        )
        .fetch_one(c)
        .await)?;
        Ok(last.unwrap_or(0))
    }
}
