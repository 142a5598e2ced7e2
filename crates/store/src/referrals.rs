//! Referral codes, clicks and installation secrets (migration 0011).

use serde::Serialize;

use crate::features::{append_audit, Actor, WriteError};
use crate::{now_text, Result, Store};
use crate::{on_conn, on_pool};

/// A referral code as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReferralCode {
    pub id: i64,
    #[serde(skip)]
    pub project_id: i64,
    pub program: String,
    pub code: String,
    pub referrer: String,
    pub vanity: bool,
    pub created_at: String,
    /// Clicks recorded on its link.
    pub clicks: i64,
}

type Row = (i64, i64, String, String, String, bool, String, i64);

const SELECT: &str =
    "SELECT c.id, c.project_id, c.program, c.code, c.referrer, c.vanity, c.created_at,
        (SELECT COUNT(*) FROM referral_clicks k WHERE k.code_id = c.id)
     FROM referral_codes c";

fn from_row(
    (id, project_id, program, code, referrer, vanity, created_at, clicks): Row,
) -> ReferralCode {
    ReferralCode {
        id,
        project_id,
        program,
        code,
        referrer,
        vanity,
        created_at,
        clicks,
    }
}

/// How a referral's qualifying event was judged: the new `status` (`qualified`, `capped`, `held` or `rejected`),
/// the event's time `at`, the fraud signals and their score.
#[derive(Debug, Clone)]
pub struct Qualification<'a> {
    pub status: &'a str,
    pub at: &'a str,
    pub signals: &'a serde_json::Value,
    pub risk_score: i64,
}

