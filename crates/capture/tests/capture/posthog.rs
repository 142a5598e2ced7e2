//! PostHog decoding and normalisation.

use chrono::{DateTime, TimeDelta, Utc};
use flywheel_capture::{parse_posthog, Limits, RawRequest};
use serde_json::json;
use uuid::Uuid;

use crate::util::{b64, gzip, now, one_posthog, url_encode, Req};

const EVENT: &str =
    r#"{"api_key":"phc_k","event":"clicked","distinct_id":"u1","properties":{"$lib":"web","x":1}}"#;

fn assert_basic(e: &flywheel_capture::CapturedEvent) {
    assert_eq!(e.token, "phc_k");
    assert_eq!(e.event, "clicked");
    assert_eq!(e.distinct_id, "u1");
    assert_eq!(e.properties_map()["$lib"], "web");
    assert_eq!(e.properties_map()["x"], 1);
}

#[test]
fn plain_json_single_event() {
    let e = one_posthog(&Req::post(EVENT));
    assert_basic(&e);
    assert_eq!(e.index, 0);
    assert_eq!(e.timestamp, now());
}

#[test]
fn gzip_detected_by_magic_bytes_whatever_the_headers() {
    let body = gzip(EVENT.as_bytes());
    for (ct, ce) in [
        (None, None),
        (Some("text/plain"), None),
        (Some("application/json"), Some("identity")),
        (Some("application/x-www-form-urlencoded"), Some("br")),
        (None, Some("gzip")),
    ] {
        let mut req = Req::post(body.clone());
        req.content_type = ct.map(str::to_owned);
        req.content_encoding = ce.map(str::to_owned);
        assert_basic(&one_posthog(&req));
    }
    // compression=gzip-js in the query, as posthog-js sends it.
    assert_basic(&one_posthog(
        &Req::post(body).query("compression=gzip-js&ver=1.0"),
    ));
}

#[test]
fn gzip_header_on_a_plain_body_is_tolerated() {
    assert_basic(&one_posthog(&Req::post(EVENT).content_encoding("gzip")));
}

#[test]
fn lz64_body_with_compression_in_query() {
    let lz = lz_str::compress_to_base64(EVENT);
    let e = one_posthog(
        &Req::post(lz.clone())
            .query("ver=1.2.3&compression=lz64&_=1700000000000")
            .content_type("text/plain"),
    );
    assert_basic(&e);
}

#[test]
fn lz64_in_form_field_url_encoded() {
    // Unicode makes lz-string emit `+`, `/` and `=` often.
    let json = r#"{"api_key":"phc_k","event":"clicked","distinct_id":"u1","properties":{"$lib":"web","x":1,"t":"日本語 ✓ émoji 🎉"}}"#;
    let lz = lz_str::compress_to_base64(json);
    let body = format!("data={}&compression=lz64&ver=1", url_encode(&lz));
    let e = one_posthog(&Req::post(body).content_type("application/x-www-form-urlencoded"));
    assert_basic(&e);
    assert_eq!(e.properties_map()["t"], "日本語 ✓ émoji 🎉");

    // A client that forgot to escape `+`: form decoding makes it a space,
    // which lz64 decoding reads back as `+`.
    assert!(lz.contains('+'), "test needs a `+`: {lz}");
    let body = format!("data={lz}&compression=lz64");
    let e = one_posthog(&Req::post(body).content_type("application/x-www-form-urlencoded"));
    assert_eq!(e.properties_map()["t"], "日本語 ✓ émoji 🎉");
}

#[test]
fn compression_in_query_applies_to_form_data() {
    let lz = lz_str::compress_to_base64(EVENT);
    let body = format!("data={}", url_encode(&lz));
    let e = one_posthog(
        &Req::post(body)
            .query("compression=lz64")
            .content_type("application/x-www-form-urlencoded; charset=UTF-8"),
    );
    assert_basic(&e);
}

