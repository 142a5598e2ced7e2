//! Identity rules of the metadata store, checked against PostHog's documented behaviour: on SQLite, and on
//! PostgreSQL with `FLYWHEEL_TEST_METADATA=postgres` (`scripts/test` runs both).

use flywheel_store::{IdentityOp, MergeMode, Store};
use serde_json::{json, Map, Value};

const AT: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

async fn store() -> (tempfile::TempDir, Store, i64) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DATABASES: AtomicUsize = AtomicUsize::new(0);
    let dir = tempfile::tempdir().unwrap();
    let store = match std::env::var("FLYWHEEL_TEST_METADATA").as_deref() {
        Ok("postgres") => {
            let pg = flywheel_store::test_support::TestPostgres::shared().unwrap();
            let name = format!("identity{}", DATABASES.fetch_add(1, Ordering::Relaxed));
            Store::connect_postgres(&pg.create_database(&name).unwrap())
                .await
                .unwrap()
        }
        _ => Store::open(&dir.path().join("meta.db")).await.unwrap(),
    };
    let boot = store.bootstrap("Org", "Project").await.unwrap();
    (dir, store, boot.project_id)
}

fn touch(p: i64, d: &str) -> IdentityOp {
    IdentityOp::Touch {
        project_id: p,
        distinct_id: d.into(),
        at: AT,
    }
}

fn merge(p: i64, target: &str, other: &str, mode: MergeMode) -> IdentityOp {
    IdentityOp::Merge {
        project_id: p,
        target: target.into(),
        other: other.into(),
        mode,
        at: AT,
    }
}

