//! The rows of growth metrics (K-factor and viral cycle time): who joined when, how many invites each sender sent
//! and which ones converted, with the join times of both ends. Read in three set-based statements over the growth
//! tables (migrations 0011–0015) and `persons`, in one read transaction on a read-only rusqlite connection on a
//! blocking thread (a consistent snapshot; sqlx would hand every row over a channel).
//!
//! Senders and receivers are resolved to their current person: a distinct id through `person_distinct_ids` (a merge
//! moves the merged person's ids to the survivor), a person uuid kept at attribution time through
//! `person_overrides` (flattened: one hop reaches the survivor). A person's join time is `persons.created_at` (the
//! earliest of merged persons').

use crate::{time_text, Result, Store};
use chrono::DateTime;

/// The channel an invite travelled through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InviteChannel {
    /// Referral links and codes (`referral_clicks`, `referrals`).
    Referral,
    /// Invitations to a group (`invitations`).
    Invitation,
    /// Share links (`share_views`, `share_visitors`).
    Share,
}

impl InviteChannel {
    fn from_sql(n: i64) -> Option<Self> {
        match n {
            0 => Some(Self::Referral),
            1 => Some(Self::Invitation),
            2 => Some(Self::Share),
            _ => None,
        }
    }
}

/// Invites one sender person sent on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentInvites {
    pub channel: InviteChannel,
    /// The sender's join time, µs since the epoch.
    pub sender_joined_us: i64,
    pub count: u64,
}

/// An invite that brought someone: a referral not rejected, an accepted invitation, a share-link visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertedInvite {
    pub channel: InviteChannel,
    pub sender_joined_us: i64,
    /// The receiver person's join time, when that person (still) exists.
    pub receiver_joined_us: Option<i64>,
    /// Attribution (referral), acceptance (invitation) or visit (share) time.
    pub converted_at_us: i64,
}

/// What [`Store::growth_invites`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrowthInvites {
    /// Join times of the project's persons who joined in the range.
    pub joins: Vec<i64>,
    /// Per channel and sender person who joined in the range.
    pub sent: Vec<SentInvites>,
    /// Every converted invite of a sender who joined in the range.
    pub converted: Vec<ConvertedInvite>,
    /// Rows left out because a stored time does not read as RFC 3339.
    pub unreadable: u64,
}

/// Invites sent per (channel, sender person). A sender is a distinct id; the per-sender sums are made before the
/// person lookup, so each distinct id is resolved once. `CROSS JOIN` keeps SQLite's join order (the senders
/// outside): without statistics it would rather scan every distinct id of the project.
const SENT: &str = "
WITH sent (channel, sender, n) AS (
    SELECT 0, c.referrer, COUNT(*)
      FROM referral_codes c JOIN referral_clicks k ON k.code_id = c.id
     WHERE c.project_id = ?1 GROUP BY c.referrer
    UNION ALL
    SELECT 0, referrer, COUNT(*) FROM referrals
     WHERE project_id = ?1 AND click_token IS NULL GROUP BY referrer
    UNION ALL
    SELECT 1, inviter, COUNT(*) FROM invitations WHERE project_id = ?1 GROUP BY inviter
    UNION ALL
    SELECT 2, l.sharer, COUNT(*)
      FROM share_links l JOIN share_views v ON v.link_id = l.id
     WHERE l.project_id = ?1 GROUP BY l.sharer
)
SELECT s.channel, p.created_at, SUM(s.n)
  FROM sent s
 CROSS JOIN person_distinct_ids d ON d.project_id = ?1 AND d.distinct_id = s.sender
  JOIN persons p ON p.id = d.person_id
 WHERE p.created_at >= ?2 AND p.created_at < ?3
 GROUP BY s.channel, p.id";

/// Converted invites with the sender's and the receiver's join times.
const CONVERTED: &str = "
SELECT 0, sp.created_at, rp.created_at, r.attributed_at
  FROM referrals r
  JOIN person_distinct_ids d ON d.project_id = r.project_id AND d.distinct_id = r.referrer
  JOIN persons sp ON sp.id = d.person_id
  LEFT JOIN person_overrides o ON o.project_id = r.project_id AND o.old_person_uuid = r.referee_person
  LEFT JOIN persons rp ON rp.uuid = COALESCE(o.new_person_uuid, r.referee_person)
 WHERE r.project_id = ?1 AND r.status <> 'rejected'
   AND sp.created_at >= ?2 AND sp.created_at < ?3
