//! Feature flags, environments, SDK connections and the append-only audit log.
//!
//! A feature's definition is one JSON document validated by the server before it reaches the store. Every write
//! appends an audit entry (who, what, before/after and the changed paths, from where) in the same transaction, so
//! a change and its record exist together or not at all. The table refuses updates and deletes (triggers).

use serde::Serialize;
use serde_json::{json, Value};

use crate::keys::key_digest;
use crate::{now_text, Result, Store, StoreError};
use crate::{on_conn, on_pool};

/// Who made a change, and from where.
#[derive(Debug, Clone)]
pub struct Actor {
    /// e.g. `personal_key:3`.
    pub label: String,
    pub source_ip: Option<String>,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("stale version: the current version is {current}")]
    VersionConflict { current: i64 },
    /// The change does not apply to this entity (e.g. members of a dynamic cohort).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<serde_json::Error> for WriteError {
    fn from(e: serde_json::Error) -> Self {
        WriteError::Store(e.into())
    }
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        WriteError::Store(e.into())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnvironmentRecord {
    pub key: String,
    pub description: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FeatureRecord {
    pub key: String,
    pub definition: Value,
    pub archived: bool,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SdkConnection {
    pub id: i64,
    pub environment: String,
    pub name: String,
    pub key_prefix: String,
    /// The payload is served encrypted (AES-CBC, GrowthBook's `encryptedFeatures`).
    pub encrypted: bool,
    pub created_at: String,
}

/// What a client key serves.
#[derive(Debug, Clone, PartialEq)]
pub struct SdkBinding {
    pub connection_id: i64,
    pub project_id: i64,
    pub environment: String,
    /// Base64 AES key when the payload is served encrypted.
    pub encryption_key: Option<String>,
}

/// A saved group (reusable audience) as stored: its definition is validated by the server.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SavedGroupRecord {
    pub key: String,
    pub definition: Value,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub entity_type: String,
    pub entity_id: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub diff: Value,
    pub source_ip: Option<String>,
    pub at: String,
}

/// Filters of [`Store::audit`]; all optional.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub after: Option<String>,
    pub before: Option<String>,
    /// Entries older than this entry (paging without skipping entries of the same time).
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// Prefix of SDK client keys (GrowthBook-style).
pub const SDK_KEY_PREFIX: &str = "sdk-";

type FeatureRow = (String, String, bool, i64, String, String);

fn feature_from_row(row: FeatureRow) -> Result<FeatureRecord> {
    let (key, definition, archived, version, created_at, updated_at) = row;
    Ok(FeatureRecord {
        key,
        definition: serde_json::from_str(&definition)?,
        archived,
        version,
        created_at,
        updated_at,
    })
}

type SavedGroupRow = (String, String, i64, String, String);

fn saved_group_from_row(row: SavedGroupRow) -> Result<SavedGroupRecord> {
    let (key, definition, version, created_at, updated_at) = row;
    Ok(SavedGroupRecord {
        key,
        definition: serde_json::from_str(&definition)?,
        version,
        created_at,
        updated_at,
    })
}

const SAVED_GROUP_COLUMNS: &str = "key, definition, version, created_at, updated_at";

const FEATURE_COLUMNS: &str = "key, definition, archived, version, created_at, updated_at";

impl Store {
    pub async fn environments(&self, project_id: i64) -> Result<Vec<EnvironmentRecord>> {
        let rows: Vec<(String, String, String)> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT key, description, created_at FROM environments WHERE project_id = $1 ORDER BY created_at, key",
        )
        .bind(project_id)
        .fetch_all(c)
        .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(key, description, created_at)| EnvironmentRecord {
                key,
                description,
                created_at,
            })
            .collect())
    }

    pub async fn create_environment(
        &self,
        project_id: i64,
        key: &str,
        description: &str,
        actor: &Actor,
    ) -> Result<EnvironmentRecord, WriteError> {
        let mut tx = self.write_tx().await?;
        let now = now_text();
        let inserted = on_conn!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO environments (project_id, key, description, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(project_id)
        .bind(key)
        .bind(description)
        .bind(&now)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        if inserted == 0 {
            return Err(WriteError::AlreadyExists);
        }
        let record = EnvironmentRecord {
            key: key.to_owned(),
            description: description.to_owned(),
            created_at: now,
        };
        let after = serde_json::to_value(&record).map_err(StoreError::from)?;
        append_audit(
            &mut tx,
            project_id,
            actor,
            "environment.created",
            "environment",
            key,
            None,
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    pub async fn features(
        &self,
        project_id: i64,
        include_archived: bool,
    ) -> Result<Vec<FeatureRecord>> {
        let rows: Vec<FeatureRow> = on_pool!(self, |c| {
            sqlx::query_as(&format!(
            "SELECT {FEATURE_COLUMNS} FROM features WHERE project_id = $1 AND (archived = FALSE OR $2) ORDER BY key"
        ))
        .bind(project_id)
        .bind(include_archived)
        .fetch_all(c)
        .await
        })?;
        rows.into_iter().map(feature_from_row).collect()
    }

    pub async fn feature(&self, project_id: i64, key: &str) -> Result<Option<FeatureRecord>> {
        let row: Option<FeatureRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {FEATURE_COLUMNS} FROM features WHERE project_id = $1 AND key = $2"
        ))
        .bind(project_id)
        .bind(key)
        .fetch_optional(c)
        .await)?;
        row.map(feature_from_row).transpose()
    }

    pub async fn create_feature(
        &self,
        project_id: i64,
        key: &str,
        definition: &Value,
        actor: &Actor,
    ) -> Result<FeatureRecord, WriteError> {
        let mut tx = self.write_tx().await?;
        let now = now_text();
        let inserted = on_conn!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO features (project_id, key, definition, archived, version, created_at, updated_at)
             VALUES ($1, $2, $3, FALSE, 1, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(project_id)
        .bind(key)
        .bind(definition.to_string())
        .bind(&now)
        .bind(&now)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        if inserted == 0 {
            return Err(WriteError::AlreadyExists);
        }
        let record = FeatureRecord {
            key: key.to_owned(),
            definition: definition.clone(),
            archived: false,
            version: 1,
            created_at: now.clone(),
            updated_at: now,
        };
        let after = serde_json::to_value(&record).map_err(StoreError::from)?;
        append_audit(
            &mut tx,
            project_id,
            actor,
            "feature.created",
            "feature",
            key,
            None,
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Replaces a feature's definition and archived flag if its version is still `expected_version`.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_feature(
        &self,
        project_id: i64,
        key: &str,
        expected_version: i64,
        definition: &Value,
        archived: bool,
        action: &str,
        actor: &Actor,
    ) -> Result<FeatureRecord, WriteError> {
        let mut tx = self.write_tx().await?;
        let row: Option<FeatureRow> = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "SELECT {FEATURE_COLUMNS} FROM features WHERE project_id = $1 AND key = $2"
        ))
        .bind(project_id)
        .bind(key)
        .fetch_optional(c)
        .await)?;
        let before = feature_from_row(row.ok_or(WriteError::NotFound)?)?;
        if before.version != expected_version {
            return Err(WriteError::VersionConflict {
                current: before.version,
            });
        }
        let now = now_text();
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE features SET definition = $1, archived = $2, version = version + 1, updated_at = $3
             WHERE project_id = $4 AND key = $5 AND version = $6",
        )
        .bind(definition.to_string())
        .bind(archived)
        .bind(&now)
        .bind(project_id)
        .bind(key)
        .bind(expected_version)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        let after = FeatureRecord {
            key: key.to_owned(),
            definition: definition.clone(),
            archived,
            version: expected_version + 1,
            created_at: before.created_at.clone(),
            updated_at: now,
        };
        let b = serde_json::to_value(&before).map_err(StoreError::from)?;
        let a = serde_json::to_value(&after).map_err(StoreError::from)?;
        append_audit(
            &mut tx,
            project_id,
            actor,
            action,
            "feature",
            key,
            Some(&b),
            Some(&a),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Creates a client key for one environment; returns the record and the key text (shown once).
    pub async fn create_sdk_connection(
        &self,
        project_id: i64,
        environment: &str,
        name: &str,
        encrypt: bool,
        actor: &Actor,
    ) -> Result<(SdkConnection, String, Option<String>), WriteError> {
        use base64::Engine as _;
        use rand::Rng;
        let encryption_key = encrypt.then(|| {
            let bytes: [u8; 16] = rand::thread_rng().gen();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        });
        let body: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let key = format!("{SDK_KEY_PREFIX}{body}");
        let mut tx = self.write_tx().await?;
        let exists: Option<String> = on_conn!(&mut tx, |c| sqlx::query_scalar(
            "SELECT key FROM environments WHERE project_id = $1 AND key = $2"
        )
        .bind(project_id)
        .bind(environment)
        .fetch_optional(c)
        .await)?;
        if exists.is_none() {
            return Err(WriteError::NotFound);
        }
        let now = now_text();
        let prefix: String = key.chars().take(9).collect();
        let id = on_conn!(&mut tx, |c| sqlx::query_scalar::<_, i64>(
            "INSERT INTO sdk_connections
               (project_id, environment, name, key_hash, key_prefix, created_at, encryption_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(project_id)
        .bind(environment)
        .bind(name)
        .bind(key_digest(&key))
        .bind(&prefix)
        .bind(&now)
        .bind(&encryption_key)
        .fetch_one(c)
        .await)?;
        let record = SdkConnection {
            id,
            environment: environment.to_owned(),
            name: name.to_owned(),
            key_prefix: prefix,
            encrypted: encryption_key.is_some(),
            created_at: now,
        };
        let after = serde_json::to_value(&record).map_err(StoreError::from)?;
        append_audit(
            &mut tx,
            project_id,
            actor,
            "sdk_connection.created",
            "sdk_connection",
            &id.to_string(),
            None,
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok((record, key, encryption_key))
    }

    pub async fn sdk_connections(&self, project_id: i64) -> Result<Vec<SdkConnection>> {
        type Row = (i64, String, String, String, bool, String);
        let rows: Vec<Row> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT id, environment, name, key_prefix, encryption_key IS NOT NULL, created_at FROM sdk_connections
             WHERE project_id = $1 AND revoked_at IS NULL ORDER BY id",
        )
        .bind(project_id)
        .fetch_all(c)
        .await
        })?;
        Ok(rows
            .into_iter()
            .map(
                |(id, environment, name, key_prefix, encrypted, created_at)| SdkConnection {
                    id,
                    environment,
                    name,
                    key_prefix,
                    encrypted,
                    created_at,
                },
            )
            .collect())
    }

    /// Revokes a client key: it stops serving at once (the server drops its cached bindings).
    pub async fn revoke_sdk_connection(
        &self,
        project_id: i64,
        id: i64,
        actor: &Actor,
    ) -> Result<(), WriteError> {
        let mut tx = self.write_tx().await?;
        let now = now_text();
        let revoked = on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE sdk_connections SET revoked_at = $1 WHERE project_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(&now)
        .bind(project_id)
        .bind(id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        if revoked == 0 {
            return Err(WriteError::NotFound);
        }
        append_audit(
            &mut tx,
            project_id,
            actor,
            "sdk_connection.revoked",
            "sdk_connection",
            &id.to_string(),
            Some(&json!({"id": id, "revoked_at": null})),
            Some(&json!({"id": id, "revoked_at": now})),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What a client key serves, `None` for unknown or revoked keys.
    pub async fn sdk_binding(&self, key: &str) -> Result<Option<SdkBinding>> {
        let row: Option<(i64, i64, String, Option<String>)> = on_pool!(self, |c| sqlx::query_as(
            "SELECT id, project_id, environment, encryption_key FROM sdk_connections
             WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(key_digest(key))
        .fetch_optional(c)
        .await)?;
        Ok(row.map(
            |(connection_id, project_id, environment, encryption_key)| SdkBinding {
                connection_id,
                project_id,
                environment,
                encryption_key,
            },
        ))
    }

    /// Projects that have at least one feature (the server compiles their flags at start).
    pub async fn projects_with_features(&self) -> Result<Vec<i64>> {
        Ok(on_pool!(self, |c| sqlx::query_scalar(
            "SELECT DISTINCT project_id FROM features ORDER BY project_id"
        )
        .fetch_all(c)
        .await)?)
    }

    pub async fn saved_groups(&self, project_id: i64) -> Result<Vec<SavedGroupRecord>> {
        let rows: Vec<SavedGroupRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {SAVED_GROUP_COLUMNS} FROM saved_groups WHERE project_id = $1 ORDER BY key"
        ))
        .bind(project_id)
        .fetch_all(c)
        .await)?;
        rows.into_iter().map(saved_group_from_row).collect()
    }

    pub async fn saved_group(
        &self,
        project_id: i64,
        key: &str,
    ) -> Result<Option<SavedGroupRecord>> {
        let row: Option<SavedGroupRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {SAVED_GROUP_COLUMNS} FROM saved_groups WHERE project_id = $1 AND key = $2"
        ))
        .bind(project_id)
        .bind(key)
        .fetch_optional(c)
        .await)?;
        row.map(saved_group_from_row).transpose()
    }

    /// Creates (`expected_version` `None`), replaces (the current version) or deletes (`definition` `None`) a saved
    /// group, with its audit entry.
    pub async fn write_saved_group(
        &self,
        project_id: i64,
        key: &str,
        expected_version: Option<i64>,
        definition: Option<&Value>,
        actor: &Actor,
    ) -> Result<Option<SavedGroupRecord>, WriteError> {
        let mut tx = self.write_tx().await?;
        let row: Option<SavedGroupRow> = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "SELECT {SAVED_GROUP_COLUMNS} FROM saved_groups WHERE project_id = $1 AND key = $2"
        ))
        .bind(project_id)
        .bind(key)
        .fetch_optional(c)
        .await)?;
        let before = row.map(saved_group_from_row).transpose()?;
        let now = now_text();
        let (action, after) = match (&before, expected_version, definition) {
            (Some(_), None, _) => return Err(WriteError::AlreadyExists),
            (None, Some(_), _) | (None, None, None) => return Err(WriteError::NotFound),
            (Some(b), Some(v), _) if b.version != v => {
                return Err(WriteError::VersionConflict { current: b.version })
            }
            (None, None, Some(def)) => {
                on_conn!(&mut tx, |c| {
                    sqlx::query(
                    "INSERT INTO saved_groups (project_id, key, definition, version, created_at, updated_at)
                     VALUES ($1, $2, $3, 1, $4, $5)",
                )
                .bind(project_id)
                .bind(key)
                .bind(def.to_string())
                .bind(&now)
                .bind(&now)
                .execute(c)
                .await.map(|r| r.rows_affected())
                })?;
                let record = SavedGroupRecord {
                    key: key.to_owned(),
                    definition: def.clone(),
                    version: 1,
                    created_at: now.clone(),
                    updated_at: now,
                };
                ("saved_group.created", Some(record))
            }
            (Some(b), Some(v), Some(def)) => {
                on_conn!(&mut tx, |c| {
                    sqlx::query(
                    "UPDATE saved_groups SET definition = $1, version = version + 1, updated_at = $2
                     WHERE project_id = $3 AND key = $4 AND version = $5",
                )
                .bind(def.to_string())
                .bind(&now)
                .bind(project_id)
                .bind(key)
                .bind(v)
                .execute(c)
                .await.map(|r| r.rows_affected())
                })?;
                let record = SavedGroupRecord {
                    key: key.to_owned(),
                    definition: def.clone(),
                    version: v + 1,
                    created_at: b.created_at.clone(),
                    updated_at: now,
                };
                ("saved_group.updated", Some(record))
            }
            (Some(_), Some(v), None) => {
                on_conn!(&mut tx, |c| sqlx::query(
                    "DELETE FROM saved_groups WHERE project_id = $1 AND key = $2 AND version = $3",
                )
                .bind(project_id)
                .bind(key)
                .bind(v)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                ("saved_group.deleted", None)
            }
        };
        let b = before
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(StoreError::from)?;
        let a = after
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(StoreError::from)?;
        append_audit(
            &mut tx,
            project_id,
            actor,
            action,
            "saved_group",
            key,
            b.as_ref(),
            a.as_ref(),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Audit entries of a project, newest first.
    pub async fn audit(&self, project_id: i64, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        type Row = (
            i64,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            Option<String>,
            String,
        );
        let rows: Vec<Row> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT id, actor, action, entity_type, entity_id, before, after, diff, source_ip, at FROM audit_log
             WHERE project_id = $1
               AND ($2 IS NULL OR entity_type = $3) AND ($4 IS NULL OR entity_id = $5)
               AND ($6 IS NULL OR actor = $7) AND ($8 IS NULL OR action = $9)
               AND ($10 IS NULL OR at >= $11) AND ($12 IS NULL OR at < $13) AND ($14 IS NULL OR id < $15)
             ORDER BY id DESC LIMIT $16",
        )
        .bind(project_id)
        .bind(&f.entity_type)
        .bind(&f.entity_type)
        .bind(&f.entity_id)
        .bind(&f.entity_id)
        .bind(&f.actor)
        .bind(&f.actor)
        .bind(&f.action)
        .bind(&f.action)
        .bind(&f.after)
        .bind(&f.after)
        .bind(&f.before)
        .bind(&f.before)
        .bind(f.before_id)
        .bind(f.before_id)
        .bind(f.limit)
        .fetch_all(c)
        .await
        })?;
        let parse = |s: Option<String>| -> Result<Option<Value>> {
            s.map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(Into::into)
        };
        rows.into_iter()
            .map(
                |(
                    id,
                    actor,
                    action,
                    entity_type,
                    entity_id,
                    before,
                    after,
                    diff,
                    source_ip,
                    at,
                )| {
                    Ok(AuditEntry {
                        id,
                        actor,
                        action,
                        entity_type,
                        entity_id,
                        before: parse(before)?,
                        after: parse(after)?,
                        diff: serde_json::from_str(&diff)?,
                        source_ip,
                        at,
                    })
                },
            )
            .collect()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn append_audit(
    tx: &mut crate::Tx,
    project_id: i64,
    actor: &Actor,
    action: &str,
    entity_type: &str,
    entity_id: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<()> {
    let mut changes = Vec::new();
    json_diff(
        "",
        before.unwrap_or(&Value::Null),
        after.unwrap_or(&Value::Null),
        &mut changes,
    );
    on_conn!(tx, |c| {
        sqlx::query(
        "INSERT INTO audit_log (project_id, actor, action, entity_type, entity_id, before, after, diff, source_ip, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(project_id)
    .bind(&actor.label)
    .bind(action)
    .bind(entity_type)
    .bind(entity_id)
    .bind(before.map(Value::to_string))
    .bind(after.map(Value::to_string))
    .bind(Value::Array(changes.clone()).to_string())
    .bind(&actor.source_ip)
    .bind(now_text())
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    // Announced for webhooks (`audit.<action>`), with what changed.
    let payload = serde_json::json!({"action": action, "entity_type": entity_type, "entity_id": entity_id,
        "actor": actor.label, "changes": changes});
    crate::documents::enqueue(tx, project_id, &format!("audit.{action}"), &payload).await?;
    Ok(())
}

/// The changed paths between two documents: `{path, before, after}` per changed leaf (objects are walked,
/// arrays of equal length compared per element, anything else compared whole).
pub fn json_diff(path: &str, before: &Value, after: &Value, out: &mut Vec<Value>) {
    if before == after {
        return;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                json_diff(
                    &sub,
                    b.get(k).unwrap_or(&Value::Null),
                    a.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (x, y)) in b.iter().zip(a).enumerate() {
                json_diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ => out.push(json!({"path": path, "before": before, "after": after})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read-then-write transaction must wait for, not fail on, a commit by another connection in between
    /// (ingestion writes persons all the time).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feature_writes_succeed_while_identity_writes() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db")).await.unwrap();
        let boot = store.bootstrap("o", "p").await.unwrap();
        let actor = Actor {
            label: "test".into(),
            source_ip: None,
        };
        let p = boot.project_id;
        store
            .create_feature(p, "f", &json!({}), &actor)
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, stop) = (store.clone(), stop.clone());
            // The writer blocks on its own connection, as in the server: on a blocking thread.
            tokio::task::spawn_blocking(move || {
                let mut w = store.identity_writer("test").unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let op = crate::IdentityOp::Touch {
                        project_id: p,
                        distinct_id: format!("user-{n}"),
                        at: 0,
                    };
                    w.apply(&[op], n).unwrap();
                }
                n
            })
        };
        for v in 1..=100 {
            store
                .update_feature(
                    p,
                    "f",
                    v,
                    &json!({"n": v}),
                    false,
                    "feature.updated",
                    &actor,
                )
                .await
                .unwrap_or_else(|e| panic!("update {v} failed: {e}"));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(writer.await.unwrap() > 0);
    }

    #[test]
    fn diff_lists_changed_leaves() {
        let mut out = Vec::new();
        json_diff(
            "",
            &json!({"a": 1, "b": {"c": [1, 2], "d": "x"}, "gone": true}),
            &json!({"a": 1, "b": {"c": [1, 3], "d": "x"}, "new": 5}),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                json!({"path": "b.c[1]", "before": 2, "after": 3}),
                json!({"path": "gone", "before": true, "after": null}),
                json!({"path": "new", "before": null, "after": 5}),
            ]
        );
    }
}