fn set(p: i64, d: &str, set: Value, once: Value, unset: &[&str]) -> IdentityOp {
    let obj = |v: Value| -> Map<String, Value> { v.as_object().cloned().unwrap_or_default() };
    IdentityOp::SetProperties {
        project_id: p,
        distinct_id: d.into(),
        set: obj(set),
        set_once: obj(once),
        unset: unset.iter().map(|s| s.to_string()).collect(),
        at: AT,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_merges_anonymous_person_into_identified_one() {
    let (_dir, store, p) = store().await;
    let mut w = store.identity_writer("test").unwrap();
    w.apply(
        &[
            touch(p, "anon-1"),
            set(
                p,
                "anon-1",
                json!({"plan": "free", "seen": 1}),
                json!({}),
                &[],
            ),
        ],
        1,
    )
    .unwrap();
    let anon = store
        .person_by_distinct_id(p, "anon-1")
        .await
        .unwrap()
        .unwrap();
    assert!(!anon.is_identified);
    w.apply(
        &[
            merge(p, "user-1", "anon-1", MergeMode::Identify),
            set(p, "user-1", json!({"plan": "pro"}), json!({}), &[]),
        ],
        2,
    )
    .unwrap();
    let person = store
        .person_by_distinct_id(p, "user-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        person.id, anon.id,
        "the anonymous person gains the identified id"
    );
    assert_eq!(
        person.distinct_ids,
        vec!["anon-1".to_string(), "user-1".to_string()]
    );
    assert!(person.is_identified);
    assert_eq!(person.properties, json!({"plan": "pro", "seen": 1}));
    assert_eq!(store.checkpoint("test").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identified_persons_merge_only_dangerously() {
    let (_dir, store, p) = store().await;
    let mut w = store.identity_writer("test").unwrap();
    // Two identified persons: a@ (from anon-a) and b@ (from anon-b).
    w.apply(
        &[
            touch(p, "anon-a"),
            merge(p, "a", "anon-a", MergeMode::Identify),
            set(p, "a", json!({"name": "A", "only_a": true}), json!({}), &[]),
            touch(p, "anon-b"),
            merge(p, "b", "anon-b", MergeMode::Identify),
            set(p, "b", json!({"name": "B"}), json!({}), &[]),
        ],
        1,
    )
    .unwrap();
    let stats = w
        .apply(&[merge(p, "a", "b", MergeMode::Identify)], 2)
        .unwrap();
    assert_eq!(stats.merges_refused, 1);
    let a = store.person_by_distinct_id(p, "a").await.unwrap().unwrap();
    let b = store.person_by_distinct_id(p, "b").await.unwrap().unwrap();
    assert_ne!(a.id, b.id);
    let stats = w.apply(&[merge(p, "a", "b", MergeMode::Alias)], 3).unwrap();
    assert_eq!(stats.merges_refused, 1);

    let stats = w
        .apply(&[merge(p, "a", "b", MergeMode::Dangerous)], 4)
        .unwrap();
    assert_eq!(stats.merges, 1);
    let merged = store.person_by_distinct_id(p, "b").await.unwrap().unwrap();
    assert_eq!(merged.id, a.id);
    assert_eq!(merged.distinct_ids, vec!["a", "anon-a", "anon-b", "b"]);
    assert_eq!(
        merged.properties,
        json!({"name": "A", "only_a": true}),
        "target's properties win"
    );
    // The merged-away person id still resolves to every distinct id.
    let mut ids = store
        .distinct_ids_of_person(p, &b.id)
        .await
        .unwrap()
        .unwrap();
    ids.sort();
    assert_eq!(ids, vec!["a", "anon-a", "anon-b", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_links_a_new_id_and_merges_an_anonymous_person() {
    let (_dir, store, p) = store().await;
    let mut w = store.identity_writer("test").unwrap();
    w.apply(
        &[
            touch(p, "user"),
            merge(p, "user", "alias-x", MergeMode::Alias),
        ],
        1,
    )
    .unwrap();
    let person = store
        .person_by_distinct_id(p, "alias-x")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(person.distinct_ids, vec!["alias-x", "user"]);
    // An anonymous person with its own events merges into the aliased one.
    w.apply(
        &[
            touch(p, "anon-2"),
            merge(p, "user", "anon-2", MergeMode::Alias),
        ],
        2,
    )
    .unwrap();
    let person2 = store
        .person_by_distinct_id(p, "anon-2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(person2.id, person.id);
    // Placeholder ids never merge.
    w.apply(
        &[
            touch(p, "other"),
            merge(p, "other", "undefined", MergeMode::Identify),
        ],
        3,
    )
    .unwrap();
    assert!(store
        .person_by_distinct_id(p, "undefined")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_set_once_and_unset_apply_in_order() {
    let (_dir, store, p) = store().await;
    let mut w = store.identity_writer("test").unwrap();
    w.apply(
        &[
            set(p, "u", json!({"a": 1}), json!({"first": "x"}), &[]),
            set(p, "u", json!({"a": 2, "b": 1}), json!({"first": "y"}), &[]),
            set(p, "u", json!({}), json!({}), &["b"]),
        ],
        1,
    )
    .unwrap();
    let person = store.person_by_distinct_id(p, "u").await.unwrap().unwrap();
    assert_eq!(person.properties, json!({"a": 2, "first": "x"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_allow_five_types_and_link_persons() {
    let (_dir, store, p) = store().await;
    let mut w = store.identity_writer("test").unwrap();
    let mut ops = vec![touch(p, "u")];
    for i in 0..6 {
        ops.push(IdentityOp::GroupIdentify {
            project_id: p,
            group_type: format!("type{i}"),
            group_key: "k".into(),
            set: json!({"n": i}).as_object().unwrap().clone(),
            at: AT,
        });
    }
    ops.push(IdentityOp::LinkGroups {
        project_id: p,
        distinct_id: "u".into(),
        groups: vec![
            ("type0".into(), "k".into()),
            ("type1".into(), "other".into()),
        ],
    });
    let stats = w.apply(&ops, 1).unwrap();
    assert_eq!(
        stats.group_types_refused, 1,
        "the sixth group type is refused"
    );
    let person = store.person_by_distinct_id(p, "u").await.unwrap().unwrap();
    assert_eq!(person.groups.len(), 2);
    assert_eq!(person.groups[0].group_type, "type0");
    assert_eq!(person.groups[0].properties, json!({"n": 0}));
    assert_eq!(person.groups[1].group_key, "other");
    assert_eq!(person.groups[1].properties, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_batch_is_idempotent() {
    let (_dir, store, p) = store().await;
    let ops = vec![
        touch(p, "anon"),
        set(p, "anon", json!({"x": 1}), json!({"y": 1}), &[]),
        merge(p, "id", "anon", MergeMode::Identify),
        set(p, "id", json!({"x": 2}), json!({}), &[]),
    ];
    let mut w = store.identity_writer("test").unwrap();
    w.apply(&ops, 1).unwrap();
    let first = store.person_by_distinct_id(p, "id").await.unwrap().unwrap();
    // A fresh writer (as after a crash) replays the same batch.
    let mut w2 = store.identity_writer("test").unwrap();
    w2.apply(&ops, 1).unwrap();
    let second = store.person_by_distinct_id(p, "id").await.unwrap().unwrap();
    assert_eq!(first, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_do_not_share_persons() {
    let (_dir, store, p) = store().await;
    let org2 = store.create_organization("Other").await.unwrap();
    let (p2, _) = store.create_project(org2, "P2").await.unwrap();
    let mut w = store.identity_writer("test").unwrap();
    w.apply(
        &[
            touch(p, "same"),
            set(p2, "same", json!({"in": "p2"}), json!({}), &[]),
        ],
        1,
    )
    .unwrap();
    let a = store
        .person_by_distinct_id(p, "same")
        .await
        .unwrap()
        .unwrap();
    let b = store
        .person_by_distinct_id(p2, "same")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(a.properties, json!({}));
    assert!(store
        .distinct_ids_of_person(p2, &a.id)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_hashed_and_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let store = Store::open(&path).await.unwrap();
    assert!(store.is_empty().await.unwrap());
    let boot = store.bootstrap("Org", "P").await.unwrap();
    assert!(!store.is_empty().await.unwrap());
    let key = store
        .authenticate_personal(&boot.personal_api_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.organization_id, boot.organization_id);
    assert_eq!(key.project_id, None);
    assert!(store
        .authenticate_personal(&boot.project_api_key)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .authenticate_personal("fwsec_wrong")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store
            .project_for_token(&boot.personal_api_key)
            .await
            .unwrap(),
        None
    );
    store.close().await;
    let bytes = std::fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains(&boot.personal_api_key) && !text.contains(&boot.project_api_key),
        "keys are not stored in clear"
    );
}

/// The change feed, replayed into a map the way the event engine keeps it, always equals the database's mapping,
/// across merges, chains of merges, refused merges, placeholders and a writer whose cache was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_feed_replays_to_the_database_mapping() {
    use flywheel_store::IdentityChange;
    use std::collections::HashMap;
    let (_dir, store, p) = store().await;
    let mut replayed: HashMap<String, i64> = HashMap::new();
    let mut redirect: HashMap<i64, i64> = HashMap::new();
    let resolve = |redirect: &HashMap<i64, i64>, mut id: i64| {
        while let Some(&n) = redirect.get(&id) {
            id = n;
        }
        id
    };
    let batches: Vec<Vec<IdentityOp>> = vec![
        vec![touch(p, "a1"), touch(p, "a2"), touch(p, "a3")],
        vec![merge(p, "u1", "a1", MergeMode::Identify)],
        vec![merge(p, "u1", "a2", MergeMode::Identify), touch(p, "a4")],
        // a4's person merges into u1's, then u2 (new) aliases a3.
        vec![
            merge(p, "u1", "a4", MergeMode::Alias),
            merge(p, "u2", "a3", MergeMode::Identify),
        ],
        // Refused: u2 is identified. Then dangerously: chain u2 → u1.
        vec![merge(p, "u1", "u2", MergeMode::Identify)],
        vec![merge(p, "u1", "u2", MergeMode::Dangerous)],
        vec![
            merge(p, "anonymous", "a5", MergeMode::Identify),
            touch(p, "a6"),
        ],
    ];
    for (i, batch) in batches.iter().enumerate() {
        // A fresh writer per batch: its cache is empty, lookups go to the database.
        let mut w = store.identity_writer("test").unwrap();
        w.record_changes();
        w.apply(batch, i as u64 + 1).unwrap();
        for change in w.take_changes() {
            match change {
                IdentityChange::Assigned {
                    project_id,
                    distinct_id,
                    person_id,
                } => {
                    assert_eq!(project_id, p);
                    assert!(
                        replayed.insert(distinct_id.clone(), person_id).is_none(),
                        "{distinct_id} assigned twice"
                    );
                }
                IdentityChange::Merged { from, into, .. } => {
                    assert_ne!(from, into);
                    redirect.insert(from, into);
                }
            }
        }
        let mut db: HashMap<String, i64> = HashMap::new();
        store
            .for_each_distinct_id(|project, d, person| {
                assert_eq!(project, p);
                db.insert(d.to_owned(), person);
            })
            .await
            .unwrap();
        let mine: HashMap<String, i64> = replayed
            .iter()
            .map(|(d, &id)| (d.clone(), resolve(&redirect, id)))
            .collect();
        assert_eq!(mine, db, "after batch {i}");
    }
    let all = |d: &str| resolve(&redirect, replayed[d]);
    assert_eq!(all("a1"), all("u2"), "the dangerous merge joined everyone");
    assert!(
        !replayed.contains_key("a5"),
        "a placeholder target merges nothing"
    );
    assert_ne!(all("anonymous"), all("a1"));
    assert_ne!(
        all("a6"),
        all("anonymous"),
        "new persons never take a merged id"
    );
    // Without record_changes nothing is kept.
    let mut w = store.identity_writer("test").unwrap();
    w.apply(&[touch(p, "b1")], 99).unwrap();
    assert!(w.take_changes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_reads_since_a_sequence_number_return_only_what_changed() {
    let (_dir, store, p) = store().await;
    let mut w = store.identity_writer("test").unwrap();
    assert_eq!(w.mapping_seq(), None);
    w.apply(&[touch(p, "a"), touch(p, "b"), touch(p, "c")], 1)
        .unwrap();
    let created = w
        .mapping_seq()
        .expect("the first apply changed the mapping");
    // A property change is numbered too (person-property columns read it), without touching the mapping.
    w.apply(&[set(p, "a", json!({"plan": "pro"}), json!({}), &[])], 2)
        .unwrap();
    let first = w.mapping_seq().unwrap();
    assert!(first > created);
    let mut plans = Vec::new();
    let read = store
        .read_person_property(p, "plan", Some(created), |person, v| {
            plans.push((person, v))
        })
        .await
        .unwrap();
    assert_eq!(read.seq, first);
    assert_eq!(plans.len(), 1, "only a's person changed: {plans:?}");
    assert_eq!(plans[0].1, json!("pro"));
    let untouched = store
        .read_distinct_ids(Some(created), |_, d, _| panic!("{d} did not move"))
        .await
        .unwrap();
    assert_eq!(untouched.rows, 0);

    let mut all = Vec::new();
    let read = store
        .read_distinct_ids(None, |_, d, person| all.push((d.to_owned(), person)))
        .await
        .unwrap();
    assert_eq!((read.rows, read.seq), (3, first));
    let person = |d: &str| all.iter().find(|(x, _)| x == d).unwrap().1;
    let (pa, pb) = (person("a"), person("b"));
    assert_ne!(pa, pb);

    // A merge moves b's distinct ids to a; "d" is new. Only those come back after `first`.
    w.apply(
        &[merge(p, "a", "b", MergeMode::Dangerous), touch(p, "d")],
        3,
    )
    .unwrap();
    let second = w.mapping_seq().unwrap();
    assert!(second > first);
    // The merge changed a's person (it absorbed b's properties, none); "d" is a new person without a plan.
    let mut plans = Vec::new();
    store
        .read_person_property(p, "plan", Some(first), |person, v| plans.push((person, v)))
        .await
        .unwrap();
    plans.sort_by_key(|(person, _)| *person);
    assert_eq!(plans.len(), 2, "{plans:?}");
    assert_eq!(plans[0].1, json!("pro"));
    assert_eq!(plans[1].1, Value::Null);
    let mut changed = Vec::new();
    let read = store
        .read_distinct_ids(Some(first), |_, d, person| {
            changed.push((d.to_owned(), person))
        })
        .await
        .unwrap();
    changed.sort();
    assert_eq!(read.seq, second);
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert_eq!(
        changed[0],
        ("b".to_owned(), pa),
        "b now belongs to a's person"
    );
    assert_eq!(changed[1].0, "d");
    let none = store
        .read_distinct_ids(Some(second), |_, d, _| panic!("{d} did not change"))
        .await
        .unwrap();
    assert_eq!((none.rows, none.seq), (0, second));
    // A new writer (a restart) continues the sequence.
    drop(w);
    let mut w = store.identity_writer("test").unwrap();
    w.apply(&[touch(p, "e")], 4).unwrap();
    assert_eq!(w.mapping_seq(), Some(second + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_property_columns_read_every_person_with_the_key() {
    let (_dir, store, p) = store().await;
    let mut w = store.identity_writer("test").unwrap();
    w.apply(
        &[
            set(
                p,
                "a",
                json!({"plan": "pro", "a.b": 1, "q\"k": true}),
                json!({}),
                &[],
            ),
            set(p, "b", json!({"plan": 7}), json!({}), &[]),
            set(
                p,
                "c",
                json!({"plan": null, "other": {"x": [1]}}),
                json!({}),
                &[],
            ),
            set(p, "d", json!({"x": 1}), json!({}), &[]),
        ],
        1,
    )
    .unwrap();
    let read = |key: &'static str| {
        let store = store.clone();
        async move {
            let mut out = Vec::new();
            let n = store
                .for_each_person_property(p, key, |id, v| out.push((id, v)))
                .await
                .unwrap();
            assert_eq!(n as usize, out.len());
            out.sort_by_key(|(id, _)| *id);
            out.into_iter().map(|(_, v)| v).collect::<Vec<Value>>()
        }
    };
    assert_eq!(
        read("plan").await,
        vec![json!("pro"), json!(7), Value::Null]
    );
    assert_eq!(
        read("a.b").await,
        vec![json!(1)],
        "a dot is part of the key"
    );
    assert_eq!(read("q\"k").await, vec![json!(true)]);
    assert_eq!(read("other").await, vec![json!({"x": [1]})]);
    assert!(read("missing").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_cohorts_keep_members_through_merges_and_audit_changes() {
    let (_dir, store, p) = store().await;
    let actor = flywheel_store::Actor {
        label: "test".into(),
        source_ip: None,
    };
    let mut w = store.identity_writer("test").unwrap();
    w.apply(&[touch(p, "a"), touch(p, "b"), touch(p, "c")], 1)
        .unwrap();
    let ids = store
        .person_numbers_for(p, &["a", "b", "c", "zz"])
        .await
        .unwrap();
    assert_eq!(ids.len(), 3, "unknown distinct ids are left out: {ids:?}");
    let cohort = store
        .create_cohort(p, "Beta", "early users", None, &actor)
        .await
        .unwrap();
    assert!(cohort.is_static);
    let (added, after) = store
        .change_cohort_people(
            p,
            cohort.id,
            &[ids["a"], ids["b"], ids["b"], 999_999],
            true,
            &actor,
        )
        .await
        .unwrap();
    assert_eq!(
        (added, after.version),
        (2, 2),
        "duplicates and strangers add nothing"
    );
    // `a` is merged into `c`: the membership follows the surviving person.
    w.apply(&[merge(p, "c", "a", MergeMode::Identify)], 2)
        .unwrap();
    let survivor = store.person_numbers_for(p, &["a"]).await.unwrap()["a"];
    let mut want = vec![survivor, ids["b"]];
    want.sort();
    assert_eq!(store.cohort_people(cohort.id).await.unwrap(), want);
    let (removed, after) = store
        .change_cohort_people(p, cohort.id, &[ids["b"]], false, &actor)
        .await
        .unwrap();
    assert_eq!((removed, after.version), (1, 3));
    // A stale version is refused; a current one applies.
    let update = flywheel_store::CohortUpdate {
        name: Some("Beta testers".into()),
        ..Default::default()
    };
    let stale = store
        .update_cohort(p, cohort.id, Some(1), &update, &actor)
        .await;
    assert!(
        matches!(
            stale,
            Err(flywheel_store::WriteError::VersionConflict { current: 3 })
        ),
        "{stale:?}"
    );
    let renamed = store
        .update_cohort(p, cohort.id, Some(3), &update, &actor)
        .await
        .unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.version),
        ("Beta testers", 4)
    );
    // A dynamic cohort has no uploaded members.
    let dynamic = store
        .create_cohort(
            p,
            "Pro",
            "",
            Some(&json!({"properties": {"type": "AND", "values": []}})),
            &actor,
        )
        .await
        .unwrap();
    let refused = store
        .change_cohort_people(p, dynamic.id, &[survivor], true, &actor)
        .await;
    assert!(
        matches!(refused, Err(flywheel_store::WriteError::Invalid(_))),
        "{refused:?}"
    );
    assert!(store.delete_cohort(p, cohort.id, &actor).await.unwrap());
    assert!(store.cohort(p, cohort.id).await.unwrap().is_none());
    assert!(store.cohort_people(cohort.id).await.unwrap().is_empty());
    assert_eq!(store.cohorts(p).await.unwrap().len(), 1);
    let actions: Vec<String> = store
        .audit(
            p,
            &flywheel_store::AuditFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.entity_type == "cohort")
        .map(|e| e.action)
        .collect();
    for action in [
        "cohort.created",
        "cohort.members_added",
        "cohort.members_removed",
        "cohort.updated",
        "cohort.deleted",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_changes_list_changed_and_erased_persons_by_sequence_number() {
    let (_dir, store, p) = store().await;
    let mut w = store.identity_writer("test").unwrap();
    w.apply(&[touch(p, "a"), touch(p, "b"), touch(p, "c")], 1)
        .unwrap();
    let created = w.mapping_seq().unwrap();
    let all = store.person_changes((0, 0), 100).await.unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.iter().all(|c| c.seq == created && c.uuid.is_some()));
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "in id order");
    // Paged: the last row's (seq, id) is the next cursor.
    let first = store.person_changes((0, 0), 2).await.unwrap();
    let rest = store
        .person_changes((first[1].seq, first[1].id), 2)
        .await
        .unwrap();
    assert_eq!([&first[..], &rest[..]].concat(), all);

    // A property change on a's person, then a merge of c into b: only those persons come back, as they are now.
    w.apply(&[set(p, "a", json!({"plan": "pro"}), json!({}), &[])], 2)
        .unwrap();
    w.apply(&[merge(p, "b", "c", MergeMode::Dangerous)], 3)
        .unwrap();
    let merged = w.mapping_seq().unwrap();
    let changed = store
        .person_changes((created, i64::MAX), 100)
        .await
        .unwrap();
    assert_eq!(changed.len(), 2, "{changed:?}");
    let a = store.person_by_distinct_id(p, "a").await.unwrap().unwrap();
    let b = store.person_by_distinct_id(p, "b").await.unwrap().unwrap();
    assert_eq!(changed[0].uuid.as_deref(), Some(a.id.as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&changed[0].properties).unwrap(),
        json!({"plan": "pro"})
    );
    assert_eq!(changed[1].uuid.as_deref(), Some(b.id.as_str()));
    assert_eq!(changed[1].seq, merged);
    assert!(store
        .person_changes((merged, i64::MAX), 100)
        .await
        .unwrap()
        .is_empty());

    // An erasure is a change too: the person's id without uuid or properties.
    let subject = store.erasure_subject(p, "a").await.unwrap().unwrap();
    let actor = flywheel_store::Actor {
        label: "test".into(),
        source_ip: None,
    };
    store
        .erase_person(p, subject.person_id, "erasure-1", &actor, &json!({}))
        .await
        .unwrap()
        .unwrap();
    let after = store.person_changes((merged, i64::MAX), 100).await.unwrap();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].id, subject.person_id);
    assert_eq!(after[0].uuid, None);
    assert_eq!(after[0].properties, "{}");
    assert!(after[0].seq > merged);
}
