//! Property tests: no input makes the parsers panic, and accepted payloads
//! always satisfy the output invariants.

use flywheel_capture::{
    parse_posthog, parse_segment, Limits, Method, Payload, RawRequest, SegmentCall,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::util::{b64, gzip, now, url_encode};

const CALLS: [SegmentCall; 7] = [
    SegmentCall::Batch,
    SegmentCall::Track,
    SegmentCall::Identify,
    SegmentCall::Group,
    SegmentCall::Alias,
    SegmentCall::Page,
    SegmentCall::Screen,
];

fn limits() -> Limits {
    Limits {
        max_decompressed_bytes: 1 << 20,
        max_json_depth: 16,
        max_events: 50,
    }
}

/// Invariants of every successful parse.
fn check(p: &Payload) -> Result<(), TestCaseError> {
    let mut indices: Vec<usize> = p
        .events
        .iter()
        .map(|e| e.index)
        .chain(p.rejected.iter().map(|e| e.index))
        .collect();
    let n = indices.len();
    indices.sort_unstable();
    indices.dedup();
    prop_assert_eq!(
        indices.len(),
        n,
        "an index is both kept and rejected, or repeated"
    );
    prop_assert!(
        p.events.windows(2).all(|w| w[0].index < w[1].index),
        "events out of order"
    );
    for e in &p.events {
        prop_assert!(!e.token.is_empty());
        prop_assert!(!e.event.is_empty() && e.event.chars().count() <= 200);
        prop_assert!(!e.distinct_id.is_empty() && e.distinct_id.chars().count() <= 200);
        prop_assert!(e.timestamp <= now() + chrono::TimeDelta::hours(23));
        prop_assert!(!e.uuid.is_nil());
        prop_assert!(!e.properties_map().contains_key("token"));
        prop_assert!(!e.properties_map().contains_key("distinct_id"));
    }
    for r in &p.rejected {
        prop_assert!(!r.code.is_empty() && !r.message.is_empty());
    }
    Ok(())
}

fn run_all(req: &RawRequest<'_>) -> Result<(), TestCaseError> {
    if let Ok(p) = parse_posthog(req, &limits(), now()) {
        check(&p)?;
    }
    for call in CALLS {
        if let Ok(p) = parse_segment(call, req, &limits(), now()) {
            check(&p)?;
        }
    }
    Ok(())
}

fn request_parts() -> impl Strategy<
    Value = (
        Method,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    ),
> {
    (
        prop_oneof![Just(Method::Post), Just(Method::Get)],
        prop_oneof![
            Just(None),
            Just(Some("compression=lz64")),
            Just(Some("compression=base64")),
            Just(Some("compression=gzip-js&beacon=1")),
            Just(Some("data=%7B%7D&ver=1")),
        ],
        prop_oneof![
            Just(None),
            Just(Some("application/json")),
            Just(Some("application/x-www-form-urlencoded")),
            Just(Some("text/plain")),
        ],
        prop_oneof![Just(None), Just(Some("gzip")), Just(Some("br"))],
    )
}

const KEYS: &[&str] = &[
    "event",
    "distinct_id",
    "$distinct_id",
    "properties",
    "batch",
    "api_key",
    "token",
    "$token",
    "timestamp",
    "sent_at",
    "sentAt",
    "offset",
    "uuid",
    "$set",
    "$set_once",
    "$unset",
    "historical_migration",
    "userId",
    "anonymousId",
    "type",
    "messageId",
    "writeKey",
    "traits",
    "context",
    "groupId",
    "previousId",
    "name",
    "url",
    "library",
    "page",
    "$group_type",
    "$groups",
    "originalTimestamp",
    "data",
    "category",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z0-9 :.+-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("2024-06-01T10:00:00Z"),
            Just("2024-06-01 10:00:00"),
            Just("track"),
            Just("identify"),
            Just("group"),
            Just("alias"),
            Just("page"),
            Just("k"),
            Just("0190c5a4-1c2b-7d3e-8f40-123456789abc"),
            Just(""),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// `Some(good)` most of the time, sometimes absent, sometimes anything.
fn field(good: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        4 => good.prop_map(Some),
        1 => Just(None),
        1 => json_value().prop_map(Some),
    ]
    .boxed()
}

fn object() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..5)
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn time_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-10_000_000_000i64..10_000_000_000).prop_map(|s| Value::from(1_717_236_000_000i64 + s)),
        (0u32..86_400).prop_map(|s| Value::from(format!(
            "2024-06-01T{:02}:{:02}:{:02}Z",
            s / 3600,
            s / 60 % 60,
            s % 60
        ))),
    ]
}

