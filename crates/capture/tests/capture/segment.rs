//! Segment mapping.

use chrono::{DateTime, Utc};
use flywheel_capture::{message_id_uuid, SegmentCall};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::util::{gzip, now, one_segment, Req};

fn props(e: &flywheel_capture::CapturedEvent) -> Value {
    Value::Object(e.properties_map())
}

#[test]
fn track_maps_event_and_properties() {
    let body = json!({"userId": "u1", "event": "Order Completed", "properties": {"total": 9.5}, "writeKey": "wk"});
    let e = one_segment(SegmentCall::Track, &Req::post(body.to_string()));
    assert_eq!(
        (e.event.as_str(), e.distinct_id.as_str(), e.token.as_str()),
        ("Order Completed", "u1", "wk")
    );
    assert_eq!(props(&e), json!({"total": 9.5}));
}

#[test]
fn track_uses_anonymous_id_when_no_user_id_and_numeric_ids() {
    let body = json!({"anonymousId": "anon", "event": "e"});
    let e = one_segment(SegmentCall::Track, &Req::post(body.to_string()).basic("wk"));
    assert_eq!(e.distinct_id, "anon");
    let body = json!({"userId": 42, "anonymousId": "anon", "event": "e"});
    let e = one_segment(SegmentCall::Track, &Req::post(body.to_string()).basic("wk"));
    assert_eq!(e.distinct_id, "42");
    // An empty userId counts as absent.
    let body = json!({"userId": "", "anonymousId": "anon", "event": "e"});
    let e = one_segment(SegmentCall::Track, &Req::post(body.to_string()).basic("wk"));
    assert_eq!(e.distinct_id, "anon");
}

#[test]
fn identify_maps_traits_to_set() {
    let body =
        json!({"userId": "u1", "anonymousId": "a1", "traits": {"email": "x@y.z", "plan": "pro"}});
    let e = one_segment(
        SegmentCall::Identify,
        &Req::post(body.to_string()).basic("wk"),
    );
    assert_eq!(e.event, "$identify");
    assert_eq!(e.distinct_id, "u1");
    assert_eq!(
        props(&e),
        json!({"$set": {"email": "x@y.z", "plan": "pro"}, "$anon_distinct_id": "a1"})
    );
    // Only one id: no $anon_distinct_id.
    let body = json!({"userId": "u1", "traits": {"plan": "pro"}});
    let e = one_segment(
        SegmentCall::Identify,
        &Req::post(body.to_string()).basic("wk"),
    );
    assert_eq!(props(&e), json!({"$set": {"plan": "pro"}}));
}

#[test]
fn alias_maps_previous_id() {
    let body = json!({"userId": "new", "previousId": "old"});
    let e = one_segment(SegmentCall::Alias, &Req::post(body.to_string()).basic("wk"));
    assert_eq!(
        (e.event.as_str(), e.distinct_id.as_str()),
        ("$create_alias", "new")
    );
    assert_eq!(props(&e), json!({"alias": "old"}));
    // Alias needs a userId; anonymousId alone is not enough.
    let body = json!({"anonymousId": "a", "previousId": "old"});
    let p = Req::post(body.to_string())
        .basic("wk")
        .segment(SegmentCall::Alias)
        .unwrap();
    assert_eq!(p.rejected[0].code, "missing_user_id");
}

#[test]
fn group_maps_type_key_and_set() {
    let body =
        json!({"userId": "u1", "groupId": "acme", "traits": {"name": "Acme", "employees": 10}});
    let e = one_segment(SegmentCall::Group, &Req::post(body.to_string()).basic("wk"));
    assert_eq!(e.event, "$groupidentify");
    assert_eq!(
        props(&e),
        json!({
            "$group_type": "company",
            "$group_key": "acme",
            "$group_set": {"name": "Acme", "employees": 10},
            "$groups": {"company": "acme"}
        })
    );
    let body =
        json!({"userId": "u1", "groupId": 7, "traits": {"$group_type": "team", "name": "T"}});
    let e = one_segment(SegmentCall::Group, &Req::post(body.to_string()).basic("wk"));
    assert_eq!(
        props(&e),
        json!({"$group_type": "team", "$group_key": "7", "$group_set": {"name": "T"}, "$groups": {"team": "7"}})
    );
}