impl Store {
    /// Creates a code (`AlreadyExists` when its lower-case form is taken anywhere), audited as
    /// `referral_code.created`.
    pub async fn create_referral_code(
        &self,
        project_id: i64,
        program: &str,
        code: &str,
        referrer: &str,
        vanity: bool,
        actor: &Actor,
    ) -> std::result::Result<ReferralCode, WriteError> {
        let mut tx = self.write_tx().await?;
        let key = code.to_lowercase();
        let taken: Option<i64> = on_conn!(&mut tx, |c| sqlx::query_scalar(
            "SELECT id FROM referral_codes WHERE code_key = $1"
        )
        .bind(&key)
        .fetch_optional(c)
        .await)?;
        if taken.is_some() {
            return Err(WriteError::AlreadyExists);
        }
        let now = now_text();
        let id: i64 = on_conn!(&mut tx, |c| {
            sqlx::query_scalar(
            "INSERT INTO referral_codes (project_id, program, code, code_key, referrer, vanity, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(project_id)
        .bind(program)
        .bind(code)
        .bind(&key)
        .bind(referrer)
        .bind(vanity)
        .bind(&now)
        .fetch_one(c)
        .await
        })?;
        let created = ReferralCode {
            id,
            project_id,
            program: program.to_owned(),
            code: code.to_owned(),
            referrer: referrer.to_owned(),
            vanity,
            created_at: now,
            clicks: 0,
        };
        let after = serde_json::to_value(&created)?;
        append_audit(
            &mut tx,
            project_id,
            actor,
            "referral_code.created",
            "referral_code",
            code,
            None,
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// The generated (not vanity) code of a referrer in a program, if any.
    pub async fn generated_referral_code(
        &self,
        project_id: i64,
        program: &str,
        referrer: &str,
    ) -> Result<Option<ReferralCode>> {
        let row: Option<Row> = on_pool!(self, |c| {
            sqlx::query_as(&format!(
            "{SELECT} WHERE c.project_id = $1 AND c.program = $2 AND c.referrer = $3 AND c.vanity = FALSE"
        ))
        .bind(project_id)
        .bind(program)
        .bind(referrer)
        .fetch_optional(c)
        .await
        })?;
        Ok(row.map(from_row))
    }

    /// A program's codes (of one referrer when given), oldest first.
    pub async fn referral_codes(
        &self,
        project_id: i64,
        program: &str,
        referrer: Option<&str>,
    ) -> Result<Vec<ReferralCode>> {
        let rows: Vec<Row> = on_pool!(self, |c| {
            sqlx::query_as(&format!(
            "{SELECT} WHERE c.project_id = $1 AND c.program = $2 AND ($3 IS NULL OR c.referrer = $4) ORDER BY c.id"
        ))
        .bind(project_id)
        .bind(program)
        .bind(referrer)
        .bind(referrer)
        .fetch_all(c)
        .await
        })?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// The code whose lower-case form is `code`'s, in any project.
    pub async fn referral_code(&self, code: &str) -> Result<Option<ReferralCode>> {
        let row: Option<Row> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{SELECT} WHERE c.code_key = $1"
        ))
        .bind(code.to_lowercase())
        .fetch_optional(c)
        .await)?;
        Ok(row.map(from_row))
    }

    /// Records a click on a code's link.
    pub async fn record_referral_click(
        &self,
        code: &ReferralCode,
        token: &str,
        fingerprint: &str,
    ) -> Result<()> {
        on_pool!(self, |c| sqlx::query(
            "INSERT INTO referral_clicks (project_id, code_id, token, fingerprint, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(code.project_id)
        .bind(code.id)
        .bind(token)
        .bind(fingerprint)
        .bind(now_text())
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The installation's secret `name`: `candidate` the first time it is asked for, the stored value after.
    pub async fn install_secret(&self, name: &str, candidate: &str) -> Result<String> {
        on_pool!(self, |c| sqlx::query(
            "INSERT INTO install_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        )
        .bind(name)
        .bind(candidate)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(on_pool!(self, |c| sqlx::query_scalar(
            "SELECT value FROM install_secrets WHERE name = $1"
        )
        .bind(name)
        .fetch_one(c)
        .await)?)
    }
}

/// A referral as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Referral {
    pub id: i64,
    pub program: String,
    pub code_id: i64,
    pub referrer: String,
    pub referee: String,
    pub referee_person: String,
    pub click_token: Option<String>,
    pub status: String,
    pub signals: serde_json::Value,
    pub risk_score: i64,
    pub attributed_at: String,
    pub qualified_at: Option<String>,
}

type ReferralRow = (
    i64,
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    String,
    Option<String>,
);

const REFERRAL: &str =
    "SELECT id, program, code_id, referrer, referee, referee_person, click_token, status, signals,
        risk_score, attributed_at, qualified_at FROM referrals";

fn referral(r: ReferralRow) -> Referral {
    Referral {
        id: r.0,
        program: r.1,
        code_id: r.2,
        referrer: r.3,
        referee: r.4,
        referee_person: r.5,
        click_token: r.6,
        status: r.7,
        signals: serde_json::from_str(&r.8).unwrap_or_else(|_| serde_json::json!([])),
        risk_score: r.9,
        attributed_at: r.10,
        qualified_at: r.11,
    }
}

/// A new attribution.
#[derive(Debug, Clone)]
pub struct NewReferral<'a> {
    pub program: &'a str,
    pub code: &'a ReferralCode,
    pub referee: &'a str,
    pub referee_person: &'a str,
    pub click_token: Option<&'a str>,
    pub status: &'a str,
    pub signals: &'a serde_json::Value,
    pub at: &'a str,
}

impl Store {
    /// The referral of a referee person in a program, if any.
    pub async fn referral_of(
        &self,
        project_id: i64,
        program: &str,
        referee_person: &str,
    ) -> Result<Option<Referral>> {
        let row: Option<ReferralRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{REFERRAL} WHERE project_id = $1 AND program = $2 AND referee_person = $3"
        ))
        .bind(project_id)
        .bind(program)
        .bind(referee_person)
        .fetch_optional(c)
        .await)?;
        Ok(row.map(referral))
    }

    /// Records an attribution; with `replace` (last touch) an unqualified attribution of the same referee moves to
    /// the new code. Returns the referral as it is now.
    pub async fn attribute_referral(
        &self,
        project_id: i64,
        new: &NewReferral<'_>,
        replace: bool,
    ) -> Result<Referral> {
        let mut tx = self.write_tx().await?;
        let now = now_text();
        let signals = new.signals.to_string();
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO referrals (project_id, program, code_id, referrer, referee, referee_person, click_token,
                 status, signals, attributed_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (project_id, program, referee_person) DO UPDATE SET
                 code_id = excluded.code_id, referrer = excluded.referrer, referee = excluded.referee,
                 click_token = excluded.click_token, status = excluded.status, signals = excluded.signals,
                 attributed_at = excluded.attributed_at, updated_at = excluded.updated_at
             WHERE $12 AND referrals.status = 'attributed' AND referrals.code_id <> excluded.code_id",
        )
        .bind(project_id)
        .bind(new.program)
        .bind(new.code.id)
        .bind(&new.code.referrer)
        .bind(new.referee)
        .bind(new.referee_person)
        .bind(new.click_token)
        .bind(new.status)
        .bind(&signals)
        .bind(new.at)
        .bind(&now)
        .bind(replace)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        let row: ReferralRow = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "{REFERRAL} WHERE project_id = $1 AND program = $2 AND referee_person = $3"
        ))
        .bind(project_id)
        .bind(new.program)
        .bind(new.referee_person)
        .fetch_one(c)
        .await)?;
        tx.commit().await?;
        Ok(referral(row))
    }

    /// Records a referral's qualifying event ([`Qualification`]) unless it already left `attributed`; true when it changed. `rewards` are
    /// written to the ledger in the same transaction (a qualified referral is never seen without its rewards, and
    /// a crash cannot leave it without them).
    pub async fn qualify_referral(
        &self,
        project_id: i64,
        id: i64,
        q: &Qualification<'_>,
        rewards: &[crate::NewReward<'_>],
        actor: &Actor,
    ) -> std::result::Result<bool, WriteError> {
        let mut tx = self.write_tx().await?;
        let done = on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE referrals SET status = $1, qualified_at = $2, signals = $3, risk_score = $4, updated_at = $5
             WHERE id = $6 AND status = 'attributed'",
        )
        .bind(q.status)
        .bind(q.at)
        .bind(q.signals.to_string())
        .bind(q.risk_score)
        .bind(now_text())
        .bind(id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        if done != 1 {
            return Ok(false);
        }
        for reward in rewards {
            crate::ledger::insert_reward(&mut tx, project_id, reward, actor).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// A review decision: a `held` referral becomes `qualified`, or a `held` or `attributed` one `rejected`;
    /// audited as `referral.approved` / `referral.rejected` with the reason. `Invalid` when the status does not
    /// allow it.
    pub async fn review_referral(
        &self,
        project_id: i64,
        program: &str,
        id: i64,
        approve: bool,
        reason: &str,
        actor: &Actor,
    ) -> std::result::Result<Referral, WriteError> {
        let mut tx = self.write_tx().await?;
        let before: Option<ReferralRow> = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "{REFERRAL} WHERE project_id = $1 AND program = $2 AND id = $3"
        ))
        .bind(project_id)
        .bind(program)
        .bind(id)
        .fetch_optional(c)
        .await)?;
        let before = referral(before.ok_or(WriteError::NotFound)?);
        let to = match (approve, before.status.as_str()) {
            (true, "held") => "qualified",
            (false, "held" | "attributed") => "rejected",
            (_, from) => {
                return Err(WriteError::Invalid(format!(
                    "referral {id} is {from}: it cannot be {}",
                    if approve { "approved" } else { "rejected" }
                )))
            }
        };
        on_conn!(&mut tx, |c| sqlx::query(
            "UPDATE referrals SET status = $1, updated_at = $2 WHERE id = $3"
        )
        .bind(to)
        .bind(now_text())
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        let after: ReferralRow = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "{REFERRAL} WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(c)
        .await)?;
        let after = referral(after);
        let mut a = serde_json::to_value(&after)?;
        a["review_reason"] = serde_json::json!(reason);
        append_audit(
            &mut tx,
            project_id,
            actor,
            if approve {
                "referral.approved"
            } else {
                "referral.rejected"
            },
            "referral",
            &id.to_string(),
            Some(&serde_json::to_value(&before)?),
            Some(&a),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Referrals of a referrer in a program attributed before referral `before_id`, at or after `since`
    /// (velocity).
    pub async fn referrals_since(
        &self,
        project_id: i64,
        program: &str,
        referrer: &str,
        since: &str,
        before_id: i64,
    ) -> Result<i64> {
        Ok(on_pool!(self, |c| {
            sqlx::query_scalar(
            "SELECT COUNT(*) FROM referrals WHERE project_id = $1 AND program = $2 AND referrer = $3
             AND attributed_at >= $4 AND id < $5",
        )
        .bind(project_id)
        .bind(program)
        .bind(referrer)
        .bind(since)
        .bind(before_id)
        .fetch_one(c)
        .await
        })?)
    }

    /// Who brought a referee person, in any program (the oldest attribution): the referrer's distinct id.
    pub async fn referrer_of(
        &self,
        project_id: i64,
        referee_person: &str,
    ) -> Result<Option<String>> {
        Ok(on_pool!(self, |c| {
            sqlx::query_scalar(
            "SELECT referrer FROM referrals WHERE project_id = $1 AND referee_person = $2 AND status <> 'rejected'
             ORDER BY id LIMIT 1",
        )
        .bind(project_id)
        .bind(referee_person)
        .fetch_optional(c)
        .await
        })?)
    }

    /// A program's referrals (of one referrer, of one status when given), newest first.
    pub async fn referrals(
        &self,
        project_id: i64,
        program: &str,
        referrer: Option<&str>,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Referral>> {
        let rows: Vec<ReferralRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{REFERRAL} WHERE project_id = $1 AND program = $2 AND ($3 IS NULL OR referrer = $4)
             AND ($5 IS NULL OR status = $6) ORDER BY id DESC LIMIT $7"
        ))
        .bind(project_id)
        .bind(program)
        .bind(referrer)
        .bind(referrer)
        .bind(status)
        .bind(status)
        .bind(limit)
        .fetch_all(c)
        .await)?;
        Ok(rows.into_iter().map(referral).collect())
    }

    /// Qualified referrals of a referrer in a program (for its cap).
    pub async fn qualified_referrals(
        &self,
        project_id: i64,
        program: &str,
        referrer: &str,
    ) -> Result<i64> {
        Ok(on_pool!(self, |c| {
            sqlx::query_scalar(
            "SELECT COUNT(*) FROM referrals WHERE project_id = $1 AND program = $2 AND referrer = $3 AND status = 'qualified'",
        )
        .bind(project_id)
        .bind(program)
        .bind(referrer)
        .fetch_one(c)
        .await
        })?)
    }

    /// When a click token was recorded (and for which code), if it was.
    pub async fn referral_click(&self, token: &str) -> Result<Option<(i64, String)>> {
        Ok(on_pool!(self, |c| sqlx::query_as(
            "SELECT code_id, created_at FROM referral_clicks WHERE token = $1"
        )
        .bind(token)
        .fetch_optional(c)
        .await)?)
    }

    /// The fingerprint (salted hash of address and user agent) of a click.
    pub async fn click_fingerprint(&self, token: &str) -> Result<Option<String>> {
        Ok(on_pool!(self, |c| sqlx::query_scalar(
            "SELECT fingerprint FROM referral_clicks WHERE token = $1"
        )
        .bind(token)
        .fetch_optional(c)
        .await)?)
    }

    /// The LSN the `consumer` has processed, stored.
    pub async fn set_checkpoint(&self, consumer: &str, lsn: u64) -> Result<()> {
        on_pool!(self, |c| sqlx::query(
            "INSERT INTO intake_checkpoints (consumer, lsn) VALUES ($1, $2)
             ON CONFLICT (consumer) DO UPDATE SET lsn = excluded.lsn",
        )
        .bind(self.consumer_key(consumer))
        .bind(lsn as i64)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }
}