fn id_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z0-9]{1,8}".prop_map(Value::String),
        any::<i32>().prop_map(Value::from)
    ]
}

fn assemble(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect(),
    )
}

/// Mostly-valid PostHog events, so the success path is exercised too.
fn posthog_event() -> impl Strategy<Value = Value> {
    (
        (
            field("[a-z$]{1,6}".prop_map(Value::String)),
            field(id_value()),
            field(object()),
            field(time_value()),
        ),
        (
            field(Just(Value::from("0190c5a4-1c2b-7d3e-8f40-123456789abc"))),
            field((-100_000i64..100_000).prop_map(Value::from)),
            field(time_value()),
            prop::option::of(object()),
            prop::option::of(Just(Value::from("ev_key"))),
        ),
    )
        .prop_map(
            |((event, distinct_id, properties, timestamp), (uuid, offset, sent_at, set, token))| {
                assemble(vec![
                    ("event", event),
                    ("distinct_id", distinct_id),
                    ("properties", properties),
                    ("timestamp", timestamp),
                    ("uuid", uuid),
                    ("offset", offset),
                    ("sent_at", sent_at),
                    ("$set", set),
                    ("token", token),
                ])
            },
        )
}

/// Mostly-valid Segment messages.
fn segment_message() -> impl Strategy<Value = Value> {
    let kind = prop::sample::select(&["track", "identify", "group", "alias", "page", "screen"][..])
        .prop_map(Value::from);
    (
        (
            field(kind),
            field(id_value()),
            field(id_value()),
            field("[A-Za-z ]{1,8}".prop_map(Value::String)),
        ),
        (
            field(object()),
            field(object()),
            field(object()),
            field(id_value()),
            field(id_value()),
        ),
        (
            field("[a-z0-9-]{1,36}".prop_map(Value::String)),
            field(time_value()),
            field(time_value()),
        ),
    )
        .prop_map(
            |(
                (kind, user, anon, event),
                (props, traits, context, group, previous),
                (mid, ts, sent),
            )| {
                assemble(vec![
                    ("type", kind),
                    ("userId", user),
                    ("anonymousId", anon),
                    ("event", event),
                    ("name", None),
                    ("properties", props),
                    ("traits", traits),
                    ("context", context),
                    ("groupId", group),
                    ("previousId", previous),
                    ("messageId", mid),
                    ("timestamp", ts),
                    ("sentAt", sent),
                ])
            },
        )
}