#[test]
fn page_maps_name_and_url() {
    let body = json!({"userId": "u1", "name": "Pricing", "properties": {"url": "https://x.io/pricing", "path": "/pricing"},
        "context": {"page": {"url": "https://ignored.example"}}});
    let e = one_segment(SegmentCall::Page, &Req::post(body.to_string()).basic("wk"));
    assert_eq!(e.event, "$pageview");
    assert_eq!(
        props(&e),
        json!({"name": "Pricing", "url": "https://x.io/pricing", "path": "/pricing",
               "$current_url": "https://x.io/pricing", "$pathname": "/pricing"})
    );
    // URL from context when properties have none.
    let body = json!({"userId": "u1", "context": {"page": {"url": "https://ctx.example/a"}}});
    let e = one_segment(SegmentCall::Page, &Req::post(body.to_string()).basic("wk"));
    assert_eq!(e.properties_map()["$current_url"], "https://ctx.example/a");
}

#[test]
fn screen_maps_name() {
    let body = json!({"userId": "u1", "name": "Home", "properties": {"tab": 2}});
    let e = one_segment(
        SegmentCall::Screen,
        &Req::post(body.to_string()).basic("wk"),
    );
    assert_eq!(e.event, "$screen");
    assert_eq!(props(&e), json!({"$screen_name": "Home", "tab": 2}));
}

#[test]
fn context_is_mapped_without_overriding_properties() {
    let body = json!({"userId": "u1", "event": "e",
    "properties": {"$os": "explicit"},
    "context": {
        "ip": "203.0.113.9",
        "library": {"name": "analytics-node", "version": "6.0.0"},
        "page": {"url": "https://x.io/", "referrer": "https://r.io/"},
        "userAgent": "Mozilla/5.0",
        "os": {"name": "Linux", "version": "6"},
        "campaign": {"source": "news"},
        "unmapped": {"x": 1}
    }});
    let e = one_segment(SegmentCall::Track, &Req::post(body.to_string()).basic("wk"));
    assert_eq!(
        props(&e),
        json!({
            "$os": "explicit",
            "$os_version": "6",
            "$ip": "203.0.113.9",
            "$lib": "analytics-node",
            "$lib_version": "6.0.0",
            "$current_url": "https://x.io/",
            "$referrer": "https://r.io/",
            "$raw_user_agent": "Mozilla/5.0",
            "utm_source": "news"
        })
    );
}

#[test]
fn batch_with_every_type_and_batch_context() {
    let body = json!({
        "writeKey": "batch_wk",
        "context": {"library": {"name": "analytics-python", "version": "2.0"}},
        "batch": [
            {"type": "track", "userId": "u", "event": "e1", "context": {"library": {"name": "override"}}},
            {"type": "identify", "userId": "u", "traits": {"a": 1}},
            {"type": "group", "userId": "u", "groupId": "g"},
            {"type": "alias", "userId": "u", "previousId": "p"},
            {"type": "page", "userId": "u", "name": "P"},
            {"type": "Screen", "userId": "u", "name": "S"},
            {"type": "bogus", "userId": "u"},
            {"userId": "u", "event": "no type"},
            {"type": "track", "userId": "u", "event": "own key", "writeKey": "msg_wk"},
        ]
    });
    let p = Req::post(body.to_string())
        .segment(SegmentCall::Batch)
        .unwrap();
    let names: Vec<&str> = p.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "e1",
            "$identify",
            "$groupidentify",
            "$create_alias",
            "$pageview",
            "$screen",
            "own key"
        ]
    );
    let idx: Vec<usize> = p.events.iter().map(|e| e.index).collect();
    assert_eq!(idx, [0, 1, 2, 3, 4, 5, 8]);
    let rejected: Vec<(usize, &str)> = p.rejected.iter().map(|e| (e.index, e.code)).collect();
    assert_eq!(rejected, [(6, "invalid_type"), (7, "missing_type")]);
    // Message context wins key by key over the batch context.
    assert_eq!(p.events[0].properties_map()["$lib"], "override");
    assert!(p.events[0].properties_map().get("$lib_version").is_none());
    assert_eq!(p.events[1].properties_map()["$lib"], "analytics-python");
    assert_eq!(p.events[1].properties_map()["$lib_version"], "2.0");
    assert_eq!(p.events[0].token, "batch_wk");
    assert_eq!(p.events[6].token, "msg_wk");
}

