//! Users, their memberships (role per organization, optional project restriction), sign-in sessions, team
//! invitations and the organization audit log. Passwords arrive hashed (the server hashes with argon2id); session
//! and invitation tokens are random, shown once, and stored as SHA-256 digests.

use serde::Serialize;
use serde_json::{json, Value};

use crate::keys::{key_digest, random_token};
use crate::{now_text, Actor, Result, Store};
use crate::{on_conn, on_pool};

/// Prefix of session tokens (the dashboard's cookie).
pub const SESSION_PREFIX: &str = "fwses_";
/// Prefix of team invitation tokens.
pub const TEAM_INVITATION_PREFIX: &str = "fwinv_";

/// A user as the store keeps them (the password hash never leaves the server).
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub password_hash: String,
}

/// A user's role in one organization and the projects they may open (`None`: all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Membership {
    pub organization_id: i64,
    pub organization_name: String,
    pub user_id: i64,
    pub email: String,
    pub name: String,
    pub role: String,
    pub projects: Option<Vec<i64>>,
    pub created_at: String,
}

impl Membership {
    /// Whether the member may open `project_id`.
    pub fn reaches(&self, project_id: i64) -> bool {
        self.projects
            .as_ref()
            .is_none_or(|p| p.contains(&project_id))
    }
}

/// A live sign-in session.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: i64,
    pub user_id: i64,
    pub csrf_token: String,
    pub created_at: String,
    pub expires_at: String,
    pub last_seen_at: String,
}

/// A team invitation as listed (never its token).
#[derive(Debug, Clone, Serialize)]
pub struct TeamInvitation {
    pub id: i64,
    pub organization_id: i64,
    pub email: String,
    pub role: String,
    pub projects: Option<Vec<i64>>,
    pub invited_by: String,
    pub created_at: String,
    pub expires_at: String,
    pub accepted_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// An organization as a user sees it.
#[derive(Debug, Clone, Serialize)]
pub struct OrganizationInfo {
    pub id: i64,
    pub name: String,
    pub created_at: String,
}

/// A project as listed for an organization.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectInfo {
    pub id: i64,
    pub organization_id: i64,
    pub name: String,
    pub created_at: String,
}

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("not found")]
    NotFound,
    #[error("the organization would have no owner left")]
    LastOwner,
    #[error("already exists")]
    Exists,
}

type MembershipRow = (
    i64,
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
);

const MEMBERSHIP_SELECT: &str =
    "SELECT m.organization_id, o.name, m.user_id, u.email, u.name, m.role, m.projects, m.created_at
     FROM memberships m JOIN organizations o ON o.id = m.organization_id JOIN users u ON u.id = m.user_id";

fn membership(row: MembershipRow) -> Result<Membership> {
    let (organization_id, organization_name, user_id, email, name, role, projects, created_at) =
        row;
    Ok(Membership {
        organization_id,
        organization_name,
        user_id,
        email,
        name,
        role,
        projects: projects.map(|p| serde_json::from_str(&p)).transpose()?,
        created_at,
    })
}

fn projects_text(projects: Option<&[i64]>) -> Option<String> {
    projects.map(|p| serde_json::to_string(p).unwrap_or_default())
}