/// Wraps a JSON text the ways clients send it.
fn encodings(text: &str) -> Vec<(Vec<u8>, Option<&'static str>, Option<&'static str>)> {
    let lz = lz_str::compress_to_base64(text);
    vec![
        (text.as_bytes().to_vec(), None, None),
        (gzip(text.as_bytes()), None, None),
        (b64(text.as_bytes()).into_bytes(), None, None),
        (lz.clone().into_bytes(), Some("compression=lz64"), None),
        (
            format!("data={}&compression=lz64", url_encode(&lz)).into_bytes(),
            None,
            Some("application/x-www-form-urlencoded"),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..512),
        (method, query, ct, ce) in request_parts(),
        basic in prop_oneof![Just(None), Just(Some("wk"))],
    ) {
        let req = RawRequest { method, query, content_type: ct, content_encoding: ce, body: &body, basic_auth_user: basic };
        run_all(&req)?;
        // The same bytes behind a gzip header.
        let gz = gzip(&body);
        run_all(&RawRequest { body: &gz, ..req })?;
    }

    #[test]
    fn arbitrary_query_strings_never_panic(query in "[a-z0-9=&%+_.-]{0,200}") {
        run_all(&RawRequest { method: Method::Get, query: Some(&query), content_type: None, content_encoding: None, body: b"", basic_auth_user: None })?;
    }

    #[test]
    fn json_ish_strings_never_panic(text in r#"[\[\]{}":,a-z0-9 \\$_.\-]{0,300}"#) {
        for (body, query, ct) in encodings(&text) {
            run_all(&RawRequest { method: Method::Post, query, content_type: ct, content_encoding: None, body: &body, basic_auth_user: Some("wk") })?;
        }
    }

    #[test]
    fn structured_json_never_panics(v in json_value()) {
        let text = v.to_string();
        for (body, query, ct) in encodings(&text) {
            run_all(&RawRequest { method: Method::Post, query, content_type: ct, content_encoding: None, body: &body, basic_auth_user: None })?;
        }
    }

    #[test]
    fn mostly_valid_posthog_batches_keep_invariants(
        events in prop::collection::vec(posthog_event(), 1..8),
        historical in any::<bool>(),
    ) {
        let text = serde_json::json!({"api_key": "k", "historical_migration": historical, "sent_at": "2024-06-01T11:00:00Z", "batch": events}).to_string();
        let p = parse_posthog(&RawRequest::post(text.as_bytes()), &limits(), now());
        let p = p.map_err(|e| TestCaseError::fail(format!("request error: {e}")))?;
        check(&p)?;
        prop_assert_eq!(p.events.len() + p.rejected.len(), events.len());
        prop_assert_eq!(p.historical_migration, historical);
        // Single-event bodies agree with the batch outcome for that event.
        // (given the same batch-level settings).
        let mut first = events[0].clone();
        if let Value::Object(o) = &mut first {
            if o.get("sent_at").is_none_or(Value::is_null) {
                o.insert("sent_at".into(), "2024-06-01T11:00:00Z".into());
            }
            o.insert("historical_migration".into(), historical.into());
        }
        let single = parse_posthog(&RawRequest::post(first.to_string().as_bytes()), &limits(), now());
        if let Ok(single) = single {
            check(&single)?;
            let batch_kept = p.events.first().is_some_and(|e| e.index == 0);
            prop_assert_eq!(single.events.len() == 1, batch_kept);
            let batch_code = p.rejected.first().filter(|r| r.index == 0).map(|r| r.code);
            prop_assert_eq!(single.rejected.first().map(|r| r.code), batch_code);
        }
    }

    #[test]
    fn mostly_valid_segment_batches_keep_invariants(messages in prop::collection::vec(segment_message(), 1..8)) {
        let text = serde_json::json!({"writeKey": "wk", "batch": messages}).to_string();
        let p = parse_segment(SegmentCall::Batch, &RawRequest::post(text.as_bytes()), &limits(), now());
        let p = p.map_err(|e| TestCaseError::fail(format!("request error: {e}")))?;
        check(&p)?;
        prop_assert_eq!(p.events.len() + p.rejected.len(), messages.len());
        for e in &p.events {
            prop_assert!(e.event == "$identify" || e.event == "$groupidentify" || e.event == "$create_alias"
                || e.event == "$pageview" || e.event == "$screen" || messages[e.index]["event"] == e.event.as_str());
        }
    }

    #[test]
    fn structured_batches_never_panic(events in prop::collection::vec(json_value(), 1..8), key in prop_oneof![Just("api_key"), Just("writeKey"), Just("token")]) {
        let text = serde_json::json!({ key: "k", "batch": events }).to_string();
        run_all(&RawRequest::post(text.as_bytes()))?;
    }
}
