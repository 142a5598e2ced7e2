//! Webhook subscriptions and their deliveries (migration 0017): the queue the delivery worker works through, the
//! delivery log and the dead-letter list.

use serde::Serialize;
use serde_json::{json, Value};

use crate::features::{append_audit, Actor};
use crate::{now_text, Result, Store};
use crate::{on_conn, on_pool};

/// A subscription of a project to outbox topics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Webhook {
    pub id: i64,
    #[serde(skip)]
    pub project_id: i64,
    pub url: String,
    #[serde(skip)]
    pub secret: String,
    pub topics: Vec<String>,
    /// Filters of captured events delivered as `event.<name>` messages (`[{"event", "properties"?}]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Value>,
    pub description: String,
    pub active: bool,
    /// The last outbox id the endpoint has taken.
    #[serde(skip)]
    pub cursor: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// Whether a topic matches a subscription's pattern: the topic itself, `prefix.*`, or `*`.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    pattern == "*"
        || pattern == topic
        || pattern.strip_suffix(".*").is_some_and(|p| {
            topic
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('.'))
        })
}

/// One message for one endpoint, with its outbox entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub outbox_id: i64,
    pub topic: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: String,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub payload: Value,
    #[serde(skip)]
    pub message_created_at: String,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub attempt_id: String,
    pub at: String,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// What became of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Try again at this time.
    Retry(String),
    /// No attempts left: the dead-letter list.
    Dead,
}

/// Changes of a subscription (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct WebhookUpdate {
    pub url: Option<String>,
    pub topics: Option<Vec<String>>,
    /// `Some(Null)` removes the filters.
    pub events: Option<Value>,
    pub description: Option<String>,
    pub active: Option<bool>,
}

type WebhookRow = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    bool,
    i64,
    String,
    String,
);

const WEBHOOK_COLUMNS: &str =
    "id, project_id, url, secret, topics, events, description, active, cursor, created_at, updated_at";

fn webhook_from(
    (
        id,
        project_id,
        url,
        secret,
        topics,
        events,
        description,
        active,
        cursor,
        created_at,
        updated_at,
    ): WebhookRow,
) -> Result<Webhook> {
    Ok(Webhook {
        id,
        project_id,
        url,
        secret,
        topics: serde_json::from_str(&topics)?,
        events: events.map(|e| serde_json::from_str(&e)).transpose()?,
        description,
        active,
        cursor,
        created_at,
        updated_at,
    })
}

type DeliveryRow = (
    i64,
    i64,
    String,
    String,
    i64,
    String,
    Option<i64>,
    Option<String>,
    String,
    String,
    String,
    String,
);

const DELIVERY_COLUMNS: &str =
    "d.id, d.outbox_id, o.topic, d.status, d.attempts, d.next_attempt_at, d.last_status,
     d.last_error, d.created_at, d.updated_at, o.payload, o.created_at";

fn delivery_from(
    (
        id,
        outbox_id,
        topic,
        status,
        attempts,
        next_attempt_at,
        last_status,
        last_error,
        created_at,
        updated_at,
        payload,
        message_created_at,
    ): DeliveryRow,
) -> Result<Delivery> {
    Ok(Delivery {
        id,
        outbox_id,
        topic,
        status,
        attempts,
        next_attempt_at,
        last_status,
        last_error,
        created_at,
        updated_at,
        payload: serde_json::from_str(&payload)?,
        message_created_at,
    })
}

fn audit_view(w: &Webhook) -> Value {
    json!({"id": w.id, "url": w.url, "topics": w.topics, "description": w.description, "active": w.active})
}

/// The advisory-lock namespace of webhook endpoints ("webh" in the high bits; the endpoint id in the low ones).
const WEBHOOK_LOCKS: i64 = 0x7765_6268 << 32;

