//! GDPR export: everything held about a person, as a downloadable archive; audited without personal data.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::TestServer;

#[tokio::test]
async fn a_person_export_holds_their_events_identity_and_growth_records() {
    let t = TestServer::start().await;
    let batch = json!({"api_key": t.token, "batch": [
        {"event": "$pageview", "distinct_id": "anon-9", "properties": {"$current_url": "https://x.io/"}},
        {"event": "$identify", "distinct_id": "dana", "properties": {"$anon_distinct_id": "anon-9",
            "$set": {"email": "dana@example.com"}}},
        {"event": "report_run", "distinct_id": "dana", "properties": {"n": 1}},
        {"event": "report_run", "distinct_id": "other", "properties": {"n": 2}},
    ]});
    let (s, v) = t.post("/batch", batch.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    t.created(
        "/referral-programs",
        json!({"key": "friends", "name": "F", "landing_url": "https://x.io/join",
               "qualify": {"event": "paid"}, "rewards": {"referrer": {"amount": 5, "unit": "USD"}}}),
    )
    .await;
    t.created(
        "/referral-programs/friends/codes",
        json!({"referrer": "dana"}),
    )
    .await;
    t.created(
        "/rewards",
        json!({"beneficiary": "dana", "amount": 5, "unit": "USD", "reason": "bonus", "idempotency_key": "k1"}),
    )
    .await;

    let get = |path: String| {
        Request::get(path)
            .header("authorization", format!("Bearer {}", t.personal_key))
            .body(Body::empty())
            .unwrap()
    };
    let base = format!("/api/v1/projects/{}/persons", t.project_id);
    let (s, body, headers) = t.send(get(format!("{base}/anon-9/export"))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename=\"person-"));
    let lines: Vec<Value> = body
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str| {
        lines
            .iter()
            .filter(|l| l["type"] == kind)
            .collect::<Vec<_>>()
    };
    let person = of("person");
    assert_eq!(person.len(), 1);
    let mut ids: Vec<&str> = person[0]["distinct_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["anon-9", "dana"]);
    assert_eq!(person[0]["properties"]["email"], "dana@example.com");
    let events: Vec<&str> = of("event")
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["$pageview", "$identify", "report_run"],
        "theirs only, oldest first"
    );
    let tables: Vec<&str> = of("record")
        .iter()
        .map(|r| r["table"].as_str().unwrap())
        .collect();
    assert!(
        tables.contains(&"referral_codes") && tables.contains(&"reward_entries"),
        "{tables:?}"
    );
    assert!(tables.contains(&"reward_transitions"), "{tables:?}");

    // JSON too; unknown persons and formats are refused.
    let (s, doc, _) = t.send(get(format!("{base}/dana/export?format=json"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["events"].as_array().unwrap().len(), 3);
    let (s, _, _) = t.send(get(format!("{base}/nobody/export"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = t.send(get(format!("{base}/dana/export?format=xml"))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Audited, with counts only.
    let (_, audit) = t.api("GET", "/audit?action=person.exported", None).await;
    let entries = audit["results"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit}");
    let text = entries[0].to_string();
    assert!(
        !text.contains("dana"),
        "no personal data in the audit log: {text}"
    );
    assert_eq!(entries[0]["after"]["events"], 3);
}