#[test]
fn base64_body_without_any_flag() {
    // Older posthog-js: body is base64(JSON), no compression parameter.
    assert_basic(&one_posthog(&Req::post(b64(EVENT.as_bytes()))));
}

#[test]
fn base64_body_with_compression_base64() {
    let req = Req::post(b64(EVENT.as_bytes())).query("compression=base64");
    assert_basic(&one_posthog(&req));
}

#[test]
fn form_data_base64_with_plus_and_percent_escapes() {
    // Pick a payload whose base64 contains `+` and `/`.
    let json = r#"{"api_key":"phc_k","event":"clicked","distinct_id":"u1","properties":{"$lib":"web","x":1,"s":"~~~>>>???"}}"#;
    let enc = b64(json.as_bytes());
    assert!(enc.contains('+') && enc.contains('/'), "{enc}");
    // Escaped properly.
    let e = one_posthog(
        &Req::post(format!("data={}&compression=base64", url_encode(&enc)))
            .content_type("application/x-www-form-urlencoded"),
    );
    assert_eq!(e.properties_map()["s"], "~~~>>>???");
    // `+` left raw (becomes a space in form decoding, read back as `+`).
    let e = one_posthog(
        &Req::post(format!("data={enc}&compression=base64"))
            .content_type("application/x-www-form-urlencoded"),
    );
    assert_eq!(e.properties_map()["s"], "~~~>>>???");
    // Form body sniffed without a Content-Type.
    let e = one_posthog(&Req::post(format!("data={}", url_encode(&enc))));
    assert_eq!(e.properties_map()["s"], "~~~>>>???");
}

#[test]
fn form_data_plain_json_url_encoded() {
    let body = format!("data={}", url_encode(EVENT).replace("%20", "+"));
    assert_basic(&one_posthog(
        &Req::post(body).content_type("application/x-www-form-urlencoded"),
    ));
}

#[test]
fn get_with_data_in_query() {
    let q = format!(
        "data={}&ip=1&_=1700000000",
        url_encode(&b64(EVENT.as_bytes()))
    );
    let p = Req::get(q).posthog().unwrap();
    assert_basic(&p.events[0]);
    assert!(!p.beacon);

    let lz = lz_str::compress_to_base64(EVENT);
    let q = format!("compression=lz64&data={}", url_encode(&lz));
    assert_basic(&one_posthog(&Req::get(q)));

    // URL-encoded JSON directly.
    let q = format!("data={}", url_encode(EVENT));
    assert_basic(&one_posthog(&Req::get(q)));
}

#[test]
fn beacon_flag_from_query_or_form() {
    let p = Req::post(EVENT).query("beacon=1").posthog().unwrap();
    assert!(p.beacon);
    let p = Req::post(EVENT).query("beacon=0").posthog().unwrap();
    assert!(!p.beacon);
    let p = Req::post(format!("data={}&beacon=1", url_encode(EVENT)))
        .content_type("application/x-www-form-urlencoded")
        .posthog()
        .unwrap();
    assert!(p.beacon);
    let p = Req::post(EVENT).posthog().unwrap();
    assert!(!p.beacon);
}

#[test]
fn token_precedence() {
    let body = json!({
        "api_key": "batch_key",
        "batch": [
            {"event": "e", "distinct_id": "d", "api_key": "ev_api_key", "token": "ev_token", "$token": "ev_dollar", "properties": {"token": "prop"}},
            {"event": "e", "distinct_id": "d", "token": "ev_token", "$token": "ev_dollar", "properties": {"token": "prop"}},
            {"event": "e", "distinct_id": "d", "$token": "ev_dollar", "properties": {"token": "prop"}},
            {"event": "e", "distinct_id": "d", "properties": {"token": "prop"}},
            {"event": "e", "distinct_id": "d"},
            {"event": "e", "distinct_id": "d", "api_key": null},
        ]
    });
    let p = Req::post(body.to_string()).posthog().unwrap();
    let tokens: Vec<&str> = p.events.iter().map(|e| e.token.as_str()).collect();
    assert_eq!(
        tokens,
        [
            "ev_api_key",
            "ev_token",
            "ev_dollar",
            "prop",
            "batch_key",
            "batch_key"
        ]
    );
    // Token fields never leak into properties.
    for e in &p.events {
        assert!(
            !e.properties_map().contains_key("token"),
            "{:?}",
            e.properties
        );
    }
    // `token` works as the batch-level key too.
    let body = json!({"token": "tk", "batch": [{"event": "e", "distinct_id": "d"}]});
    assert_eq!(
        Req::post(body.to_string()).posthog().unwrap().events[0].token,
        "tk"
    );
}