impl Store {
    /// Creates a subscription (`fields`: `url` and `topics` set; `active` by default); it takes the messages
    /// written from now on.
    pub async fn create_webhook(
        &self,
        project_id: i64,
        secret: &str,
        fields: &WebhookUpdate,
        actor: &Actor,
    ) -> Result<Webhook> {
        let url = fields.url.as_deref().unwrap_or_default();
        let topics = fields.topics.as_deref().unwrap_or_default();
        let description = fields.description.as_deref().unwrap_or_default();
        let active = fields.active.unwrap_or(true);
        let mut tx = self.write_tx().await?;
        let now = now_text();
        let id: i64 = on_conn!(&mut tx, |c| {
            sqlx::query_scalar(
            "INSERT INTO webhooks (project_id, url, secret, topics, events, description, active, cursor, created_at,
                                   updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, (SELECT COALESCE(MAX(id), 0) FROM outbox), $8, $9) RETURNING id",
        )
        .bind(project_id)
        .bind(url)
        .bind(secret)
        .bind(serde_json::to_string(topics)?)
        .bind(fields.events.as_ref().filter(|e| !e.is_null()).map(Value::to_string))
        .bind(description)
        .bind(active)
        .bind(&now)
        .bind(&now)
        .fetch_one(c)
        .await
        })?;
        let row: WebhookRow = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(c)
        .await)?;
        let w = webhook_from(row)?;
        append_audit(
            &mut tx,
            project_id,
            actor,
            "webhook.created",
            "webhook",
            &id.to_string(),
            None,
            Some(&audit_view(&w)),
        )
        .await?;
        tx.commit().await?;
        Ok(w)
    }

    /// A project's subscriptions.
    pub async fn webhooks(&self, project_id: i64) -> Result<Vec<Webhook>> {
        let rows: Vec<WebhookRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE project_id = $1 ORDER BY id"
        ))
        .bind(project_id)
        .fetch_all(c)
        .await)?;
        rows.into_iter().map(webhook_from).collect()
    }

    /// Every active subscription of the installation.
    pub async fn active_webhooks(&self) -> Result<Vec<Webhook>> {
        let rows: Vec<WebhookRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE active = TRUE ORDER BY id"
        ))
        .fetch_all(c)
        .await)?;
        rows.into_iter().map(webhook_from).collect()
    }

    /// One subscription of a project.
    pub async fn webhook(&self, project_id: i64, id: i64) -> Result<Option<Webhook>> {
        let row: Option<WebhookRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE project_id = $1 AND id = $2"
        ))
        .bind(project_id)
        .bind(id)
        .fetch_optional(c)
        .await)?;
        row.map(webhook_from).transpose()
    }

    /// Changes a subscription (audited); `None` when there is no such subscription.
    pub async fn update_webhook(
        &self,
        project_id: i64,
        id: i64,
        change: &WebhookUpdate,
        actor: &Actor,
    ) -> Result<Option<Webhook>> {
        let Some(before) = self.webhook(project_id, id).await? else {
            return Ok(None);
        };
        let mut tx = self.write_tx().await?;
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE webhooks SET url = $1, topics = $2, events = $3, description = $4, active = $5, updated_at = $6
             WHERE project_id = $7 AND id = $8",
        )
        .bind(change.url.as_ref().unwrap_or(&before.url))
        .bind(serde_json::to_string(
            change.topics.as_ref().unwrap_or(&before.topics),
        )?)
        .bind(
            match &change.events {
                Some(e) => Some(e),
                None => before.events.as_ref(),
            }
            .filter(|e| !e.is_null())
            .map(Value::to_string),
        )
        .bind(change.description.as_ref().unwrap_or(&before.description))
        .bind(change.active.unwrap_or(before.active))
        .bind(now_text())
        .bind(project_id)
        .bind(id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        let row: WebhookRow = on_conn!(&mut tx, |c| sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(c)
        .await)?;
        let after = webhook_from(row)?;
        append_audit(
            &mut tx,
            project_id,
            actor,
            "webhook.updated",
            "webhook",
            &id.to_string(),
            Some(&audit_view(&before)),
            Some(&audit_view(&after)),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(after))
    }

    /// Replaces a subscription's signing secret (audited, without the secret); false when there is none.
    pub async fn rotate_webhook_secret(
        &self,
        project_id: i64,
        id: i64,
        secret: &str,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE webhooks SET secret = $1, updated_at = $2 WHERE project_id = $3 AND id = $4",
        )
        .bind(secret)
        .bind(now_text())
        .bind(project_id)
        .bind(id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })? == 1;
        if done {
            append_audit(
                &mut tx,
                project_id,
                actor,
                "webhook.secret_rotated",
                "webhook",
                &id.to_string(),
                None,
                Some(&json!({"id": id})),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Deletes a subscription with its delivery log (audited); false when there is none.
    pub async fn delete_webhook(&self, project_id: i64, id: i64, actor: &Actor) -> Result<bool> {
        let Some(before) = self.webhook(project_id, id).await? else {
            return Ok(false);
        };
        let mut tx = self.write_tx().await?;
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE webhook_id = $1)",
        )
        .bind(id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        on_conn!(&mut tx, |c| sqlx::query(
            "DELETE FROM webhook_deliveries WHERE webhook_id = $1"
        )
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        on_conn!(&mut tx, |c| sqlx::query(
            "DELETE FROM webhooks WHERE id = $1"
        )
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        append_audit(
            &mut tx,
            project_id,
            actor,
            "webhook.deleted",
            "webhook",
            &id.to_string(),
            Some(&audit_view(&before)),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The exclusive right to deliver the endpoint's messages, across every node sharing the database: `None`
    /// when another node holds it (it delivers them). See [`Store::session_lock`].
    pub async fn lock_webhook(&self, webhook_id: i64) -> Result<Option<crate::SessionLock>> {
        self.session_lock(WEBHOOK_LOCKS ^ webhook_id, false).await
    }

    /// The endpoint's oldest pending delivery (its head: nothing later is attempted before it ends).
    pub async fn webhook_head(&self, webhook_id: i64) -> Result<Option<Delivery>> {
        let row: Option<DeliveryRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN outbox o ON o.id = d.outbox_id
             WHERE d.webhook_id = $1 AND d.status = 'pending' ORDER BY d.outbox_id LIMIT 1"
        ))
        .bind(webhook_id)
        .fetch_optional(c)
        .await)?;
        row.map(delivery_from).transpose()
    }

    /// Takes the next outbox message of the endpoint's project whose topic it subscribes to, as a pending
    /// delivery due now, and moves the cursor (kept in `w` too) past what it read; `None` when the outbox holds
    /// nothing more for it (up to 10,000 entries are read per call).
    pub async fn take_webhook_message(&self, w: &mut Webhook) -> Result<Option<Delivery>> {
        for _ in 0..20 {
            // Captured events (`event.*`) go only to the subscriptions they matched (listed in the payload).
            let rows: Vec<(i64, String, Option<String>)> = on_pool!(self, |c| sqlx::query_as(
                "SELECT id, topic, CASE WHEN topic LIKE 'event.%' THEN payload END FROM outbox
                 WHERE id > $1 AND project_id = $2 ORDER BY id LIMIT 500",
            )
            .bind(w.cursor)
            .bind(w.project_id)
            .fetch_all(c)
            .await)?;
            let Some(last) = rows.last().map(|r| r.0) else {
                return Ok(None);
            };
            let wanted = |topic: &str, payload: &Option<String>| match payload {
                None => w.topics.iter().any(|p| topic_matches(p, topic)),
                Some(text) => serde_json::from_str::<Value>(text).is_ok_and(|p| {
                    p["webhooks"]
                        .as_array()
                        .is_some_and(|ids| ids.iter().any(|i| i.as_i64() == Some(w.id)))
                }),
            };
            let found = rows
                .iter()
                .find(|(_, topic, payload)| wanted(topic, payload))
                .map(|(id, _, _)| *id);
            let mut tx = self.write_tx().await?;
            let now = now_text();
            if let Some(outbox_id) = found {
                on_conn!(&mut tx, |c| {
                    sqlx::query(
                    "INSERT INTO webhook_deliveries (webhook_id, outbox_id, status, next_attempt_at, created_at, updated_at)
                     VALUES ($1, $2, 'pending', $3, $4, $5) ON CONFLICT (webhook_id, outbox_id) DO NOTHING",
                )
                .bind(w.id)
                .bind(outbox_id)
                .bind(&now)
                .bind(&now)
                .bind(&now)
                .execute(c)
                .await.map(|r| r.rows_affected())
                })?;
            }
            let cursor = found.unwrap_or(last);
            on_conn!(&mut tx, |c| {
                sqlx::query("UPDATE webhooks SET cursor = CASE WHEN cursor > $1 THEN cursor ELSE $1 END WHERE id = $2")
                .bind(cursor)
                .bind(w.id)
                .execute(c)
                .await.map(|r| r.rows_affected())
            })?;
            tx.commit().await?;
            w.cursor = w.cursor.max(cursor);
            if found.is_some() {
                return self.webhook_head(w.id).await;
            }
        }
        Ok(None)
    }

    /// Records an attempt and what became of the delivery.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_webhook_attempt(
        &self,
        delivery_id: i64,
        attempt_id: &str,
        status_code: Option<i64>,
        error: Option<&str>,
        duration_ms: i64,
        outcome: &Outcome,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let now = now_text();
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt_id, at, status_code, error, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(delivery_id)
        .bind(attempt_id)
        .bind(&now)
        .bind(status_code)
        .bind(error)
        .bind(duration_ms)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        let (status, next) = match outcome {
            Outcome::Delivered => ("delivered", now.clone()),
            Outcome::Retry(at) => ("pending", at.clone()),
            Outcome::Dead => ("dead", now.clone()),
        };
        on_conn!(&mut tx, |c| {
            sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, last_status = $3,
               last_error = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(status)
        .bind(next)
        .bind(status_code)
        .bind(error)
        .bind(&now)
        .bind(delivery_id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        Ok(())
    }

    /// An endpoint's deliveries, newest first (`status`: only those).
    pub async fn webhook_deliveries(
        &self,
        webhook_id: i64,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        let rows: Vec<DeliveryRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN outbox o ON o.id = d.outbox_id
             WHERE d.webhook_id = $1 AND ($2 IS NULL OR d.status = $3) ORDER BY d.id DESC LIMIT $4"
        ))
        .bind(webhook_id)
        .bind(status)
        .bind(status)
        .bind(limit)
        .fetch_all(c)
        .await)?;
        rows.into_iter().map(delivery_from).collect()
    }

    /// One delivery of an endpoint with its attempts, oldest first.
    pub async fn webhook_delivery(
        &self,
        webhook_id: i64,
        delivery_id: i64,
    ) -> Result<Option<(Delivery, Vec<Attempt>)>> {
        let row: Option<DeliveryRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN outbox o ON o.id = d.outbox_id
             WHERE d.webhook_id = $1 AND d.id = $2"
        ))
        .bind(webhook_id)
        .bind(delivery_id)
        .fetch_optional(c)
        .await)?;
        let Some(row) = row else { return Ok(None) };
        type AttemptRow = (String, String, Option<i64>, Option<String>, i64);
        let attempts: Vec<AttemptRow> = on_pool!(self, |c| sqlx::query_as(
            "SELECT attempt_id, at, status_code, error, duration_ms FROM webhook_attempts
             WHERE delivery_id = $1 ORDER BY id",
        )
        .bind(delivery_id)
        .fetch_all(c)
        .await)?;
        Ok(Some((
            delivery_from(row)?,
            attempts
                .into_iter()
                .map(
                    |(attempt_id, at, status_code, error, duration_ms)| Attempt {
                        attempt_id,
                        at,
                        status_code,
                        error,
                        duration_ms,
                    },
                )
                .collect(),
        )))
    }

    /// Puts a dead (or delivered) delivery back in the queue with fresh attempts; false when it is pending or
    /// missing.
    pub async fn replay_webhook_delivery(&self, webhook_id: i64, delivery_id: i64) -> Result<bool> {
        let now = now_text();
        let done = on_pool!(self, |c| {
            sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $2
             WHERE webhook_id = $3 AND id = $4 AND status IN ('dead', 'delivered')",
        )
        .bind(&now)
        .bind(&now)
        .bind(webhook_id)
        .bind(delivery_id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn patterns_match_topics() {
        assert!(topic_matches("*", "reward.approved"));
        assert!(topic_matches("reward.*", "reward.approved"));
        assert!(topic_matches("reward.approved", "reward.approved"));
        assert!(!topic_matches("reward.*", "rewards.approved"));
        assert!(!topic_matches("reward.*", "reward"));
        assert!(topic_matches("audit.*", "audit.feature.updated"));
        assert!(!topic_matches("pql.qualified", "pql.qualified.x"));
    }
}