/// A share link with its counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShareLink {
    pub id: i64,
    #[serde(skip)]
    pub project_id: i64,
    pub token: String,
    pub sharer: String,
    pub object_type: String,
    pub object_id: String,
    pub url: String,
    pub created_at: String,
    /// Clicks on the link.
    pub views: i64,
    /// Persons who came through it.
    pub visitors: i64,
    /// Of those, the ones who are identified (signed up).
    pub signups: i64,
}

type ShareRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
);

const SHARE: &str =
    "SELECT l.id, l.project_id, l.token, l.sharer, l.object_type, l.object_id, l.url, l.created_at,
        (SELECT COUNT(*) FROM share_views v WHERE v.link_id = l.id),
        (SELECT COUNT(*) FROM share_visitors s WHERE s.link_id = l.id),
        (SELECT COUNT(*) FROM share_visitors s JOIN persons p ON p.uuid = s.person_uuid
            WHERE s.link_id = l.id AND p.is_identified = TRUE)
     FROM share_links l";

fn share(r: ShareRow) -> ShareLink {
    ShareLink {
        id: r.0,
        project_id: r.1,
        token: r.2,
        sharer: r.3,
        object_type: r.4,
        object_id: r.5,
        url: r.6,
        created_at: r.7,
        views: r.8,
        visitors: r.9,
        signups: r.10,
    }
}

