//! Table of malformed inputs: each either fails the whole request with a given
//! code and status, or rejects given batch indices with given codes while the
//! other events are kept.

use flywheel_capture::{parse_posthog, parse_segment, Limits, SegmentCall};
use serde_json::json;

use crate::util::{b64, gzip, lz64_bomb, now, url_encode, Req};

#[derive(Debug, Clone, Copy)]
enum Api {
    PostHog,
    Segment(SegmentCall),
}

#[derive(Debug)]
enum Expect {
    /// Whole request rejected: code and HTTP status.
    Request(&'static str, u16),
    /// Request accepted: indices kept, and (index, code) rejected.
    Events(&'static [usize], &'static [(usize, &'static str)]),
}

struct Case {
    name: &'static str,
    api: Api,
    req: Req,
    limits: Limits,
    expect: Expect,
}

fn ph(name: &'static str, req: Req, expect: Expect) -> Case {
    Case {
        name,
        api: Api::PostHog,
        req,
        limits: Limits::default(),
        expect,
    }
}

fn seg(name: &'static str, call: SegmentCall, req: Req, expect: Expect) -> Case {
    Case {
        name,
        api: Api::Segment(call),
        req,
        limits: Limits::default(),
        expect,
    }
}

fn small(mut c: Case, bytes: usize) -> Case {
    c.limits.max_decompressed_bytes = bytes;
    c
}

/// A PostHog batch with the given events and a batch API key.
fn batch(events: serde_json::Value) -> Req {
    Req::post(json!({"api_key": "k", "batch": events}).to_string())
}

fn ok_event() -> serde_json::Value {
    json!({"event": "ok", "distinct_id": "d"})
}

fn cases() -> Vec<Case> {
    use Expect::{Events, Request};
    let good = r#"{"api_key":"k","event":"e","distinct_id":"d"}"#;
    let gz = gzip(good.as_bytes());
    let mut gz_truncated = gz.clone();
    gz_truncated.truncate(gz.len() - 10);
    let mut gz_corrupt = gz.clone();
    for b in &mut gz_corrupt[10..] {
        *b = b.wrapping_add(77);
    }
    let gz_bomb = gzip(&vec![b'['; 8 << 20]);
    let gz_bad_utf8 = gzip(b"{\"api_key\":\"k\",\"event\":\"\xc3\x28\",\"distinct_id\":\"d\"}");
    let deep_array = "[".repeat(100_000);
    let deep_object = "{\"a\":".repeat(100_000);
    let lz_good = lz_str::compress_to_base64(good);
    let lz_not_json = lz_str::compress_to_base64("this is not json");
    let seg_track = |v: serde_json::Value| Req::post(v.to_string()).basic("wk");

    vec![
        // --- transport / decoding ---------------------------------------
        ph("empty body", Req::post(""), Request("empty_body", 400)),
        ph(
            "whitespace body",
            Req::post(" \r\n\t "),
            Request("empty_body", 400),
        ),
        ph(
            "GET without data",
            Req::get("ver=1&_=2"),
            Request("empty_body", 400),
        ),
        ph(
            "truncated gzip",
            Req::post(gz_truncated),
            Request("invalid_gzip", 400),
        ),
        ph(
            "corrupt gzip",
            Req::post(gz_corrupt),
            Request("invalid_gzip", 400),
        ),
        ph(
            "gzip magic only",
            Req::post(vec![0x1f, 0x8b]),
            Request("invalid_gzip", 400),
        ),
        small(
            ph(
                "gzip bomb",
                Req::post(gz_bomb.clone()),
                Request("payload_too_large", 413),
            ),
            1 << 20,
        ),
        ph(
            "gzip with invalid UTF-8 inside",
            Req::post(gz_bad_utf8),
            Request("invalid_utf8", 400),
        ),
        ph(
            "compression=gzip-js without gzip data",
            Req::post("not gzip").query("compression=gzip-js"),
            Request("invalid_gzip", 400),
        ),
        ph(
            "lz64 garbage",
            Req::post("%%%%not-lz64%%%%").query("compression=lz64"),
            Request("invalid_lz64", 400),
        ),
        ph(
            "lz64 truncated",
            Req::post(lz_good[..lz_good.len() / 2].to_owned()).query("compression=lz64"),
            Request("invalid_lz64", 400),
        ),
        small(
            ph(
                "lz64 bomb",
                Req::post(lz64_bomb(3000)).query("compression=lz64"),
                Request("payload_too_large", 413),
            ),
            1 << 20,
        ),
        ph(
            "lz64 that is not JSON",
            Req::post(lz_not_json).query("compression=lz64"),
            Request("invalid_json", 400),
        ),
        ph(
            "invalid UTF-8 in JSON",
            Req::post(b"{\"api_key\":\"k\",\"event\":\"\xff\xfe\",\"distinct_id\":\"d\"}".to_vec()),
            Request("invalid_utf8", 400),
        ),
        ph(
            "invalid UTF-8 in base64 data",
            Req::post(b64(b"{\"api_key\":\"\xff\"}")),
            Request("invalid_utf8", 400),
        ),
        ph(
            "depth bomb [[[ 100k",
            Req::post(deep_array.clone()),
            Request("json_too_deep", 400),
        ),
        ph(
            "depth bomb {\"a\": 100k",
            Req::post(deep_object),
            Request("json_too_deep", 400),
        ),
        ph(
            "depth bomb inside base64",
            Req::post(b64(deep_array.as_bytes())),
            Request("json_too_deep", 400),
        ),
        ph(
            "depth bomb inside gzip",
            Req::post(gzip(deep_array.as_bytes())),
            Request("json_too_deep", 400),
        ),
        ph(
            "truncated JSON",
            Req::post(r#"{"event": "#),
            Request("invalid_json", 400),
        ),
        ph(
            "trailing garbage",
            Req::post(format!("{good} xyz")),
            Request("invalid_json", 400),
        ),
        ph(
            "not JSON at all",
            Req::post("hello world"),
            Request("invalid_json", 400),
        ),
        ph(
            "data= with invalid base64",
            Req::post("data=%21%21%21%21&compression=base64")
                .content_type("application/x-www-form-urlencoded"),
            Request("invalid_base64", 400),
        ),
        ph(
            "data= garbage without compression",
            Req::post("data=%21%21%21%21").content_type("application/x-www-form-urlencoded"),
            Request("invalid_json", 400),
        ),
        ph(
            "form without data field",
            Req::post("ver=1&compression=lz64").content_type("application/x-www-form-urlencoded"),
            Request("missing_data", 400),
        ),
        ph(
            "GET ?data= with invalid base64",
            Req::get("data=%E2%9C%93%E2%9C%93&compression=base64"),
            Request("invalid_base64", 400),
        ),
        ph(
            "unsupported content-encoding",
            Req::post(vec![0x0b, 0x05, 0x80, 0xff]).content_encoding("br"),
            Request("unsupported_encoding", 415),
        ),
        small(
            ph(
                "uncompressed body over the cap",
                Req::post(good),
                Request("payload_too_large", 413),
            ),
            16,
        ),
        // --- envelope shape ------------------------------------------------
        ph(
            "batch is a number",
            Req::post(r#"{"batch": 5}"#),
            Request("invalid_payload", 400),
        ),
        ph(
            "batch is an object",
            Req::post(r#"{"batch": {}}"#),
            Request("invalid_payload", 400),
        ),
        ph(
            "JSON string body",
            Req::post(r#""just a string""#),
            Request("invalid_payload", 400),
        ),
        ph(
            "JSON number body",
            Req::post("42"),
            Request("invalid_payload", 400),
        ),
        ph(
            "JSON null body",
            Req::post("null"),
            Request("invalid_payload", 400),
        ),
        ph("empty array", Req::post("[]"), Request("empty_batch", 400)),
        ph(
            "empty batch",
            Req::post(r#"{"api_key":"k","batch":[]}"#),
            Request("empty_batch", 400),
        ),
        ph(
            "bad batch sent_at",
            Req::post(
                r#"{"api_key":"k","sent_at":"soon","batch":[{"event":"e","distinct_id":"d"}]}"#,
            ),
            Request("invalid_payload", 400),
        ),
        ph(
            "batch api_key not a string",
            Req::post(r#"{"api_key":12,"batch":[{"event":"e","distinct_id":"d"}]}"#),
            Request("invalid_token", 401),
        ),
        ph(
            "no token anywhere",
            Req::post(r#"[{"event":"e","distinct_id":"d"},{"event":"e","distinct_id":"d"}]"#),
            Request("missing_token", 401),
        ),
        ph(
            "top-level array of non-objects",
            Req::post("[1, 2]"),
            Request("missing_token", 401),
        ),
        Case {
            name: "too many events",
            api: Api::PostHog,
            req: batch(json!([ok_event(), ok_event(), ok_event()])),
            limits: Limits {
                max_events: 2,
                ..Limits::default()
            },
            expect: Request("too_many_events", 413),
        },
        // --- per-event problems: the rest of the batch is kept -------------
        ph(
            "batch of non-objects",
            batch(json!([1, "x", null, [], ok_event()])),
            Events(
                &[4],
                &[
                    (0, "not_an_object"),
                    (1, "not_an_object"),
                    (2, "not_an_object"),
                    (3, "not_an_object"),
                ],
            ),
        ),
        ph(
            "event without name",
            batch(json!([ok_event(), {"distinct_id": "d"}, ok_event()])),
            Events(&[0, 2], &[(1, "missing_event")]),
        ),
        ph(
            "numeric event name",
            batch(json!([{"event": 5, "distinct_id": "d"}, ok_event()])),
            Events(&[1], &[(0, "invalid_event")]),
        ),
        ph(
            "empty event name",
            batch(json!([{"event": "", "distinct_id": "d"}, ok_event()])),
            Events(&[1], &[(0, "missing_event")]),
        ),
        ph(
            "distinct_id null / object / empty / array / bool / missing",
            batch(json!([
                {"event": "e", "distinct_id": null},
                {"event": "e", "distinct_id": {"id": 1}},
                {"event": "e", "distinct_id": ""},
                {"event": "e", "distinct_id": ["a"]},
                {"event": "e", "distinct_id": true},
                {"event": "e"},
                ok_event()
            ])),
            Events(
                &[6],
                &[
                    (0, "invalid_distinct_id"),
                    (1, "invalid_distinct_id"),
                    (2, "invalid_distinct_id"),
                    (3, "invalid_distinct_id"),
                    (4, "invalid_distinct_id"),
                    (5, "missing_distinct_id"),
                ],
            ),
        ),
        ph(
            "properties as string / array",
            batch(json!([
                {"event": "e", "distinct_id": "d", "properties": "{}"},
                {"event": "e", "distinct_id": "d", "properties": [1]},
                ok_event()
            ])),
            Events(
                &[2],
                &[(0, "invalid_properties"), (1, "invalid_properties")],
            ),
        ),
        ph(
            "bad timestamp / offset / sent_at",
            batch(json!([
                ok_event(),
                {"event": "e", "distinct_id": "d", "timestamp": "last tuesday"},
                {"event": "e", "distinct_id": "d", "timestamp": true},
                {"event": "e", "distinct_id": "d", "offset": "5"},
                {"event": "e", "distinct_id": "d", "sent_at": "2024-02-30T00:00:00Z"},
                {"event": "e", "distinct_id": "d", "timestamp": 1e300},
            ])),
            Events(
                &[0],
                &[
                    (1, "invalid_timestamp"),
                    (2, "invalid_timestamp"),
                    (3, "invalid_timestamp"),
                    (4, "invalid_timestamp"),
                    (5, "invalid_timestamp"),
                ],
            ),
        ),
        ph(
            "bad uuid",
            batch(json!([
                {"event": "e", "distinct_id": "d", "uuid": "123"},
                {"event": "e", "distinct_id": "d", "uuid": {}},
                ok_event()
            ])),
            Events(&[2], &[(0, "invalid_uuid"), (1, "invalid_uuid")]),
        ),
        ph(
            "one event without token",
            Req::post(
                json!([
                    {"event": "e", "distinct_id": "d", "api_key": "k"},
                    {"event": "e", "distinct_id": "d"}
                ])
                .to_string(),
            ),
            Events(&[0], &[(1, "missing_token")]),
        ),
        ph(
            "event token not a string",
            batch(json!([{"event": "e", "distinct_id": "d", "token": 5}, ok_event()])),
            Events(&[1], &[(0, "invalid_token")]),
        ),
        ph(
            "single event object with problems",
            Req::post(r#"{"api_key":"k","event":"e","distinct_id":"d","properties":"x"}"#),
            Events(&[], &[(0, "invalid_properties")]),
        ),
        ph(
            "gzip + form + base64 with one bad event",
            Req::post(gzip(
                format!(
                    "data={}",
                    url_encode(&b64(
                        json!({"api_key": "k", "batch": [ok_event(), {"event": "e"}]})
                            .to_string()
                            .as_bytes()
                    ))
                )
                .as_bytes(),
            ))
            .content_type("application/x-www-form-urlencoded"),
            Events(&[0], &[(1, "missing_distinct_id")]),
        ),
        // --- Segment --------------------------------------------------------
        seg(
            "segment GET",
            SegmentCall::Track,
            Req {
                method: flywheel_capture::Method::Get,
                ..Req::post("{}")
            },
            Request("method_not_allowed", 405),
        ),
        seg(
            "segment form body",
            SegmentCall::Track,
            Req::post("data=x").content_type("application/x-www-form-urlencoded"),
            Request("unsupported_content_type", 415),
        ),
        seg(
            "segment empty body",
            SegmentCall::Track,
            Req::post(""),
            Request("empty_body", 400),
        ),
        seg(
            "segment batch not an array",
            SegmentCall::Batch,
            Req::post(r#"{"batch": "x"}"#).basic("wk"),
            Request("invalid_payload", 400),
        ),
        seg(
            "segment batch missing",
            SegmentCall::Batch,
            Req::post(r#"{"writeKey": "wk"}"#),
            Request("invalid_payload", 400),
        ),
        seg(
            "segment top-level array",
            SegmentCall::Track,
            Req::post(r#"[{"userId":"u","event":"e"}]"#).basic("wk"),
            Request("invalid_payload", 400),
        ),
        seg(
            "segment no write key",
            SegmentCall::Track,
            Req::post(r#"{"userId":"u","event":"e"}"#),
            Request("missing_token", 401),
        ),
        seg(
            "segment invalid UTF-8",
            SegmentCall::Track,
            Req::post(b"{\"userId\":\"\xff\"}".to_vec()).basic("wk"),
            Request("invalid_utf8", 400),
        ),
        seg(
            "segment depth bomb",
            SegmentCall::Batch,
            Req::post(deep_array).basic("wk"),
            Request("json_too_deep", 400),
        ),
        small(
            seg(
                "segment gzip bomb",
                SegmentCall::Batch,
                Req::post(gz_bomb).basic("wk"),
                Request("payload_too_large", 413),
            ),
            1 << 20,
        ),
        seg(
            "segment message problems",
            SegmentCall::Batch,
            Req::post(
                json!({"writeKey": "wk", "batch": [
                    {"type": "track", "event": "e"},
                    {"type": "track", "userId": "u"},
                    {"type": "teleport", "userId": "u"},
                    {"type": "alias", "userId": "u"},
                    {"type": "group", "userId": "u"},
                    {"type": "identify", "userId": "u", "traits": "x"},
                    {"type": "track", "userId": "u", "event": "e", "messageId": {}},
                    {"type": "track", "userId": "u", "event": "e", "timestamp": "nope"},
                    {"type": "track", "userId": {"a": 1}, "event": "e"},
                    {"type": "track", "userId": "u", "event": "e", "context": 3},
                    {"type": 3, "userId": "u", "event": "e"},
                    "not an object",
                    {"type": "track", "userId": "u", "event": "fine"},
                ]})
                .to_string(),
            ),
            Events(
                &[12],
                &[
                    (0, "missing_user_id"),
                    (1, "missing_event"),
                    (2, "invalid_type"),
                    (3, "missing_previous_id"),
                    (4, "missing_group_id"),
                    (5, "invalid_properties"),
                    (6, "invalid_message_id"),
                    (7, "invalid_timestamp"),
                    (8, "invalid_distinct_id"),
                    (9, "invalid_context"),
                    (10, "invalid_type"),
                    (11, "not_an_object"),
                ],
            ),
        ),
        seg(
            "segment single track without event",
            SegmentCall::Track,
            seg_track(json!({"userId": "u"})),
            Events(&[], &[(0, "missing_event")]),
        ),
    ]
}

#[test]
fn malformed_inputs_table() {
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let raw = case.req.raw();
        let result = match case.api {
            Api::PostHog => parse_posthog(&raw, &case.limits, now()),
            Api::Segment(call) => parse_segment(call, &raw, &case.limits, now()),
        };
        match (&case.expect, result) {
            (Expect::Request(code, status), Err(e)) => {
                if e.code() != *code || e.status() != *status {
                    failures.push(format!(
                        "{}: expected {code}/{status}, got {}/{} ({e})",
                        case.name,
                        e.code(),
                        e.status()
                    ));
                }
                // Every error has a non-empty, human-readable message.
                assert!(!e.to_string().is_empty());
            }
            (Expect::Events(kept, rejected), Ok(p)) => {
                let got_kept: Vec<usize> = p.events.iter().map(|e| e.index).collect();
                let got_rejected: Vec<(usize, &str)> =
                    p.rejected.iter().map(|e| (e.index, e.code)).collect();
                if got_kept != *kept || got_rejected != *rejected {
                    failures.push(format!(
                        "{}: expected kept {kept:?} rejected {rejected:?}, got kept {got_kept:?} rejected {got_rejected:?} ({:?})",
                        case.name, p.rejected
                    ));
                }
                for r in &p.rejected {
                    assert!(
                        r.message.contains(':'),
                        "{}: message names a field: {}",
                        case.name,
                        r.message
                    );
                }
            }
            (expect, got) => {
                failures.push(format!("{}: expected {expect:?}, got {got:?}", case.name))
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