UNION ALL
SELECT 1, sp.created_at, rp.created_at, COALESCE(i.accepted_at, i.created_at)
  FROM invitations i
  JOIN person_distinct_ids d ON d.project_id = i.project_id AND d.distinct_id = i.inviter
  JOIN persons sp ON sp.id = d.person_id
  LEFT JOIN person_distinct_ids rd ON rd.project_id = i.project_id AND rd.distinct_id = i.accepted_by
  LEFT JOIN persons rp ON rp.id = rd.person_id
 WHERE i.project_id = ?1 AND i.status = 'accepted'
   AND sp.created_at >= ?2 AND sp.created_at < ?3
UNION ALL
SELECT 2, sp.created_at, rp.created_at, v.created_at
  FROM share_links l
  JOIN share_visitors v ON v.link_id = l.id
  JOIN person_distinct_ids d ON d.project_id = l.project_id AND d.distinct_id = l.sharer
  JOIN persons sp ON sp.id = d.person_id
  LEFT JOIN person_overrides o ON o.project_id = l.project_id AND o.old_person_uuid = v.person_uuid
  LEFT JOIN persons rp ON rp.uuid = COALESCE(o.new_person_uuid, v.person_uuid)
 WHERE l.project_id = ?1
   AND sp.created_at >= ?2 AND sp.created_at < ?3";