#[test]
fn missing_token_per_event_and_per_request() {
    let body = json!([
        {"event": "e", "distinct_id": "d", "api_key": "k"},
        {"event": "e", "distinct_id": "d"},
    ]);
    let p = Req::post(body.to_string()).posthog().unwrap();
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.rejected.len(), 1);
    assert_eq!(p.rejected[0].index, 1);
    assert_eq!(p.rejected[0].code, "missing_token");

    let body = json!([{"event": "e", "distinct_id": "d"}]);
    let err = Req::post(body.to_string()).posthog().unwrap_err();
    assert_eq!((err.code(), err.status()), ("missing_token", 401));
    assert_eq!(err.to_string(), "no API key or token in the request");
}

#[test]
fn distinct_id_locations_and_numbers() {
    let body = json!({"api_key": "k", "batch": [
        {"event": "e", "distinct_id": "top", "$distinct_id": "dollar", "properties": {"distinct_id": "p", "$distinct_id": "pd"}},
        {"event": "e", "$distinct_id": "dollar", "properties": {"distinct_id": "p"}},
        {"event": "e", "properties": {"distinct_id": "p", "$distinct_id": "pd"}},
        {"event": "e", "properties": {"$distinct_id": "pd"}},
        {"event": "e", "distinct_id": 12345},
        {"event": "e", "distinct_id": 1.5},
        {"event": "e", "distinct_id": -7},
        {"event": "e", "distinct_id": null, "properties": {"distinct_id": "fallback"}},
    ]});
    let p = Req::post(body.to_string()).posthog().unwrap();
    assert!(p.rejected.is_empty(), "{:?}", p.rejected);
    let ids: Vec<&str> = p.events.iter().map(|e| e.distinct_id.as_str()).collect();
    assert_eq!(
        ids,
        ["top", "dollar", "p", "pd", "12345", "1.5", "-7", "fallback"]
    );
    for e in &p.events {
        assert!(!e.properties_map().contains_key("distinct_id"));
        assert!(!e.properties_map().contains_key("$distinct_id"));
    }
}

#[test]
fn suspicious_distinct_ids_are_accepted() {
    let ids = [
        "undefined",
        "null",
        "None",
        "[object Object]",
        "NaN",
        "0",
        "anonymous",
        "guest",
        "distinctid",
        "distinct_id",
        "id",
        "not_authenticated",
        "email",
        "true",
        "false",
        "UNDEFINED",
    ];
    let batch: Vec<_> = ids
        .iter()
        .map(|d| json!({"event": "e", "distinct_id": d}))
        .collect();
    let p = Req::post(json!({"api_key": "k", "batch": batch}).to_string())
        .posthog()
        .unwrap();
    assert!(p.rejected.is_empty(), "{:?}", p.rejected);
    let got: Vec<&str> = p.events.iter().map(|e| e.distinct_id.as_str()).collect();
    assert_eq!(got, ids);
}

