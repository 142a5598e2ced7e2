//! Reading persons and groups.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::on_pool;
use crate::{Result, Store};

/// A person as the native API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PersonRecord {
    pub id: String,
    pub properties: Value,
    pub distinct_ids: Vec<String>,
    pub is_identified: bool,
    pub created_at: String,
    pub groups: Vec<GroupMembership>,
}

/// A person as the person search lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PersonSummary {
    pub id: String,
    pub properties: Value,
    pub distinct_ids: Vec<String>,
    pub created_at: String,
}

/// A group the person belongs to, with the group's properties (empty when it was never identified).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupMembership {
    pub group_type: String,
    pub group_type_index: i64,
    pub group_key: String,
    pub properties: Value,
}

/// The distinct ids of a `group_concat(distinct_id, char(31))`, sorted.
pub(crate) fn split_ids(concatenated: Option<String>) -> Vec<String> {
    let mut ids: Vec<String> = concatenated
        .unwrap_or_default()
        .split('\u{1f}')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

impl Store {
    /// The person that `distinct_id` belongs to in `project_id`.
    pub async fn person_by_distinct_id(
        &self,
        project_id: i64,
        distinct_id: &str,
    ) -> Result<Option<PersonRecord>> {
        let row: Option<(i64, String, String, bool, String)> = on_pool!(self, |c| sqlx::query_as(
            "SELECT p.id, p.uuid, p.properties, p.is_identified, p.created_at
             FROM person_distinct_ids d JOIN persons p ON p.id = d.person_id
             WHERE d.project_id = $1 AND d.distinct_id = $2",
        )
        .bind(project_id)
        .bind(distinct_id)
        .fetch_optional(c)
        .await)?;
        let Some((id, uuid, properties, is_identified, created_at)) = row else {
            return Ok(None);
        };
        let distinct_ids: Vec<String> = on_pool!(self, |c| {
            sqlx::query_scalar(
            "SELECT distinct_id FROM person_distinct_ids WHERE person_id = $1 ORDER BY distinct_id",
        )
        .bind(id)
        .fetch_all(c)
        .await
        })?;
        let groups: Vec<(String, i64, String, Option<String>)> =
            on_pool!(self, |c| sqlx::query_as(
                "SELECT t.group_type, pg.group_type_index, pg.group_key, g.properties
             FROM person_groups pg
             JOIN group_types t ON t.project_id = $1 AND t.group_type_index = pg.group_type_index
             LEFT JOIN groups g ON g.project_id = $2 AND g.group_type_index = pg.group_type_index
                                AND g.group_key = pg.group_key
             WHERE pg.person_id = $3 ORDER BY pg.group_type_index, pg.group_key",
            )
            .bind(project_id)
            .bind(project_id)
            .bind(id)
            .fetch_all(c)
            .await)?;
        let groups = groups
            .into_iter()
            .map(|(group_type, group_type_index, group_key, props)| {
                Ok(GroupMembership {
                    group_type,
                    group_type_index,
                    group_key,
                    properties: match props {
                        Some(text) => serde_json::from_str(&text)?,
                        None => Value::Object(Default::default()),
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(PersonRecord {
            id: uuid,
            properties: serde_json::from_str(&properties)?,
            distinct_ids,
            is_identified,
            created_at,
            groups,
        }))
    }

    /// Persons of `project_id` for the person search (newest first, at most `limit`): with `search`, those with a
    /// distinct id, or an `email` or `name` property, containing it (case-insensitive); without, the newest. Persons
    /// merged into another (no distinct id left) are not listed. Each has every distinct id.
    pub async fn search_persons(
        &self,
        project_id: i64,
        search: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PersonSummary>> {
        let b = self.dialect();
        let columns = format!(
            "SELECT p.uuid, p.properties, p.created_at,
                (SELECT {} FROM person_distinct_ids d WHERE d.person_id = p.id)
             FROM persons p",
            b.concat_ids("d.distinct_id")
        );
        let rows: Vec<(String, String, String, Option<String>)> = match search {
            Some(text) => {
                let needle = text.to_lowercase();
                let in_did = b.contains("lower(distinct_id)", "$2");
                let in_email = b.contains(
                    &format!(
                        "lower(COALESCE({}, ''))",
                        b.json_text("p.properties", "email")
                    ),
                    "$2",
                );
                let in_name = b.contains(
                    &format!(
                        "lower(COALESCE({}, ''))",
                        b.json_text("p.properties", "name")
                    ),
                    "$2",
                );
                on_pool!(self, |c| sqlx::query_as(&format!(
                    "{columns} WHERE p.project_id = $1
                       AND (p.id IN (SELECT person_id FROM person_distinct_ids
                                     WHERE project_id = $1 AND {in_did})
                            OR {in_email}
                            OR {in_name})
                       AND EXISTS (SELECT 1 FROM person_distinct_ids d WHERE d.person_id = p.id)
                     ORDER BY p.id DESC LIMIT $3"
                ))
                .bind(project_id)
                .bind(needle)
                .bind(i64::from(limit))
                .fetch_all(c)
                .await)?
            }
            None => on_pool!(self, |c| sqlx::query_as(&format!(
                "{columns} WHERE p.project_id = $1
                       AND EXISTS (SELECT 1 FROM person_distinct_ids d WHERE d.person_id = p.id)
                     ORDER BY p.id DESC LIMIT $2"
            ))
            .bind(project_id)
            .bind(i64::from(limit))
            .fetch_all(c)
            .await)?,
        };
        rows.into_iter()
            .map(|(id, properties, created_at, dids)| {
                Ok(PersonSummary {
                    id,
                    properties: serde_json::from_str(&properties)?,
                    distinct_ids: split_ids(dids),
                    created_at,
                })
            })
            .collect()
    }

    /// Distinct ids whose person was set or changed (a new distinct id, or a merge) by an identity change numbered
    /// above the cursor (migration 0007), with their current person's id and the change's number, at most `limit`,
    /// in (number, project, distinct id) order: pass the last row's `(seq, project, distinct id)` as the next
    /// cursor, `(n, 0, "")` to start after change `n`. For the ClickHouse person mapping.
    pub async fn distinct_id_changes(
        &self,
        after: (i64, i64, &str),
        limit: u32,
    ) -> Result<Vec<(i64, String, String, i64)>> {
        Ok(on_pool!(self, |c| sqlx::query_as(
            "SELECT d.project_id, d.distinct_id, p.uuid, d.seq FROM person_distinct_ids d
               JOIN persons p ON p.id = d.person_id
              WHERE (d.seq, d.project_id, d.distinct_id) > ($1, $2, $3)
              ORDER BY d.seq, d.project_id, d.distinct_id LIMIT $4",
        )
        .bind(after.0)
        .bind(after.1)
        .bind(after.2)
        .bind(i64::from(limit))
        .fetch_all(c)
        .await)?)
    }

    /// Persons created or changed (properties, a merge into them) by an identity change numbered above the
    /// cursor, and persons erased by one (migrations 0007 and 0024), at most `limit`, in (number, person id) order:
    /// pass the last row's `(seq, id)` as the next cursor, `(n, 0)` to start after change `n`. For the ClickHouse
    /// persons table.
    pub async fn person_changes(&self, after: (i64, i64), limit: u32) -> Result<Vec<PersonChange>> {
        let rows: Vec<(i64, i64, String, String, i64, i64)> = on_pool!(self, |c| sqlx::query_as(
            "SELECT id, project_id, uuid, properties, seq, CAST(0 AS BIGINT) FROM persons
              WHERE seq >= $1 AND (seq > $1 OR id > $2)
             UNION ALL
             SELECT person_id, project_id, '', '{}', seq, CAST(1 AS BIGINT) FROM person_erasures
              WHERE seq >= $1 AND (seq > $1 OR person_id > $2)
             ORDER BY 5, 1 LIMIT $3",
        )
        .bind(after.0)
        .bind(after.1)
        .bind(i64::from(limit))
        .fetch_all(c)
        .await)?;
        Ok(rows
            .into_iter()
            .map(
                |(id, project_id, uuid, properties, seq, erased)| PersonChange {
                    id,
                    project_id,
                    uuid: (erased == 0).then_some(uuid),
                    properties,
                    seq,
                },
            )
            .collect())
    }

    /// All distinct ids of a person given its id, following merge overrides. `None` when unknown.
    pub async fn distinct_ids_of_person(
        &self,
        project_id: i64,
        person_uuid: &str,
    ) -> Result<Option<Vec<String>>> {
        let current: Option<String> = on_pool!(self, |c| {
            sqlx::query_scalar(
            "SELECT new_person_uuid FROM person_overrides WHERE project_id = $1 AND old_person_uuid = $2",
        )
        .bind(project_id)
        .bind(person_uuid)
        .fetch_optional(c)
        .await
        })?;
        let uuid = current.as_deref().unwrap_or(person_uuid);
        let person: Option<i64> = on_pool!(self, |c| sqlx::query_scalar(
            "SELECT id FROM persons WHERE project_id = $1 AND uuid = $2"
        )
        .bind(project_id)
        .bind(uuid)
        .fetch_optional(c)
        .await)?;
        let Some(person) = person else {
            return Ok(None);
        };
        let ids = on_pool!(self, |c| sqlx::query_scalar(
            "SELECT distinct_id FROM person_distinct_ids WHERE person_id = $1"
        )
        .bind(person)
        .fetch_all(c)
        .await)?;
        Ok(Some(ids))
    }

    /// Every distinct id of each given person (by current uuid; unknown ones are absent from the map).
    pub async fn distinct_ids_of_persons(
        &self,
        project_id: i64,
        person_uuids: &[&str],
    ) -> Result<HashMap<String, Vec<String>>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::with_capacity(person_uuids.len());
        for chunk in person_uuids.chunks(500) {
            let sql = format!(
                "SELECT p.uuid, d.distinct_id FROM persons p JOIN person_distinct_ids d ON d.person_id = p.id
                 WHERE p.project_id = $1 AND p.uuid IN ({})",
                crate::placeholders(2, chunk.len())
            );
            let rows: Vec<(String, String)> = on_pool!(self, |c| {
                let mut query = sqlx::query_as(&sql).bind(project_id);
                for uuid in chunk {
                    query = query.bind(*uuid);
                }
                query.fetch_all(c).await
            })?;
            for (uuid, did) in rows {
                out.entry(uuid).or_default().push(did);
            }
        }
        Ok(out)
    }

    /// Current person (its uuid) of each given distinct id (missing ones are absent from the map).
    pub async fn person_ids_for(
        &self,
        project_id: i64,
        distinct_ids: &[&str],
    ) -> Result<HashMap<String, String>> {
        self.by_distinct_ids(project_id, distinct_ids, "p.uuid")
            .await
    }

    /// The person id (the store's number) of each given distinct id (missing ones are absent).
    pub async fn person_numbers_for(
        &self,
        project_id: i64,
        distinct_ids: &[&str],
    ) -> Result<HashMap<String, i64>> {
        self.by_distinct_ids(project_id, distinct_ids, "p.id").await
    }

    /// `column` (of `persons p`) of the person of each given distinct id, 500 ids per statement.
    async fn by_distinct_ids<T>(
        &self,
        project_id: i64,
        distinct_ids: &[&str],
        column: &str,
    ) -> Result<HashMap<String, T>>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>
            + for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + Send
            + Unpin,
    {
        let mut out = HashMap::with_capacity(distinct_ids.len());
        for chunk in distinct_ids.chunks(500) {
            let sql = format!(
                "SELECT d.distinct_id, {column} FROM person_distinct_ids d JOIN persons p ON p.id = d.person_id
                 WHERE d.project_id = $1 AND d.distinct_id IN ({})",
                crate::placeholders(2, chunk.len())
            );
            let rows: Vec<(String, T)> = on_pool!(self, |c| {
                let mut query = sqlx::query_as(&sql).bind(project_id);
                for did in chunk {
                    query = query.bind(*did);
                }
                query.fetch_all(c).await
            })?;
            out.extend(rows);
        }
        Ok(out)
    }
}

impl Store {
    /// Calls `f(person_id, value)` for every person of the project that has the top-level property `key` (for
    /// breakdowns and filters on person properties over all persons at once). Read on a blocking thread through
    /// a read-only rusqlite connection: streaming a million rows through sqlx's worker thread took seconds.
    pub async fn for_each_person_property(
        &self,
        project_id: i64,
        key: &str,
        f: impl FnMut(i64, Value),
    ) -> Result<u64> {
        Ok(self
            .read_person_property(project_id, key, None, f)
            .await?
            .rows)
    }

    /// Calls `f(person_id, value)` for every person of `project_id` that has the top-level property `key`
    /// (`since: None`), or for every person created or changed by an identity change numbered above `since`
    /// (migration 0007), with `Value::Null` when it does not have `key` (any more). Returns the sequence number
    /// the read covers: every change numbered up to it is included (a full read may include later ones too).
    pub async fn read_person_property(
        &self,
        project_id: i64,
        key: &str,
        since: Option<i64>,
        mut f: impl FnMut(i64, Value),
    ) -> Result<IdentityRead> {
        if let crate::Backend::Postgres(pool) = self.backend() {
            return read_person_property_postgres(pool, project_id, key, since, f).await;
        }
        // Read first: rows changed after it may be read too, which only re-applies them on the next read.
        let path = self.sqlite_path()?;
        let seq = tokio::task::spawn_blocking(move || -> Result<i64> {
            Ok(read_connection(&path)?.query_row(
                "SELECT last FROM id_sequences WHERE name = 'identity'",
                [],
                |row| row.get(0),
            )?)
        })
        .await
        .map_err(|e| crate::StoreError::Task(format!("identity sequence reader: {e}")))??;
        if let Some(since) = since {
            let path = self.sqlite_path()?;
            let key = key.to_owned();
            let rows = tokio::task::spawn_blocking(move || {
                changed_person_property(&path, project_id, &key, since)
            })
            .await
            .map_err(|e| crate::StoreError::Task(format!("person property reader: {e}")))??;
            let n = rows.len() as u64;
            for (id, v) in rows {
                f(id, v);
            }
            return Ok(IdentityRead { rows: n, seq });
        }
        let path = self.sqlite_path()?;
        let key = key.to_owned();
        let rows = tokio::task::spawn_blocking(move || -> Result<Vec<(i64, Value)>> {
            // JSON extraction is most of the cost (≈1 µs per person): split the persons by id range over the
            // cores, each part on its own read-only connection.
            let (lo, hi): (Option<i64>, Option<i64>) = read_connection(&path)?.query_row(
                "SELECT min(id), max(id) FROM persons WHERE project_id = ?1",
                [project_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (Some(lo), Some(hi)) = (lo, hi) else {
                return Ok(Vec::new());
            };
            let parts = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, 8) as i64;
            let step = ((hi - lo) / parts).max(1) + 1;
            let ranges: Vec<(i64, i64)> = (0..parts)
                .map(|i| (lo + i * step, (lo + (i + 1) * step).min(hi + 1)))
                .filter(|(a, b)| a < b)
                .collect();
            let results: Vec<Result<Vec<(i64, Value)>>> = std::thread::scope(|scope| {
                let handles: Vec<_> = ranges
                    .iter()
                    .map(|&(a, b)| {
                        let (path, key) = (&path, &key);
                        scope.spawn(move || person_property_range(path, project_id, key, a, b))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(crate::StoreError::Task(
                                "person property reader panicked".into(),
                            ))
                        })
                    })
                    .collect()
            });
            let mut out = Vec::new();
            for r in results {
                out.extend(r?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| crate::StoreError::Task(format!("person property reader: {e}")))??;
        let n = rows.len() as u64;
        for (id, v) in rows {
            f(id, v);
        }
        Ok(IdentityRead { rows: n, seq })
    }

    /// Every group of type `index` that has the top-level property `key`: (group key, value).
    pub async fn group_property_values(
        &self,
        project_id: i64,
        index: u8,
        key: &str,
    ) -> Result<Vec<(String, Value)>> {
        let rows: Vec<(String, String)> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT group_key, properties FROM groups WHERE project_id = $1 AND group_type_index = $2",
        )
        .bind(project_id)
        .bind(i64::from(index))
        .fetch_all(c)
        .await
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, text)| match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(mut m)) => m.remove(key).map(|v| (k, v)),
                _ => None,
            })
            .collect())
    }

    /// The name of a project's group type by its index (0–4), if defined.
    pub async fn group_type_name(&self, project_id: i64, index: u8) -> Result<Option<String>> {
        Ok(on_pool!(self, |c| sqlx::query_scalar(
            "SELECT group_type FROM group_types WHERE project_id = $1 AND group_type_index = $2",
        )
        .bind(project_id)
        .bind(i64::from(index))
        .fetch_optional(c)
        .await)?)
    }

    /// Stored properties of the person behind `distinct_id` (`None`: no such person).
    pub async fn person_properties(
        &self,
        project_id: i64,
        distinct_id: &str,
    ) -> Result<Option<serde_json::Map<String, Value>>> {
        let text: Option<String> = on_pool!(self, |c| {
            sqlx::query_scalar(
            "SELECT p.properties FROM person_distinct_ids d JOIN persons p ON p.id = d.person_id
             WHERE d.project_id = $1 AND d.distinct_id = $2",
        )
        .bind(project_id)
        .bind(distinct_id)
        .fetch_optional(c)
        .await
        })?;
        object(text)
    }

    /// Stored properties of a group (`None`: never identified).
    pub async fn group_properties(
        &self,
        project_id: i64,
        group_type: &str,
        group_key: &str,
    ) -> Result<Option<serde_json::Map<String, Value>>> {
        let text: Option<String> = on_pool!(self, |c| sqlx::query_scalar(
            "SELECT g.properties FROM group_types t JOIN groups g
               ON g.project_id = t.project_id AND g.group_type_index = t.group_type_index
             WHERE t.project_id = $1 AND t.group_type = $2 AND g.group_key = $3",
        )
        .bind(project_id)
        .bind(group_type)
        .bind(group_key)
        .fetch_optional(c)
        .await)?;
        object(text)
    }

    /// Calls `f(project_id, distinct_id, person_id)` for every distinct id that has a person.
    pub async fn for_each_distinct_id(&self, f: impl FnMut(i64, &str, i64)) -> Result<u64> {
        Ok(self.read_distinct_ids(None, f).await?.rows)
    }

    /// Calls `f(project_id, distinct_id, person_id)` for every distinct id that has a person (`since: None`), or
    /// only for those inserted or moved to another person (a merge) by a change numbered above `since` in the
    /// 'identity' sequence (migration 0007). One consistent read; returns the sequence number it covers.
    pub async fn read_distinct_ids(
        &self,
        since: Option<i64>,
        mut f: impl FnMut(i64, &str, i64),
    ) -> Result<IdentityRead> {
        if let crate::Backend::Postgres(pool) = self.backend() {
            return read_distinct_ids_postgres(pool, since, f).await;
        }
        // In chunks from a read-only rusqlite connection on a blocking thread (one transaction, so a consistent
        // snapshot): through sqlx's worker thread 1.3M rows took seconds of start-up.
        const CHUNK: usize = 65_536;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(i64, String, i64)>>(4);
        let path = self.sqlite_path()?;
        let reader = tokio::task::spawn_blocking(move || -> Result<i64> {
            let mut conn = read_connection(&path)?;
            let txn = conn.transaction()?;
            let seq: i64 = txn.query_row(
                "SELECT last FROM id_sequences WHERE name = 'identity'",
                [],
                |row| row.get(0),
            )?;
            let mut stmt = match since {
                // In person order (a scan of the covering person index): the event engine numbers persons in the
                // order it meets them, and keeps segment rows in that order.
                None => txn.prepare(
                    "SELECT project_id, distinct_id, person_id FROM person_distinct_ids ORDER BY person_id",
                )?,
                Some(_) => txn.prepare(
                    "SELECT project_id, distinct_id, person_id FROM person_distinct_ids WHERE seq > ?1",
                )?,
            };
            let mut rows = match since {
                None => stmt.query([])?,
                Some(since) => stmt.query([since])?,
            };
            let mut chunk = Vec::with_capacity(CHUNK);
            while let Some(row) = rows.next()? {
                chunk.push((row.get(0)?, row.get(1)?, row.get(2)?));
                if chunk.len() == CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                    if tx.blocking_send(full).is_err() {
                        return Ok(seq); // the caller went away
                    }
                }
            }
            if !chunk.is_empty() {
                let _ = tx.blocking_send(chunk);
            }
            Ok(seq)
        });
        let mut n = 0;
        while let Some(chunk) = rx.recv().await {
            for (project_id, distinct_id, person_id) in &chunk {
                f(*project_id, distinct_id, *person_id);
            }
            n += chunk.len() as u64;
        }
        let seq = reader
            .await
            .map_err(|e| crate::StoreError::Task(format!("distinct id reader: {e}")))??;
        Ok(IdentityRead { rows: n, seq })
    }
}

