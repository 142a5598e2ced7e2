//! Organizations, projects and API keys. Keys are random, shown once, and stored as SHA-256 digests.

use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};

use serde_json::json;

use crate::{now_text, Result, Store};
use crate::{on_conn, on_pool};

/// Prefix of public project keys (SDK capture and evaluation).
pub const PROJECT_KEY_PREFIX: &str = "fwpub_";
/// Prefix of secret personal API keys (native API).
pub const PERSONAL_KEY_PREFIX: &str = "fwsec_";

/// What `bootstrap` created. The keys are the only copies of their text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bootstrap {
    pub organization_id: i64,
    pub project_id: i64,
    pub project_api_key: String,
    pub personal_api_key: String,
}

/// An authenticated personal API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalKey {
    pub id: i64,
    pub organization_id: i64,
    /// When set, the key may only touch this project.
    pub project_id: Option<i64>,
    /// The scopes it grants (`None`: all).
    pub scopes: Option<Vec<String>>,
    /// The user who made it: the key acts with at most that user's role (`None`: the bootstrap key's lineage).
    pub user_id: Option<i64>,
}

/// A personal API key as listed (never its text).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub project_id: Option<i64>,
    pub scopes: Option<Vec<String>>,
    pub user_id: Option<i64>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// A random token: `prefix` and `len` alphanumeric characters.
pub(crate) fn random_token(prefix: &str, len: usize) -> String {
    random_key(prefix, len)
}

fn random_key(prefix: &str, len: usize) -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

/// Hex SHA-256 of a key's text, as stored.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn display_prefix(key: &str) -> String {
    key.chars().take(10).collect()
}