#[test]
fn distinct_id_and_event_length_limits() {
    let body = json!({"api_key": "k", "batch": [
        {"event": "e", "distinct_id": "a".repeat(200)},
        {"event": "e", "distinct_id": "a".repeat(201)},
        {"event": "e", "distinct_id": "é".repeat(200)},
        {"event": "x".repeat(200), "distinct_id": "d"},
        {"event": "x".repeat(201), "distinct_id": "d"},
    ]});
    let p = Req::post(body.to_string()).posthog().unwrap();
    let kept: Vec<usize> = p.events.iter().map(|e| e.index).collect();
    assert_eq!(kept, [0, 2, 3]);
    let rejected: Vec<(usize, &str)> = p.rejected.iter().map(|e| (e.index, e.code)).collect();
    assert_eq!(rejected, [(1, "invalid_distinct_id"), (4, "invalid_event")]);
    assert_eq!(
        p.rejected[0].message,
        "batch[1].distinct_id: longer than 200 characters"
    );
}

#[test]
fn person_operations_are_merged_into_properties() {
    let body = json!({
        "api_key": "k", "event": "$identify", "distinct_id": "d",
        "$set": {"a": "top", "b": "top"},
        "$set_once": {"first": 1},
        "$unset": ["x", "y"],
        "properties": {"$set": {"b": "props", "c": "props"}, "$unset": ["y", "z"]}
    });
    let e = one_posthog(&Req::post(body.to_string()));
    assert_eq!(
        e.properties_map()["$set"],
        json!({"a": "top", "b": "props", "c": "props"})
    );
    assert_eq!(e.properties_map()["$set_once"], json!({"first": 1}));
    assert_eq!(e.properties_map()["$unset"], json!(["y", "z", "x"]));
}

#[test]
fn engage_bodies_become_set_events() {
    let body = json!({"$token": "k", "$distinct_id": "d", "$set": {"plan": "pro"}, "$set_once": {"first_seen": "x"}});
    let e = one_posthog(&Req::post(body.to_string()));
    assert_eq!(e.event, "$set");
    assert_eq!(e.token, "k");
    assert_eq!(e.distinct_id, "d");
    assert_eq!(e.properties_map()["$set"], json!({"plan": "pro"}));
    assert_eq!(e.properties_map()["$set_once"], json!({"first_seen": "x"}));
    // Base64 form-encoded, as the Mixpanel-style /engage sends it.
    let form = format!("data={}", url_encode(&b64(body.to_string().as_bytes())));
    let e = one_posthog(&Req::post(form).content_type("application/x-www-form-urlencoded"));
    assert_eq!(e.event, "$set");
}

#[test]
fn unknown_fields_are_dropped_properties_kept() {
    let body = json!({"api_key": "k", "event": "e", "distinct_id": "d", "library": "x", "ip": "1.2.3.4",
        "properties": {"$lib": "posthog-js", "$lib_version": "1.0", "nested": {"a": [1, 2]}}});
    let e = one_posthog(&Req::post(body.to_string()));
    assert_eq!(
        serde_json::Value::Object(e.properties_map()),
        json!({"$lib": "posthog-js", "$lib_version": "1.0", "nested": {"a": [1, 2]}})
    );
}

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn clock_skew_correction_and_precedence() {
    let body = json!({"api_key": "k", "sent_at": "2024-06-01T10:00:00Z", "batch": [
        // Client clock 2 h behind: captured 1 minute before sending.
        {"event": "e", "distinct_id": "d", "timestamp": "2024-06-01T09:59:00Z"},
        // Per-event sent_at overrides the batch one.
        {"event": "e", "distinct_id": "d", "timestamp": "2024-06-01T09:59:00Z", "sent_at": "2024-06-01T09:59:30Z"},
        // No timestamp: offset.
        {"event": "e", "distinct_id": "d", "offset": 5000},
        // Nothing: now.
        {"event": "e", "distinct_id": "d"},
        // Epoch milliseconds.
        {"event": "e", "distinct_id": "d", "timestamp": 1_717_236_000_000i64},
        // With a time zone offset.
        {"event": "e", "distinct_id": "d", "timestamp": "2024-06-01T11:59:00+02:00"},
    ]});
    let p = Req::post(body.to_string()).posthog().unwrap();
    let times: Vec<DateTime<Utc>> = p.events.iter().map(|e| e.timestamp).collect();
    assert_eq!(
        times,
        [
            ts("2024-06-01T11:59:00Z"),
            ts("2024-06-01T11:59:30Z"),
            ts("2024-06-01T11:59:55Z"),
            now(),
            // 1_717_236_000_000 ms = 2024-06-01T10:00:00Z, minus sent_at 10:00 → now
            now(),
            // 09:59 UTC vs sent_at 10:00 → now - 1 min
            ts("2024-06-01T11:59:00Z"),
        ]
    );
}

