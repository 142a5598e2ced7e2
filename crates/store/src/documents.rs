//! Documents: named configuration objects of a project whose content is JSON validated by the server (experiment
//! metrics, experiments). One table (migration 0008) and one API for every kind: create, read by key or id, list,
//! update with optimistic concurrency, archive. Every change is audited as `<kind>.created`, `<kind>.updated`,
//! `<kind>.archived` with the document before and after.

use serde::Serialize;
use serde_json::Value;

use crate::features::{append_audit, Actor, WriteError};
use crate::{now_text, Result, Store};
use crate::{on_conn, on_pool};

/// A document as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    pub id: i64,
    #[serde(skip)]
    pub kind: String,
    pub key: String,
    pub name: String,
    /// The content, as validated by the server for its kind.
    pub body: Value,
    /// Counts every change.
    pub version: i64,
    pub archived: bool,
    pub created_at: String,
    pub updated_at: String,
}

type Row = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    bool,
    String,
    String,
);

/// A row with its project first.
type ProjectRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    i64,
    bool,
    String,
    String,
);

const COLUMNS: &str = "id, kind, key, name, body, version, archived, created_at, updated_at";

fn from_row(
    (id, kind, key, name, body, version, archived, created_at, updated_at): Row,
) -> Result<Document> {
    Ok(Document {
        id,
        kind,
        key,
        name,
        body: serde_json::from_str(&body)?,
        version,
        archived,
        created_at,
        updated_at,
    })
}

async fn audit(
    tx: &mut crate::Tx,
    project_id: i64,
    actor: &Actor,
    action: &str,
    before: Option<&Document>,
    after: Option<&Document>,
) -> Result<()> {
    let Some(doc) = after.or(before) else {
        return Ok(());
    };
    let b = before.map(serde_json::to_value).transpose()?;
    let a = after.map(serde_json::to_value).transpose()?;
    append_audit(
        tx,
        project_id,
        actor,
        &format!("{}.{action}", doc.kind),
        &doc.kind,
        &doc.key,
        b.as_ref(),
        a.as_ref(),
    )
    .await
}

async fn read(
    conn: &mut impl crate::AsEx,
    project_id: i64,
    kind: &str,
    key: &str,
) -> Result<Option<Document>> {
    let row: Option<Row> = on_conn!(conn, |c| sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM documents WHERE project_id = $1 AND kind = $2 AND key = $3"
    ))
    .bind(project_id)
    .bind(kind)
    .bind(key)
    .fetch_optional(c)
    .await)?;
    row.map(from_row).transpose()
}

/// What an update changes (`None`: unchanged).
#[derive(Debug, Default, Clone)]
pub struct DocumentUpdate {
    pub name: Option<String>,
    pub body: Option<Value>,
    pub archived: Option<bool>,
    /// The audit action's name after `<kind>.` instead of `updated` (e.g. `rolled_back`).
    pub action: Option<String>,
    /// An announcement (topic, payload) for the outbox, written in the same transaction.
    pub announce: Option<(String, Value)>,
}

/// An outbox entry: an announcement of a change, for webhooks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub topic: String,
    pub payload: Value,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

