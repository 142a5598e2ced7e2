//! Referral codes, clicks and installation secrets (migration 0011).

use serde::Serialize;

use crate::features::{append_audit, Actor, WriteError};
use crate::{now_text, Result, Store};

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
        let taken: Option<i64> =
            sqlx::query_scalar("SELECT id FROM referral_codes WHERE code_key = ?")
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
        if taken.is_some() {
            return Err(WriteError::AlreadyExists);
        }
        let now = now_text();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO referral_codes (project_id, program, code, code_key, referrer, vanity, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(project_id)
        .bind(program)
        .bind(code)
        .bind(&key)
        .bind(referrer)
        .bind(vanity)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
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
        let row: Option<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE c.project_id = ? AND c.program = ? AND c.referrer = ? AND c.vanity = 0"
        ))
        .bind(project_id)
        .bind(program)
        .bind(referrer)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(from_row))
    }

    /// A program's codes (of one referrer when given), oldest first.
    pub async fn referral_codes(
        &self,
        project_id: i64,
        program: &str,
        referrer: Option<&str>,
    ) -> Result<Vec<ReferralCode>> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE c.project_id = ? AND c.program = ? AND (? IS NULL OR c.referrer = ?) ORDER BY c.id"
        ))
        .bind(project_id)
        .bind(program)
        .bind(referrer)
        .bind(referrer)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// The code whose lower-case form is `code`'s, in any project.
    pub async fn referral_code(&self, code: &str) -> Result<Option<ReferralCode>> {
        let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE c.code_key = ?"))
            .bind(code.to_lowercase())
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(from_row))
    }

    /// Records a click on a code's link.
    pub async fn record_referral_click(
        &self,
        code: &ReferralCode,
        token: &str,
        fingerprint: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO referral_clicks (project_id, code_id, token, fingerprint, created_at)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(code.project_id)
        .bind(code.id)
        .bind(token)
        .bind(fingerprint)
        .bind(now_text())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The installation's secret `name`: `candidate` the first time it is asked for, the stored value after.
    pub async fn install_secret(&self, name: &str, candidate: &str) -> Result<String> {
        sqlx::query("INSERT OR IGNORE INTO install_secrets (name, value) VALUES (?, ?)")
            .bind(name)
            .bind(candidate)
            .execute(self.pool())
            .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM install_secrets WHERE name = ?")
                .bind(name)
                .fetch_one(self.pool())
                .await?,
        )
    }
}