/// A read-only snapshot transaction on PostgreSQL, and the 'identity' sequence number it covers.
async fn snapshot_postgres(
    pool: &sqlx::PgPool,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, i64)> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let seq = sqlx::query_scalar("SELECT last FROM id_sequences WHERE name = 'identity'")
        .fetch_one(&mut *tx)
        .await?;
    Ok((tx, seq))
}

/// [`Store::read_person_property`] on PostgreSQL: streamed from one snapshot, the member extracted by the
/// server (`jsonb ->`).
async fn read_person_property_postgres(
    pool: &sqlx::PgPool,
    project_id: i64,
    key: &str,
    since: Option<i64>,
    mut f: impl FnMut(i64, Value),
) -> Result<IdentityRead> {
    use futures_util::TryStreamExt;
    let (mut tx, seq) = snapshot_postgres(pool).await?;
    let mut n = 0;
    {
        let sql = match since {
            None => {
                "SELECT id, (properties::jsonb -> $2)::text FROM persons
                  WHERE project_id = $1 AND properties::jsonb -> $2 IS NOT NULL AND $3::bigint IS NULL"
            }
            Some(_) => {
                "SELECT id, (properties::jsonb -> $2)::text FROM persons WHERE project_id = $1 AND seq > $3"
            }
        };
        let mut rows = sqlx::query_as::<_, (i64, Option<String>)>(sql)
            .bind(project_id)
            .bind(key)
            .bind(since)
            .fetch(&mut *tx);
        while let Some((id, json)) = rows.try_next().await? {
            let v = json
                .and_then(|j| serde_json::from_str::<Value>(&j).ok())
                .unwrap_or(Value::Null);
            f(id, v);
            n += 1;
        }
    }
    tx.rollback().await?;
    Ok(IdentityRead { rows: n, seq })
}

