//! Invitations to groups and auto-join domains (migration 0014).

use serde::Serialize;

use crate::features::{append_audit, Actor, WriteError};
use crate::{now_text, Result, Store};
use crate::{on_conn, on_pool};

/// An invitation as the API shows it (never its token).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invitation {
    pub id: i64,
    pub group_type: String,
    pub group_key: String,
    pub email: String,
    pub role: String,
    pub inviter: String,
    /// `pending`, `accepted`, `revoked` (stored), or `expired` (pending past `expires_at`).
    pub status: String,
    pub expires_at: String,
    pub created_at: String,
    pub resent: i64,
    pub accepted_at: Option<String>,
    pub accepted_by: Option<String>,
}

type Row = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
);

const SELECT: &str = "SELECT id, group_type, group_key, email, role, inviter, status, expires_at, created_at, resent,
        accepted_at, accepted_by FROM invitations";

fn from_row(r: Row, now: &str) -> Invitation {
    let status = if r.6 == "pending" && r.7.as_str() <= now {
        "expired".to_owned()
    } else {
        r.6
    };
    Invitation {
        id: r.0,
        group_type: r.1,
        group_key: r.2,
        email: r.3,
        role: r.4,
        inviter: r.5,
        status,
        expires_at: r.7,
        created_at: r.8,
        resent: r.9,
        accepted_at: r.10,
        accepted_by: r.11,
    }
}

/// A new invitation.
#[derive(Debug, Clone)]
pub struct NewInvitation<'a> {
    pub group_type: &'a str,
    pub group_key: &'a str,
    pub email: &'a str,
    pub role: &'a str,
    pub inviter: &'a str,
    pub token_hash: &'a str,
    pub expires_at: &'a str,
}

async fn audit(
    tx: &mut crate::Tx,
    project_id: i64,
    actor: &Actor,
    action: &str,
    before: Option<&Invitation>,
    after: &Invitation,
) -> std::result::Result<(), WriteError> {
    let b = before.map(serde_json::to_value).transpose()?;
    let a = serde_json::to_value(after)?;
    append_audit(
        tx,
        project_id,
        actor,
        action,
        "invitation",
        &after.id.to_string(),
        b.as_ref(),
        Some(&a),
    )
    .await?;
    Ok(())
}

