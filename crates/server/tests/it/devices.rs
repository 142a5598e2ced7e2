//! The `same_device` fraud signal: a referee who clicks the link from the referrer's own device (same address and
//! user agent) is held for review; an honest referee from another device passes.

use axum::http::StatusCode;
use serde_json::json;

use crate::growth::{capture, click};
use crate::TestServer;

#[tokio::test]
async fn a_referee_on_the_referrers_device_is_held() {
    let t = TestServer::start().await;
    t.created(
        "/referral-programs",
        json!({"key": "friends", "name": "Friends", "landing_url": "https://app.example.com/join",
               "qualify": {"event": "subscription_started"},
               "rewards": {"referrer": {"amount": 10, "unit": "USD"}}}),
    )
    .await;
    let code = t
        .created(
            "/referral-programs/friends/codes",
            json!({"referrer": "rita"}),
        )
        .await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    // Rita uses the product from her browser (the SDK sends the raw user agent; the server adds `$ip`).
    capture(
        &t,
        json!([{"event": "$pageview", "distinct_id": "rita",
                "properties": {"$raw_user_agent": "Mozilla/5.0 (Rita's laptop)"}}]),
    )
    .await;
    assert_eq!(t.events("distinct_id=rita").await.len(), 1);

    // A second account made from her laptop, and an honest friend on another device.
    let (s, h) = click(&t, &code, "Mozilla/5.0 (Rita's laptop)").await;
    assert_eq!(s, StatusCode::FOUND);
    let puppet_landing = h["location"].to_str().unwrap().to_owned();
    let (_, h) = click(&t, &code, "Mozilla/5.0 (Sam's phone)").await;
    let friend_landing = h["location"].to_str().unwrap().to_owned();
    capture(
        &t,
        json!([
            {"event": "$pageview", "distinct_id": "puppet", "properties": {"$current_url": puppet_landing}},
            {"event": "$pageview", "distinct_id": "sam", "properties": {"$current_url": friend_landing}},
        ]),
    )
    .await;
    capture(
        &t,
        json!([
            {"event": "subscription_started", "distinct_id": "puppet"},
            {"event": "subscription_started", "distinct_id": "sam"},
        ]),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let list = loop {
        let (_, v) = t
            .api("GET", "/referral-programs/friends/referrals", None)
            .await;
        let list = v["results"].as_array().unwrap().clone();
        if list.iter().filter(|r| r["status"] != "attributed").count() == 2 {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let by = |who: &str| list.iter().find(|r| r["referee"] == who).unwrap().clone();
    assert_eq!(by("puppet")["status"], "held", "{list:#?}");
    assert_eq!(by("puppet")["signals"], json!(["same_device"]));
    assert_eq!(by("puppet")["risk_score"], 60);
    assert_eq!(by("sam")["status"], "qualified", "{list:#?}");
    assert_eq!(by("sam")["signals"], json!([]));
}
