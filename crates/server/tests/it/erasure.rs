//! GDPR erasure of a person: after `DELETE …/persons/{distinct_id}` nothing in the metadata database, the intake
//! log, the columnar segments or the files next to them names the person — also after a restart — and everything
//! of the other persons is still there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::TestServer;

async fn capture(t: &TestServer, batch: Value) {
    let (s, v) = t
        .post(
            "/batch",
            json!({"api_key": t.token, "batch": batch}).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(x) = f().await {
            return x;
        }
        assert!(Instant::now() < deadline, "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ok(t: &TestServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let (s, v) = t.api(method, path, body).await;
    assert!(s.is_success(), "{method} {path}: {s} {v}");
    v
}

/// Every event the server lists for `distinct_id`.
async fn events_of(t: &TestServer, distinct_id: &str) -> Vec<Value> {
    t.events(&format!("distinct_id={distinct_id}&limit=10000"))
        .await
}

/// Total `$pageview`s of the last 30 days, and the person-property breakdown's labels by `email`.
async fn pageviews(t: &TestServer) -> (f64, Vec<String>) {
    let total = ok(
        t,
        "POST",
        "/insights/trends",
        Some(json!({"series": [{"event": "$pageview"}], "date_from": "-30d"})),
    )
    .await;
    let by_email = ok(
        t,
        "POST",
        "/insights/trends",
        Some(
            json!({"series": [{"event": "$pageview"}], "date_from": "-30d",
                    "breakdown": {"type": "person", "property": "email"}}),
        ),
    )
    .await;
    let labels = by_email["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["breakdown_value"].to_string())
        .collect();
    (total["result"][0]["count"].as_f64().unwrap(), labels)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// What a search looked at.
#[derive(Debug, Default)]
struct Searched {
    tables: usize,
    rows: usize,
    text_cells: usize,
    wal_events: usize,
    segment_files: usize,
    segment_strings: usize,
    raw_files: usize,
    raw_bytes: usize,
}

/// Every row of every table of the metadata database: the (table, needle) pairs of the text or blob cells (and
/// integers, as text) that contain a needle.
fn search_database(db: &Path, needles: &[String], seen: &mut Searched) -> Vec<(String, String)> {
    let mut hits = Vec::new();
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.len() > 30, "{tables:?}");
    for table in tables {
        seen.tables += 1;
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            seen.rows += 1;
            for i in 0..n {
                let text = match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
                        String::from_utf8_lossy(b).into_owned()
                    }
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    _ => continue,
                };
                seen.text_cells += 1;
                for needle in needles {
                    if text.contains(needle.as_str()) {
                        hits.push((table.clone(), needle.clone()));
                    }
                }
            }
        }
    }
    hits.sort();
    hits.dedup();
    hits
}

/// Every event of the intake log (decoded), every string of every segment (decoded), and the raw bytes of every
/// other file under the event store (WAL files, the saved identity mapping, person-property columns, manifest):
/// where a needle is found (`wal events`, a segment file, a raw file).
fn search_event_store(t: &TestServer, needles: &[String], seen: &mut Searched) -> Vec<String> {
    let mut hits = Vec::new();
    let intake = &t.server().state.intake;
    for item in intake.reader(intake.oldest_lsn()) {
        let (_, events) = item.unwrap();
        for e in events {
            seen.wal_events += 1;
            for needle in needles {
                if e.distinct_id.contains(needle.as_str()) || e.properties.contains(needle.as_str())
                {
                    hits.push(format!("wal events: `{needle}` in {e:?}"));
                }
            }
        }
    }
    use arrow_array::cast::AsArray;
    for f in files_under(&t.dir.path().join("events")) {
        if f.extension().is_some_and(|x| x == "parquet") {
            seen.segment_files += 1;
            for b in flywheel_engine::columnar::read_segment(&f, None).unwrap() {
                for c in b.columns() {
                    let strings: Vec<String> =
                        if let Some(d) = c.as_dictionary_opt::<arrow_array::types::Int32Type>() {
                            d.values()
                                .as_string::<i32>()
                                .iter()
                                .flatten()
                                .map(str::to_owned)
                                .collect()
                        } else if let Some(s) = c.as_string_opt::<i32>() {
                            s.iter().flatten().map(str::to_owned).collect()
                        } else {
                            continue;
                        };
                    for s in strings {
                        seen.segment_strings += 1;
                        for needle in needles {
                            if s.contains(needle.as_str()) {
                                hits.push(format!("segment {}: `{needle}`", f.display()));
                            }
                        }
                    }
                }
            }
        } else {
            let bytes = std::fs::read(&f).unwrap();
            seen.raw_files += 1;
            seen.raw_bytes += bytes.len();
            for needle in needles {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(format!("file {}: `{needle}`", f.display()));
                }
            }
        }
    }
    hits.sort();
    hits.dedup();
    hits
}