#[test]
fn write_key_precedence() {
    let batch = |wk: Option<&str>| {
        let mut b = json!({"batch": [
            {"type": "track", "userId": "u", "event": "e", "writeKey": "msg"},
            {"type": "track", "userId": "u", "event": "e"},
        ]});
        if let Some(wk) = wk {
            b["writeKey"] = json!(wk);
        }
        b.to_string()
    };
    let tokens =
        |p: flywheel_capture::Payload| p.events.into_iter().map(|e| e.token).collect::<Vec<_>>();
    let p = Req::post(batch(Some("body")))
        .basic("basic")
        .segment(SegmentCall::Batch)
        .unwrap();
    assert_eq!(tokens(p), ["msg", "body"]);
    let p = Req::post(batch(None))
        .basic("basic")
        .segment(SegmentCall::Batch)
        .unwrap();
    assert_eq!(tokens(p), ["msg", "basic"]);
    let p = Req::post(batch(None)).segment(SegmentCall::Batch).unwrap();
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.rejected[0].code, "missing_token");
    // Empty basic user counts as absent.
    let body = json!({"userId": "u", "event": "e"}).to_string();
    let err = Req::post(body)
        .basic("")
        .segment(SegmentCall::Track)
        .unwrap_err();
    assert_eq!((err.code(), err.status()), ("missing_token", 401));
}

#[test]
fn message_id_to_stable_uuid() {
    let body =
        json!({"userId": "u", "event": "e", "messageId": "ajs-next-1717236000000-abc"}).to_string();
    let a = one_segment(SegmentCall::Track, &Req::post(body.clone()).basic("wk")).uuid;
    let b = one_segment(SegmentCall::Track, &Req::post(body).basic("wk")).uuid;
    assert_eq!(a, b);
    assert_eq!(a, message_id_uuid("ajs-next-1717236000000-abc"));
    assert_eq!(a.get_version_num(), 8);
    assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
    assert_ne!(a, message_id_uuid("ajs-next-1717236000000-abd"));

    // A UUID messageId is used directly.
    let id = "5f1c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f";
    let body = json!({"userId": "u", "event": "e", "messageId": id}).to_string();
    let e = one_segment(SegmentCall::Track, &Req::post(body).basic("wk"));
    assert_eq!(e.uuid, Uuid::parse_str(id).unwrap());

    // No messageId: random v7, different each time.
    let body = json!({"userId": "u", "event": "e"}).to_string();
    let a = one_segment(SegmentCall::Track, &Req::post(body.clone()).basic("wk")).uuid;
    let b = one_segment(SegmentCall::Track, &Req::post(body).basic("wk")).uuid;
    assert_eq!(a.get_version_num(), 7);
    assert_ne!(a, b);
}

#[test]
fn clock_skew_with_sent_at() {
    let ts = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let body = json!({"writeKey": "wk", "sentAt": "2024-06-01T08:00:00Z", "batch": [
        {"type": "track", "userId": "u", "event": "e", "timestamp": "2024-06-01T07:58:00Z"},
        {"type": "track", "userId": "u", "event": "e", "originalTimestamp": "2024-06-01T07:59:00Z"},
        {"type": "track", "userId": "u", "event": "e", "timestamp": "2024-06-01T07:58:00Z", "sentAt": "2024-06-01T07:58:30Z"},
        {"type": "track", "userId": "u", "event": "e"},
    ]});
    let p = Req::post(body.to_string())
        .segment(SegmentCall::Batch)
        .unwrap();
    let times: Vec<_> = p.events.iter().map(|e| e.timestamp).collect();
    assert_eq!(
        times,
        [
            ts("2024-06-01T11:58:00Z"),
            ts("2024-06-01T11:59:00Z"),
            ts("2024-06-01T11:59:30Z"),
            now()
        ]
    );
    // Without sentAt the timestamp is used as is.
    let body = json!({"userId": "u", "event": "e", "timestamp": "2024-01-02T03:04:05.678Z"});
    let e = one_segment(SegmentCall::Track, &Req::post(body.to_string()).basic("wk"));
    assert_eq!(e.timestamp, ts("2024-01-02T03:04:05.678Z"));
}

#[test]
fn gzip_body_and_type_field_ignored_on_single_calls() {
    let body = json!({"type": "identify", "userId": "u", "event": "Signed Up"}).to_string();
    let req = Req::post(gzip(body.as_bytes()))
        .content_type("application/json")
        .basic("wk");
    let e = one_segment(SegmentCall::Track, &req);
    assert_eq!(e.event, "Signed Up");
}

#[test]
fn call_names() {
    assert_eq!(SegmentCall::from_name("batch"), Some(SegmentCall::Batch));
    assert_eq!(SegmentCall::from_name("import"), Some(SegmentCall::Batch));
    assert_eq!(
        SegmentCall::from_name("Identify"),
        Some(SegmentCall::Identify)
    );
    assert_eq!(SegmentCall::from_name("screen"), Some(SegmentCall::Screen));
    assert_eq!(SegmentCall::from_name("engage"), None);
}