impl Store {
    /// The sharer's link to an object, made with `token` and `url` the first time (true when created), audited as
    /// `share_link.created`.
    #[allow(clippy::too_many_arguments)]
    pub async fn share_link_for(
        &self,
        project_id: i64,
        sharer: &str,
        object: (&str, &str),
        url: &str,
        token: &str,
        actor: &Actor,
    ) -> std::result::Result<(ShareLink, bool), WriteError> {
        let mut tx = self.write_tx().await?;
        let existing: Option<ShareRow> = on_conn!(&mut tx, |c| {
            sqlx::query_as(&format!(
            "{SHARE} WHERE l.project_id = $1 AND l.sharer = $2 AND l.object_type = $3 AND l.object_id = $4"
        ))
        .bind(project_id)
        .bind(sharer)
        .bind(object.0)
        .bind(object.1)
        .fetch_optional(c)
        .await
        })?;
        if let Some(row) = existing {
            return Ok((share(row), false));
        }
        let id: i64 = on_conn!(&mut tx, |c| {
            sqlx::query_scalar(
            "INSERT INTO share_links (project_id, token, sharer, object_type, object_id, url, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(project_id)
        .bind(token)
        .bind(sharer)
        .bind(object.0)
        .bind(object.1)
        .bind(url)
        .bind(now_text())
        .fetch_one(c)
        .await
        })?;
        let row: ShareRow = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "{SHARE} WHERE l.id = $1"
        ))
        .bind(id)
        .fetch_one(c)
        .await)?;
        let link = share(row);
        let after = serde_json::to_value(&link)?;
        append_audit(
            &mut tx,
            project_id,
            actor,
            "share_link.created",
            "share_link",
            &link.token,
            None,
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok((link, true))
    }

    /// The link with this token, in any project.
    pub async fn share_link(&self, token: &str) -> Result<Option<ShareLink>> {
        let row: Option<ShareRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "{SHARE} WHERE l.token = $1"
        ))
        .bind(token)
        .fetch_optional(c)
        .await)?;
        Ok(row.map(share))
    }

    /// A project's links (of a sharer, of an object type and id, when given), newest first.
    pub async fn share_links(
        &self,
        project_id: i64,
        sharer: Option<&str>,
        object_type: Option<&str>,
        object_id: Option<&str>,
    ) -> Result<Vec<ShareLink>> {
        let rows: Vec<ShareRow> = on_pool!(self, |c| {
            sqlx::query_as(&format!(
            "{SHARE} WHERE l.project_id = $1 AND ($2 IS NULL OR l.sharer = $3) AND ($4 IS NULL OR l.object_type = $5)
             AND ($6 IS NULL OR l.object_id = $7) ORDER BY l.id DESC LIMIT 1000"
        ))
        .bind(project_id)
        .bind(sharer)
        .bind(sharer)
        .bind(object_type)
        .bind(object_type)
        .bind(object_id)
        .bind(object_id)
        .fetch_all(c)
        .await
        })?;
        Ok(rows.into_iter().map(share).collect())
    }

    /// Records a view of a link.
    pub async fn record_share_view(&self, link_id: i64, fingerprint: &str) -> Result<()> {
        on_pool!(self, |c| sqlx::query(
            "INSERT INTO share_views (link_id, fingerprint, created_at) VALUES ($1, $2, $3)"
        )
        .bind(link_id)
        .bind(fingerprint)
        .bind(now_text())
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Records that a person came through a link (once per link and person).
    pub async fn record_share_visitor(
        &self,
        link_id: i64,
        person_uuid: &str,
        distinct_id: &str,
    ) -> Result<()> {
        on_pool!(self, |c| {
            sqlx::query(
            "INSERT INTO share_visitors (link_id, person_uuid, distinct_id, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(link_id)
        .bind(person_uuid)
        .bind(distinct_id)
        .bind(now_text())
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Projects with share links.
    pub async fn share_link_projects(&self) -> Result<Vec<i64>> {
        Ok(on_pool!(self, |c| sqlx::query_scalar(
            "SELECT DISTINCT project_id FROM share_links"
        )
        .fetch_all(c)
        .await)?)
    }
}

impl Store {
    /// Every referral (any program) of these referee persons, 500 persons per statement.
    pub async fn referrals_of_persons(
        &self,
        project_id: i64,
        persons: &[&str],
    ) -> Result<Vec<Referral>> {
        let mut out = Vec::new();
        for chunk in persons.chunks(500) {
            let sql = format!(
                "{REFERRAL} WHERE project_id = $1 AND referee_person IN ({})",
                crate::placeholders(2, chunk.len())
            );
            let rows = on_pool!(self, |c| {
                let mut query = sqlx::query_as::<_, ReferralRow>(&sql).bind(project_id);
                for p in chunk {
                    query = query.bind(*p);
                }
                query.fetch_all(c).await
            })?;
            out.extend(rows.into_iter().map(referral));
        }
        Ok(out)
    }
}

impl Store {
    /// A program's referrers by qualified referrals (then by all referrals), at most `limit`: (referrer,
    /// qualified, attributed in total).
    pub async fn referral_leaderboard(
        &self,
        project_id: i64,
        program: &str,
        limit: i64,
    ) -> Result<Vec<(String, i64, i64)>> {
        Ok(on_pool!(self, |c| sqlx::query_as(
            "SELECT referrer, COUNT(*) FILTER (WHERE status = 'qualified'), COUNT(*) FROM referrals
             WHERE project_id = $1 AND program = $2 AND status <> 'rejected'
             GROUP BY referrer ORDER BY 2 DESC, 3 DESC, referrer LIMIT $3",
        )
        .bind(project_id)
        .bind(program)
        .bind(limit)
        .fetch_all(c)
        .await)?)
    }
}

/// How a person came: the earliest of their referral (not rejected), accepted invitation and share-link visit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrowthEdge {
    /// `referral`, `invitation` or `share`.
    pub via: String,
    /// The distinct id of who brought them.
    pub from: String,
    pub at: String,
    /// The program, the group (`type/key`) or the shared object (`type/id`).
    pub context: String,
}

impl Store {
    /// The edge that brought the person `person_uuid` (who has distinct id `distinct_id`), if any.
    pub async fn incoming_edge(
        &self,
        project_id: i64,
        person_uuid: &str,
        distinct_id: &str,
    ) -> Result<Option<GrowthEdge>> {
        let row: Option<(String, String, String, String)> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT via, source, at, context FROM (
                 SELECT 'referral' AS via, referrer AS source, attributed_at AS at, program AS context
                   FROM referrals WHERE project_id = $1 AND referee_person = $2 AND status <> 'rejected'
                 UNION ALL
                 SELECT 'invitation', inviter, accepted_at, group_type || '/' || group_key
                   FROM invitations WHERE project_id = $3 AND status = 'accepted' AND accepted_by = $4
                 UNION ALL
                 SELECT 'share', l.sharer, v.created_at, l.object_type || '/' || l.object_id
                   FROM share_visitors v JOIN share_links l ON l.id = v.link_id
                   WHERE l.project_id = $5 AND v.person_uuid = $6
             ) AS edges ORDER BY at LIMIT 1",
        )
        .bind(project_id)
        .bind(person_uuid)
        .bind(project_id)
        .bind(distinct_id)
        .bind(project_id)
        .bind(person_uuid)
        .fetch_optional(c)
        .await
        })?;
        Ok(row.map(|(via, from, at, context)| GrowthEdge {
            via,
            from,
            at,
            context,
        }))
    }
}

/// One edge of the growth graph: `from` brought `to` (both distinct ids).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphEdge {
    /// `referral`, `invitation` or `share`.
    pub via: String,
    pub from: String,
    pub to: String,
    pub at: String,
    /// The program, the group (`type/key`) or the shared object (`type/id`).
    pub context: String,
}