impl Store {
    /// True when no organization exists yet (a fresh data directory).
    pub async fn is_empty(&self) -> Result<bool> {
        let n: i64 = on_pool!(self, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM organizations"
        )
        .fetch_one(c)
        .await)?;
        Ok(n == 0)
    }

    /// Creates an organization with one project, its public key and an organization-wide personal key.
    pub async fn bootstrap(&self, organization: &str, project: &str) -> Result<Bootstrap> {
        let organization_id = self.create_organization(organization).await?;
        let (project_id, project_api_key) = self.create_project(organization_id, project).await?;
        let personal_api_key = self
            .create_personal_key(organization_id, None, "bootstrap key")
            .await?;
        Ok(Bootstrap {
            organization_id,
            project_id,
            project_api_key,
            personal_api_key,
        })
    }

    pub async fn create_organization(&self, name: &str) -> Result<i64> {
        let id = on_pool!(self, |c| sqlx::query_scalar::<_, i64>(
            "INSERT INTO organizations (name, created_at) VALUES ($1, $2) RETURNING id"
        )
        .bind(name)
        .bind(now_text())
        .fetch_one(c)
        .await)?;
        Ok(id)
    }

    /// Creates a project and its public key; returns (project id, key text).
    pub async fn create_project(&self, organization_id: i64, name: &str) -> Result<(i64, String)> {
        let mut tx = self.write_tx().await?;
        let now = now_text();
        let project_id = on_conn!(&mut tx, |c| {
            sqlx::query_scalar::<_, i64>(
            "INSERT INTO projects (organization_id, name, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(organization_id)
        .bind(name)
        .bind(&now)
        .fetch_one(c)
        .await
        })?;
        let key = random_key(PROJECT_KEY_PREFIX, 32);
        let key_id = on_conn!(&mut tx, |c| {
            sqlx::query_scalar::<_, i64>(
            "INSERT INTO api_keys (kind, organization_id, project_id, name, key_hash, key_prefix, created_at)
             VALUES ('project', $1, $2, 'project key', $3, $4, $5) RETURNING id",
        )
        .bind(organization_id)
        .bind(project_id)
        .bind(key_digest(&key))
        .bind(display_prefix(&key))
        .bind(&now)
        .fetch_one(c)
        .await
        })?;
        let record = json!({"id": key_id, "kind": "project", "name": "project key",
                            "prefix": display_prefix(&key), "project_id": project_id});
        audit_key_created(&mut tx, project_id, key_id, &record).await?;
        tx.commit().await?;
        Ok((project_id, key))
    }

    /// Creates a personal API key, optionally restricted to one project; returns its text (shown once).
    pub async fn create_personal_key(
        &self,
        organization_id: i64,
        project_id: Option<i64>,
        name: &str,
    ) -> Result<String> {
        let system = crate::Actor {
            label: "system".to_owned(),
            source_ip: None,
        };
        let (_, key) = self
            .create_scoped_key(organization_id, project_id, name, None, None, None, &system)
            .await?;
        Ok(key)
    }

    /// Creates a personal API key with scopes (`None`: all) and an expiry, for a user (it then acts with at most
    /// their role); returns its id and text (shown once). Audited in every project the key reaches.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_scoped_key(
        &self,
        organization_id: i64,
        project_id: Option<i64>,
        name: &str,
        scopes: Option<&[String]>,
        expires_at: Option<&str>,
        user_id: Option<i64>,
        actor: &crate::Actor,
    ) -> Result<(i64, String)> {
        let key = random_key(PERSONAL_KEY_PREFIX, 40);
        let mut tx = self.write_tx().await?;
        let key_id = on_conn!(&mut tx, |c| {
            sqlx::query_scalar::<_, i64>(
            "INSERT INTO api_keys (kind, organization_id, project_id, name, key_hash, key_prefix, created_at, scopes,
                                   expires_at, user_id)
             VALUES ('personal', $1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(organization_id)
        .bind(project_id)
        .bind(name)
        .bind(key_digest(&key))
        .bind(display_prefix(&key))
        .bind(now_text())
        .bind(scopes.map(|s| serde_json::to_string(s).unwrap_or_default()))
        .bind(expires_at)
        .bind(user_id)
        .fetch_one(c)
        .await
        })?;
        // Recorded in the audit log of every project the key reaches.
        let projects: Vec<i64> = on_conn!(&mut tx, |c| sqlx::query_scalar(
            "SELECT id FROM projects WHERE organization_id = $1 AND ($2 IS NULL OR id = $3)",
        )
        .bind(organization_id)
        .bind(project_id)
        .bind(project_id)
        .fetch_all(c)
        .await)?;
        let record = json!({"id": key_id, "kind": "personal", "name": name,
                            "prefix": display_prefix(&key), "project_id": project_id,
                            "scopes": scopes, "expires_at": expires_at, "user_id": user_id});
        for p in projects {
            crate::features::append_audit(
                &mut tx,
                p,
                actor,
                "api_key.created",
                "api_key",
                &key_id.to_string(),
                None,
                Some(&record),
            )
            .await?;
        }
        tx.commit().await?;
        Ok((key_id, key))
    }

    /// The personal keys that can reach a project (its organization's, unrestricted or restricted to it).
    pub async fn personal_keys(&self, project_id: i64) -> Result<Vec<KeyInfo>> {
        type Row = (
            i64,
            String,
            String,
            Option<i64>,
            Option<String>,
            Option<i64>,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT k.id, k.name, k.key_prefix, k.project_id, k.scopes, k.user_id, k.created_at, k.last_used_at, k.expires_at,
                    k.revoked_at
             FROM api_keys k JOIN projects p ON p.organization_id = k.organization_id
             WHERE p.id = $1 AND k.kind = 'personal' AND (k.project_id IS NULL OR k.project_id = p.id) ORDER BY k.id",
        )
        .bind(project_id)
        .fetch_all(c)
        .await
        })?;
        rows.into_iter()
            .map(
                |(
                    id,
                    name,
                    prefix,
                    project_id,
                    scopes,
                    user_id,
                    created_at,
                    last_used_at,
                    expires_at,
                    revoked_at,
                )| {
                    Ok(KeyInfo {
                        id,
                        name,
                        prefix,
                        project_id,
                        scopes: scopes.map(|s| serde_json::from_str(&s)).transpose()?,
                        user_id,
                        created_at,
                        last_used_at,
                        expires_at,
                        revoked_at,
                    })
                },
            )
            .collect()
    }

    /// Revokes a personal key that can reach `project_id` (audited there), only a key of `owner` when given;
    /// false when there is none to revoke.
    pub async fn revoke_personal_key(
        &self,
        project_id: i64,
        key_id: i64,
        owner: Option<i64>,
        actor: &crate::Actor,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND kind = 'personal' AND revoked_at IS NULL
               AND organization_id = (SELECT organization_id FROM projects WHERE id = $3)
               AND (project_id IS NULL OR project_id = $4) AND ($5 IS NULL OR user_id = $6)",
        )
        .bind(now_text())
        .bind(key_id)
        .bind(project_id)
        .bind(project_id)
        .bind(owner)
        .bind(owner)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })? == 1;
        if done {
            crate::features::append_audit(
                &mut tx,
                project_id,
                actor,
                "api_key.revoked",
                "api_key",
                &key_id.to_string(),
                None,
                Some(&json!({"id": key_id, "revoked": true})),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// The project a public key belongs to, if the key exists and is not revoked.
    pub async fn project_for_token(&self, token: &str) -> Result<Option<i64>> {
        let id: Option<i64> = on_pool!(self, |c| {
            sqlx::query_scalar(
            "SELECT project_id FROM api_keys WHERE key_hash = $1 AND kind = 'project' AND revoked_at IS NULL",
        )
        .bind(key_digest(token))
        .fetch_optional(c)
        .await
        })?;
        Ok(id)
    }

    /// Looks up a personal API key by its text and records its use (at most once a minute).
    pub async fn authenticate_personal(&self, key: &str) -> Result<Option<PersonalKey>> {
        let now = chrono::Utc::now();
        type Row = (i64, i64, Option<i64>, Option<String>, Option<i64>);
        let row: Option<Row> = on_pool!(self, |c| sqlx::query_as(
            "SELECT id, organization_id, project_id, scopes, user_id FROM api_keys
             WHERE key_hash = $1 AND kind = 'personal' AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(key_digest(key))
        .bind(crate::time_text(now))
        .fetch_optional(c)
        .await)?;
        let Some((id, organization_id, project_id, scopes, user_id)) = row else {
            return Ok(None);
        };
        let stale = crate::time_text(now - chrono::Duration::seconds(60));
        on_pool!(self, |c| {
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)")
            .bind(crate::time_text(now))
            .bind(id)
            .bind(stale)
            .execute(c)
            .await.map(|r| r.rows_affected())
        })?;
        Ok(Some(PersonalKey {
            id,
            organization_id,
            project_id,
            scopes: scopes.map(|s| serde_json::from_str(&s)).transpose()?,
            user_id,
        }))
    }

    /// The organization that owns a project.
    pub async fn project_organization(&self, project_id: i64) -> Result<Option<i64>> {
        let org: Option<i64> = on_pool!(self, |c| sqlx::query_scalar(
            "SELECT organization_id FROM projects WHERE id = $1"
        )
        .bind(project_id)
        .fetch_optional(c)
        .await)?;
        Ok(org)
    }

    /// The project with the smallest id, if any.
    pub async fn first_project(&self) -> Result<Option<i64>> {
        Ok(on_pool!(self, |c| sqlx::query_scalar(
            "SELECT MIN(id) FROM projects"
        )
        .fetch_one(c)
        .await)?)
    }
}

/// Key creation happens at initialisation (no caller yet): the actor is `system`.
async fn audit_key_created(
    tx: &mut crate::Tx,
    project_id: i64,
    key_id: i64,
    record: &serde_json::Value,
) -> Result<()> {
    let actor = crate::Actor {
        label: "system".to_owned(),
        source_ip: None,
    };
    crate::features::append_audit(
        tx,
        project_id,
        &actor,
        "api_key.created",
        "api_key",
        &key_id.to_string(),
        None,
        Some(record),
    )
    .await
}
