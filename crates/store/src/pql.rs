//! Product-qualified-lead scores (migration 0016) and the entity properties the scorer reads.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::{on_conn, on_pool};
use crate::{Result, Store};

/// An entity's score under a PQL model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PqlScore {
    /// A person's id (as text), or a group key.
    pub entity: String,
    /// What to show: a distinct id of the person, or the group key.
    pub label: String,
    pub score: f64,
    pub qualified: bool,
    /// The model version that scored it.
    pub version: i64,
    pub explanation: Value,
    pub qualified_at: Option<String>,
    pub updated_at: String,
}

type Row = (
    String,
    String,
    f64,
    bool,
    i64,
    String,
    Option<String>,
    String,
);

fn from_row(
    (entity, label, score, qualified, version, explanation, qualified_at, updated_at): Row,
) -> Result<PqlScore> {
    Ok(PqlScore {
        entity,
        label,
        score,
        qualified,
        version,
        explanation: serde_json::from_str(&explanation)?,
        qualified_at,
        updated_at,
    })
}

const COLUMNS: &str =
    "entity, label, score, qualified, version, explanation, qualified_at, updated_at";

fn object(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Default::default()),
    }
}

impl Store {
    /// The stored properties of persons by id (missing persons are absent), 500 per statement.
    pub async fn properties_of_persons(
        &self,
        project_id: i64,
        ids: &[i64],
    ) -> Result<HashMap<i64, Value>> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT id, properties FROM persons WHERE project_id = $1 AND id IN ({})",
                crate::placeholders(2, chunk.len())
            );
            let rows = on_pool!(self, |c| {
                let mut q = sqlx::query_as::<_, (i64, String)>(&sql).bind(project_id);
                for id in chunk {
                    q = q.bind(id);
                }
                q.fetch_all(c).await
            })?;
            for (id, text) in rows {
                out.insert(id, object(&text));
            }
        }
        Ok(out)
    }

    /// The stored properties of the groups of a type by key (groups never identified are absent).
    pub async fn properties_of_groups(
        &self,
        project_id: i64,
        group_type: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, Value>> {
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let sql = format!(
                "SELECT g.group_key, g.properties FROM group_types t JOIN groups g
                   ON g.project_id = t.project_id AND g.group_type_index = t.group_type_index
                 WHERE t.project_id = $1 AND t.group_type = $2 AND g.group_key IN ({})",
                crate::placeholders(3, chunk.len())
            );
            let rows = on_pool!(self, |c| {
                let mut q = sqlx::query_as::<_, (String, String)>(&sql)
                    .bind(project_id)
                    .bind(group_type);
                for k in chunk {
                    q = q.bind(*k);
                }
                q.fetch_all(c).await
            })?;
            for (key, text) in rows {
                out.insert(key, object(&text));
            }
        }
        Ok(out)
    }

    /// Every stored score of a model: entity → (score, qualified, label).
    pub async fn pql_states(
        &self,
        project_id: i64,
        model: &str,
    ) -> Result<HashMap<String, (f64, bool, String)>> {
        let rows: Vec<(String, f64, bool, String)> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT entity, score, qualified, label FROM pql_scores WHERE project_id = $1 AND model = $2",
        )
        .bind(project_id)
        .bind(model)
        .fetch_all(c)
        .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(e, s, q, l)| (e, (s, q, l)))
            .collect())
    }

    /// Writes changed scores and, in the same transaction, an outbox announcement (`topic`) per payload.
    pub async fn save_pql_scores(
        &self,
        project_id: i64,
        model: &str,
        scores: &[PqlScore],
        topic: &str,
        announce: &[Value],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for s in scores {
            on_conn!(&mut tx, |c| {
                sqlx::query(
                "INSERT INTO pql_scores (project_id, model, entity, label, score, qualified, version, explanation,
                                         qualified_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (project_id, model, entity) DO UPDATE SET label = excluded.label,
                   score = excluded.score, qualified = excluded.qualified, version = excluded.version,
                   explanation = excluded.explanation, qualified_at = excluded.qualified_at,
                   updated_at = excluded.updated_at",
            )
            .bind(project_id)
            .bind(model)
            .bind(&s.entity)
            .bind(&s.label)
            .bind(s.score)
            .bind(s.qualified)
            .bind(s.version)
            .bind(s.explanation.to_string())
            .bind(&s.qualified_at)
            .bind(&s.updated_at)
            .execute(c)
            .await.map(|r| r.rows_affected())
            })?;
        }
        for payload in announce {
            crate::documents::enqueue(&mut tx, project_id, topic, payload).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A model's scores, highest first (`qualified_only`: only the qualified leads).
    pub async fn pql_scores(
        &self,
        project_id: i64,
        model: &str,
        qualified_only: bool,
        limit: i64,
    ) -> Result<Vec<PqlScore>> {
        let rows: Vec<Row> = on_pool!(self, |c| {
            sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM pql_scores WHERE project_id = $1 AND model = $2 AND (qualified OR NOT $3)
             ORDER BY score DESC, entity LIMIT $4"
        ))
        .bind(project_id)
        .bind(model)
        .bind(qualified_only)
        .bind(limit)
        .fetch_all(c)
        .await
        })?;
        rows.into_iter().map(from_row).collect()
    }

    /// One entity's score (by entity or label).
    pub async fn pql_score(
        &self,
        project_id: i64,
        model: &str,
        entity: &str,
    ) -> Result<Option<PqlScore>> {
        let row: Option<Row> = on_pool!(self, |c| {
            sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM pql_scores WHERE project_id = $1 AND model = $2 AND (entity = $3 OR label = $4)
             ORDER BY entity = $5 DESC LIMIT 1"
        ))
        .bind(project_id)
        .bind(model)
        .bind(entity)
        .bind(entity)
        .bind(entity)
        .fetch_optional(c)
        .await
        })?;
        row.map(from_row).transpose()
    }
}
