//! Referral programs, codes and the public click endpoint.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::TestServer;

fn program() -> Value {
    json!({"key": "friends", "name": "Invite friends", "landing_url": "https://app.example.com/signup?src=ref#top",
           "qualify": {"event": "subscription_started", "properties": [{"key": "plan", "operator": "is_not", "value": "free"}]},
           "rewards": {"referrer": {"amount": 20, "unit": "USD"}, "referee": {"amount": 1, "unit": "months"}},
           "attribution_window_days": 7})
}

async fn click(t: &TestServer, code: &str, agent: &str) -> (StatusCode, axum::http::HeaderMap) {
    let req = Request::get(format!("/r/{code}"))
        .header("user-agent", agent)
        .body(Body::empty())
        .unwrap();
    let (s, _, h) = t.send(req).await;
    (s, h)
}

#[tokio::test]
async fn programs_codes_and_clicks() {
    let t = TestServer::start().await;
    // Validation by field, then a program.
    let (s, v) = t
        .api(
            "POST",
            "/referral-programs",
            Some(json!({"key": "bad key", "name": "B", "landing_url": "javascript:alert(1)",
                        "qualify": {"event": "paid"}, "rewards": {"referrer": {"amount": -1, "unit": "USD"}}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["key", "landing_url", "rewards.referrer.amount"],
        "{v}"
    );
    let v = t.created("/referral-programs", program()).await;
    assert_eq!(
        (v["attribution"].as_str(), v["hold_days"].as_u64()),
        (Some("first_touch"), Some(14))
    );
    let (s, v) = t
        .api(
            "PATCH",
            "/referral-programs/friends",
            Some(json!({"hold_days": 30, "version": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["hold_days"].as_u64(), v["version"].as_i64()),
        (Some(30), Some(2))
    );

    // A generated code once per referrer; vanity codes unique without case.
    let (s, generated) = t
        .api(
            "POST",
            "/referral-programs/friends/codes",
            Some(json!({"referrer": "alice"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{generated}");
    let code = generated["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 8);
    assert_eq!(generated["link"], format!("/r/{code}"));
    let (s, again) = t
        .api(
            "POST",
            "/referral-programs/friends/codes",
            Some(json!({"referrer": "alice"})),
        )
        .await;
    assert_eq!(
        (s, again["code"].as_str()),
        (StatusCode::OK, Some(code.as_str()))
    );
    let vanity = t
        .created(
            "/referral-programs/friends/codes",
            json!({"referrer": "alice", "code": "Alice-VIP"}),
        )
        .await;
    assert_eq!(vanity["vanity"], true);
    let (s, v) = t
        .api(
            "POST",
            "/referral-programs/friends/codes",
            Some(json!({"referrer": "bob", "code": "alice-vip"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("code_taken")),
        "{v}"
    );
    let (s, v) = t
        .api(
            "POST",
            "/referral-programs/friends/codes",
            Some(json!({"code": "no spaces", "x": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        v["errors"].as_array().unwrap().len(),
        3,
        "x, referrer, code: {v}"
    );
    let (s, _) = t
        .api(
            "POST",
            "/referral-programs/nope/codes",
            Some(json!({"referrer": "alice"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A click redirects to the landing page with the code, sets the cookie and is counted.
    let (s, h) = click(&t, "ALICE-vip", "Mozilla/5.0 test").await;
    assert_eq!(s, StatusCode::FOUND);
    let location = h["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://app.example.com/signup?src=ref&ref=Alice-VIP&fw_click=")
            && location.ends_with("#top"),
        "{location}"
    );
    let cookie = h["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("fw_ref=Alice-VIP.") && cookie.contains("Max-Age=604800"),
        "{cookie}"
    );
    assert_eq!(h["cache-control"], "no-store");
    click(&t, &code, "Mozilla/5.0 test").await;
    click(&t, &code, "curl/8").await;
    let (s, v) = t
        .api(
            "GET",
            "/referral-programs/friends/codes?referrer=alice",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let clicks: Vec<(String, i64)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["code"].as_str().unwrap().to_owned(),
                c["clicks"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(clicks, [(code.clone(), 2), ("Alice-VIP".to_owned(), 1)]);

    // Unknown codes, and codes of inactive or archived programs, lead nowhere.
    assert_eq!(click(&t, "nobody-here", "x").await.0, StatusCode::NOT_FOUND);
    assert_eq!(click(&t, "a/b", "x").await.0, StatusCode::NOT_FOUND);
    let (s, _) = t
        .api(
            "PATCH",
            "/referral-programs/friends",
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(click(&t, &code, "x").await.0, StatusCode::NOT_FOUND);
    let (s, _) = t.api("DELETE", "/referral-programs/friends", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = t
        .api(
            "POST",
            "/referral-programs/friends/codes",
            Some(json!({"referrer": "carol"})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "an archived program makes no codes"
    );

    // Audited.
    let (_, audit) = t.api("GET", "/audit", None).await;
    let text = audit.to_string();
    for action in [
        "referral_program.created",
        "referral_program.updated",
        "referral_program.archived",
        "referral_code.created",
    ] {
        assert!(text.contains(action), "{action}");
    }
}