#[test]
fn timestamp_without_sent_at_is_used_as_is() {
    let body = json!({"api_key": "k", "event": "e", "distinct_id": "d", "timestamp": "2024-05-01T00:00:00"});
    assert_eq!(
        one_posthog(&Req::post(body.to_string())).timestamp,
        ts("2024-05-01T00:00:00Z")
    );
}

#[test]
fn historical_migration_skips_skew_correction() {
    let body = json!({"api_key": "k", "historical_migration": true, "sent_at": "2024-06-01T10:00:00Z", "batch": [
        {"event": "e", "distinct_id": "d", "timestamp": "2021-01-01T00:00:00Z"},
    ]});
    let p = Req::post(body.to_string()).posthog().unwrap();
    assert!(p.historical_migration);
    assert_eq!(p.events[0].timestamp, ts("2021-01-01T00:00:00Z"));

    let body = json!({"api_key": "k", "sent_at": "2024-06-01T10:00:00Z", "batch": [
        {"event": "e", "distinct_id": "d", "timestamp": "2021-01-01T00:00:00Z"},
    ]});
    let p = Req::post(body.to_string()).posthog().unwrap();
    assert!(!p.historical_migration);
    assert_ne!(p.events[0].timestamp, ts("2021-01-01T00:00:00Z"));
}

#[test]
fn future_timestamps_are_clamped_after_23_hours() {
    let inside = now() + TimeDelta::hours(22);
    let outside = now() + TimeDelta::hours(24);
    let body = json!({"api_key": "k", "batch": [
        {"event": "e", "distinct_id": "d", "timestamp": inside.to_rfc3339()},
        {"event": "e", "distinct_id": "d", "timestamp": outside.to_rfc3339()},
        // Skew correction that lands 2 days ahead.
        {"event": "e", "distinct_id": "d", "timestamp": "2024-06-03T00:00:00Z", "sent_at": "2024-06-01T00:00:00Z"},
    ]});
    let p = Req::post(body.to_string()).posthog().unwrap();
    assert_eq!(p.events[0].timestamp, inside);
    assert_eq!(p.events[1].timestamp, now());
    assert_eq!(p.events[2].timestamp, now());
}

#[test]
fn uuid_given_generated_and_validated() {
    let given = "0190c5a4-1c2b-7d3e-8f40-123456789abc";
    let body = json!({"api_key": "k", "batch": [
        {"event": "e", "distinct_id": "d", "uuid": given},
        {"event": "e", "distinct_id": "d"},
        {"event": "e", "distinct_id": "d"},
        {"event": "e", "distinct_id": "d", "uuid": "not-a-uuid"},
        {"event": "e", "distinct_id": "d", "uuid": 12},
        {"event": "e", "distinct_id": "d", "uuid": "00000000-0000-0000-0000-000000000000"},
        {"event": "e", "distinct_id": "d", "uuid": given.to_uppercase()},
    ]});
    let p = Req::post(body.to_string()).posthog().unwrap();
    assert_eq!(p.events.len(), 4);
    assert_eq!(p.events[0].uuid, Uuid::parse_str(given).unwrap());
    assert_eq!(p.events[3].uuid, Uuid::parse_str(given).unwrap());
    let (a, b) = (p.events[1].uuid, p.events[2].uuid);
    assert_eq!(a.get_version_num(), 7);
    assert_eq!(b.get_version_num(), 7);
    assert_ne!(a, b);
    let rejected: Vec<(usize, &str)> = p.rejected.iter().map(|e| (e.index, e.code)).collect();
    assert_eq!(
        rejected,
        [
            (3, "invalid_uuid"),
            (4, "invalid_uuid"),
            (5, "invalid_uuid")
        ]
    );
    assert_eq!(
        p.rejected[0].message,
        "batch[3].uuid: not a valid UUID: \"not-a-uuid\""
    );
}

