//! Cohorts: saved, named sets of persons — dynamic (a definition, evaluated by the event engine when used) or
//! static (an uploaded list of persons). Every change is audited and bumps the cohort's version.

use serde::Serialize;
use serde_json::Value;

use crate::features::{append_audit, Actor, WriteError};
use crate::{now_text, Result, Store};
use crate::{on_conn, on_pool};

/// A cohort as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CohortRecord {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub is_static: bool,
    /// The definition of a dynamic cohort (`null` for a static one).
    pub filters: Option<Value>,
    /// Counts every change, members of a static cohort included.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// What an update changes (`None`: unchanged). Values are validated by the caller.
#[derive(Debug, Default, Clone)]
pub struct CohortUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    /// A new definition (dynamic cohorts only; the caller checks).
    pub filters: Option<Value>,
}

type Row = (
    i64,
    String,
    String,
    bool,
    Option<String>,
    i64,
    String,
    String,
);

const COLUMNS: &str = "id, name, description, is_static, filters, version, created_at, updated_at";

fn from_row(
    (id, name, description, is_static, filters, version, created_at, updated_at): Row,
) -> Result<CohortRecord> {
    Ok(CohortRecord {
        id,
        name,
        description,
        is_static,
        filters: filters.as_deref().map(serde_json::from_str).transpose()?,
        version,
        created_at,
        updated_at,
    })
}

async fn audit(
    tx: &mut crate::Tx,
    project_id: i64,
    actor: &Actor,
    action: &str,
    before: Option<&CohortRecord>,
    after: Option<&CohortRecord>,
) -> Result<()> {
    let id = after.or(before).map_or(0, |c| c.id);
    let b = before.map(serde_json::to_value).transpose()?;
    let a = after.map(serde_json::to_value).transpose()?;
    append_audit(
        tx,
        project_id,
        actor,
        action,
        "cohort",
        &id.to_string(),
        b.as_ref(),
        a.as_ref(),
    )
    .await
}

async fn read_cohort(
    conn: &mut impl crate::AsEx,
    project_id: i64,
    id: i64,
) -> Result<Option<CohortRecord>> {
    let row: Option<Row> = on_conn!(conn, |c| sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM cohorts WHERE project_id = $1 AND id = $2 AND deleted = FALSE"
    ))
    .bind(project_id)
    .bind(id)
    .fetch_optional(c)
    .await)?;
    row.map(from_row).transpose()
}

impl Store {
    /// Creates a cohort (`filters`: the definition of a dynamic cohort, `None` for a static one) and audits it
    /// (`cohort.created`).
    pub async fn create_cohort(
        &self,
        project_id: i64,
        name: &str,
        description: &str,
        filters: Option<&Value>,
        actor: &Actor,
    ) -> Result<CohortRecord> {
        let mut tx = self.write_tx().await?;
        let now = now_text();
        let id: i64 = on_conn!(&mut tx, |c| {
            sqlx::query_scalar(
            "INSERT INTO cohorts (project_id, name, description, is_static, filters, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(project_id)
        .bind(name)
        .bind(description)
        .bind(filters.is_none())
        .bind(filters.map(Value::to_string))
        .bind(&now)
        .bind(&now)
        .fetch_one(c)
        .await
        })?;
        let record = CohortRecord {
            id,
            name: name.to_owned(),
            description: description.to_owned(),
            is_static: filters.is_none(),
            filters: filters.cloned(),
            version: 1,
            created_at: now.clone(),
            updated_at: now,
        };
        audit(
            &mut tx,
            project_id,
            actor,
            "cohort.created",
            None,
            Some(&record),
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    /// A cohort of the project (`None`: none, or deleted).
    pub async fn cohort(&self, project_id: i64, id: i64) -> Result<Option<CohortRecord>> {
        let mut conn = self.conn().await?;
        read_cohort(&mut conn, project_id, id).await
    }

    /// The project's cohorts, by id.
    pub async fn cohorts(&self, project_id: i64) -> Result<Vec<CohortRecord>> {
        let rows: Vec<Row> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM cohorts WHERE project_id = $1 AND deleted = FALSE ORDER BY id"
        ))
        .bind(project_id)
        .fetch_all(c)
        .await)?;
        rows.into_iter().map(from_row).collect()
    }