impl Store {
    /// Creates an invitation, audited as `invitation.created`.
    pub async fn create_invitation(
        &self,
        project_id: i64,
        new: &NewInvitation<'_>,
        actor: &Actor,
    ) -> std::result::Result<Invitation, WriteError> {
        let mut tx = self.write_tx().await?;
        let now = now_text();
        let id: i64 = on_conn!(&mut tx, |c| {
            sqlx::query_scalar(
            "INSERT INTO invitations (project_id, group_type, group_key, email, role, inviter, token_hash, status,
                 expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9) RETURNING id",
        )
        .bind(project_id)
        .bind(new.group_type)
        .bind(new.group_key)
        .bind(new.email)
        .bind(new.role)
        .bind(new.inviter)
        .bind(new.token_hash)
        .bind(new.expires_at)
        .bind(&now)
        .fetch_one(c)
        .await
        })?;
        let row: Row = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "{SELECT} WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(c)
        .await)?;
        let inv = from_row(row, &now);
        audit(&mut tx, project_id, actor, "invitation.created", None, &inv).await?;
        tx.commit().await?;
        Ok(inv)
    }

    /// The project's invitation `id`.
    pub async fn invitation(&self, project_id: i64, id: i64) -> Result<Option<Invitation>> {
        let row: Option<Row> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{SELECT} WHERE project_id = $1 AND id = $2"
        ))
        .bind(project_id)
        .bind(id)
        .fetch_optional(c)
        .await)?;
        Ok(row.map(|r| from_row(r, &now_text())))
    }

    /// A group's invitations, newest first.
    pub async fn invitations(
        &self,
        project_id: i64,
        group_type: &str,
        group_key: &str,
    ) -> Result<Vec<Invitation>> {
        let rows: Vec<Row> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{SELECT} WHERE project_id = $1 AND group_type = $2 AND group_key = $3 ORDER BY id DESC"
        ))
        .bind(project_id)
        .bind(group_type)
        .bind(group_key)
        .fetch_all(c)
        .await)?;
        let now = now_text();
        Ok(rows.into_iter().map(|r| from_row(r, &now)).collect())
    }

    /// The project's invitations to every group, newest first, at most `limit`, older than invitation
    /// `before_id` when given (paging). `status` keeps one status as [`Invitation::status`] reports it (`expired`
    /// is a pending invitation past its expiry).
    pub async fn project_invitations(
        &self,
        project_id: i64,
        status: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Invitation>> {
        let now = now_text();
        let rows: Vec<Row> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{SELECT} WHERE project_id = $1 AND ($2 IS NULL OR id < $2)
               AND ($3 IS NULL
                    OR ($3 = 'pending' AND status = 'pending' AND expires_at > $4)
                    OR ($3 = 'expired' AND status = 'pending' AND expires_at <= $4)
                    OR ($3 NOT IN ('pending', 'expired') AND status = $3))
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(project_id)
        .bind(before_id)
        .bind(status)
        .bind(&now)
        .bind(i64::from(limit))
        .fetch_all(c)
        .await)?;
        Ok(rows.into_iter().map(|r| from_row(r, &now)).collect())
    }

    /// Changes a pending (unexpired unless `token_hash` renews it) invitation: `revoke`, `resend` (a new token hash
    /// and expiry) or `accept` (by `accepted_by`, found by token hash). Audited as `invitation.<action>`.
    /// `NotFound` when there is no such invitation (or token), `Invalid` when it is no longer pending.
    pub async fn change_invitation(
        &self,
        project_id: i64,
        change: InvitationChange<'_>,
        actor: &Actor,
    ) -> std::result::Result<Invitation, WriteError> {
        let mut tx = self.write_tx().await?;
        let now = now_text();
        let (filter, bind): (&str, String) = match &change {
            InvitationChange::Accept { token_hash, .. } => {
                ("token_hash = $2", (*token_hash).to_owned())
            }
            InvitationChange::Revoke { id } | InvitationChange::Resend { id, .. } => {
                ("id = CAST($2 AS BIGINT)", id.to_string())
            }
        };
        let row: Option<Row> = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "{SELECT} WHERE project_id = $1 AND {filter}"
        ))
        .bind(project_id)
        .bind(&bind)
        .fetch_optional(c)
        .await)?;
        let before = from_row(row.ok_or(WriteError::NotFound)?, &now);
        let allowed = match &change {
            // An expired invitation can be resent (a new expiry) or revoked, not accepted.
            InvitationChange::Accept { .. } => before.status == "pending",
            _ => matches!(before.status.as_str(), "pending" | "expired"),
        };
        if !allowed {
            return Err(WriteError::Invalid(format!(
                "invitation {} is {}",
                before.id, before.status
            )));
        }
        let action = match &change {
            InvitationChange::Revoke { .. } => {
                on_conn!(&mut tx, |c| sqlx::query(
                    "UPDATE invitations SET status = 'revoked' WHERE id = $1"
                )
                .bind(before.id)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                "invitation.revoked"
            }
            InvitationChange::Resend {
                token_hash,
                expires_at,
                ..
            } => {
                on_conn!(&mut tx, |c| {
                    sqlx::query(
                    "UPDATE invitations SET token_hash = $1, expires_at = $2, resent = resent + 1 WHERE id = $3",
                )
                .bind(token_hash)
                .bind(expires_at)
                .bind(before.id)
                .execute(c)
                .await.map(|r| r.rows_affected())
                })?;
                "invitation.resent"
            }
            InvitationChange::Accept { accepted_by, .. } => {
                on_conn!(&mut tx, |c| {
                    sqlx::query(
                    "UPDATE invitations SET status = 'accepted', accepted_at = $1, accepted_by = $2 WHERE id = $3",
                )
                .bind(&now)
                .bind(accepted_by)
                .bind(before.id)
                .execute(c)
                .await.map(|r| r.rows_affected())
                })?;
                "invitation.accepted"
            }
        };
        let row: Row = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "{SELECT} WHERE id = $1"
        ))
        .bind(before.id)
        .fetch_one(c)
        .await)?;
        let after = from_row(row, &now);
        audit(&mut tx, project_id, actor, action, Some(&before), &after).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Verifies an email domain for auto-join into a group with a role (replacing an earlier verification of the
    /// domain), audited as `group_domain.verified`.
    pub async fn verify_group_domain(
        &self,
        project_id: i64,
        domain: &str,
        group: (&str, &str),
        role: &str,
        actor: &Actor,
    ) -> std::result::Result<(), WriteError> {
        let mut tx = self.write_tx().await?;
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO group_domains (project_id, domain, group_type, group_key, role, verified_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (project_id, domain) DO UPDATE SET group_type = excluded.group_type,
                 group_key = excluded.group_key, role = excluded.role, verified_at = excluded.verified_at",
        )
        .bind(project_id)
        .bind(domain)
        .bind(group.0)
        .bind(group.1)
        .bind(role)
        .bind(now_text())
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        let after = serde_json::json!({"domain": domain, "group_type": group.0, "group_key": group.1, "role": role});
        append_audit(
            &mut tx,
            project_id,
            actor,
            "group_domain.verified",
            "group_domain",
            domain,
            None,
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The group (type, key, role) a verified domain joins, if any.
    pub async fn group_for_domain(
        &self,
        project_id: i64,
        domain: &str,
    ) -> Result<Option<(String, String, String)>> {
        Ok(on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT group_type, group_key, role FROM group_domains WHERE project_id = $1 AND domain = $2",
        )
        .bind(project_id)
        .bind(domain)
        .fetch_optional(c)
        .await
        })?)
    }
}

/// What [`Store::change_invitation`] does.
#[derive(Debug, Clone)]
pub enum InvitationChange<'a> {
    Revoke {
        id: i64,
    },
    Resend {
        id: i64,
        token_hash: &'a str,
        expires_at: &'a str,
    },
    Accept {
        token_hash: &'a str,
        accepted_by: &'a str,
    },
}