#[test]
fn top_level_array_and_single_object_messages() {
    let body = json!([{"api_key": "k", "event": "e", "distinct_id": "d"}, {"api_key": "k", "distinct_id": "d"}]);
    let p = Req::post(body.to_string()).posthog().unwrap();
    assert_eq!(p.events[0].index, 0);
    assert_eq!(p.rejected[0].message, "batch[1].event: missing");

    let body = json!({"api_key": "k", "event": "e"});
    let p = Req::post(body.to_string()).posthog().unwrap();
    assert!(p.events.is_empty());
    assert_eq!(p.rejected[0].index, 0);
    assert_eq!(p.rejected[0].message, "distinct_id: missing");
}

#[test]
fn request_error_messages_name_the_problem() {
    let err = Req::post(r#"{"batch": 5}"#).posthog().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid payload: `batch` must be an array, got a number"
    );
    let err = Req::post(r#"{"api_key": "k", "batch": []}"#)
        .posthog()
        .unwrap_err();
    assert_eq!(err.to_string(), "the batch contains no events");
    let err = Req::post(r#"{"api_key": 3, "batch": [{}]}"#)
        .posthog()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid `api_key`: expected a non-empty string"
    );
    assert_eq!(err.status(), 401);
    let err = Req::post(b"{\"event\": \"\xff\"}".to_vec())
        .posthog()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "body is not valid UTF-8 (invalid byte sequence at offset 11)"
    );
}

#[test]
fn max_events_limit() {
    let batch: Vec<_> = (0..5)
        .map(|_| json!({"event": "e", "distinct_id": "d"}))
        .collect();
    let body = json!({"api_key": "k", "batch": batch}).to_string();
    let limits = Limits {
        max_events: 4,
        ..Limits::default()
    };
    let err = parse_posthog(&RawRequest::post(body.as_bytes()), &limits, now()).unwrap_err();
    assert_eq!((err.code(), err.status()), ("too_many_events", 413));
    let limits = Limits {
        max_events: 5,
        ..Limits::default()
    };
    assert_eq!(
        parse_posthog(&RawRequest::post(body.as_bytes()), &limits, now())
            .unwrap()
            .events
            .len(),
        5
    );
}

#[test]
fn depth_limit_is_configurable() {
    let body = r#"{"api_key":"k","event":"e","distinct_id":"d","properties":{"a":{"b":{"c":1}}}}"#;
    let limits = |d| Limits {
        max_json_depth: d,
        ..Limits::default()
    };
    assert!(parse_posthog(&RawRequest::post(body.as_bytes()), &limits(4), now()).is_ok());
    let err = parse_posthog(&RawRequest::post(body.as_bytes()), &limits(3), now()).unwrap_err();
    assert_eq!(err.code(), "json_too_deep");
}

