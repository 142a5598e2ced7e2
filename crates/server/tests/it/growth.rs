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

pub(crate) async fn click(
    t: &TestServer,
    code: &str,
    agent: &str,
) -> (StatusCode, axum::http::HeaderMap) {
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

#[tokio::test]
async fn the_reward_ledger_holds_approves_fulfils_and_reverses() {
    let t =
        TestServer::start_with(|c| c.reward_check_interval = std::time::Duration::from_millis(100))
            .await;
    t.created("/referral-programs", program()).await;
    let reward = |key: &str, who: &str, hold: Option<u64>| {
        let mut body = json!({"beneficiary": who, "amount": 20, "unit": "USD", "reason": "referral of bob",
                              "idempotency_key": key, "program": "friends"});
        if let Some(h) = hold {
            body["hold_days"] = json!(h);
        }
        body
    };
    // The program's hold (14 days) applies unless the body sets one.
    let held = t.created("/rewards", reward("r1", "alice", None)).await;
    assert_eq!(held["status"], "pending");
    let (s, again) = t
        .api("POST", "/rewards", Some(reward("r1", "alice", None)))
        .await;
    assert_eq!(
        (s, &again["id"]),
        (StatusCode::OK, &held["id"]),
        "a retry is the same entry"
    );
    let (s, v) = t
        .api("POST", "/rewards", Some(reward("r1", "carol", None)))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("idempotency_key_reused")),
        "{v}"
    );
    let (s, v) = t
        .api(
            "POST",
            "/rewards",
            Some(json!({"beneficiary": "", "amount": -3, "unit": "USD", "x": 1})),
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
        ["x", "beneficiary", "amount", "reason", "idempotency_key"],
        "{v}"
    );

    // No hold: approved by the approver on its own, then fulfilled by hand; nothing after that.
    let quick = t.created("/rewards", reward("r2", "alice", Some(0))).await;
    let id = quick["id"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, v) = t
            .api("GET", "/rewards?beneficiary=alice&status=approved", None)
            .await;
        if v["results"]
            .as_array()
            .is_some_and(|r| r.iter().any(|e| e["id"] == id))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (s, v) = t
        .api(
            "POST",
            &format!("/rewards/{id}/fulfil"),
            Some(json!({"reason": "paid out"})),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("fulfilled")),
        "{v}"
    );
    let (s, _) = t.api("POST", &format!("/rewards/{id}/reverse"), None).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a fulfilled reward stays fulfilled"
    );

    // The held one is reversed (a refund inside the hold): it is never approved.
    let held_id = held["id"].as_i64().unwrap();
    let (s, v) = t
        .api(
            "POST",
            &format!("/rewards/{held_id}/reverse"),
            Some(json!({"reason": "refund_issued"})),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("reversed")),
        "{v}"
    );
    let (s, _) = t
        .api("POST", &format!("/rewards/{held_id}/approve"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = t.api("POST", "/rewards/999/approve", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Balances per unit and status.
    let (s, v) = t
        .api("GET", "/rewards/balances?beneficiary=alice", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let usd = &v["balances"]["USD"];
    assert_eq!(
        usd["fulfilled"],
        json!({"amount": 20.0, "entries": 1}),
        "{v}"
    );
    assert_eq!(
        usd["reversed"],
        json!({"amount": 20.0, "entries": 1}),
        "{v}"
    );
    assert_eq!(usd["pending"]["entries"], 0, "{v}");

    // Every change audited and announced.
    let (_, outbox) = t.api("GET", "/outbox", None).await;
    let topics: Vec<&str> = outbox["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        // Audited changes are announced too (`audit.<action>`); not these.
        .filter(|t| !t.starts_with("audit."))
        .collect();
    assert_eq!(
        topics,
        ["reward.approved", "reward.fulfilled", "reward.reversed"]
    );
    let (_, audit) = t.api("GET", "/audit?entity_type=reward", None).await;
    let text = audit.to_string();
    for action in [
        "reward.created",
        "reward.approved",
        "reward.fulfilled",
        "reward.reversed",
    ] {
        assert!(text.contains(action), "{action}");
    }
    assert!(
        text.contains("system:reward-hold"),
        "the approval is the approver's"
    );
}

pub(crate) async fn capture(t: &TestServer, batch: Value) {
    let (s, v) = t
        .post(
            "/batch",
            json!({"api_key": t.token, "batch": batch}).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Waits until `done` holds for the program's referrals.
async fn referrals_until(
    t: &TestServer,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, v) = t
            .api("GET", "/referral-programs/friends/referrals", None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let list = v["results"].as_array().unwrap().clone();
        if done(&list) {
            return list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waiting for {what}: {v:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_referral_goes_from_click_to_reward_and_a_refund_reverses_one() {
    let t = TestServer::start().await;
    let mut p = program();
    p["hold_days"] = json!(7);
    p["reversal_events"] = json!(["refund_issued"]);
    t.created("/referral-programs", p).await;
    let (s, v) = t
        .api(
            "POST",
            "/referral-programs",
            Some(json!({"key": "people", "name": "P", "landing_url": "https://x.io",
                        "qualify": {"event": "paid", "properties": [{"key": "plan", "type": "person", "value": "pro"}]},
                        "rewards": {"referrer": {"amount": 1, "unit": "USD"}}})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "person filters cannot qualify: {v}"
    );
    assert_eq!(v["errors"][0]["field"], "qualify.properties[0]");
    let code = t
        .created(
            "/referral-programs/friends/codes",
            json!({"referrer": "alice"}),
        )
        .await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, h) = click(&t, &code, "Mozilla/5.0").await;
    assert_eq!(s, StatusCode::FOUND);
    let landing = h["location"].to_str().unwrap().to_owned();

    // Bob lands anonymously from the link, signs up (identify), subscribes to a paid plan.
    // Carol comes with the code only, subscribes, and is refunded. Dave stays on the free plan.
    // Alice follows her own link.
    let bare = format!("https://app.example.com/signup?ref={code}");
    capture(&t, json!([
        {"event": "$pageview", "distinct_id": "anon-bob", "properties": {"$current_url": landing}},
        {"event": "$identify", "distinct_id": "bob", "properties": {"$anon_distinct_id": "anon-bob"}},
        {"event": "$pageview", "distinct_id": "carol", "properties": {"$current_url": bare}},
        {"event": "$pageview", "distinct_id": "dave", "properties": {"$current_url": bare}},
        {"event": "$pageview", "distinct_id": "alice", "properties": {"$current_url": bare}},
    ]))
    .await;
    capture(&t, json!([
        {"event": "subscription_started", "distinct_id": "bob", "properties": {"plan": "pro"}},
        {"event": "subscription_started", "distinct_id": "carol", "properties": {"plan": "team"}},
        {"event": "subscription_started", "distinct_id": "dave", "properties": {"plan": "free"}},
        {"event": "subscription_started", "distinct_id": "alice", "properties": {"plan": "pro"}},
    ]))
    .await;
    let list = referrals_until(&t, "bob and carol qualified", |l| {
        l.iter().filter(|r| r["status"] == "qualified").count() == 2
    })
    .await;
    let by = |who: &str| {
        list.iter()
            .find(|r| r["referee"] == who)
            .unwrap_or_else(|| panic!("{who}: {list:#?}"))
            .clone()
    };
    assert_eq!(
        by("anon-bob")["click_token"].as_str().map(str::len),
        Some(32)
    );
    assert_eq!(by("carol")["status"], "qualified");
    assert_eq!(
        by("dave")["status"],
        "attributed",
        "the free plan does not qualify"
    );
    assert_eq!(
        (by("alice")["status"].as_str(), &by("alice")["signals"]),
        (Some("rejected"), &json!(["self_referral"]))
    );

    // Rewards: both sides, pending for the program's hold.
    let (_, v) = t.api("GET", "/rewards?status=pending", None).await;
    let mut pending: Vec<(String, f64, String)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["beneficiary"].as_str().unwrap().to_owned(),
                r["amount"].as_f64().unwrap(),
                r["unit"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pending.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(
        pending,
        [
            ("alice".to_owned(), 20.0, "USD".to_owned()),
            ("alice".to_owned(), 20.0, "USD".to_owned()),
            ("anon-bob".to_owned(), 1.0, "months".to_owned()),
            ("carol".to_owned(), 1.0, "months".to_owned()),
        ]
    );

    // Carol's refund inside the hold reverses her referral's rewards.
    capture(
        &t,
        json!([{"event": "refund_issued", "distinct_id": "carol"}]),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, v) = t.api("GET", "/rewards?status=reversed", None).await;
        if v["results"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Bob's referrer reward is approved and fulfilled by hand.
    let bob_id = by("anon-bob")["id"].as_i64().unwrap();
    let (_, v) = t
        .api("GET", "/rewards?beneficiary=alice&status=pending", None)
        .await;
    let entry = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["idempotency_key"] == format!("referral:{bob_id}:referrer"))
        .unwrap_or_else(|| panic!("{v:#}"))
        .clone();
    let id = entry["id"].as_i64().unwrap();
    for action in ["approve", "fulfil"] {
        let (s, v) = t
            .api("POST", &format!("/rewards/{id}/{action}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, v) = t
        .api("GET", "/rewards/balances?beneficiary=alice", None)
        .await;
    assert_eq!(
        v["balances"]["USD"]["fulfilled"],
        json!({"amount": 20.0, "entries": 1}),
        "{v}"
    );
    assert_eq!(
        v["balances"]["USD"]["reversed"],
        json!({"amount": 20.0, "entries": 1}),
        "{v}"
    );
}

#[tokio::test]
async fn a_fraud_ring_is_held_or_rejected_while_honest_referrals_pass() {
    let t = TestServer::start().await;
    let mut p = program();
    p["fraud"] = json!({"hold_at": 40, "reject_at": 80, "velocity_per_hour": 3});
    t.created("/referral-programs", p).await;
    let code = |who: &'static str| {
        let t = &t;
        async move {
            t.created("/referral-programs/friends/codes", json!({"referrer": who}))
                .await["code"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (mallory, spammer, olivia, erin) = (
        code("mallory").await,
        code("spammer").await,
        code("olivia").await,
        code("erin").await,
    );
    let landing = |c: &str| format!("https://app.example.com/signup?ref={c}");
    let signup = |who: &str, email: &str, c: &str| {
        json!([
            {"event": "$pageview", "distinct_id": who, "properties": {"$current_url": landing(c)}},
            {"event": "$identify", "distinct_id": who, "properties": {"$set": {"email": email}}},
        ])
    };
    let mut batch: Vec<Value> = Vec::new();
    batch.extend(
        json!([{"event": "$identify", "distinct_id": "mallory", "properties": {"$set": {"email": "mallory@corp.io"}}},
               {"event": "$identify", "distinct_id": "erin", "properties": {"$set": {"email": "erin@home.io"}}}])
        .as_array()
        .unwrap()
        .clone(),
    );
    for (who, email, c) in [
        ("mal2", "Mal.lory+2@corp.io", &mallory), // mallory's alias: same email
        ("temp1", "x7@mailinator.com", &mallory), // disposable domain
        ("bot1", "bot1@corp.io", &spammer),       // a burst: the 4th in the hour trips velocity
        ("bot2", "bot2@corp.io", &spammer),
        ("bot3", "bot3@corp.io", &spammer),
        ("bot4", "bot4@corp.io", &spammer),
        ("honest", "honest@gmail.com", &olivia), // nothing wrong
        ("frank", "frank@home.io", &erin),       // frank came through erin…
    ] {
        batch.extend(signup(who, email, c).as_array().unwrap().clone());
    }
    capture(&t, json!(batch)).await;
    // …and erin through frank's code: a cycle.
    let frank = code("frank").await;
    capture(&t, json!([{"event": "$pageview", "distinct_id": "erin", "properties": {"$current_url": landing(&frank)}}])).await;
    let paid: Vec<Value> = ["mal2", "temp1", "bot1", "bot2", "bot3", "bot4", "honest", "erin"]
        .iter()
        .map(|who| json!({"event": "subscription_started", "distinct_id": who, "properties": {"plan": "pro"}}))
        .collect();
    capture(&t, json!(paid)).await;
    let list = referrals_until(&t, "every referral decided", |l| {
        l.len() == 9 && l.iter().filter(|r| r["status"] == "attributed").count() == 1
    })
    .await;
    let of = |who: &str| {
        let r = list
            .iter()
            .find(|r| r["referee"] == who)
            .unwrap_or_else(|| panic!("{who}: {list:#?}"));
        (
            r["status"].as_str().unwrap().to_owned(),
            r["signals"].clone(),
            r["risk_score"].as_i64().unwrap(),
        )
    };
    assert_eq!(of("mal2"), ("rejected".into(), json!(["same_email"]), 90));
    assert_eq!(
        of("temp1"),
        ("held".into(), json!(["disposable_email"]), 50)
    );
    assert_eq!(of("bot3").0, "qualified", "three in the hour are fine");
    assert_eq!(of("bot4"), ("held".into(), json!(["velocity"]), 40));
    assert_eq!(of("honest"), ("qualified".into(), json!([]), 0));
    assert_eq!(of("erin"), ("rejected".into(), json!(["cycle"]), 80));
    assert_eq!(of("frank").0, "attributed", "frank never paid");

    // Only the clean referrals were paid so far.
    let (_, v) = t.api("GET", "/rewards?status=pending", None).await;
    let mut paid_for: Vec<String> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["beneficiary"] != "mal2")
        .map(|r| {
            r["reason"]
                .as_str()
                .unwrap()
                .split(": ")
                .nth(1)
                .unwrap()
                .to_owned()
        })
        .collect();
    paid_for.sort();
    paid_for.dedup();
    assert_eq!(
        paid_for,
        [
            "bot1 qualified",
            "bot2 qualified",
            "bot3 qualified",
            "honest qualified"
        ]
    );

    // The review queue: approve the disposable-domain one (with a reason), reject the burst.
    let (_, held) = t
        .api(
            "GET",
            "/referral-programs/friends/referrals?status=held",
            None,
        )
        .await;
    assert_eq!(held["results"].as_array().unwrap().len(), 2, "{held:#}");
    let id_of = |who: &str| {
        list.iter().find(|r| r["referee"] == who).unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let (s, v) = t
        .api(
            "POST",
            &format!(
                "/referral-programs/friends/referrals/{}/approve",
                id_of("temp1")
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a reason is required: {v}");
    let (s, v) = t
        .api(
            "POST",
            &format!(
                "/referral-programs/friends/referrals/{}/approve",
                id_of("temp1")
            ),
            Some(json!({"reason": "known customer, uses a throwaway address"})),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("qualified")),
        "{v}"
    );
    let (s, v) = t
        .api(
            "POST",
            &format!(
                "/referral-programs/friends/referrals/{}/reject",
                id_of("bot4")
            ),
            Some(json!({"reason": "bot farm"})),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("rejected")),
        "{v}"
    );
    let (s, _) = t
        .api(
            "POST",
            &format!(
                "/referral-programs/friends/referrals/{}/approve",
                id_of("bot4")
            ),
            Some(json!({"reason": "changed my mind"})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a rejected referral stays rejected"
    );
    let (_, v) = t.api("GET", "/rewards?beneficiary=mallory", None).await;
    assert_eq!(
        v["results"].as_array().unwrap().len(),
        1,
        "temp1's approval paid mallory: {v:#}"
    );
    let (_, audit) = t.api("GET", "/audit?entity_type=referral", None).await;
    let text = audit.to_string();
    assert!(
        text.contains("referral.approved")
            && text.contains("referral.rejected")
            && text.contains("bot farm")
    );
}

#[tokio::test]
async fn invitations_are_single_use_expire_and_can_be_revoked() {
    let t = TestServer::start().await;
    let base = "/groups/company/acme/invitations";
    let (s, v) = t
        .api(
            "POST",
            base,
            Some(json!({"email": "not-an-email", "role": "", "expires_in_days": 400})),
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
        ["email", "inviter", "role", "expires_in_days"],
        "{v}"
    );

    let inv = t
        .created(base, json!({"email": "bob@acme.io", "inviter": "alice"}))
        .await;
    assert_eq!(
        (inv["status"].as_str(), inv["role"].as_str()),
        (Some("pending"), Some("member"))
    );
    let token = inv["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);
    let accept = |token: &str, who: &str| {
        let body = json!({"token": token, "distinct_id": who});
        let t = &t;
        async move { t.api("POST", "/invitations/accept", Some(body)).await }
    };
    let (s, v) = accept(&token, "bob").await;
    assert_eq!(
        (s, v["status"].as_str(), v["accepted_by"].as_str()),
        (StatusCode::OK, Some("accepted"), Some("bob")),
        "{v}"
    );
    let (s, v) = accept(&token, "mallory").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::GONE, Some("invitation_closed")),
        "single use: {v}"
    );
    let (s, _) = accept("0000", "mallory").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Expired: not accepted; a resend gives a new token and lifetime, the old token is dead.
    let short = t
        .created(
            base,
            json!({"email": "carol@acme.io", "inviter": "alice", "expires_in_seconds": 1}),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, _) = accept(short["token"].as_str().unwrap(), "carol").await;
    assert_eq!(s, StatusCode::GONE, "expired");
    let id = short["id"].as_i64().unwrap();
    let (s, resent) = t
        .api("POST", &format!("/invitations/{id}/resend"), None)
        .await;
    assert_eq!(
        (s, resent["status"].as_str(), resent["resent"].as_i64()),
        (StatusCode::OK, Some("pending"), Some(1)),
        "{resent}"
    );
    let (s, _) = accept(short["token"].as_str().unwrap(), "carol").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the old token stopped working");
    let (s, _) = accept(resent["token"].as_str().unwrap(), "carol").await;
    assert_eq!(s, StatusCode::OK);

    // Revoked: never accepted.
    let gone = t
        .created(
            base,
            json!({"email": "dan@acme.io", "inviter": "bob", "role": "admin"}),
        )
        .await;
    let (s, v) = t
        .api("POST", &format!("/invitations/{}/revoke", gone["id"]), None)
        .await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("revoked")));
    let (s, _) = accept(gone["token"].as_str().unwrap(), "dan").await;
    assert_eq!(s, StatusCode::GONE);
    let (s, _) = t
        .api("POST", &format!("/invitations/{}/revoke", gone["id"]), None)
        .await;
    assert_eq!(s, StatusCode::GONE, "revoked once");

    let (_, list) = t.api("GET", base, None).await;
    let statuses: Vec<&str> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["revoked", "accepted", "accepted"]);
    assert!(
        list.to_string().find("token").is_none(),
        "tokens are never listed"
    );

    // Domain auto-join.
    let (s, _) = t
        .api(
            "POST",
            "/invitations/auto-join",
            Some(json!({"distinct_id": "erin", "email": "erin@acme.io"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no verified domain yet");
    let (s, v) = t
        .api("PUT", "/groups/company/acme/domains/ACME.io", None)
        .await;
    assert_eq!(
        (s, v["domain"].as_str()),
        (StatusCode::OK, Some("acme.io")),
        "{v}"
    );
    let (s, v) = t
        .api(
            "POST",
            "/invitations/auto-join",
            Some(json!({"distinct_id": "erin", "email": "Erin@Acme.io"})),
        )
        .await;
    assert_eq!(
        (s, v["group_key"].as_str(), v["role"].as_str()),
        (StatusCode::OK, Some("acme"), Some("member")),
        "{v}"
    );

    // The joins are events: the inviter → invitee edges of the growth graph.
    t.server().state.tables_catch_up().await;
    let events = t.events("event=%24invitation_accepted").await;
    let mut edges: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["properties"]["inviter"].as_str().unwrap().to_owned(),
                e["distinct_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    edges.sort();
    assert_eq!(
        edges,
        [
            ("alice".to_owned(), "bob".to_owned()),
            ("alice".to_owned(), "carol".to_owned())
        ]
    );
    assert_eq!(events[0]["properties"]["$groups"]["company"], "acme");
    assert_eq!(t.events("event=%24group_auto_joined").await.len(), 1);
    let (_, audit) = t.api("GET", "/audit?entity_type=invitation", None).await;
    let text = audit.to_string();
    for action in [
        "invitation.created",
        "invitation.accepted",
        "invitation.resent",
        "invitation.revoked",
    ] {
        assert!(text.contains(action), "{action}");
    }
}

#[tokio::test]
async fn share_links_credit_views_and_signups_to_the_sharer() {
    let t = TestServer::start().await;
    let (s, v) = t
        .api(
            "POST",
            "/share-links",
            Some(
                json!({"sharer": "alice", "object_type": "doc", "object_id": "42",
                                               "url": "not a url"}),
            ),
        )
        .await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("url")),
        "{v}"
    );
    let body = json!({"sharer": "alice", "object_type": "doc", "object_id": "42",
                      "url": "https://app.example.com/docs/42#intro"});
    let link = t.created("/share-links", body.clone()).await;
    let (s, again) = t.api("POST", "/share-links", Some(body)).await;
    assert_eq!(
        (s, &again["token"]),
        (StatusCode::OK, &link["token"]),
        "one link per sharer and object"
    );
    let token = link["token"].as_str().unwrap().to_owned();
    assert_eq!(link["link"], format!("/s/{token}"));

    // Three views; two visitors come through it, one signs up; alice's own visit does not count.
    let mut landing = String::new();
    for agent in ["a", "b", "c"] {
        let req = Request::get(format!("/s/{token}"))
            .header("user-agent", agent)
            .body(Body::empty())
            .unwrap();
        let (s, _, h) = t.send(req).await;
        assert_eq!(s, StatusCode::FOUND);
        landing = h["location"].to_str().unwrap().to_owned();
    }
    assert_eq!(
        landing,
        format!("https://app.example.com/docs/42?fw_share={token}#intro")
    );
    capture(&t, json!([
        {"event": "$pageview", "distinct_id": "anon-1", "properties": {"$current_url": landing}},
        {"event": "$identify", "distinct_id": "newbie", "properties": {"$anon_distinct_id": "anon-1"}},
        {"event": "$pageview", "distinct_id": "anon-2", "properties": {"$current_url": landing}},
        {"event": "$pageview", "distinct_id": "anon-2", "properties": {"$current_url": landing}},
        {"event": "$pageview", "distinct_id": "alice", "properties": {"$current_url": landing}},
    ]))
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let link = loop {
        let (_, v) = t.api("GET", "/share-links?sharer=alice", None).await;
        let l = v["results"][0].clone();
        if l["visitors"] == 2 && l["signups"] == 1 {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(link["views"], 3, "{link}");
    let req = Request::get("/s/unknown-token")
        .body(Body::empty())
        .unwrap();
    assert_eq!(t.send(req).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn milestones_caps_and_the_leaderboard() {
    let t = TestServer::start().await;
    let mut p = program();
    p["cap_per_referrer"] = json!(3);
    p["tiers"] = json!([{"qualified": 2, "amount": 5, "unit": "USD"}, {"qualified": 3, "amount": 15, "unit": "USD"}]);
    t.created("/referral-programs", p).await;
    let code = |who: &'static str| {
        let t = &t;
        async move {
            t.created("/referral-programs/friends/codes", json!({"referrer": who}))
                .await["code"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (alice, bob) = (code("alice").await, code("bob").await);
    let mut batch = Vec::new();
    for (who, c) in [
        ("r1", &alice),
        ("r2", &alice),
        ("r3", &alice),
        ("r4", &alice),
        ("s1", &bob),
    ] {
        batch.push(json!({"event": "$pageview", "distinct_id": who,
                          "properties": {"$current_url": format!("https://app.example.com/signup?ref={c}")}}));
    }
    capture(&t, json!(batch)).await;
    let paid: Vec<Value> = ["r1", "r2", "r3", "r4", "s1"]
        .iter()
        .map(|who| json!({"event": "subscription_started", "distinct_id": who, "properties": {"plan": "pro"}}))
        .collect();
    capture(&t, json!(paid)).await;
    let list = referrals_until(&t, "all five decided", |l| {
        l.len() == 5 && l.iter().all(|r| r["status"] != "attributed")
    })
    .await;
    let capped: Vec<&str> = list
        .iter()
        .filter(|r| r["status"] == "capped")
        .map(|r| r["referee"].as_str().unwrap())
        .collect();
    assert_eq!(
        capped,
        ["r4"],
        "the fourth is over alice's cap of 3: {list:#?}"
    );
    let (_, v) = t.api("GET", "/rewards?beneficiary=alice", None).await;
    let mut amounts: Vec<f64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["amount"].as_f64().unwrap())
        .collect();
    amounts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(
        amounts,
        [5.0, 15.0, 20.0, 20.0, 20.0],
        "three referrals and two milestones: {v:#}"
    );
    let (s, v) = t
        .api("GET", "/referral-programs/friends/leaderboard", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rows = v["results"].as_array().unwrap();
    assert_eq!(
        (
            rows[0]["referrer"].as_str(),
            rows[0]["qualified"].as_i64(),
            rows[0]["referrals"].as_i64()
        ),
        (Some("alice"), Some(3), Some(4))
    );
    assert!(rows[0]["next_milestone"].is_null());
    assert_eq!(
        (rows[1]["referrer"].as_str(), rows[1]["rank"].as_i64()),
        (Some("bob"), Some(2))
    );
    assert_eq!(rows[1]["next_milestone"]["qualified"], 2);
}

/// alice → bob (referral), bob → carol (invitation to company/acme), carol → dave (share link); returns alice's
/// referral code.
async fn growth_chain(t: &TestServer) -> String {
    t.created("/referral-programs", program()).await;
    let code = t
        .created(
            "/referral-programs/friends/codes",
            json!({"referrer": "alice"}),
        )
        .await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    // alice → bob (referral); bob → carol (invitation); carol → dave (share link).
    capture(t, json!([
        {"event": "$pageview", "distinct_id": "alice", "properties": {}},
        {"event": "$pageview", "distinct_id": "bob", "properties": {"$current_url": format!("https://app.example.com/?ref={code}")}},
    ]))
    .await;
    referrals_until(t, "bob attributed", |l| l.len() == 1).await;
    let inv = t
        .created(
            "/groups/company/acme/invitations",
            json!({"email": "carol@acme.io", "inviter": "bob"}),
        )
        .await;
    let (s, _) = t
        .api(
            "POST",
            "/invitations/accept",
            Some(json!({"token": inv["token"], "distinct_id": "carol"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let link = t
        .created("/share-links", json!({"sharer": "carol", "object_type": "doc", "object_id": "7", "url": "https://app.example.com/d/7"}))
        .await;
    capture(t, json!([
        {"event": "$pageview", "distinct_id": "dave",
         "properties": {"$current_url": format!("https://app.example.com/d/7?fw_share={}", link["token"].as_str().unwrap())}},
    ]))
    .await;
    code
}

#[tokio::test]
async fn the_growth_path_leads_back_to_the_root() {
    let t = TestServer::start().await;
    growth_chain(&t).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let path = loop {
        let (s, v) = t.api("GET", "/growth/path?person=dave", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["steps"].as_array().is_some_and(|s| s.len() == 3) {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let steps: Vec<(&str, &str, &str)> = path["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["person"].as_str().unwrap(),
                s["via"].as_str().unwrap(),
                s["from"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("dave", "share", "carol"),
            ("carol", "invitation", "bob"),
            ("bob", "referral", "alice")
        ]
    );
    assert_eq!(
        (path["root"].as_str(), path["cycle"].as_bool()),
        (Some("alice"), Some(false))
    );
    let (s, _) = t.api("GET", "/growth/path", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// Polls `GET path` until `ready` holds (the referral consumer and identity run behind capture).
async fn get_until(t: &TestServer, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, v) = t.api("GET", path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        if ready(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{path}: {v:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn edge_list(v: &Value) -> Vec<(String, String, String)> {
    v["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from_distinct_id"].as_str().unwrap().to_owned(),
                e["via"].as_str().unwrap().to_owned(),
                e["to_distinct_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_growth_graph_and_the_account_pages() {
    let t = TestServer::start().await;
    growth_chain(&t).await;
    // alice signs in as alice-login (one person); her new code, as alice-login, brings erin: a child of alice's person
    // found through her other distinct id.
    capture(&t, json!([
        {"event": "$identify", "distinct_id": "alice-login", "properties": {"$anon_distinct_id": "alice"}},
        {"event": "$groupidentify", "distinct_id": "alice-login",
         "properties": {"$group_type": "company", "$group_key": "acme", "$group_set": {"name": "Acme Inc"}}},
        {"event": "$pageview", "distinct_id": "bob", "properties": {"$groups": {"company": "acme"}}},
        {"event": "$pageview", "distinct_id": "zed", "properties": {"$groups": {"company": "zeta"}}},
    ]))
    .await;
    let code = t
        .created(
            "/referral-programs/friends/codes",
            json!({"referrer": "alice-login"}),
        )
        .await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    capture(&t, json!([
        {"event": "$pageview", "distinct_id": "erin", "properties": {"$current_url": format!("https://app.example.com/?ref={code}")}},
    ]))
    .await;

    // The project's newest edges.
    let all = get_until(&t, "/growth/graph", |v| {
        v["edges"].as_array().unwrap().len() == 4
    })
    .await;
    let mut edges = edge_list(&all);
    edges.sort();
    let e = |a: &str, via: &str, b: &str| (a.to_owned(), via.to_owned(), b.to_owned());
    assert_eq!(
        edges,
        [
            e("alice", "referral", "bob"),
            e("alice-login", "referral", "erin"),
            e("bob", "invitation", "carol"),
            e("carol", "share", "dave"),
        ]
    );
    assert_eq!(all["truncated"], false);
    // alice's two distinct ids are one node that brought two persons.
    let nodes = all["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 5, "{all:#}");
    let alice = nodes
        .iter()
        .find(|n| n["distinct_ids"].as_array().unwrap().len() == 2)
        .expect("alice's node");
    assert_eq!(
        (alice["brought"].as_u64(), alice["brought_by"].as_u64()),
        (Some(2), Some(0))
    );
    let limited = get_until(&t, "/growth/graph?limit=2", |_| true).await;
    assert_eq!(
        (
            limited["edges"].as_array().unwrap().len(),
            limited["truncated"].as_bool()
        ),
        (2, Some(true))
    );
    let shares = get_until(&t, "/growth/graph?via=share", |_| true).await;
    assert_eq!(edge_list(&shares), [e("carol", "share", "dave")]);

    // A person's neighbourhood: ancestors up to the root, descendants `depth` levels down.
    let carol = get_until(&t, "/growth/graph?person=carol&depth=1", |_| true).await;
    let mut edges = edge_list(&carol);
    edges.sort();
    assert_eq!(
        edges,
        [
            e("alice", "referral", "bob"),
            e("bob", "invitation", "carol"),
            e("carol", "share", "dave"),
        ]
    );
    let center: Vec<&Value> = carol["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["center"] == true)
        .collect();
    assert_eq!(center.len(), 1);
    assert_eq!(center[0]["distinct_ids"], json!(["carol"]));
    assert_eq!(carol["person"], "carol");
    let from_alice = get_until(&t, "/growth/graph?person=alice&depth=1", |_| true).await;
    let mut edges = edge_list(&from_alice);
    edges.sort();
    assert_eq!(
        edges,
        [
            e("alice", "referral", "bob"),
            e("alice-login", "referral", "erin")
        ]
    );
    let deep = get_until(&t, "/growth/graph?person=alice-login&depth=3", |_| true).await;
    assert_eq!(deep["edges"].as_array().unwrap().len(), 4, "{deep:#}");
    for (query, field) in [
        ("depth=0", "depth"),
        ("depth=11", "depth"),
        ("limit=0", "limit"),
        ("via=email", "via"),
    ] {
        let (s, v) = t.api("GET", &format!("/growth/graph?{query}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["errors"][0]["field"], field, "{v}");
    }
    let (s, v) = t.api("GET", "/growth/graph?person=nobody", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // Accounts: identified (acme, with a name) and known only from events (zeta), by most members.
    let groups = get_until(&t, "/groups", |v| {
        v["results"].as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(groups["group_types"][0]["group_type"], "company");
    let rows: Vec<(&str, u64)> = groups["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group_key"].as_str().unwrap(),
                g["members"].as_u64().unwrap(),
            )
        })
        .collect();
    // acme: carol (accepted the invitation) and bob.
    assert_eq!(rows, [("acme", 2), ("zeta", 1)]);
    let found = get_until(&t, "/groups?search=ACME%20inc", |_| true).await;
    assert_eq!(found["results"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["results"][0]["properties"]["name"], "Acme Inc");
    let acme = get_until(&t, "/groups/company/acme", |_| true).await;
    assert_eq!(acme["members"], 2);
    let mut members: Vec<&str> = acme["member_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["distinct_ids"][0].as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(members, ["bob", "carol"]);
    let zeta = get_until(&t, "/groups/company/zeta", |_| true).await;
    assert!(zeta["created_at"].is_null(), "{zeta}");
    let (s, _) = t.api("GET", "/groups/company/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = t.api("GET", "/groups?type=team", None).await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("type"))
    );

    // Invitations of the whole project.
    t.created(
        "/groups/company/zeta/invitations",
        json!({"email": "yan@zeta.io", "inviter": "zed"}),
    )
    .await;
    let list = get_until(&t, "/invitations", |_| true).await;
    let rows: Vec<(&str, &str)> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["group_key"].as_str().unwrap(),
                i["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("zeta", "pending"), ("acme", "accepted")]);
    let pending = get_until(&t, "/invitations?status=pending", |_| true).await;
    assert_eq!(pending["results"].as_array().unwrap().len(), 1);
    let page = get_until(&t, "/invitations?limit=1", |_| true).await;
    let next = page["next_before_id"].as_i64().expect("a next page");
    let rest = get_until(&t, &format!("/invitations?before_id={next}"), |_| true).await;
    assert_eq!(rest["results"][0]["group_key"], "acme");
    let (s, v) = t.api("GET", "/invitations?status=sent", None).await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("status"))
    );
}
