//! The reward ledger (migration 0012): append-only entries and their status transitions.

use serde::Serialize;

use crate::features::{append_audit, Actor, WriteError};
use crate::{now_text, Result, Store};
use crate::{on_conn, on_pool};

/// A reward and its current state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardEntry {
    pub id: i64,
    pub beneficiary: String,
    pub amount: f64,
    pub unit: String,
    pub reason: String,
    pub program: Option<String>,
    pub idempotency_key: String,
    /// Pending until then (approved by the approver when nothing reversed it).
    pub hold_until: String,
    pub created_at: String,
    /// `pending`, `approved`, `fulfilled` or `reversed`.
    pub status: String,
    /// When the current status was reached.
    pub status_at: String,
}

/// A new entry.
#[derive(Debug, Clone)]
pub struct NewReward<'a> {
    pub beneficiary: &'a str,
    pub amount: f64,
    pub unit: &'a str,
    pub reason: &'a str,
    pub program: Option<&'a str>,
    pub idempotency_key: &'a str,
    pub hold_until: &'a str,
}

type Row = (
    i64,
    String,
    f64,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    String,
);

const SELECT: &str = "SELECT e.id, e.beneficiary, e.amount, e.unit, e.reason, e.program, e.idempotency_key,
        e.hold_until, e.created_at, t.status, t.at
     FROM reward_entries e
     JOIN reward_transitions t ON t.id = (SELECT MAX(id) FROM reward_transitions WHERE entry_id = e.id)";

fn from_row(r: Row) -> RewardEntry {
    RewardEntry {
        id: r.0,
        beneficiary: r.1,
        amount: r.2,
        unit: r.3,
        reason: r.4,
        program: r.5,
        idempotency_key: r.6,
        hold_until: r.7,
        created_at: r.8,
        status: r.9,
        status_at: r.10,
    }
}

/// Which status may follow which.
pub fn transition_allowed(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("pending", "approved") | ("approved", "fulfilled") | ("pending" | "approved", "reversed")
    )
}

async fn read(
    conn: &mut impl crate::AsEx,
    project_id: i64,
    id: i64,
) -> Result<Option<RewardEntry>> {
    let row: Option<Row> = on_conn!(conn, |c| sqlx::query_as(&format!(
        "{SELECT} WHERE e.project_id = $1 AND e.id = $2"
    ))
    .bind(project_id)
    .bind(id)
    .fetch_optional(c)
    .await)?;
    Ok(row.map(from_row))
}