#[test]
fn decompressed_limit_applies_to_every_encoding() {
    let big = format!(
        r#"{{"api_key":"k","event":"e","distinct_id":"d","properties":{{"pad":"{}"}}}}"#,
        "x".repeat(10_000)
    );
    let limits = Limits {
        max_decompressed_bytes: 5_000,
        ..Limits::default()
    };
    let lz = lz_str::compress_to_base64(big.as_str());
    let gz = gzip(big.as_bytes());
    let b = b64(big.as_bytes());
    let reqs = [
        Req::post(big.clone()),
        Req::post(gz),
        Req::post(lz.clone()).query("compression=lz64"),
        Req::post(format!("data={}&compression=lz64", url_encode(&lz))),
        Req::post(b),
    ];
    for req in reqs {
        assert!(req.body.len() < 20_000);
        let err = parse_posthog(&req.raw(), &limits, now()).unwrap_err();
        assert_eq!(err.code(), "payload_too_large", "{req:?}");
    }
}

/// Plain JSON bodies take the fast path (properties kept as raw text); the same batch sent as base64 form data
/// takes the general path. Both must give the same events and the same rejections.
#[test]
fn fast_and_general_paths_agree() {
    use base64::Engine as _;
    let bodies = [
        json!({"api_key": "k", "sent_at": "2026-01-01T00:00:10Z", "batch": [
            {"event": "a", "distinct_id": "d", "uuid": "0190a0a0-0000-7000-8000-000000000001", "timestamp": "2026-01-01T00:00:00Z",
             "properties": {"x": [1, {"y": null}], "token": "t2", "distinct_id": "other", "$lib": "web", "n": 1.5e3, "s": "é\"\\"}},
            {"event": "b", "uuid": "0190a0a0-0000-7000-8000-000000000002", "properties": {"distinct_id": 42, "$set": {"a": 1}}},
            {"event": "c", "distinct_id": "d", "uuid": "0190a0a0-0000-7000-8000-000000000003", "$set": {"p": 1}, "properties": {"$set": {"q": 2}}},
            {"event": "d", "distinct_id": null, "uuid": "0190a0a0-0000-7000-8000-000000000004"},
            {"event": "e", "distinct_id": "d", "uuid": "0190a0a0-0000-7000-8000-000000000005", "properties": "nope"},
            {"event": "f", "distinct_id": "d", "uuid": "bad"},
            {"event": "g", "$distinct_id": "dd", "uuid": "0190a0a0-0000-7000-8000-000000000007", "properties": null, "offset": 500},
        ]}),
        json!([{"event": "h", "distinct_id": "d", "api_key": "k", "uuid": "0190a0a0-0000-7000-8000-000000000008", "properties": {"token": "x"}}]),
        json!({"event": "i", "distinct_id": "d", "token": "k", "uuid": "0190a0a0-0000-7000-8000-000000000009", "properties": {}}),
        json!({"api_key": 5, "batch": [{"event": "j", "distinct_id": "d"}]}),
    ];
    let now = chrono::Utc::now();
    for body in bodies {
        let text = body.to_string();
        let fast = parse_posthog(&RawRequest::post(text.as_bytes()), &Limits::default(), now);
        let form = format!(
            "data={}&compression=base64",
            base64::engine::general_purpose::STANDARD
                .encode(&text)
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        );
        let mut req = RawRequest::post(form.as_bytes());
        req.content_type = Some("application/x-www-form-urlencoded");
        let general = parse_posthog(&req, &Limits::default(), now);
        match (fast, general) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.rejected, b.rejected, "{text}");
                assert_eq!(a.events.len(), b.events.len(), "{text}");
                for (x, y) in a.events.iter().zip(&b.events) {
                    assert_eq!(
                        (
                            x.index,
                            &x.token,
                            x.uuid,
                            &x.event,
                            &x.distinct_id,
                            x.timestamp
                        ),
                        (
                            y.index,
                            &y.token,
                            y.uuid,
                            &y.event,
                            &y.distinct_id,
                            y.timestamp
                        ),
                        "{text}"
                    );
                    assert_eq!(x.properties_map(), y.properties_map(), "{text}");
                }
            }
            (Err(a), Err(b)) => assert_eq!(a.code(), b.code(), "{text}"),
            (a, b) => panic!("paths disagree on {text}: {a:?} vs {b:?}"),
        }
    }
}