impl Store {
    /// Creates a user; `Err(MemberError::Exists)` when the email is taken (case-insensitively).
    pub async fn create_user(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
    ) -> Result<std::result::Result<i64, MemberError>> {
        let now = now_text();
        let id: Option<i64> = on_pool!(self, |c| {
            sqlx::query_scalar(
            "INSERT INTO users (email, name, password_hash, created_at, password_changed_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (email) DO NOTHING RETURNING id",
        )
        .bind(email)
        .bind(name)
        .bind(password_hash)
        .bind(&now)
        .bind(&now)
        .fetch_optional(c)
        .await
        })?;
        Ok(id.ok_or(MemberError::Exists))
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>> {
        self.user_where("email = ?", email.into()).await
    }

    pub async fn user(&self, id: i64) -> Result<Option<UserRecord>> {
        self.user_where("id = ?", id.into()).await
    }

    async fn user_where(&self, condition: &str, value: Value) -> Result<Option<UserRecord>> {
        let sql = format!("SELECT id, email, name, password_hash FROM users WHERE {condition}");
        let sql = crate::numbered(&sql);
        let row = on_pool!(self, |c| {
            let q = sqlx::query_as::<_, (i64, String, String, String)>(&sql);
            let q = match &value {
                Value::Number(n) => q.bind(n.as_i64()),
                other => q.bind(other.as_str().unwrap_or_default().to_owned()),
            };
            q.fetch_optional(c).await
        })?;
        Ok(row.map(|(id, email, name, password_hash)| UserRecord {
            id,
            email,
            name,
            password_hash,
        }))
    }

    /// Every user (id, email, name), by id.
    pub async fn users(&self) -> Result<Vec<(i64, String, String)>> {
        Ok(on_pool!(self, |c| sqlx::query_as(
            "SELECT id, email, name FROM users ORDER BY id"
        )
        .fetch_all(c)
        .await)?)
    }

    /// Whether any user exists.
    pub async fn has_users(&self) -> Result<bool> {
        let n: i64 = on_pool!(self, |c| sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(c)
            .await)?;
        Ok(n > 0)
    }

    /// Replaces a user's password hash and ends every other session of theirs.
    pub async fn set_password(
        &self,
        user_id: i64,
        password_hash: &str,
        keep_session: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        on_conn!(&mut tx, |c| sqlx::query(
            "UPDATE users SET password_hash = $1, password_changed_at = $2 WHERE id = $3"
        )
        .bind(password_hash)
        .bind(now_text())
        .bind(user_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        on_conn!(&mut tx, |c| sqlx::query(
            "DELETE FROM sessions WHERE user_id = $1 AND ($2 IS NULL OR id != $3)"
        )
        .bind(user_id)
        .bind(keep_session)
        .bind(keep_session)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(())
    }

    // --- memberships ----------------------------------------------------------------------------------------

    pub async fn membership(
        &self,
        organization_id: i64,
        user_id: i64,
    ) -> Result<Option<Membership>> {
        let row: Option<MembershipRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{MEMBERSHIP_SELECT} WHERE m.organization_id = $1 AND m.user_id = $2"
        ))
        .bind(organization_id)
        .bind(user_id)
        .fetch_optional(c)
        .await)?;
        row.map(membership).transpose()
    }

    /// Every organization a user belongs to.
    pub async fn memberships_of(&self, user_id: i64) -> Result<Vec<Membership>> {
        let rows: Vec<MembershipRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{MEMBERSHIP_SELECT} WHERE m.user_id = $1 ORDER BY m.organization_id"
        ))
        .bind(user_id)
        .fetch_all(c)
        .await)?;
        rows.into_iter().map(membership).collect()
    }

    /// An organization's members.
    pub async fn members(&self, organization_id: i64) -> Result<Vec<Membership>> {
        let rows: Vec<MembershipRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{MEMBERSHIP_SELECT} WHERE m.organization_id = $1 ORDER BY m.user_id"
        ))
        .bind(organization_id)
        .fetch_all(c)
        .await)?;
        rows.into_iter().map(membership).collect()
    }

    /// Adds a member (audited `member.added`).
    pub async fn add_member(
        &self,
        organization_id: i64,
        user_id: i64,
        role: &str,
        projects: Option<&[i64]>,
        actor: &Actor,
    ) -> Result<std::result::Result<(), MemberError>> {
        let mut tx = self.write_tx().await?;
        let done = insert_member(&mut tx, organization_id, user_id, role, projects).await?;
        if !done {
            return Ok(Err(MemberError::Exists));
        }
        let after = json!({"user_id": user_id, "role": role, "projects": projects});
        append_org_audit(
            &mut tx,
            organization_id,
            actor,
            "member.added",
            "member",
            &user_id.to_string(),
            None,
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Changes a member's role and project access; refuses to leave the organization without an owner.
    pub async fn update_member(
        &self,
        organization_id: i64,
        user_id: i64,
        role: &str,
        projects: Option<&[i64]>,
        actor: &Actor,
    ) -> Result<std::result::Result<Membership, MemberError>> {
        let Some(before) = self.membership(organization_id, user_id).await? else {
            return Ok(Err(MemberError::NotFound));
        };
        let mut tx = self.write_tx().await?;
        on_conn!(&mut tx, |c| {
            sqlx::query("UPDATE memberships SET role = $1, projects = $2 WHERE organization_id = $3 AND user_id = $4")
            .bind(role)
            .bind(projects_text(projects))
            .bind(organization_id)
            .bind(user_id)
            .execute(c)
            .await.map(|r| r.rows_affected())
        })?;
        if owners(&mut tx, organization_id).await? == 0 {
            return Ok(Err(MemberError::LastOwner));
        }
        let b = json!({"role": before.role, "projects": before.projects});
        let a = json!({"role": role, "projects": projects});
        append_org_audit(
            &mut tx,
            organization_id,
            actor,
            "member.updated",
            "member",
            &user_id.to_string(),
            Some(&b),
            Some(&a),
        )
        .await?;
        tx.commit().await?;
        let after = self.membership(organization_id, user_id).await?;
        Ok(after.ok_or(MemberError::NotFound))
    }

    /// Removes a member: their personal keys in the organization are revoked with them. Refuses to remove the
    /// last owner.
    pub async fn remove_member(
        &self,
        organization_id: i64,
        user_id: i64,
        actor: &Actor,
    ) -> Result<std::result::Result<(), MemberError>> {
        let Some(before) = self.membership(organization_id, user_id).await? else {
            return Ok(Err(MemberError::NotFound));
        };
        let mut tx = self.write_tx().await?;
        on_conn!(&mut tx, |c| sqlx::query(
            "DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2"
        )
        .bind(organization_id)
        .bind(user_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        if owners(&mut tx, organization_id).await? == 0 {
            return Ok(Err(MemberError::LastOwner));
        }
        let revoked = on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE organization_id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(now_text())
        .bind(organization_id)
        .bind(user_id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        let b = json!({"role": before.role, "projects": before.projects});
        let a = json!({"keys_revoked": revoked});
        append_org_audit(
            &mut tx,
            organization_id,
            actor,
            "member.removed",
            "member",
            &user_id.to_string(),
            Some(&b),
            Some(&a),
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    // --- organizations and projects -------------------------------------------------------------------------

    /// Creates an organization with its first owner (audited `organization.created`).
    pub async fn create_organization_for(
        &self,
        name: &str,
        owner: i64,
        actor: &Actor,
    ) -> Result<i64> {
        let mut tx = self.write_tx().await?;
        let id = on_conn!(&mut tx, |c| sqlx::query_scalar::<_, i64>(
            "INSERT INTO organizations (name, created_at) VALUES ($1, $2) RETURNING id"
        )
        .bind(name)
        .bind(now_text())
        .fetch_one(c)
        .await)?;
        insert_member(&mut tx, id, owner, "owner", None).await?;
        let after = json!({"name": name, "owner": owner});
        append_org_audit(
            &mut tx,
            id,
            actor,
            "organization.created",
            "organization",
            &id.to_string(),
            None,
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn organization(&self, id: i64) -> Result<Option<OrganizationInfo>> {
        let row: Option<(i64, String, String)> = on_pool!(self, |c| sqlx::query_as(
            "SELECT id, name, created_at FROM organizations WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(c)
        .await)?;
        Ok(row.map(|(id, name, created_at)| OrganizationInfo {
            id,
            name,
            created_at,
        }))
    }

    pub async fn organization_projects(&self, organization_id: i64) -> Result<Vec<ProjectInfo>> {
        let rows: Vec<(i64, i64, String, String)> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT id, organization_id, name, created_at FROM projects WHERE organization_id = $1 ORDER BY id",
        )
        .bind(organization_id)
        .fetch_all(c)
        .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(id, organization_id, name, created_at)| ProjectInfo {
                id,
                organization_id,
                name,
                created_at,
            })
            .collect())
    }

    /// Whether an organization has an owner who can sign in.
    pub async fn organization_has_owner(&self, organization_id: i64) -> Result<bool> {
        let n: i64 = on_pool!(self, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM memberships WHERE organization_id = $1 AND role = 'owner'",
        )
        .bind(organization_id)
        .fetch_one(c)
        .await)?;
        Ok(n > 0)
    }

    // --- sessions -------------------------------------------------------------------------------------------

    /// Starts a session; returns (session id, token, CSRF token). The token is the only copy of its text.
    pub async fn create_session(
        &self,
        user_id: i64,
        expires_at: &str,
        source_ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<(i64, String, String)> {
        let token = random_token(SESSION_PREFIX, 43);
        let csrf = random_token("", 32);
        let now = now_text();
        let id = on_pool!(self, |c| {
            sqlx::query_scalar::<_, i64>(
            "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at, last_seen_at, source_ip,
                                   user_agent)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(key_digest(&token))
        .bind(user_id)
        .bind(&csrf)
        .bind(&now)
        .bind(expires_at)
        .bind(&now)
        .bind(source_ip)
        .bind(user_agent.map(|u| u.chars().take(300).collect::<String>()))
        .fetch_one(c)
        .await
        })?;
        Ok((id, token, csrf))
    }

    /// The live session of a token (expired sessions are not returned).
    pub async fn session(&self, token: &str, now: &str) -> Result<Option<SessionRecord>> {
        let row: Option<(i64, i64, String, String, String, String)> =
            on_pool!(self, |c| sqlx::query_as(
                "SELECT id, user_id, csrf_token, created_at, expires_at, last_seen_at FROM sessions
             WHERE token_hash = $1 AND expires_at > $2",
            )
            .bind(key_digest(token))
            .bind(now)
            .fetch_optional(c)
            .await)?;
        Ok(row.map(
            |(id, user_id, csrf_token, created_at, expires_at, last_seen_at)| SessionRecord {
                id,
                user_id,
                csrf_token,
                created_at,
                expires_at,
                last_seen_at,
            },
        ))
    }

    /// Extends a session (sliding expiry).
    pub async fn touch_session(&self, id: i64, now: &str, expires_at: &str) -> Result<()> {
        on_pool!(self, |c| sqlx::query(
            "UPDATE sessions SET last_seen_at = $1, expires_at = $2 WHERE id = $3"
        )
        .bind(now)
        .bind(expires_at)
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn delete_session(&self, id: i64) -> Result<()> {
        on_pool!(self, |c| sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    // --- team invitations -----------------------------------------------------------------------------------

    /// Invites someone to an organization; returns the invitation and its token (shown once).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_team_invitation(
        &self,
        organization_id: i64,
        email: &str,
        role: &str,
        projects: Option<&[i64]>,
        expires_at: &str,
        actor: &Actor,
    ) -> Result<(TeamInvitation, String)> {
        let token = random_token(TEAM_INVITATION_PREFIX, 40);
        let now = now_text();
        let mut tx = self.write_tx().await?;
        let id = on_conn!(&mut tx, |c| {
            sqlx::query_scalar::<_, i64>(
            "INSERT INTO team_invitations (organization_id, email, role, projects, token_hash, invited_by, created_at,
                                           expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(organization_id)
        .bind(email)
        .bind(role)
        .bind(projects_text(projects))
        .bind(key_digest(&token))
        .bind(&actor.label)
        .bind(&now)
        .bind(expires_at)
        .fetch_one(c)
        .await
        })?;
        let after =
            json!({"email": email, "role": role, "projects": projects, "expires_at": expires_at});
        append_org_audit(
            &mut tx,
            organization_id,
            actor,
            "invitation.created",
            "invitation",
            &id.to_string(),
            None,
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        let invitation = TeamInvitation {
            id,
            organization_id,
            email: email.to_owned(),
            role: role.to_owned(),
            projects: projects.map(<[i64]>::to_vec),
            invited_by: actor.label.clone(),
            created_at: now,
            expires_at: expires_at.to_owned(),
            accepted_at: None,
            revoked_at: None,
        };
        Ok((invitation, token))
    }

    pub async fn team_invitations(&self, organization_id: i64) -> Result<Vec<TeamInvitation>> {
        self.team_invitations_where("organization_id = ?", organization_id.into())
            .await
    }

    /// The invitation of a token, whatever its state.
    pub async fn team_invitation_by_token(&self, token: &str) -> Result<Option<TeamInvitation>> {
        Ok(self
            .team_invitations_where("token_hash = ?", key_digest(token).into())
            .await?
            .pop())
    }

    async fn team_invitations_where(
        &self,
        condition: &str,
        value: Value,
    ) -> Result<Vec<TeamInvitation>> {
        type Row = (
            i64,
            i64,
            String,
            String,
            Option<String>,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
        );
        let sql = format!(
            "SELECT id, organization_id, email, role, projects, invited_by, created_at, expires_at, accepted_at,
                    revoked_at
             FROM team_invitations WHERE {condition} ORDER BY id"
        );
        let sql = crate::numbered(&sql);
        let rows: Vec<Row> = on_pool!(self, |c| {
            let q = sqlx::query_as::<_, Row>(&sql);
            let q = match &value {
                Value::Number(n) => q.bind(n.as_i64()),
                other => q.bind(other.as_str().unwrap_or_default().to_owned()),
            };
            q.fetch_all(c).await
        })?;
        rows.into_iter()
            .map(
                |(
                    id,
                    organization_id,
                    email,
                    role,
                    projects,
                    invited_by,
                    created_at,
                    expires_at,
                    accepted_at,
                    revoked_at,
                )| {
                    Ok(TeamInvitation {
                        id,
                        organization_id,
                        email,
                        role,
                        projects: projects.map(|p| serde_json::from_str(&p)).transpose()?,
                        invited_by,
                        created_at,
                        expires_at,
                        accepted_at,
                        revoked_at,
                    })
                },
            )
            .collect()
    }

    /// Revokes a pending invitation; false when there is no pending one with that id.
    pub async fn revoke_team_invitation(
        &self,
        organization_id: i64,
        id: i64,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE team_invitations SET revoked_at = $1 WHERE id = $2 AND organization_id = $3 AND revoked_at IS NULL
               AND accepted_at IS NULL",
        )
        .bind(now_text())
        .bind(id)
        .bind(organization_id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })? == 1;
        if done {
            append_org_audit(
                &mut tx,
                organization_id,
                actor,
                "invitation.revoked",
                "invitation",
                &id.to_string(),
                None,
                None,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Accepts a pending invitation for a user: marks it accepted and makes (or updates) the membership, in one
    /// transaction. False when it was accepted or revoked meanwhile.
    pub async fn accept_team_invitation(
        &self,
        invitation: &TeamInvitation,
        user_id: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = on_conn!(&mut tx, |c| sqlx::query(
            "UPDATE team_invitations SET accepted_at = $1, accepted_by = $2
             WHERE id = $3 AND accepted_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now_text())
        .bind(user_id)
        .bind(invitation.id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?
            == 1;
        if !done {
            return Ok(false);
        }
        let projects = invitation.projects.as_deref();
        if !insert_member(
            &mut tx,
            invitation.organization_id,
            user_id,
            &invitation.role,
            projects,
        )
        .await?
        {
            on_conn!(&mut tx, |c| {
                sqlx::query("UPDATE memberships SET role = $1, projects = $2 WHERE organization_id = $3 AND user_id = $4")
                .bind(&invitation.role)
                .bind(projects_text(projects))
                .bind(invitation.organization_id)
                .bind(user_id)
                .execute(c)
                .await.map(|r| r.rows_affected())
            })?;
        }
        let actor = Actor {
            label: format!("user:{user_id}"),
            source_ip: None,
        };
        let after = json!({"user_id": user_id, "role": invitation.role, "projects": projects,
                           "invitation": invitation.id});
        append_org_audit(
            &mut tx,
            invitation.organization_id,
            &actor,
            "member.joined",
            "member",
            &user_id.to_string(),
            None,
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    // --- organization audit log -----------------------------------------------------------------------------

    /// Records an organization-level event on its own (a sign-in, a password change).
    pub async fn record_org_audit(
        &self,
        organization_id: i64,
        actor: &Actor,
        action: &str,
        entity_type: &str,
        entity_id: &str,
        after: Option<&Value>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        append_org_audit(
            &mut tx,
            organization_id,
            actor,
            action,
            entity_type,
            entity_id,
            None,
            after,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest entries of an organization's audit log, before an id when paging.
    pub async fn org_audit(
        &self,
        organization_id: i64,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Value>> {
        type Row = (
            i64,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
        );
        let rows: Vec<Row> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT id, actor, action, entity_type, entity_id, before, after, source_ip, at FROM organization_audit_log
             WHERE organization_id = $1 AND ($2 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(organization_id)
        .bind(before_id)
        .bind(before_id)
        .bind(limit)
        .fetch_all(c)
        .await
        })?;
        let parse = |t: Option<String>| t.and_then(|t| serde_json::from_str::<Value>(&t).ok());
        Ok(rows
            .into_iter()
            .map(
                |(id, actor, action, entity_type, entity_id, before, after, source_ip, at)| {
                    let (before, after) = (parse(before), parse(after));
                    let mut diff = Vec::new();
                    crate::features::json_diff(
                        "",
                        before.as_ref().unwrap_or(&Value::Null),
                        after.as_ref().unwrap_or(&Value::Null),
                        &mut diff,
                    );
                    json!({"id": id, "actor": actor, "action": action, "entity_type": entity_type,
                       "entity_id": entity_id, "before": before, "after": after, "diff": diff,
                       "source_ip": source_ip, "at": at})
                },
            )
            .collect())
    }
}

async fn insert_member(
    tx: &mut crate::Tx,
    organization_id: i64,
    user_id: i64,
    role: &str,
    projects: Option<&[i64]>,
) -> Result<bool> {
    let done = on_conn!(tx, |c| {
        sqlx::query(
        "INSERT INTO memberships (organization_id, user_id, role, projects, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (organization_id, user_id) DO NOTHING",
    )
    .bind(organization_id)
    .bind(user_id)
    .bind(role)
    .bind(projects_text(projects))
    .bind(now_text())
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

async fn owners(tx: &mut crate::Tx, organization_id: i64) -> Result<i64> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE organization_id = $1 AND role = 'owner'",
    )
    .bind(organization_id)
    .fetch_one(c)
    .await)?)
}

#[allow(clippy::too_many_arguments)]
async fn append_org_audit(
    tx: &mut crate::Tx,
    organization_id: i64,
    actor: &Actor,
    action: &str,
    entity_type: &str,
    entity_id: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<()> {
    on_conn!(tx, |c| {
        sqlx::query(
        "INSERT INTO organization_audit_log (organization_id, actor, action, entity_type, entity_id, before, after,
                                             source_ip, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(organization_id)
    .bind(&actor.label)
    .bind(action)
    .bind(entity_type)
    .bind(entity_id)
    .bind(before.map(Value::to_string))
    .bind(after.map(Value::to_string))
    .bind(&actor.source_ip)
    .bind(now_text())
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    Ok(())
}