/// µs since the epoch of a stored time.
fn micros(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// The rows of the three statements, as read.
#[derive(Default)]
struct Raw {
    /// `created_at` of the persons who joined.
    joins: Vec<String>,
    /// (channel, sender's `created_at`, invites)
    sent: Vec<(i64, String, i64)>,
    /// (channel, sender's `created_at`, receiver's `created_at`, converted at)
    converted: Vec<(i64, String, Option<String>, Option<String>)>,
}

const JOINS: &str =
    "SELECT created_at FROM persons WHERE project_id = ?1 AND created_at >= ?2 AND created_at < ?3";

fn read_sqlite(path: &std::path::Path, project_id: i64, from: &str, to: &str) -> Result<Raw> {
    let mut conn = crate::persons::read_connection(path)?;
    // One read transaction: the three statements see one snapshot.
    let tx = conn.transaction()?;
    let params = rusqlite::params![project_id, from, to];
    let mut raw = Raw::default();
    {
        let mut stmt = tx.prepare(JOINS)?;
        let mut rows = stmt.query(params)?;
        while let Some(row) = rows.next()? {
            raw.joins.push(row.get(0)?);
        }
    }
    {
        let mut stmt = tx.prepare(SENT)?;
        let mut rows = stmt.query(params)?;
        while let Some(row) = rows.next()? {
            raw.sent.push((row.get(0)?, row.get(1)?, row.get(2)?));
        }
    }
    {
        let mut stmt = tx.prepare(CONVERTED)?;
        let mut rows = stmt.query(params)?;
        while let Some(row) = rows.next()? {
            raw.converted
                .push((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?));
        }
    }
    // Nothing to commit: ending the read transaction is enough.
    tx.rollback()?;
    Ok(raw)
}

/// A statement above in PostgreSQL's dialect: `$N` parameters, a plain join (its planner has statistics), and the
/// integer literals and sums typed `bigint` (PostgreSQL types a literal `integer` and a sum of `bigint` `numeric`).
fn postgres_text(sqlite: &str) -> String {
    let mut sql = sqlite
        .replace("?1", "$1")
        .replace("?2", "$2")
        .replace("?3", "$3")
        .replace("CROSS JOIN", "JOIN")
        .replace("SUM(s.n)", "CAST(SUM(s.n) AS BIGINT)");
    for channel in ["0", "1", "2"] {
        sql = sql.replace(
            &format!("SELECT {channel}, "),
            &format!("SELECT CAST({channel} AS BIGINT), "),
        );
    }
    sql
}

async fn read_postgres(pool: &sqlx::PgPool, project_id: i64, from: &str, to: &str) -> Result<Raw> {
    let mut tx = pool.begin().await?;
    // One snapshot for the three statements, as on SQLite.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let joins = sqlx::query_scalar(&postgres_text(JOINS))
        .bind(project_id)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
    let sent = sqlx::query_as(&postgres_text(SENT))
        .bind(project_id)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
    let converted = sqlx::query_as(&postgres_text(CONVERTED))
        .bind(project_id)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(Raw {
        joins,
        sent,
        converted,
    })
}

fn assemble(raw: Raw) -> GrowthInvites {
    let mut out = GrowthInvites::default();
    for text in raw.joins {
        match micros(&text) {
            Some(t) => out.joins.push(t),
            None => out.unreadable += 1,
        }
    }
    for (channel, joined, count) in raw.sent {
        match (InviteChannel::from_sql(channel), micros(&joined)) {
            (Some(channel), Some(sender_joined_us)) => out.sent.push(SentInvites {
                channel,
                sender_joined_us,
                count: u64::try_from(count).unwrap_or(0),
            }),
            _ => out.unreadable += 1,
        }
    }
    for (channel, sender, receiver, at) in raw.converted {
        let channel = InviteChannel::from_sql(channel);
        let receiver_joined_us = receiver.as_deref().and_then(micros);
        match (channel, micros(&sender), at.as_deref().and_then(micros)) {
            (Some(channel), Some(sender_joined_us), Some(converted_at_us)) => {
                out.converted.push(ConvertedInvite {
                    channel,
                    sender_joined_us,
                    receiver_joined_us,
                    converted_at_us,
                })
            }
            (Some(channel), Some(sender_joined_us), None) if receiver_joined_us.is_some() => {
                out.converted.push(ConvertedInvite {
                    channel,
                    sender_joined_us,
                    receiver_joined_us,
                    converted_at_us: receiver_joined_us.unwrap_or(sender_joined_us),
                })
            }
            _ => out.unreadable += 1,
        }
    }
    out
}

impl Store {
    /// The rows of the growth metrics of a project for the senders (and users) who joined in `[from_us, to_us)`
    /// (µs since the epoch). See the module documentation for how ends are resolved to persons.
    pub async fn growth_invites(
        &self,
        project_id: i64,
        from_us: i64,
        to_us: i64,
    ) -> Result<GrowthInvites> {
        let text = |us: i64| {
            DateTime::from_timestamp_micros(us)
                .map(time_text)
                .ok_or_else(|| {
                    crate::StoreError::Task(format!("growth metrics: {us} µs is not a time"))
                })
        };
        let (from, to) = (text(from_us)?, text(to_us)?);
        let raw = match self.backend() {
            crate::Backend::Postgres(pool) => read_postgres(pool, project_id, &from, &to).await?,
            crate::Backend::Sqlite(_) => {
                let path = self.sqlite_path()?;
                tokio::task::spawn_blocking(move || read_sqlite(&path, project_id, &from, &to))
                    .await
                    .map_err(|e| crate::StoreError::Task(format!("growth metrics reader: {e}")))??
            }
        };
        Ok(assemble(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Actor, IdentityOp, InvitationChange, MergeMode, NewInvitation, NewReferral, ReferralCode,
    };

    const DAY: i64 = 86_400_000_000;
    const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

    fn actor() -> Actor {
        Actor {
            label: "test".into(),
            source_ip: None,
        }
    }

    fn touch(p: i64, d: &str, at: i64) -> IdentityOp {
        IdentityOp::Touch {
            project_id: p,
            distinct_id: d.into(),
            at,
        }
    }

    async fn uuid(store: &Store, p: i64, d: &str) -> String {
        store
            .person_ids_for(p, &[d])
            .await
            .unwrap()
            .remove(d)
            .unwrap()
    }

    async fn refer(
        store: &Store,
        p: i64,
        code: &ReferralCode,
        referee: &str,
        click: Option<&str>,
        status: &str,
    ) {
        let person = uuid(store, p, referee).await;
        let new = NewReferral {
            program: "friends",
            code,
            referee,
            referee_person: &person,
            click_token: click,
            status,
            signals: &serde_json::json!([]),
            at: &time_text(DateTime::from_timestamp_micros(T0 + 20 * DAY).unwrap()),
        };
        store.attribute_referral(p, &new, false).await.unwrap();
    }

    async fn invite(store: &Store, p: i64, inviter: &str, n: u32) -> String {
        let token = format!("token-{inviter}-{n}");
        let new = NewInvitation {
            group_type: "company",
            group_key: "acme",
            email: "x@acme.io",
            role: "member",
            inviter,
            token_hash: &token,
            expires_at: "9999-01-01T00:00:00.000000Z",
        };
        store.create_invitation(p, &new, &actor()).await.unwrap();
        token
    }

    async fn accept(store: &Store, p: i64, token: &str, who: &str) {
        let change = InvitationChange::Accept {
            token_hash: token,
            accepted_by: who,
        };
        store.change_invitation(p, change, &actor()).await.unwrap();
    }

    #[tokio::test]
    async fn senders_and_receivers_resolve_to_their_current_persons() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.db")).await.unwrap();
        let p = store.bootstrap("Org", "Project").await.unwrap().project_id;
        let mut w = store.identity_writer("test").unwrap();
        w.apply(
            &[
                touch(p, "old", T0 - DAY),
                touch(p, "alice", T0),
                touch(p, "dan", T0 + DAY),
                touch(p, "bob", T0 + 2 * DAY),
                touch(p, "s-anon", T0 + 3 * DAY),
                touch(p, "eve", T0 + 4 * DAY),
                touch(p, "frank", T0 + 5 * DAY),
                touch(p, "s-user", T0 + 10 * DAY),
                touch(p, "anon-dan", T0 + 12 * DAY),
                touch(p, "late", T0 + 40 * DAY),
            ],
            1,
        )
        .unwrap();
        // Alice's referral link: 3 clicks; bob came through a click, anon-dan and eve (rejected) with the code.
        let code = store
            .create_referral_code(p, "friends", "alice-1", "alice", false, &actor())
            .await
            .unwrap();
        for token in ["k1", "k2", "k3"] {
            store
                .record_referral_click(&code, token, "fp")
                .await
                .unwrap();
        }
        refer(&store, p, &code, "bob", Some("k1"), "attributed").await;
        refer(&store, p, &code, "anon-dan", None, "qualified").await;
        refer(&store, p, &code, "eve", None, "rejected").await;
        // The sender's two persons merge (the survivor keeps the earlier join); anon-dan merges into dan, who
        // joined before alice's invite.
        w.apply(
            &[
                IdentityOp::Merge {
                    project_id: p,
                    target: "s-user".into(),
                    other: "s-anon".into(),
                    mode: MergeMode::Identify,
                    at: T0 + 11 * DAY,
                },
                IdentityOp::Merge {
                    project_id: p,
                    target: "dan".into(),
                    other: "anon-dan".into(),
                    mode: MergeMode::Identify,
                    at: T0 + 13 * DAY,
                },
            ],
            2,
        )
        .unwrap();
        // Invitations by the merged sender's older id: frank accepts, ghost (no person) accepts, one stays open.
        let t1 = invite(&store, p, "s-anon", 1).await;
        let t2 = invite(&store, p, "s-user", 2).await;
        invite(&store, p, "s-user", 3).await;
        accept(&store, p, &t1, "frank").await;
        accept(&store, p, &t2, "ghost").await;
        // Out of range: the sender joined before `from`.
        let t4 = invite(&store, p, "old", 4).await;
        accept(&store, p, &t4, "bob").await;
        // Alice's share link: two views, one visitor (bob).
        let (link, _) = store
            .share_link_for(
                p,
                "alice",
                ("doc", "1"),
                "https://x.io",
                "share-1",
                &actor(),
            )
            .await
            .unwrap();
        store.record_share_view(link.id, "a").await.unwrap();
        store.record_share_view(link.id, "b").await.unwrap();
        let bob = uuid(&store, p, "bob").await;
        store
            .record_share_visitor(link.id, &bob, "bob")
            .await
            .unwrap();

        let got = store.growth_invites(p, T0, T0 + 30 * DAY).await.unwrap();
        assert_eq!(got.unreadable, 0);
        let mut joins = got.joins.clone();
        joins.sort();
        // old and late are out of range; s-anon and anon-dan were merged away.
        assert_eq!(
            joins,
            [
                T0,
                T0 + DAY,
                T0 + 2 * DAY,
                T0 + 3 * DAY,
                T0 + 4 * DAY,
                T0 + 5 * DAY
            ]
        );
        let mut sent: Vec<(InviteChannel, i64, u64)> = got
            .sent
            .iter()
            .map(|s| (s.channel, s.sender_joined_us, s.count))
            .collect();
        sent.sort_by_key(|s| (s.1, s.0 as u8));
        assert_eq!(
            sent,
            [
                (InviteChannel::Referral, T0, 5), // 3 clicks + 2 referrals without one
                (InviteChannel::Share, T0, 2),
                (InviteChannel::Invitation, T0 + 3 * DAY, 3), // both ids of one person
            ]
        );
        let mut converted: Vec<(InviteChannel, i64, Option<i64>)> = got
            .converted
            .iter()
            .map(|c| (c.channel, c.sender_joined_us, c.receiver_joined_us))
            .collect();
        converted.sort_by_key(|c| (c.0 as u8, c.2));
        assert_eq!(
            converted,
            [
                (InviteChannel::Referral, T0, Some(T0 + DAY)), // anon-dan → dan
                (InviteChannel::Referral, T0, Some(T0 + 2 * DAY)), // bob
                (InviteChannel::Invitation, T0 + 3 * DAY, None), // ghost has no person
                (InviteChannel::Invitation, T0 + 3 * DAY, Some(T0 + 5 * DAY)), // frank
                (InviteChannel::Share, T0, Some(T0 + 2 * DAY)),
            ]
        );
        let ghost = got
            .converted
            .iter()
            .find(|c| c.receiver_joined_us.is_none())
            .unwrap();
        assert!(ghost.converted_at_us > T0 + 30 * DAY, "accepted now");
        let referral_at: Vec<i64> = got
            .converted
            .iter()
            .filter(|c| c.channel == InviteChannel::Referral)
            .map(|c| c.converted_at_us)
            .collect();
        assert_eq!(referral_at, [T0 + 20 * DAY; 2]);
        // Another project sees none of it.
        let other = store
            .growth_invites(p + 1, T0, T0 + 30 * DAY)
            .await
            .unwrap();
        assert_eq!(other, GrowthInvites::default());
    }

    /// 100k persons, 50k senders with clicks, views and invitations, 30k conversions: one read.
    #[tokio::test]
    async fn a_hundred_thousand_persons_read_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let store = Store::open(&path).await.unwrap();
        let p = store.bootstrap("Org", "Project").await.unwrap().project_id;
        const PERSONS: i64 = 100_000;
        {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            let at =
                |i: i64| time_text(DateTime::from_timestamp_micros(T0 + i * 60_000_000).unwrap());
            for i in 0..PERSONS {
                tx.execute(
                    "INSERT INTO persons (id, uuid, project_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![i + 1, format!("u{i}"), p, at(i)],
                )
                .unwrap();
                tx.execute(
                    "INSERT INTO person_distinct_ids (project_id, distinct_id, person_id) VALUES (?1, ?2, ?3)",
                    rusqlite::params![p, format!("d{i}"), i + 1],
                )
                .unwrap();
            }
            for i in 0..PERSONS / 2 {
                let code: i64 = tx
                    .query_row(
                        "INSERT INTO referral_codes (project_id, program, code, code_key, referrer, created_at)
                         VALUES (?1, 'friends', ?2, ?2, ?3, ?4) RETURNING id",
                        rusqlite::params![p, format!("c{i}"), format!("d{i}"), at(i)],
                        |r| r.get(0),
                    )
                    .unwrap();
                tx.execute(
                    "INSERT INTO referral_clicks (project_id, code_id, token, fingerprint, created_at)
                     VALUES (?1, ?2, ?3, 'f', ?4)",
                    rusqlite::params![p, code, format!("k{i}"), at(i)],
                )
                .unwrap();
                let link: i64 = tx
                    .query_row(
                        "INSERT INTO share_links (project_id, token, sharer, object_type, object_id, url, created_at)
                         VALUES (?1, ?2, ?3, 'doc', '1', 'https://x.io', ?4) RETURNING id",
                        rusqlite::params![p, format!("s{i}"), format!("d{i}"), at(i)],
                        |r| r.get(0),
                    )
                    .unwrap();
                tx.execute(
                    "INSERT INTO share_views (link_id, fingerprint, created_at) VALUES (?1, 'f', ?2)",
                    rusqlite::params![link, at(i)],
                )
                .unwrap();
                tx.execute(
                    "INSERT INTO invitations (project_id, group_type, group_key, email, role, inviter, token_hash,
                         status, expires_at, created_at, accepted_at, accepted_by)
                     VALUES (?1, 'company', 'acme', 'x@acme.io', 'member', ?2, ?3, ?4, ?5, ?5, ?5, ?6)",
                    rusqlite::params![
                        p,
                        format!("d{i}"),
                        format!("h{i}"),
                        if i % 5 < 3 { "accepted" } else { "pending" },
                        at(i + 10),
                        format!("d{}", PERSONS / 2 + i),
                    ],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let started = std::time::Instant::now();
        let got = store
            .growth_invites(p, T0, T0 + PERSONS * 60_000_000)
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(got.joins.len(), PERSONS as usize);
        assert_eq!(got.sent.len(), 3 * PERSONS as usize / 2);
        assert_eq!(got.converted.len(), 3 * PERSONS as usize / 10);
        assert!(got
            .converted
            .iter()
            .all(|c| c.receiver_joined_us == Some(c.sender_joined_us + PERSONS / 2 * 60_000_000)));
        eprintln!("growth_invites over {PERSONS} persons: {took:?}");
        // Generous (a debug build on a busy machine); a table scan per row would take minutes.
        assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    }
}