    /// Applies `update` if the cohort's version is still `expected_version` (when given), and audits it
    /// (`cohort.updated`; nothing is written when nothing changes).
    pub async fn update_cohort(
        &self,
        project_id: i64,
        id: i64,
        expected_version: Option<i64>,
        update: &CohortUpdate,
        actor: &Actor,
    ) -> std::result::Result<CohortRecord, WriteError> {
        let mut tx = self.write_tx().await?;
        let before = read_cohort(&mut tx, project_id, id)
            .await?
            .ok_or(WriteError::NotFound)?;
        if expected_version.is_some_and(|v| v != before.version) {
            return Err(WriteError::VersionConflict {
                current: before.version,
            });
        }
        let mut after = CohortRecord {
            name: update.name.clone().unwrap_or_else(|| before.name.clone()),
            description: update
                .description
                .clone()
                .unwrap_or_else(|| before.description.clone()),
            filters: update.filters.clone().or_else(|| before.filters.clone()),
            ..before.clone()
        };
        if after == before {
            return Ok(before);
        }
        after.version += 1;
        after.updated_at = now_text();
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE cohorts SET name = $1, description = $2, filters = $3, version = $4, updated_at = $5
             WHERE id = $6",
        )
        .bind(&after.name)
        .bind(&after.description)
        .bind(after.filters.as_ref().map(Value::to_string))
        .bind(after.version)
        .bind(&after.updated_at)
        .bind(id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        audit(
            &mut tx,
            project_id,
            actor,
            "cohort.updated",
            Some(&before),
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Deletes a cohort (kept, marked deleted, so its audit history still names it) and its static members;
    /// audited (`cohort.deleted`). False when there is no such cohort.
    pub async fn delete_cohort(&self, project_id: i64, id: i64, actor: &Actor) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let Some(before) = read_cohort(&mut tx, project_id, id).await? else {
            return Ok(false);
        };
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE cohorts SET deleted = TRUE, version = version + 1, updated_at = $1 WHERE id = $2",
        )
        .bind(now_text())
        .bind(id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        on_conn!(&mut tx, |c| sqlx::query(
            "DELETE FROM cohort_people WHERE cohort_id = $1"
        )
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        audit(
            &mut tx,
            project_id,
            actor,
            "cohort.deleted",
            Some(&before),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Adds (`add`) or removes persons of a static cohort; persons of other projects are ignored. Returns the
    /// number of members added or removed and the cohort after the change (its version bumped when anything
    /// changed; audited as `cohort.members_added` / `cohort.members_removed` with the count, not the persons).
    pub async fn change_cohort_people(
        &self,
        project_id: i64,
        id: i64,
        person_ids: &[i64],
        add: bool,
        actor: &Actor,
    ) -> std::result::Result<(u64, CohortRecord), WriteError> {
        let mut tx = self.write_tx().await?;
        let before = read_cohort(&mut tx, project_id, id)
            .await?
            .ok_or(WriteError::NotFound)?;
        if !before.is_static {
            return Err(WriteError::Invalid(
                "the cohort is dynamic: its members follow its definition".into(),
            ));
        }
        let mut changed = 0u64;
        let sql = if add {
            "INSERT INTO cohort_people (cohort_id, person_id)
             SELECT $1, id FROM persons WHERE id = $2 AND project_id = $3 ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM cohort_people WHERE cohort_id = $1 AND person_id = $2
             AND EXISTS (SELECT 1 FROM persons WHERE id = person_id AND project_id = $3)"
        };
        for &person in person_ids {
            changed += on_conn!(&mut tx, |c| sqlx::query(sql)
                .bind(id)
                .bind(person)
                .bind(project_id)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
        }
        if changed == 0 {
            return Ok((0, before));
        }
        let after = CohortRecord {
            version: before.version + 1,
            updated_at: now_text(),
            ..before.clone()
        };
        on_conn!(&mut tx, |c| sqlx::query(
            "UPDATE cohorts SET version = $1, updated_at = $2 WHERE id = $3"
        )
        .bind(after.version)
        .bind(&after.updated_at)
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        let action = if add {
            "cohort.members_added"
        } else {
            "cohort.members_removed"
        };
        let mut b = serde_json::to_value(&before)?;
        let mut a = serde_json::to_value(&after)?;
        b["members_changed"] = Value::from(0);
        a["members_changed"] = Value::from(changed);
        append_audit(
            &mut tx,
            project_id,
            actor,
            action,
            "cohort",
            &id.to_string(),
            Some(&b),
            Some(&a),
        )
        .await?;
        tx.commit().await?;
        Ok((changed, after))
    }

    /// The person ids of a static cohort's members.
    pub async fn cohort_people(&self, cohort_id: i64) -> Result<Vec<i64>> {
        Ok(on_pool!(self, |c| sqlx::query_scalar(
            "SELECT person_id FROM cohort_people WHERE cohort_id = $1 ORDER BY person_id",
        )
        .bind(cohort_id)
        .fetch_all(c)
        .await)?)
    }
}