#[tokio::test]
async fn an_erased_person_is_in_no_table_no_file_and_no_answer_and_everyone_else_stays() {
    // On SQLite whatever the suite's backend: it reads the database file's bytes (deleted pages included).
    let mut t = TestServer::start_with(|c| {
        c.metadata_url = None;
        c.webhook_allow = vec!["127.0.0.0/8".parse().unwrap()];
        c.webhook_retry_base = Duration::from_secs(3600);
    })
    .await;
    let m = uuid::Uuid::new_v4().simple().to_string();
    let anon = format!("anon-{m}");
    let user = format!("user-{m}");
    let email = format!("erase-{m}@example.com");
    let secret = format!("secret-{m}");
    let keeper = format!("keeper-{m}");
    let friend = format!("friend-{m}");
    let keeper_email = format!("keeper-{m}@example.com");

    // A referral program (keeper refers the person, the person refers friend), a PQL model, a subscription to
    // captured `paid` events (its deliveries fail: nothing listens), a static cohort.
    t.created(
        "/referral-programs",
        json!({"key": "friends", "name": "F", "landing_url": "https://app.example.com/join",
               "qualify": {"event": "paid"},
               "rewards": {"referrer": {"amount": 5, "unit": "USD"}, "referee": {"amount": 1, "unit": "months"}}}),
    )
    .await;
    let code_of = async |who: &str| -> String {
        t.created("/referral-programs/friends/codes", json!({"referrer": who}))
            .await["code"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let keeper_code = code_of(&keeper).await;
    let user_code = code_of(&user).await;
    t.created(
        "/pql-models",
        json!({"key": "pql", "name": "P", "threshold": 1,
               "rules": [{"id": "active", "event": "$pageview", "window_days": 7, "min_count": 1, "points": 5}]}),
    )
    .await;
    t.created(
        "/webhooks",
        json!({"url": "http://127.0.0.1:9/in", "events": [{"event": "paid"}]}),
    )
    .await;

    // Day one, sealed into segments: the person lands anonymously through keeper's link, opens the app, is
    // identified (the anonymous person is merged into theirs), sets an email and a marker, belongs to a company
    // (whose properties name their email), views pages and pays; keeper and friend (through the person's link) too.
    capture(
        &t,
        json!([
            {"event": "$pageview", "distinct_id": anon,
             "properties": {"$current_url": format!("https://app.example.com/?ref={keeper_code}")}},
            {"event": "app_opened", "distinct_id": user},
            {"event": "$identify", "distinct_id": user,
             "properties": {"$anon_distinct_id": anon, "$set": {"email": email, "favorite": secret}}},
            {"event": "$groupidentify", "distinct_id": user,
             "properties": {"$group_type": "company", "$group_key": format!("acme-{m}"),
                            "$group_set": {"owner": email, "name": "Acme"}}},
            {"event": "$pageview", "distinct_id": user, "properties": {"$groups": {"company": format!("acme-{m}")}}},
            {"event": "$pageview", "distinct_id": user, "properties": {"note": secret}},
            {"event": "$pageview", "distinct_id": keeper, "properties": {"$set": {"email": keeper_email}}},
            {"event": "$pageview", "distinct_id": keeper},
            {"event": "$pageview", "distinct_id": friend,
             "properties": {"$current_url": format!("https://app.example.com/?ref={user_code}")}},
        ]),
    )
    .await;
    capture(
        &t,
        json!([
            {"event": "paid", "distinct_id": user, "properties": {"plan": "pro"}},
            {"event": "paid", "distinct_id": friend, "properties": {"plan": "pro"}},
            {"event": "paid", "distinct_id": keeper, "properties": {"plan": "pro", "referred": user}},
        ]),
    )
    .await;
    until("both referrals qualified", async || {
        let v = ok(&t, "GET", "/referral-programs/friends/referrals", None).await;
        let l = v["results"].as_array().unwrap().clone();
        (l.iter().filter(|r| r["status"] == "qualified").count() == 2).then_some(())
    })
    .await;
    assert!(t.server().state.tables_catch_up().await);
    let tables = t.server().state.tables.clone();
    // As the insights consumer does every few minutes: seal, then save the identity mapping next to the segments.
    let sealed = tokio::task::spawn_blocking(move || {
        let sealed = tables.seal().unwrap();
        assert!(tables.save_identity().unwrap());
        sealed
    })
    .await
    .unwrap();
    assert!(sealed.rows >= 12, "{sealed:?}");

    // Then, still in the log's tail: more pageviews; an invitation from keeper to the person's email, accepted by
    // the person; one from the person, accepted by friend (whose event names the person as inviter); share links
    // both ways; a manual reward; PQL scores; a static cohort; an export (audited).
    capture(
        &t,
        json!([
            {"event": "$pageview", "distinct_id": user, "properties": {"$current_url": format!("https://x.io/?u={user}")}},
            {"event": "$pageview", "distinct_id": keeper},
        ]),
    )
    .await;
    let invite = |inviter: &str, to: &str| json!({"email": to, "inviter": inviter});
    let inv = t
        .created("/groups/company/acme/invitations", invite(&keeper, &email))
        .await;
    ok(
        &t,
        "POST",
        "/invitations/accept",
        Some(json!({"token": inv["token"], "distinct_id": user})),
    )
    .await;
    let inv = t
        .created(
            "/groups/company/acme/invitations",
            invite(&user, &format!("friend-{m}@example.com")),
        )
        .await;
    ok(
        &t,
        "POST",
        "/invitations/accept",
        Some(json!({"token": inv["token"], "distinct_id": friend})),
    )
    .await;
    let link = t
        .created(
            "/share-links",
            json!({"sharer": user, "object_type": "doc", "object_id": "1",
                                       "url": "https://app.example.com/d/1"}),
        )
        .await;
    let keeper_link = t
        .created(
            "/share-links",
            json!({"sharer": keeper, "object_type": "doc", "object_id": "2",
                                       "url": "https://app.example.com/d/2"}),
        )
        .await;
    capture(
        &t,
        json!([
            {"event": "$pageview", "distinct_id": keeper,
             "properties": {"$current_url": format!("https://app.example.com/d/1?fw_share={}", link["token"].as_str().unwrap())}},
            {"event": "$pageview", "distinct_id": user,
             "properties": {"$current_url": format!("https://app.example.com/d/2?fw_share={}", keeper_link["token"].as_str().unwrap())}},
        ]),
    )
    .await;
    t.created(
        "/rewards",
        json!({"beneficiary": user, "amount": 3, "unit": "USD", "reason": format!("thanks {user}"),
               "idempotency_key": format!("bonus:{user}")}),
    )
    .await;
    ok(&t, "POST", "/pql-models/pql/score", None).await;
    let cohort = t
        .created("/cohorts", json!({"name": "vip", "is_static": true}))
        .await;
    ok(
        &t,
        "POST",
        &format!("/cohorts/{}/members", cohort["id"]),
        Some(json!({"distinct_ids": [user, keeper]})),
    )
    .await;
    let get = |path: String| {
        Request::get(path)
            .header("authorization", format!("Bearer {}", t.personal_key))
            .body(Body::empty())
            .unwrap()
    };
    let (s, _, _) = t
        .send(get(format!(
            "/api/v1/projects/{}/persons/{anon}/export",
            t.project_id
        )))
        .await;
    assert_eq!(s, StatusCode::OK);
    until("share visits recorded", async || {
        let v = ok(&t, "GET", &format!("/share-links?sharer={user}"), None).await;
        (v["results"][0]["visitors"].as_u64() == Some(1)).then_some(())
    })
    .await;
    until(
        "the event webhook announced both `paid` events",
        async || {
            let v = ok(&t, "GET", "/outbox?limit=1000", None).await;
            let n = v["results"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["topic"] == "event.paid")
                .count();
            (n == 3).then_some(())
        },
    )
    .await;

    // What is there before: the person (two distinct ids, a merged person), everyone's events and answers.
    let (s, person) = t.person(&user).await;
    assert_eq!(s, StatusCode::OK);
    let person_uuid = person["id"].as_str().unwrap().to_owned();
    let db = t.dir.path().join("metadata.db");
    let merged_uuid: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT old_person_uuid FROM person_overrides WHERE new_person_uuid = ?",
            [&person_uuid],
            |r| r.get(0),
        )
        .unwrap();
    let theirs = events_of(&t, &user).await.len() + events_of(&t, &anon).await.len();
    let keepers = events_of(&t, &keeper).await;
    let friends = events_of(&t, &friend).await;
    assert!(
        keepers.len() == 5 && friends.len() == 3,
        "{keepers:?} {friends:?}"
    );
    let their_pageviews = events_of(&t, &user)
        .await
        .iter()
        .chain(&events_of(&t, &anon).await)
        .filter(|e| e["event"] == "$pageview")
        .count();
    let (total_before, labels_before) = pageviews(&t).await;
    assert!(
        labels_before.iter().any(|l| l.contains(&email)),
        "{labels_before:?}"
    );
    let rewards_before = ok(&t, "GET", "/rewards?limit=1000", None).await["results"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        rewards_before, 5,
        "two referrals × two rewards, and the bonus"
    );
    let needles = vec![
        anon.clone(),
        user.clone(),
        person_uuid.clone(),
        merged_uuid,
        email.clone(),
        secret.clone(),
    ];
    // The searches find them now (they are not vacuous): in the identity tables, every growth table the test
    // wrote, the audit log and the outbox; in the log, the segments and the saved identity mapping.
    let mut seen = Searched::default();
    let tables_before: std::collections::BTreeSet<String> =
        search_database(&db, &needles, &mut seen)
            .into_iter()
            .map(|(table, _)| table)
            .collect();
    for table in [
        "persons",
        "person_distinct_ids",
        "person_overrides",
        "referrals",
        "referral_codes",
        "reward_entries",
        "invitations",
        "share_links",
        "share_visitors",
        "pql_scores",
        "groups",
        "audit_log",
        "outbox",
    ] {
        assert!(
            tables_before.contains(table),
            "{table} does not name the person: {tables_before:?}"
        );
    }
    let store_before = search_event_store(&t, &needles, &mut seen);
    assert!(
        store_before.iter().any(|h| h.starts_with("wal events")),
        "{store_before:?}"
    );
    assert!(
        store_before.iter().any(|h| h.starts_with("segment ")),
        "{store_before:?}"
    );
    assert!(
        store_before.iter().any(|h| h.contains("/identity/")),
        "{store_before:?}"
    );
    assert!(
        store_before.iter().any(|h| h.contains(".wal")),
        "{store_before:?}"
    );
    assert!(
        store_before.iter().any(|h| h.contains("/person-columns/")),
        "{store_before:?}"
    );
    let raw_db = std::fs::read(&db).unwrap();
    let wal_db = std::fs::read(db.with_extension("db-wal")).unwrap_or_default();
    assert!(
        [&raw_db, &wal_db]
            .iter()
            .any(|b| b.windows(user.len()).any(|w| w == user.as_bytes())),
        "the database's bytes name the person before"
    );
    let static_members: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM cohort_people", [], |r| r.get(0))
        .unwrap();
    assert_eq!(static_members, 2);

    // Erase, through the anonymous id.
    let (s, v) = t.api("DELETE", &format!("/persons/{anon}"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["events_removed"].as_u64(), Some(theirs as u64), "{v}");
    assert_eq!(v["table_rows_removed"].as_u64(), Some(theirs as u64), "{v}");
    assert_eq!(v["distinct_ids"], 2, "{v}");
    assert_eq!(v["merged_persons"], 1, "{v}");
    assert!(
        v["events_masked"].as_u64().unwrap() >= 2,
        "friend's invitation and keeper's `paid`: {v}"
    );
    assert!(v["records_removed"].as_u64().unwrap() >= 10, "{v}");
    assert!(
        v["tables"]["tombstoned"]["reward_entries"].as_u64() >= Some(3),
        "{v}"
    );
    let erasure_id = v["erasure_id"].as_str().unwrap().to_owned();
    // Gone: a second erasure and unknown ids are 404 with a clear code.
    for who in [&user, &anon, &"nobody".to_owned()] {
        let (s, v) = t.api("DELETE", &format!("/persons/{who}"), None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("person_not_found")),
            "{v}"
        );
    }

    let check = async |t: &TestServer, when: &str| -> Searched {
        let mut seen = Searched::default();
        let hits = search_database(&db, &needles, &mut seen);
        assert!(
            hits.is_empty(),
            "{when}: the database still names the person: {hits:?}"
        );
        let hits = search_event_store(t, &needles, &mut seen);
        assert!(
            hits.is_empty(),
            "{when}: the event store still names the person: {hits:?}"
        );
        let members: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM cohort_people", [], |r| r.get(0))
            .unwrap();
        assert_eq!(members, 1, "{when}: keeper stays in the static cohort");
        // The database file itself, deleted pages included (secure_delete), after the erasure's checkpoint.
        let mut raw = std::fs::read(&db).unwrap();
        raw.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
        let raw_hits: Vec<&String> = needles
            .iter()
            .filter(|n| raw.windows(n.len()).any(|w| w == n.as_bytes()))
            .collect();
        assert!(
            raw_hits.is_empty(),
            "{when}: the database's bytes name the person: {raw_hits:?}"
        );
        seen.raw_files += 1;
        seen.raw_bytes += raw.len();
        assert!(
            seen.wal_events > 0 && seen.segment_files > 0 && seen.raw_files > 2,
            "{when}: {seen:?}"
        );
        // No answer names them; everyone else's events are all there.
        assert_eq!(t.person(&user).await.0, StatusCode::NOT_FOUND, "{when}");
        assert!(
            events_of(t, &user).await.is_empty() && events_of(t, &anon).await.is_empty(),
            "{when}"
        );
        let all = t.events("limit=10000").await;
        let text = serde_json::to_string(&all).unwrap();
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{when}: events list names `{needle}`"
            );
        }
        assert_eq!(events_of(t, &keeper).await.len(), keepers.len(), "{when}");
        assert_eq!(events_of(t, &friend).await.len(), friends.len(), "{when}");
        let (total, labels) = pageviews(t).await;
        assert_eq!(total, total_before - their_pageviews as f64, "{when}");
        assert!(
            !labels.iter().any(|l| l.contains(&email)),
            "{when}: {labels:?}"
        );
        assert!(
            labels.iter().any(|l| l.contains(&keeper_email)),
            "{when}: {labels:?}"
        );
        // The others' records: keeper's person, the ledger (tombstoned, not deleted), friend's referral.
        let (s, k) = t.person(&keeper).await;
        assert_eq!(
            (s, k["properties"]["email"].as_str()),
            (StatusCode::OK, Some(keeper_email.as_str()))
        );
        let rewards = ok(t, "GET", "/rewards?limit=1000", None).await;
        let rewards = rewards["results"].as_array().unwrap();
        assert_eq!(rewards.len(), rewards_before, "{when}");
        assert_eq!(
            rewards
                .iter()
                .filter(|r| r["beneficiary"].as_str().unwrap().starts_with("erased:"))
                .count(),
            3,
            "{when}"
        );
        let referrals = ok(t, "GET", "/referral-programs/friends/referrals", None).await;
        let referrals = referrals["results"].as_array().unwrap();
        assert_eq!(
            referrals.len(),
            1,
            "{when}: only friend's, not the erased referee's"
        );
        assert_eq!(referrals[0]["referee"], friend.as_str());
        assert!(referrals[0]["referrer"]
            .as_str()
            .unwrap()
            .starts_with("erased:"));
        // Audited with counts and the erasure id only.
        let audit = ok(t, "GET", "/audit?action=person.erased", None).await;
        let entries = audit["results"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{when}");
        assert_eq!(entries[0]["entity_id"], erasure_id.as_str());
        assert_eq!(
            entries[0]["after"]["events_removed"].as_u64(),
            Some(theirs as u64)
        );
        seen
    };
    let seen = check(&t, "after the erasure").await;
    println!("searched after the erasure: {seen:?}");
    t.restart().await;
    assert!(t.server().state.tables_catch_up().await);
    let seen = check(&t, "after a restart").await;
    println!("searched after a restart: {seen:?}");
}
