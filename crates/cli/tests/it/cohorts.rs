//! Cohorts against ground truth: on the generated product history (see `insights.rs`), cohorts defined by person
//! properties, behaviour (counts in a window, first time, event-property filters, negation), other cohorts and an
//! uploaded list are created through the API; their sizes and members, and insights filtered and broken down by
//! them, are compared with a brute-force evaluation over the same events and persons.

use std::collections::{HashMap, HashSet};

use flywheel_truth as truth;
use serde_json::{json, Value};

use crate::insights::{
    counts, funnel_truth, insight, lifecycle_truth, pageviews_and_task_dau, post, range_of,
    request, retention_truth, Ctx,
};
use crate::{get_json, Serve};

/// Microseconds of a UTC midnight.
fn day(date: &str) -> i64 {
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

/// What the server answered, kept for the comparison once the truth is read (server stopped).
pub(crate) struct Answers {
    /// Cohort ids: A (plan and ≥ 3 tasks since 12-15), B (uploaded), C (in B, or first signed up since 12-20),
    /// D (never viewed a page with Chrome, has a plan).
    ids: [u64; 4],
    /// The distinct ids uploaded into B.
    uploaded: Vec<String>,
    /// Size of each cohort (`count`).
    sizes: Vec<u64>,
    /// Person ids listed by `/persons` for each cohort.
    listed: Vec<Vec<u64>>,
    /// (definition, answer) of each insight.
    insights: Vec<(&'static str, Value, Value)>,
}

impl Answers {
    /// (kind, definition, answer) of each insight asked.
    pub(crate) fn insights(&self) -> impl Iterator<Item = (&'static str, &Value, &Value)> {
        self.insights.iter().map(|(k, q, v)| (*k, q, v))
    }
}

fn create(serve: &Serve, key: &str, project: i64, body: Value) -> Value {
    let (status, v) = post(
        serve,
        key,
        &format!("/api/v1/projects/{project}/cohorts"),
        &body,
    );
    assert_eq!(status, 201, "{body}: {v}");
    v
}

/// Creates the cohorts and asks every question, while the server runs. `known` are distinct ids of persons of the
/// project (from a funnel's person list) to upload.
pub(crate) fn ask(serve: &Serve, key: &str, project: i64, known: &[String]) -> Answers {
    let a = create(
        serve,
        key,
        project,
        json!({"name": "Engaged paying", "filters": {"properties": {"type": "AND", "values": [
            {"type": "person", "key": "plan", "operator": "exact", "value": ["pro", "business"]},
            {"type": "behavioral", "value": "performed_event_multiple", "key": "task_completed",
             "operator": "gte", "operator_value": 3, "explicit_datetime": "2025-12-15"},
        ]}}}),
    );
    let b = create(
        serve,
        key,
        project,
        json!({"name": "Beta list", "is_static": true}),
    );
    let (bid, aid) = (b["id"].as_u64().unwrap(), a["id"].as_u64().unwrap());
    let mut upload: Vec<String> = known.to_vec();
    upload.push("nobody-at-all".into());
    let (status, v) = post(
        serve,
        key,
        &format!("/api/v1/projects/{project}/cohorts/{bid}/members"),
        &json!({"distinct_ids": upload}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["unknown_distinct_ids"], json!(["nobody-at-all"]), "{v}");
    assert!(v["added"].as_u64().unwrap() >= 1, "{v}");
    let c = create(
        serve,
        key,
        project,
        json!({"name": "Beta or new", "filters": {"properties": {"type": "OR", "values": [
            {"type": "cohort", "value": bid},
            {"type": "behavioral", "value": "performed_event_first_time", "key": "signed_up",
             "explicit_datetime": "2025-12-20"},
        ]}}}),
    );
    let d = create(
        serve,
        key,
        project,
        json!({"name": "Not on Chrome", "filters": {"properties": {"type": "AND", "values": [
            {"type": "behavioral", "value": "performed_event", "key": "$pageview",
             "time_value": 3650, "time_interval": "day", "negation": true,
             "event_filters": [{"key": "$browser", "type": "event", "value": "Chrome"}]},
            {"type": "person", "key": "plan", "operator": "is_set"},
        ]}}}),
    );
    let ids = [
        aid,
        bid,
        c["id"].as_u64().unwrap(),
        d["id"].as_u64().unwrap(),
    ];
    let mut sizes = Vec::new();
    let mut listed = Vec::new();
    for id in ids {
        let (status, v) = get_json(
            &serve.addr,
            &format!("/api/v1/projects/{project}/cohorts/{id}"),
            key,
        );
        assert_eq!(status, 200, "{v}");
        sizes.push(v["count"].as_u64().unwrap());
        let (status, v) = get_json(
            &serve.addr,
            &format!("/api/v1/projects/{project}/cohorts/{id}/persons?limit=1000"),
            key,
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["count"].as_u64(), sizes.last().copied(), "{v}");
        listed.push(
            v["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["person_id"].as_u64().unwrap())
                .collect(),
        );
    }
    let range = json!({"date_from": "2025-12-04", "date_to": "2025-12-31"});
    let with = |extra: Value| {
        let mut v = range.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let questions = [
        (
            "trends",
            with(
                json!({"series": [{"event": "$pageview"}, {"event": "task_completed", "math": "dau"}],
                "properties": [{"type": "cohort", "id": aid}]}),
            ),
        ),
        (
            "trends",
            with(json!({"series": [{"event": "$pageview", "math": "dau"}],
                "breakdown": {"type": "cohort", "ids": ids}})),
        ),
        (
            "funnel",
            with(
                json!({"steps": [{"event": "signed_up"}, {"event": "project_created"}, {"event": "task_completed"}],
                "breakdown": {"type": "cohort", "ids": [ids[2], ids[3]]}}),
            ),
        ),
        (
            "retention",
            json!({"start_event": {"event": "signed_up"}, "return_event": {"event": "task_completed"},
                "period": "week", "periods": 4, "date_to": "2025-12-31",
                "properties": [{"type": "cohort", "id": ids[3], "negate": true}]}),
        ),
        (
            "stickiness",
            with(
                json!({"event": {"event": "task_completed"}, "breakdown": {"type": "cohort", "ids": [ids[0], ids[2]]}}),
            ),
        ),
        (
            "lifecycle",
            with(
                json!({"event": {"event": "$pageview"}, "breakdown": {"type": "cohort", "ids": [ids[2]]}}),
            ),
        ),
    ];
    let insights = questions
        .into_iter()
        .map(|(kind, q)| {
            let v = insight(serve, key, project, kind, q.clone());
            (kind, q, v)
        })
        .collect();
    Answers {
        ids,
        uploaded: known.to_vec(),
        sizes,
        listed,
        insights,
    }
}

/// Compares the answers with the brute-force evaluation. `did_person`: each distinct id's person (metadata store).
pub(crate) fn check(ctx: &Ctx<'_>, did_person: &HashMap<String, u64>, answers: &Answers) {
    // Each person's rows.
    let mut rows_of: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, r) in ctx.rows.iter().enumerate() {
        rows_of.entry(r.person).or_default().push(i);
    }
    let people: Vec<u64> = rows_of.keys().copied().collect();
    let plan = |p: u64| ctx.plan_of.get(&p).map(String::as_str);
    let count =
        |p: u64, keep: &dyn Fn(usize) -> bool| rows_of[&p].iter().filter(|&&i| keep(i)).count();
    let a: HashSet<u64> = people
        .iter()
        .copied()
        .filter(|&p| {
            matches!(plan(p), Some("pro" | "business"))
                && count(p, &|i| {
                    ctx.rows[i].event == "task_completed" && ctx.rows[i].ts_us >= day("2025-12-15")
                }) >= 3
        })
        .collect();
    let b: HashSet<u64> = answers.uploaded.iter().map(|d| did_person[d]).collect();
    let c: HashSet<u64> = people
        .iter()
        .copied()
        .filter(|&p| {
            let first = rows_of[&p]
                .iter()
                .filter(|&&i| ctx.rows[i].event == "signed_up")
                .map(|&i| ctx.rows[i].ts_us)
                .min();
            b.contains(&p) || first.is_some_and(|t| t >= day("2025-12-20"))
        })
        .collect();
    let d: HashSet<u64> = people
        .iter()
        .copied()
        .filter(|&p| {
            plan(p).is_some()
                && count(p, &|i| {
                    ctx.rows[i].event == "$pageview"
                        && ctx.props[i].get("$browser") == Some(&json!("Chrome"))
                }) == 0
        })
        .collect();
    let sets = [&a, &b, &c, &d];
    // Sizes and members count persons (not distinct ids without a person).
    let persons: HashSet<u64> = did_person.values().copied().collect();
    for (i, set) in sets.iter().enumerate() {
        let mut want: Vec<u64> = set.intersection(&persons).copied().collect();
        want.sort();
        assert!(!want.is_empty(), "cohort {i} is not vacuous");
        assert_eq!(answers.sizes[i], want.len() as u64, "size of cohort {i}");
        assert_eq!(answers.listed[i], want, "members of cohort {i}");
    }
    assert!(a.len() < persons.len() && d.len() < persons.len());
    let rows_in = |set: &HashSet<u64>, member: bool| -> Vec<truth::Row<'_>> {
        ctx.rows
            .iter()
            .filter(|r| set.contains(&r.person) == member)
            .copied()
            .collect()
    };
    let by_id: HashMap<u64, &HashSet<u64>> = answers.ids.iter().copied().zip(sets).collect();

    // Trends filtered by A.
    let (_, _, v) = &answers.insights[0];
    let (want, got) = pageviews_and_task_dau(&rows_in(&a, true), v);
    assert_eq!(got, want, "trends filtered by a cohort");

    // DAU broken down by every cohort: one row per cohort, in the order asked.
    let (_, _, v) = &answers.insights[1];
    let r = range_of(v);
    let items = v["result"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{v}");
    for (item, id) in items.iter().zip(answers.ids) {
        assert_eq!(item["breakdown_value"], json!(id));
        let rows = rows_in(by_id[&id], true);
        assert_eq!(
            counts(&item["data"]),
            truth::unique_persons(&rows, "$pageview", r, truth::Interval::Day),
            "DAU of cohort {id}"
        );
    }

    // A funnel broken down by C and D.
    let (_, q, v) = &answers.insights[2];
    let items = v["result"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{v}");
    for (item, id) in items.iter().zip([answers.ids[2], answers.ids[3]]) {
        assert_eq!(item["breakdown_value"], json!(id));
        let rows = rows_in(by_id[&id], true);
        let (want, got) = funnel_truth::<0>(&rows, q, v, item);
        assert_eq!(got, want, "funnel of cohort {id}");
    }

    // Retention of everyone not in D.
    let (_, q, v) = &answers.insights[3];
    let rows = rows_in(&d, false);
    let (want, got) = retention_truth(&rows, q, v, &v["result"]);
    assert_eq!(got, want, "retention outside a cohort");
    assert!(want.to_string().bytes().any(|b| (b'1'..=b'9').contains(&b)));

    // Stickiness by A and C, lifecycle by C.
    let (_, _, v) = &answers.insights[4];
    let r = range_of(v);
    let items = v["result"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{v}");
    for (item, id) in items.iter().zip([answers.ids[0], answers.ids[2]]) {
        assert_eq!(item["breakdown_value"], json!(id));
        let rows = rows_in(by_id[&id], true);
        let want = truth::stickiness(&rows, "task_completed", r, truth::Interval::Day);
        assert_eq!(counts(&item["data"]), want, "stickiness of cohort {id}");
        assert!(want.iter().any(|&n| n > 0));
    }
    let (_, _, v) = &answers.insights[5];
    let item = &v["result"][0];
    assert_eq!(item["breakdown_value"], json!(answers.ids[2]), "{v}");
    let (want, got) = lifecycle_truth(&rows_in(&c, true), "$pageview", v, item);
    assert_eq!(got, want, "lifecycle of cohort C");
}

/// The cohort API: validation naming fields, references that must exist and not loop, static uploads, optimistic
/// concurrency, deletion (an insight that still uses a deleted cohort gets a 400 naming the field).
#[test]
fn cohort_api_validates_and_guards_references() {
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let (p, key) = (keys.project_id, keys.personal_key.as_str());
    let base = format!("/api/v1/projects/{p}/cohorts");
    let call = |method: &str, path: &str, body: Value| request(&serve, key, method, path, &body);
    let fields = |v: &Value| -> Vec<String> {
        v["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|e| e["field"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Every problem, each naming its field.
    let (status, v) = call(
        "POST",
        &base,
        json!({"name": "", "filters": {"properties": {"type": "AND", "values": [
            {"type": "behavioral", "value": "performed_event_multiple", "key": "x", "time_value": 7, "time_interval": "day"},
            {"type": "person", "key": "plan", "operator": "often", "value": 1}]}}, "colour": "red"}),
    );
    assert_eq!(status, 400, "{v}");
    let f = fields(&v);
    for want in [
        "name",
        "colour",
        "filters.properties.values[0].operator",
        "filters.properties.values[1].operator",
    ] {
        assert!(f.iter().any(|x| x == want), "{want} in {f:?}");
    }
    let (status, v) = call("POST", &base, json!({"name": "x"}));
    assert_eq!(
        (status, fields(&v)),
        (400, vec!["filters".to_owned()]),
        "{v}"
    );
    // A reference to a cohort that does not exist.
    let (status, v) = call(
        "POST",
        &base,
        json!({"name": "x", "filters": {"properties": {"type": "AND", "values": [{"type": "cohort", "value": 99}]}}}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("99"), "{v}");
    // A → B → A is refused.
    let plan = json!({"properties": {"type": "AND", "values": [{"type": "person", "key": "plan", "value": "pro"}]}});
    let (status, a) = call("POST", &base, json!({"name": "A", "filters": plan}));
    assert_eq!(status, 201, "{a}");
    let aid = a["id"].as_u64().unwrap();
    assert_eq!(
        (a["count"].as_u64(), a["version"].as_u64()),
        (Some(0), Some(1))
    );
    let refers = |id: u64| json!({"properties": {"type": "AND", "values": [{"type": "cohort", "value": id}]}});
    let (status, b) = call("POST", &base, json!({"name": "B", "filters": refers(aid)}));
    assert_eq!(status, 201, "{b}");
    let bid = b["id"].as_u64().unwrap();
    let (status, v) = call(
        "PATCH",
        &format!("{base}/{aid}"),
        json!({"filters": refers(bid)}),
    );
    assert_eq!(
        (status, fields(&v)),
        (400, vec!["filters".to_owned()]),
        "{v}"
    );
    let (status, v) = call(
        "PATCH",
        &format!("{base}/{aid}"),
        json!({"filters": refers(aid)}),
    );
    assert_eq!(status, 400, "{v}");
    // Optimistic concurrency.
    let (status, v) = call(
        "PATCH",
        &format!("{base}/{aid}"),
        json!({"name": "A2", "version": 1}),
    );
    assert_eq!((status, v["version"].as_u64()), (200, Some(2)), "{v}");
    let (status, v) = call(
        "PATCH",
        &format!("{base}/{aid}"),
        json!({"name": "A3", "version": 1}),
    );
    assert_eq!(status, 409, "{v}");
    // Members only for static cohorts; an empty upload is refused.
    let (status, v) = call(
        "POST",
        &format!("{base}/{aid}/members"),
        json!({"distinct_ids": ["u1"]}),
    );
    assert_eq!(status, 400, "{v}");
    let (status, s) = call("POST", &base, json!({"name": "S", "is_static": true}));
    assert_eq!(status, 201, "{s}");
    let sid = s["id"].as_u64().unwrap();
    let (status, v) = call(
        "POST",
        &format!("{base}/{sid}/members"),
        json!({"distinct_ids": []}),
    );
    assert_eq!(status, 400, "{v}");
    // A CSV upload (first column, optional header): unknown distinct ids are reported, not silently dropped.
    let (status, out) = crate::http(
        &serve.addr,
        "POST",
        &format!("{base}/{sid}/members"),
        &[
            ("Authorization", &format!("Bearer {key}")),
            ("Content-Type", "text/csv"),
        ],
        b"distinct_id,email\nghost-1,a@x.io\n\"ghost-2\",b@x.io\n",
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["unknown_distinct_ids"],
        json!(["ghost-1", "ghost-2"]),
        "{v}"
    );
    assert_eq!(v["added"], 0);
    let (status, v) = call(
        "POST",
        &format!("{base}/{sid}/members"),
        json!({"person_ids": ["x"]}),
    );
    assert_eq!(
        (status, fields(&v)),
        (400, vec!["person_ids[0]".to_owned()]),
        "{v}"
    );
    // Unknown ids, bad paths.
    let (status, _) = call("GET", &format!("{base}/4242"), Value::Null);
    assert_eq!(status, 404);
    let (status, _) = call("GET", &format!("{base}/abc"), Value::Null);
    assert_eq!(status, 400);
    let (status, v) = call(
        "GET",
        &format!("{base}/{aid}/persons?limit=many"),
        Value::Null,
    );
    assert_eq!((status, fields(&v)), (400, vec!["limit".to_owned()]), "{v}");
    // An insight using a cohort; after deletion it names the field.
    let trends = format!("/api/v1/projects/{p}/insights/trends");
    let body = json!({"series": [{"event": "x"}], "properties": [{"type": "cohort", "id": bid}]});
    let (status, v) = call("POST", &trends, body.clone());
    assert_eq!(status, 200, "{v}");
    let (status, _) = call("DELETE", &format!("{base}/{bid}"), Value::Null);
    assert_eq!(status, 204);
    let (status, v) = call("POST", &trends, body);
    assert_eq!(
        (status, fields(&v)),
        (400, vec!["properties[0]".to_owned()]),
        "{v}"
    );
    let (status, v) = call("GET", &base, Value::Null);
    assert_eq!(status, 200);
    let names: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A2", "S"]);
    // Every change is in the audit log.
    let (status, v) = call(
        "GET",
        &format!("/api/v1/projects/{p}/audit?entity_type=cohort"),
        Value::Null,
    );
    assert_eq!(status, 200, "{v}");
    let text = v.to_string();
    for action in ["cohort.created", "cohort.updated", "cohort.deleted"] {
        assert!(text.contains(action), "{action}: {v}");
    }
    assert!(serve.terminate().success());
}