pub(crate) async fn enqueue(
    tx: &mut crate::Tx,
    project_id: i64,
    topic: &str,
    payload: &Value,
) -> Result<()> {
    on_conn!(tx, |c| sqlx::query(
        "INSERT INTO outbox (project_id, topic, payload, created_at) VALUES ($1, $2, $3, $4)"
    )
    .bind(project_id)
    .bind(topic)
    .bind(payload.to_string())
    .bind(now_text())
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

impl Store {
    /// Writes outbox entries `(project, topic, payload)` in one transaction.
    pub async fn enqueue_outbox(&self, entries: &[(i64, String, Value)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for (project_id, topic, payload) in entries {
            enqueue(&mut tx, *project_id, topic, payload).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Creates a document; `AlreadyExists` when the project has one of this kind and key (archived or not).
    pub async fn create_document(
        &self,
        project_id: i64,
        kind: &str,
        key: &str,
        name: &str,
        body: &Value,
        actor: &Actor,
    ) -> std::result::Result<Document, WriteError> {
        let mut tx = self.write_tx().await?;
        if read(&mut tx, project_id, kind, key).await?.is_some() {
            return Err(WriteError::AlreadyExists);
        }
        let now = now_text();
        let id: i64 = on_conn!(&mut tx, |c| sqlx::query_scalar(
            "INSERT INTO documents (project_id, kind, key, name, body, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(project_id)
        .bind(kind)
        .bind(key)
        .bind(name)
        .bind(body.to_string())
        .bind(&now)
        .bind(&now)
        .fetch_one(c)
        .await)?;
        let doc = Document {
            id,
            kind: kind.to_owned(),
            key: key.to_owned(),
            name: name.to_owned(),
            body: body.clone(),
            version: 1,
            archived: false,
            created_at: now.clone(),
            updated_at: now,
        };
        audit(&mut tx, project_id, actor, "created", None, Some(&doc)).await?;
        tx.commit().await?;
        Ok(doc)
    }

    /// The document of `kind` with `key` (archived ones included).
    pub async fn document(
        &self,
        project_id: i64,
        kind: &str,
        key: &str,
    ) -> Result<Option<Document>> {
        let mut conn = self.conn().await?;
        read(&mut conn, project_id, kind, key).await
    }

    /// The project's documents of `kind`, by key (archived ones only when asked).
    pub async fn documents(
        &self,
        project_id: i64,
        kind: &str,
        include_archived: bool,
    ) -> Result<Vec<Document>> {
        let rows: Vec<Row> = on_pool!(self, |c| {
            sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM documents WHERE project_id = $1 AND kind = $2 AND (archived = FALSE OR $3)
             ORDER BY key"
        ))
        .bind(project_id)
        .bind(kind)
        .bind(include_archived)
        .fetch_all(c)
        .await
        })?;
        rows.into_iter().map(from_row).collect()
    }

    /// Applies `update` if the document's version is still `expected_version` (when given); audited as
    /// `<kind>.updated` (`<kind>.archived` when it archives). Nothing is written when nothing changes. Rules that
    /// depend on the current state are the caller's: read, check, then update with the version read.
    pub async fn update_document(
        &self,
        project_id: i64,
        kind: &str,
        key: &str,
        expected_version: Option<i64>,
        update: &DocumentUpdate,
        actor: &Actor,
    ) -> std::result::Result<Document, WriteError> {
        let mut tx = self.write_tx().await?;
        let before = read(&mut tx, project_id, kind, key)
            .await?
            .ok_or(WriteError::NotFound)?;
        if expected_version.is_some_and(|v| v != before.version) {
            return Err(WriteError::VersionConflict {
                current: before.version,
            });
        }
        let mut after = Document {
            name: update.name.clone().unwrap_or_else(|| before.name.clone()),
            body: update.body.clone().unwrap_or_else(|| before.body.clone()),
            archived: update.archived.unwrap_or(before.archived),
            ..before.clone()
        };
        if after == before {
            return Ok(before);
        }
        after.version += 1;
        after.updated_at = now_text();
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE documents SET name = $1, body = $2, archived = $3, version = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(&after.name)
        .bind(after.body.to_string())
        .bind(after.archived)
        .bind(after.version)
        .bind(&after.updated_at)
        .bind(after.id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        let action = match &update.action {
            Some(a) => a.as_str(),
            None if after.archived && !before.archived => "archived",
            None => "updated",
        };
        audit(
            &mut tx,
            project_id,
            actor,
            action,
            Some(&before),
            Some(&after),
        )
        .await?;
        if let Some((topic, payload)) = &update.announce {
            enqueue(&mut tx, project_id, topic, payload).await?;
        }
        tx.commit().await?;
        Ok(after)
    }

    /// Every project's unarchived documents of `kind` whose body's `status` is `status`, as (project, document).
    pub async fn documents_with_status(
        &self,
        kind: &str,
        status: &str,
    ) -> Result<Vec<(i64, Document)>> {
        let status_of = self.dialect().json_text("body", "status");
        let rows: Vec<ProjectRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT project_id, {COLUMNS} FROM documents
                 WHERE kind = $1 AND archived = FALSE AND {status_of} = $2
                 ORDER BY project_id, key"
        ))
        .bind(kind)
        .bind(status)
        .fetch_all(c)
        .await)?;
        rows.into_iter()
            .map(|(p, id, k, key, n, b, v, a, c, u)| {
                Ok((p, from_row((id, k, key, n, b, v, a, c, u))?))
            })
            .collect()
    }

    /// Every project's unarchived documents of `kind`, as (project, document).
    pub async fn all_documents(&self, kind: &str) -> Result<Vec<(i64, Document)>> {
        let rows: Vec<ProjectRow> = on_pool!(self, |c| {
            sqlx::query_as(&format!(
            "SELECT project_id, {COLUMNS} FROM documents WHERE kind = $1 AND archived = FALSE ORDER BY project_id, key"
        ))
        .bind(kind)
        .fetch_all(c)
        .await
        })?;
        rows.into_iter()
            .map(|(p, id, k, key, n, b, v, a, c, u)| {
                Ok((p, from_row((id, k, key, n, b, v, a, c, u))?))
            })
            .collect()
    }

    /// The project's outbox entries after `after_id` (oldest first), at most `limit`, of `topic` when given.
    pub async fn outbox(
        &self,
        project_id: i64,
        topic: Option<&str>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        let rows: Vec<(i64, String, String, String, Option<String>)> =
            on_pool!(self, |c| sqlx::query_as(
                "SELECT id, topic, payload, created_at, delivered_at FROM outbox
             WHERE project_id = $1 AND id > $2 AND ($3 IS NULL OR topic = $4) ORDER BY id LIMIT $5",
            )
            .bind(project_id)
            .bind(after_id)
            .bind(topic)
            .bind(topic)
            .bind(limit)
            .fetch_all(c)
            .await)?;
        rows.into_iter()
            .map(|(id, topic, payload, created_at, delivered_at)| {
                Ok(OutboxEntry {
                    id,
                    topic,
                    payload: serde_json::from_str(&payload)?,
                    created_at,
                    delivered_at,
                })
            })
            .collect()
    }
}