/// [`Store::read_distinct_ids`] on PostgreSQL: streamed from one snapshot.
async fn read_distinct_ids_postgres(
    pool: &sqlx::PgPool,
    since: Option<i64>,
    mut f: impl FnMut(i64, &str, i64),
) -> Result<IdentityRead> {
    use futures_util::TryStreamExt;
    let (mut tx, seq) = snapshot_postgres(pool).await?;
    let mut n = 0;
    {
        let sql = match since {
            None => {
                "SELECT project_id, distinct_id, person_id FROM person_distinct_ids
                      WHERE $1::bigint IS NULL ORDER BY person_id"
            }
            Some(_) => {
                "SELECT project_id, distinct_id, person_id FROM person_distinct_ids WHERE seq > $1"
            }
        };
        let mut rows = sqlx::query_as::<_, (i64, String, i64)>(sql)
            .bind(since)
            .fetch(&mut *tx);
        while let Some((project_id, distinct_id, person_id)) = rows.try_next().await? {
            f(project_id, &distinct_id, person_id);
            n += 1;
        }
    }
    tx.rollback().await?;
    Ok(IdentityRead { rows: n, seq })
}

/// A read-only rusqlite connection for bulk reads on a blocking thread (sqlx hands every row over a channel).
pub(crate) fn read_connection(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(crate::BUSY_TIMEOUT)?;
    Ok(conn)
}