/// [`Store::create_reward`] inside a write transaction (with what else the caller writes in it).
pub(crate) async fn insert_reward(
    tx: &mut crate::Tx,
    project_id: i64,
    new: &NewReward<'_>,
    actor: &Actor,
) -> std::result::Result<(RewardEntry, bool), WriteError> {
    let existing: Option<Row> = on_conn!(tx, |c| sqlx::query_as(&format!(
        "{SELECT} WHERE e.project_id = $1 AND e.idempotency_key = $2"
    ))
    .bind(project_id)
    .bind(new.idempotency_key)
    .fetch_optional(c)
    .await)?;
    if let Some(row) = existing {
        let e = from_row(row);
        let same = e.beneficiary == new.beneficiary
            && e.amount == new.amount
            && e.unit == new.unit
            && e.program.as_deref() == new.program;
        if !same {
            return Err(WriteError::Invalid(format!(
                "idempotency key `{}` was used for another reward (entry {})",
                new.idempotency_key, e.id
            )));
        }
        return Ok((e, false));
    }
    let now = now_text();
    let id: i64 = on_conn!(tx, |c| {
        sqlx::query_scalar(
            "INSERT INTO reward_entries (project_id, beneficiary, amount, unit, reason, program,
             idempotency_key, hold_until, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(project_id)
        .bind(new.beneficiary)
        .bind(new.amount)
        .bind(new.unit)
        .bind(new.reason)
        .bind(new.program)
        .bind(new.idempotency_key)
        .bind(new.hold_until)
        .bind(&now)
        .fetch_one(c)
        .await
    })?;
    on_conn!(tx, |c| {
        sqlx::query(
        "INSERT INTO reward_transitions (entry_id, status, reason, actor, at) VALUES ($1, 'pending', $2, $3, $4)",
    )
    .bind(id)
    .bind(new.reason)
    .bind(&actor.label)
    .bind(&now)
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    on_conn!(tx, |c| sqlx::query(
        "INSERT INTO reward_holds (entry_id, project_id, hold_until) VALUES ($1, $2, $3)"
    )
    .bind(id)
    .bind(project_id)
    .bind(new.hold_until)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    let entry = read(tx, project_id, id)
        .await?
        .ok_or(WriteError::NotFound)?;
    let after = serde_json::to_value(&entry)?;
    append_audit(
        tx,
        project_id,
        actor,
        "reward.created",
        "reward",
        &id.to_string(),
        None,
        Some(&after),
    )
    .await?;
    Ok((entry, true))
}

impl Store {
    /// Appends a pending entry, audited as `reward.created`. With an `idempotency_key` already used: the entry it
    /// made, and `false` (nothing written); `Invalid` when that entry differs from this one.
    pub async fn create_reward(
        &self,
        project_id: i64,
        new: &NewReward<'_>,
        actor: &Actor,
    ) -> std::result::Result<(RewardEntry, bool), WriteError> {
        let mut tx = self.write_tx().await?;
        let out = insert_reward(&mut tx, project_id, new, actor).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Appends a transition to `to` (checked against the current status: `Invalid` otherwise), audited as
    /// `reward.<to>`, with an outbox announcement `reward.<to>` in the same transaction.
    pub async fn transition_reward(
        &self,
        project_id: i64,
        id: i64,
        to: &str,
        reason: &str,
        actor: &Actor,
    ) -> std::result::Result<RewardEntry, WriteError> {
        let mut tx = self.write_tx().await?;
        let before = read(&mut tx, project_id, id)
            .await?
            .ok_or(WriteError::NotFound)?;
        if !transition_allowed(&before.status, to) {
            return Err(WriteError::Invalid(format!(
                "reward {id} is {}: it cannot become {to}",
                before.status
            )));
        }
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO reward_transitions (entry_id, status, reason, actor, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(to)
        .bind(reason)
        .bind(&actor.label)
        .bind(now_text())
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        on_conn!(&mut tx, |c| sqlx::query(
            "DELETE FROM reward_holds WHERE entry_id = $1"
        )
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        let after = read(&mut tx, project_id, id)
            .await?
            .ok_or(WriteError::NotFound)?;
        let (b, a) = (
            serde_json::to_value(&before)?,
            serde_json::to_value(&after)?,
        );
        append_audit(
            &mut tx,
            project_id,
            actor,
            &format!("reward.{to}"),
            "reward",
            &id.to_string(),
            Some(&b),
            Some(&a),
        )
        .await?;
        crate::documents::enqueue(&mut tx, project_id, &format!("reward.{to}"), &a).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// The project's rewards (of one beneficiary, of one status when given), newest first, at most `limit`.
    pub async fn rewards(
        &self,
        project_id: i64,
        beneficiary: Option<&str>,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RewardEntry>> {
        let rows: Vec<Row> = on_pool!(self, |c| {
            sqlx::query_as(&format!(
            "{SELECT} WHERE e.project_id = $1 AND ($2 IS NULL OR e.beneficiary = $3) AND ($4 IS NULL OR t.status = $5)
             ORDER BY e.id DESC LIMIT $6"
        ))
        .bind(project_id)
        .bind(beneficiary)
        .bind(beneficiary)
        .bind(status)
        .bind(status)
        .bind(limit)
        .fetch_all(c)
        .await
        })?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// The entry made with an idempotency key, if any.
    pub async fn reward_by_key(&self, project_id: i64, key: &str) -> Result<Option<RewardEntry>> {
        let row: Option<Row> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{SELECT} WHERE e.project_id = $1 AND e.idempotency_key = $2"
        ))
        .bind(project_id)
        .bind(key)
        .fetch_optional(c)
        .await)?;
        Ok(row.map(from_row))
    }

    /// A beneficiary's totals: (unit, status, sum of amounts, entries).
    pub async fn reward_balances(
        &self,
        project_id: i64,
        beneficiary: &str,
    ) -> Result<Vec<(String, String, f64, i64)>> {
        Ok(on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT e.unit, t.status, SUM(e.amount), COUNT(*) FROM reward_entries e
             JOIN reward_transitions t ON t.id = (SELECT MAX(id) FROM reward_transitions WHERE entry_id = e.id)
             WHERE e.project_id = $1 AND e.beneficiary = $2 GROUP BY e.unit, t.status ORDER BY e.unit, t.status",
        )
        .bind(project_id)
        .bind(beneficiary)
        .fetch_all(c)
        .await
        })?)
    }

    /// Every project's pending entries whose hold ended by `now`, as (project, entry id), oldest first.
    pub async fn rewards_due(&self, now: &str, limit: i64) -> Result<Vec<(i64, i64)>> {
        Ok(on_pool!(self, |c| sqlx::query_as(
            "SELECT project_id, entry_id FROM reward_holds WHERE hold_until <= $1
             ORDER BY hold_until, entry_id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(c)
        .await)?)
    }
}
