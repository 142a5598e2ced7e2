//! `flywheel migrate` (`flywheel_server::migrate`): an embedded deployment built through a real server (flags,
//! SDK keys, persons merged by identify, an experiment, referrals, rewards, webhooks, the audit log, events over
//! several days) copied into PostgreSQL and ClickHouse, interrupted and resumed without duplicates, then served by
//! a node on those backends with the same data directory: the same answers through its API, an insight from
//! ClickHouse equal to the embedded engine's, and new rows that do not collide with the copied ids.

use std::time::Duration;

use axum::http::StatusCode;
use flywheel_clickhouse::{test_support, Client};
use flywheel_server::migrate::{self, Options, Step};
use flywheel_server::{Config, Server};
use flywheel_store::test_support::TestPostgres;
use serde_json::{json, Value};

use crate::webhooks::{approved_reward, until};
use crate::TestServer;

fn database(name: &str) -> String {
    TestPostgres::shared()
        .expect("PostgreSQL")
        .create_database(name)
        .expect("a test database")
}

/// Every table of the embedded schema, read from the SQLite file itself (not through the code under test).
fn sqlite_tables(dir: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(dir.join("metadata.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
               AND name <> '_sqlx_migrations' ORDER BY name",
        )
        .unwrap();
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    names
}

fn trends() -> Value {
    json!({"series": [{"event": "$pageview", "math": "dau"}, {"event": "signup"}, {"event": "$pageview"}],
           "date_from": "2026-10-01", "date_to": "2026-10-10"})
}

/// The answers a migrated node must give alike.
async fn snapshot(t: &TestServer) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for path in [
        "/features/checkout",
        "/experiments/banner",
        "/webhooks",
        "/referral-programs/friends",
        "/referral-programs/friends/codes",
        "/audit?limit=200",
        "/outbox?limit=1000",
    ] {
        let (s, v) = t.api("GET", path, None).await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {v}");
        out.push((path.to_owned(), v));
    }
    for did in ["ann@acme.io", "anon-ann", "bob", "anon-3"] {
        let (s, v) = t.person(did).await;
        assert_eq!(s, StatusCode::OK, "person {did}: {v}");
        out.push((format!("person {did}"), v));
    }
    let (s, mut v) = t.api("POST", "/insights/trends", Some(trends())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    if let Some(o) = v.as_object_mut() {
        o.remove("query_ms");
        o.remove("cached");
        o.remove("complete");
    }
    out.push(("trends".to_owned(), v));
    out
}

/// An embedded deployment with something in every capability, stopped.
async fn embedded() -> TestServer {
    let t = TestServer::start_with(|c| {
        // Embedded whatever FLYWHEEL_TEST_METADATA says: this is the deployment to migrate.
        c.metadata_url = None;
        c.webhook_allow = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    t.created(
        "/features",
        json!({"key": "checkout", "value_type": "boolean", "default_value": false,
               "environments": {"production": {"enabled": true, "rules": [{"type": "force", "value": true}]}}}),
    )
    .await;
    let (s, v) = t
        .api(
            "PUT",
            "/features/checkout",
            Some(json!({"key": "checkout", "value_type": "boolean", "default_value": true, "version": 1,
                        "environments": {"production": {"enabled": true, "rules": []}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    t.created(
        "/features",
        json!({"key": "banner", "value_type": "string", "default_value": "none",
               "environments": {"production": {"enabled": true, "rules": [
                   {"type": "experiment", "id": "exp", "variations": ["blue", "green"], "weights": [0.5, 0.5]}]}}}),
    )
    .await;
    t.created(
        "/metrics",
        json!({"key": "clicked", "name": "Clicked", "kind": "conversion", "event": "click"}),
    )
    .await;
    t.created(
        "/experiments",
        json!({"key": "banner", "name": "Banner", "feature": "banner", "rule_id": "exp",
               "metrics": {"primary": ["clicked"]}, "analysis": {"engine": "frequentist", "cuped": false}}),
    )
    .await;
    let (s, v) = t.api("POST", "/experiments/banner/start", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    t.production_sdk_key().await;
    t.created(
        "/referral-programs",
        json!({"key": "friends", "name": "Invite friends", "landing_url": "https://app.example.com/signup",
               "qualify": {"event": "subscription_started"},
               "rewards": {"referrer": {"amount": 20, "unit": "USD"}}}),
    )
    .await;
    t.created(
        "/referral-programs/friends/codes",
        json!({"referrer": "ann@acme.io"}),
    )
    .await;
    t.created(
        "/webhooks",
        json!({"url": "http://127.0.0.1:9/hook", "topics": ["reward.*"]}),
    )
    .await;
    for key in ["r1", "r2"] {
        approved_reward(&t, key).await;
    }
    // Events over ten days: anonymous visitors, some identified later (merges), sign-ups.
    let mut batch = Vec::new();
    for day in 1..=10 {
        for i in 0..12 {
            let did = if i < 4 && day > 5 {
                format!("user-{i}")
            } else {
                format!("anon-{i}")
            };
            batch.push(json!({"event": "$pageview", "distinct_id": did,
                              "timestamp": format!("2026-10-{day:02}T{:02}:{:02}:00Z", 8 + i, day),
                              "properties": {"$current_url": format!("/p/{i}"), "$set": {"seen": day}}}));
        }
        if day == 5 {
            for i in 0..4 {
                batch.push(
                    json!({"event": "$identify", "distinct_id": format!("user-{i}"),
                                  "timestamp": format!("2026-10-05T20:{i:02}:00Z"),
                                  "properties": {"$anon_distinct_id": format!("anon-{i}")}}),
                );
                batch.push(
                    json!({"event": "signup", "distinct_id": format!("user-{i}"),
                                  "timestamp": format!("2026-10-05T20:{:02}:30Z", i)}),
                );
            }
        }
    }
    batch.push(json!({"event": "$identify", "distinct_id": "ann@acme.io", "timestamp": "2026-10-03T09:00:00Z",
                      "properties": {"$anon_distinct_id": "anon-ann", "$set": {"plan": "pro"}}}));
    batch.push(
        json!({"event": "$pageview", "distinct_id": "bob", "timestamp": "2026-10-04T09:00:00Z",
                      "properties": {"$set": {"plan": "free"}}}),
    );
    crate::growth::capture(&t, json!(batch)).await;
    until("identity applied the batch", || async {
        let (s, v) = t.person("anon-3").await;
        (s == StatusCode::OK && v["distinct_ids"].as_array().is_some_and(|d| d.len() == 2))
            .then_some(())
    })
    .await;
    t
}

#[tokio::test]
async fn an_embedded_deployment_migrates_resumes_and_is_served_by_a_node() {
    let ch = test_support::start();
    let metadata = database("migrate_round_trip");
    let mut t = embedded().await;
    let before = snapshot(&t).await;
    let server = t.server.take().unwrap();
    server.shutdown().await.unwrap();
    let options = Options {
        data_dir: t.dir.path().to_path_buf(),
        metadata_url: metadata.clone(),
        events_url: ch.url.clone(),
        events_database: "fw_migrate".into(),
    };

    // Interrupted: the future is dropped (as a killed process would stop) when the persons' copy starts.
    let stop = tokio::sync::Notify::new();
    let mut copied_tables = Vec::new();
    let cut = {
        let mut progress = |step: Step<'_>| {
            if let Step::Table { name, .. } = step {
                copied_tables.push(name.to_owned());
                if name == "persons" {
                    stop.notify_one();
                }
            }
        };
        tokio::select! {
            r = migrate::run(&options, &mut progress) => Some(r),
            _ = stop.notified() => None,
        }
    };
    assert!(cut.is_none(), "interrupted before it finished");
    assert!(
        copied_tables.contains(&"projects".to_owned()),
        "{copied_tables:?}"
    );

    // Resumed, then run once more after it finished: nothing twice.
    let mut steps = 0;
    let report = migrate::run(&options, &mut |_| steps += 1).await.unwrap();
    assert!(steps > 0);
    print!("{}", report.render());
    assert!(report.matches(), "{}", report.render());
    assert!(
        report.rows_inserted < report.rows_read,
        "the first run's rows were skipped"
    );
    let again = migrate::run(&options, &mut |_| {}).await.unwrap();
    assert!(again.matches(), "{}", again.render());
    assert_eq!(again.rows_inserted, 0, "nothing new the third time");
    assert_eq!(again.events_sent, 0);
    assert_eq!(again.tables, report.tables);

    // Every table of the schema is in the verification, and the ones the deployment used hold rows.
    let names: Vec<&str> = report.tables.iter().map(|t| t.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, sqlite_tables(t.dir.path()), "every table is copied");
    for used in [
        "organizations",
        "projects",
        "api_keys",
        "environments",
        "features",
        "sdk_connections",
        "audit_log",
        "persons",
        "person_distinct_ids",
        "intake_checkpoints",
        "id_sequences",
        "documents",
        "outbox",
        "referral_codes",
        "reward_entries",
        "webhooks",
    ] {
        let row = report.tables.iter().find(|t| t.name == used).unwrap();
        assert!(row.sqlite > 0, "{used} has rows to copy: {row:?}");
    }
    let index = |n: &str| names.iter().position(|t| *t == n).unwrap();
    assert!(
        index("projects") < index("environments")
            && index("persons") < index("person_distinct_ids")
    );
    assert!(report.log_events > 120, "{}", report.log_events);

    // PostgreSQL: checkpoints are the node's, counters and identity sequences carried over.
    let pg = flywheel_store::Store::connect_postgres(&metadata)
        .await
        .unwrap();
    let node = std::fs::read_to_string(t.dir.path().join("node-id")).unwrap();
    assert_eq!(report.node, node.trim());
    let lite = flywheel_store::Store::open(&t.dir.path().join("metadata.db"))
        .await
        .unwrap();
    let identity = lite.checkpoint("identity").await.unwrap();
    assert!(identity > 0);
    assert_eq!(
        pg.clone()
            .with_node(&report.node)
            .checkpoint("identity")
            .await
            .unwrap(),
        identity
    );
    lite.close().await;
    pg.close().await;
    let client = Client::new(&ch.url).unwrap();
    let rows = client
        .query_rows("SELECT count(), uniqExact(toString(uuid)) FROM `fw_migrate`.`events`")
        .await
        .unwrap();
    assert_eq!(
        rows[0],
        [report.log_events.to_string(), report.log_events.to_string()]
    );

    // A node on the new backends with the same data directory.
    let mut config = Config::for_tests(t.dir.path().to_path_buf());
    config.metadata_url = Some(metadata.clone());
    config.events_url = Some(ch.url.clone());
    config.events_database = "fw_migrate".into();
    let node = TestServer {
        server: Some(Server::start(config).await.unwrap()),
        project_id: t.project_id,
        token: t.token.clone(),
        personal_key: t.personal_key.clone(),
        organization_id: t.organization_id,
        dir: t.dir,
    };
    let after = snapshot(&node).await;
    for ((what, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{what} is the same after the migration");
    }
    assert!(
        after.last().unwrap().1["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{:?}",
        after.last()
    );

    // New rows take new ids, and the node ships only what it captures now (it resumed, not replayed).
    let created = node
        .created(
            "/features",
            json!({"key": "after", "value_type": "boolean", "default_value": true}),
        )
        .await;
    assert!(created.get("key").is_some(), "{created}");
    crate::growth::capture(
        &node,
        json!([{"event": "$pageview", "distinct_id": "carol", "timestamp": "2026-10-09T12:00:00Z"}]),
    )
    .await;
    let carol = until("carol's person", || async {
        let (s, v) = node.person("carol").await;
        (s == StatusCode::OK).then_some(v)
    })
    .await;
    let (_, bob) = node.person("bob").await;
    assert_ne!(carol["id"], bob["id"]);
    let expected = (report.log_events + 1).to_string();
    until("the new event in ClickHouse, once", || async {
        let rows = client
            .query_rows("SELECT count() FROM `fw_migrate`.`events`")
            .await
            .ok()?;
        (rows[0][0] == expected).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = client
        .query_rows("SELECT count(), uniqExact(toString(uuid)) FROM `fw_migrate`.`events`")
        .await
        .unwrap();
    assert_eq!(rows[0], [expected.clone(), expected]);
    node.server.unwrap().shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_with_a_message() {
    let ch = test_support::start();
    let mut t = TestServer::start_with(|c| c.metadata_url = None).await;
    t.server.take().unwrap().shutdown().await.unwrap();
    let options = |dir: &std::path::Path, metadata: &str, events: &str| Options {
        data_dir: dir.to_path_buf(),
        metadata_url: metadata.to_owned(),
        events_url: events.to_owned(),
        events_database: "fw_refused".into(),
    };
    let error = |r: anyhow::Result<migrate::Report>| format!("{:#}", r.expect_err("refused"));
    let fresh = database("migrate_refused");

    let missing = t.dir.path().join("nothing-here");
    let e = error(migrate::run(&options(&missing, &fresh, &ch.url), &mut |_| {}).await);
    assert!(e.contains("does not exist"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = error(migrate::run(&options(empty.path(), &fresh, &ch.url), &mut |_| {}).await);
    assert!(e.contains("not a Flywheel data directory"), "{e}");

    let e = error(
        migrate::run(
            &options(
                t.dir.path(),
                "postgres://flywheel:x@127.0.0.1:1/none",
                &ch.url,
            ),
            &mut |_| {},
        )
        .await,
    );
    assert!(
        e.contains("cannot open PostgreSQL at postgres://flywheel:***@127.0.0.1:1/none"),
        "{e}"
    );
    let e = error(
        migrate::run(
            &options(t.dir.path(), &fresh, "http://127.0.0.1:1"),
            &mut |_| {},
        )
        .await,
    );
    assert!(
        e.contains("ClickHouse at http://127.0.0.1:1 does not answer"),
        "{e}"
    );

    // A database another deployment's node bootstrapped.
    let other = database("migrate_other");
    let mut bootstrapped = TestServer::start_with(|c| c.metadata_url = Some(other.clone())).await;
    bootstrapped
        .server
        .take()
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let e = error(migrate::run(&options(t.dir.path(), &other, &ch.url), &mut |_| {}).await);
    assert!(
        e.contains("the target database holds different data"),
        "{e}"
    );

    // A running server keeps its data directory.
    let running = TestServer::start_with(|c| c.metadata_url = None).await;
    let e = error(migrate::run(&options(running.dir.path(), &fresh, &ch.url), &mut |_| {}).await);
    assert!(e.contains("in use by a running flywheel server"), "{e}");
    let mut running = running;
    running.server.take().unwrap().shutdown().await.unwrap();
}