fn object(text: Option<String>) -> Result<Option<serde_json::Map<String, Value>>> {
    match text {
        None => Ok(None),
        Some(t) => match serde_json::from_str(&t)? {
            Value::Object(m) => Ok(Some(m)),
            _ => Ok(Some(serde_json::Map::new())),
        },
    }
}

/// The top-level property `key` of the project's persons with ids in `[from, to)`.
/// The value of `key` (`Null` when absent) of every person of `project_id` changed after `since`.
fn changed_person_property(
    path: &std::path::Path,
    project_id: i64,
    key: &str,
    since: i64,
) -> Result<Vec<(i64, Value)>> {
    let conn = read_connection(path)?;
    // `+project_id`: without statistics SQLite would rather take the project index (every person of the project)
    // than the range of changed ones.
    let mut stmt =
        conn.prepare("SELECT id, properties FROM persons WHERE seq > ?1 AND +project_id = ?2")?;
    let mut rows = stmt.query(rusqlite::params![since, project_id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let text: String = row.get(1)?;
        let v = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(mut m)) => m.remove(key).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        out.push((row.get(0)?, v));
    }
    Ok(out)
}

fn person_property_range(
    path: &std::path::Path,
    project_id: i64,
    key: &str,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, Value)>> {
    let conn = read_connection(path)?;
    let mut out = Vec::new();
    if key.contains('"') || key.contains('\\') {
        // Not expressible as a SQLite JSON path label: read whole documents.
        let mut stmt = conn.prepare(
            "SELECT id, properties FROM persons WHERE id >= ?1 AND id < ?2 AND project_id = ?3",
        )?;
        let mut rows = stmt.query(rusqlite::params![from, to, project_id])?;
        while let Some(row) = rows.next()? {
            let text: String = row.get(1)?;
            if let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(&text) {
                if let Some(v) = m.remove(key).filter(|v| !v.is_null()) {
                    out.push((row.get(0)?, v));
                }
            }
        }
        return Ok(out);
    }
    let json_path = format!("$.\"{key}\"");
    // One JSON extraction per person (a `WHERE … IS NOT NULL` on it would parse every document twice).
    let mut stmt = conn.prepare(
        "SELECT id, properties -> ?1 FROM persons WHERE id >= ?2 AND id < ?3 AND project_id = ?4",
    )?;
    let mut rows = stmt.query(rusqlite::params![json_path, from, to, project_id])?;
    while let Some(row) = rows.next()? {
        if let Some(json) = row.get::<_, Option<String>>(1)? {
            if let Ok(v) = serde_json::from_str::<Value>(&json) {
                out.push((row.get(0)?, v));
            }
        }
    }
    Ok(out)
}

/// A person as of an identity change (see [`Store::person_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonChange {
    /// The store's person id.
    pub id: i64,
    pub project_id: i64,
    /// `None`: the person was erased by change `seq`.
    pub uuid: Option<String>,
    /// The properties' JSON text (`{}` when erased).
    pub properties: String,
    pub seq: i64,
}

/// What [`Store::read_distinct_ids`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityRead {
    /// Rows passed to the callback.
    pub rows: u64,
    /// The 'identity' sequence number the read covers: every mapping change numbered up to it is included.
    pub seq: i64,
}