/// Every edge of a project: referrals not rejected, accepted invitations, share-link visits.
const EDGES: &str = "SELECT via, source, target, at, context FROM (
         SELECT 'referral' AS via, referrer AS source, referee AS target, attributed_at AS at, program AS context
           FROM referrals WHERE project_id = $1 AND status <> 'rejected'
         UNION ALL
         SELECT 'invitation', inviter, accepted_by, accepted_at, group_type || '/' || group_key
           FROM invitations WHERE project_id = $1 AND status = 'accepted' AND accepted_by IS NOT NULL
         UNION ALL
         SELECT 'share', l.sharer, v.distinct_id, v.created_at, l.object_type || '/' || l.object_id
           FROM share_visitors v JOIN share_links l ON l.id = v.link_id
          WHERE l.project_id = $1) AS edges
     WHERE ($2 IS NULL OR via = $2)";

impl Store {
    /// Edges of the growth graph, newest first, at most `limit`: the project's, or only those sent by one of
    /// `senders` (distinct ids); of one channel (`via`) when given.
    pub async fn growth_edges(
        &self,
        project_id: i64,
        senders: Option<&[String]>,
        via: Option<&str>,
        limit: u32,
    ) -> Result<Vec<GraphEdge>> {
        type EdgeRow = (String, String, String, String, String);
        let mut rows: Vec<EdgeRow> = Vec::new();
        match senders {
            None => {
                rows = on_pool!(self, |c| sqlx::query_as(&format!(
                    "{EDGES} ORDER BY at DESC LIMIT $3"
                ))
                .bind(project_id)
                .bind(via)
                .bind(i64::from(limit))
                .fetch_all(c)
                .await)?;
            }
            Some(senders) => {
                for chunk in senders.chunks(500) {
                    let sql = format!(
                        "{EDGES} AND source IN ({}) ORDER BY at DESC LIMIT {limit}",
                        crate::placeholders(3, chunk.len())
                    );
                    rows.extend(on_pool!(self, |c| {
                        let mut query = sqlx::query_as::<_, EdgeRow>(&sql)
                            .bind(project_id)
                            .bind(via);
                        for s in chunk {
                            query = query.bind(s);
                        }
                        query.fetch_all(c).await
                    })?);
                }
                rows.sort_by(|a, b| b.3.cmp(&a.3));
                rows.truncate(limit as usize);
            }
        }
        Ok(rows
            .into_iter()
            .map(|(via, from, to, at, context)| GraphEdge {
                via,
                from,
                to,
                at,
                context,
            })
            .collect())
    }
}
