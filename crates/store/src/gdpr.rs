//! What the metadata store holds about a person, for a GDPR export: every row of the growth tables that names the
//! person (by their distinct ids or person uuid), as JSON objects by table.

use serde_json::{Map, Value};
use sqlx::{Column, Row, TypeInfo, ValueRef};

use crate::{Result, Store};

/// A row as a JSON object (INTEGER, REAL, TEXT and NULL columns; anything else as null).
fn row_json(row: &sqlx::sqlite::SqliteRow) -> Value {
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let value = match row.try_get_raw(i) {
            Ok(raw) if !raw.is_null() => match raw.type_info().name() {
                "INTEGER" | "BOOLEAN" => row
                    .try_get::<i64, _>(i)
                    .map(Value::from)
                    .unwrap_or(Value::Null),
                "REAL" => row
                    .try_get::<f64, _>(i)
                    .map(Value::from)
                    .unwrap_or(Value::Null),
                "TEXT" => row
                    .try_get::<String, _>(i)
                    .map(Value::from)
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            },
            _ => Value::Null,
        };
        out.insert(col.name().to_owned(), value);
    }
    Value::Object(out)
}

impl Store {
    /// The growth records of a person — referrals (as referee or referrer), referral codes, reward entries with their
    /// transitions, invitations (sent or accepted), share links and visits, PQL scores — as (table, row) pairs.
    /// `person_uuid` and `person_number` identify the person; `distinct_ids` are all of theirs.
    pub async fn person_growth_records(
        &self,
        project_id: i64,
        person_uuid: &str,
        person_number: Option<i64>,
        distinct_ids: &[String],
    ) -> Result<Vec<(&'static str, Value)>> {
        let ids = if distinct_ids.is_empty() {
            "NULL".to_owned()
        } else {
            vec!["?"; distinct_ids.len()].join(",")
        };
        let number = person_number.map(|n| n.to_string()).unwrap_or_default();
        // (table, statement); `{ids}` is the distinct ids' placeholders, bound after the listed scalars.
        let queries: [(&'static str, String, Vec<&str>); 8] = [
            ("referrals", format!("SELECT * FROM referrals WHERE project_id = ? AND (referee_person = ? OR referrer IN ({ids}) OR referee IN ({ids}))"), vec![person_uuid]),
            ("referral_codes", format!("SELECT * FROM referral_codes WHERE project_id = ? AND referrer IN ({ids})"), vec![]),
            ("reward_entries", format!("SELECT * FROM reward_entries WHERE project_id = ? AND beneficiary IN ({ids})"), vec![]),
            ("reward_transitions", format!("SELECT t.* FROM reward_transitions t JOIN reward_entries e ON e.id = t.entry_id WHERE e.project_id = ? AND e.beneficiary IN ({ids})"), vec![]),
            ("invitations", format!("SELECT id, group_type, group_key, email, role, inviter, status, expires_at, created_at, resent, accepted_at, accepted_by FROM invitations WHERE project_id = ? AND (inviter IN ({ids}) OR accepted_by IN ({ids}))"), vec![]),
            ("share_links", format!("SELECT * FROM share_links WHERE project_id = ? AND sharer IN ({ids})"), vec![]),
            ("share_visitors", format!("SELECT v.* FROM share_visitors v JOIN share_links l ON l.id = v.link_id WHERE l.project_id = ? AND (v.person_uuid = ? OR v.distinct_id IN ({ids}))"), vec![person_uuid]),
            ("pql_scores", format!("SELECT * FROM pql_scores WHERE project_id = ? AND (entity = ? OR label IN ({ids}))"), vec![number.as_str()]),
        ];
        let mut out = Vec::new();
        for (table, sql, scalars) in &queries {
            let mut q = sqlx::query(sql).bind(project_id);
            for s in scalars {
                q = q.bind(*s);
            }
            // Each `IN ({ids})` takes the distinct ids once (none when the list is `NULL`).
            let lists = if distinct_ids.is_empty() {
                0
            } else {
                sql.matches("IN (").count()
            };
            for _ in 0..lists {
                for d in distinct_ids {
                    q = q.bind(d);
                }
            }
            for row in q.fetch_all(self.pool()).await? {
                out.push((*table, row_json(&row)));
            }
        }
        Ok(out)
    }
}

impl Store {
    /// Appends an audit entry (and its `audit.<action>` announcement) on its own, for actions that change nothing
    /// else in the store (an export). `after` must carry no personal data.
    pub async fn record_audit(
        &self,
        project_id: i64,
        actor: &crate::Actor,
        action: &str,
        entity_type: &str,
        entity_id: &str,
        after: &Value,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        crate::features::append_audit(
            &mut tx,
            project_id,
            actor,
            action,
            entity_type,
            entity_id,
            None,
            Some(after),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
