//! Bad input, table-driven: every case gets a clear 4xx naming the problem, or — for a bad event inside a batch —
//! a 200 that reports the dropped event while the good events are kept. Never a panic, a 500 or a hang.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::{gzip, TestServer};

enum Expect {
    /// The whole request is refused with this status; the message must mention `mentions`.
    Refused(u16, &'static str),
    /// 200: of `total` events, these batch indices are rejected and the others accepted.
    Partial(u64, &'static [usize]),
}

struct Case {
    name: &'static str,
    request: Request<Body>,
    expect: Expect,
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

fn cases(token: &str) -> Vec<Case> {
    let ok = |i: usize| json!({"event": "ok", "distinct_id": format!("d{i}")});
    let batch = |bad: Value| json!({"api_key": token, "batch": [ok(0), bad, ok(2)]}).to_string();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut deep = String::new();
    for _ in 0..100_000 {
        deep.push('[');
    }
    let deep_props = {
        let mut s = format!("{{\"api_key\":\"{token}\",\"event\":\"e\",\"distinct_id\":\"d\",\"properties\":{{\"a\":");
        for _ in 0..200 {
            s.push_str("{\"a\":");
        }
        s.push('1');
        for _ in 0..201 {
            s.push('}');
        }
        s.push('}');
        s
    };
    // 192 KiB of zeros: past the test server's 128 KiB decompression cap, tiny when compressed.
    let bomb_json = format!(
        "{{\"api_key\":\"{token}\",\"batch\":[],\"pad\":\"{}\"}}",
        "0".repeat(192 << 10)
    );
    let gzip_bomb = gzip(bomb_json.as_bytes());
    let mut truncated = gzip(batch(ok(1)).as_bytes());
    truncated.truncate(truncated.len() / 2);
    let lz_bomb = lz_str::compress_to_base64(&bomb_json);
    vec![
        Case { name: "empty body", request: post("/batch", ""), expect: Expect::Refused(400, "") },
        Case { name: "whitespace body", request: post("/batch", "  \n "), expect: Expect::Refused(400, "") },
        Case { name: "not JSON", request: post("/batch", "hello there"), expect: Expect::Refused(400, "") },
        Case { name: "truncated JSON", request: post("/batch", "{\"api_key\": \"x\", \"batch\": [{\"event\""), expect: Expect::Refused(400, "") },
        Case { name: "invalid UTF-8", request: post("/batch", b"{\"api_key\":\"\xff\xfe\",\"batch\":[]}".to_vec()), expect: Expect::Refused(400, "UTF-8") },
        Case { name: "batch is a number", request: post("/batch", json!({"api_key": token, "batch": 5}).to_string()), expect: Expect::Refused(400, "batch") },
        Case { name: "JSON scalar body", request: post("/batch", "42"), expect: Expect::Refused(400, "") },
        Case { name: "no token anywhere", request: post("/batch", json!({"batch": [ok(0)]}).to_string()), expect: Expect::Refused(401, "") },
        Case { name: "unknown token", request: post("/batch", json!({"api_key": "fwpub_unknown", "batch": [ok(0)]}).to_string()), expect: Expect::Refused(401, "API key") },
        Case { name: "token of the wrong type", request: post("/batch", json!({"api_key": 5, "batch": [ok(0)]}).to_string()), expect: Expect::Refused(401, "") },
        Case { name: "truncated gzip", request: post("/batch", truncated), expect: Expect::Refused(400, "") },
        Case { name: "gzip bomb", request: post("/batch", gzip_bomb), expect: Expect::Refused(413, "") },
        Case { name: "lz64 bomb", request: post("/batch?compression=lz64", lz_bomb), expect: Expect::Refused(413, "") },
        Case { name: "lz64 garbage", request: post("/e/?compression=lz64", "!!!not-lz64!!!"), expect: Expect::Refused(400, "") },
        Case { name: "base64 garbage", request: post("/e/?compression=base64", "%%%%"), expect: Expect::Refused(400, "") },
        Case { name: "form data= garbage", request: Request::post("/e/").header("content-type", "application/x-www-form-urlencoded").body(Body::from("data=%%%%&compression=base64")).unwrap(), expect: Expect::Refused(400, "") },
        Case { name: "GET data= garbage", request: Request::get("/e/?data=***").body(Body::empty()).unwrap(), expect: Expect::Refused(400, "") },
        Case { name: "array nesting bomb", request: post("/batch", deep), expect: Expect::Refused(400, "") },
        Case { name: "properties nested too deep", request: post("/e/", deep_props), expect: Expect::Refused(400, "") },
        Case { name: "body over 20 MB", request: post("/batch", vec![b' '; 21 << 20]), expect: Expect::Refused(413, "MB") },
        Case { name: "engage body over 2 MB", request: post("/engage", vec![b' '; 3 << 20]), expect: Expect::Refused(413, "MB") },
        Case { name: "event without name", request: post("/batch", batch(json!({"distinct_id": "x"}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "numeric event name", request: post("/batch", batch(json!({"event": 7, "distinct_id": "x"}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "empty event name", request: post("/batch", batch(json!({"event": "", "distinct_id": "x"}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "missing distinct_id", request: post("/batch", batch(json!({"event": "x"}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "null distinct_id", request: post("/batch", batch(json!({"event": "x", "distinct_id": null}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "object distinct_id", request: post("/batch", batch(json!({"event": "x", "distinct_id": {"a": 1}}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "empty distinct_id", request: post("/batch", batch(json!({"event": "x", "distinct_id": ""}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "properties is a string", request: post("/batch", batch(json!({"event": "x", "distinct_id": "x", "properties": "nope"}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "bad timestamp", request: post("/batch", batch(json!({"event": "x", "distinct_id": "x", "timestamp": "last tuesday"}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "bad uuid", request: post("/batch", batch(json!({"event": "x", "distinct_id": "x", "uuid": "not-a-uuid"}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "batch element not an object", request: post("/batch", batch(json!("just a string"))), expect: Expect::Partial(3, &[1]) },
        Case { name: "event with unknown token among good ones", request: post("/batch", batch(json!({"event": "x", "distinct_id": "x", "api_key": "fwpub_unknown"}))), expect: Expect::Partial(3, &[1]) },
        Case { name: "segment track without user", request: Request::post("/v1/batch").body(Body::from(json!({"writeKey": token, "batch": [
            {"type": "track", "userId": "a", "event": "ok"}, {"type": "track", "event": "no user"}, {"type": "track", "anonymousId": "b", "event": "ok"}]}).to_string())).unwrap(), expect: Expect::Partial(3, &[1]) },
        Case { name: "segment alias without previousId", request: Request::post("/v1/batch").body(Body::from(json!({"writeKey": token, "batch": [
            {"type": "track", "userId": "a", "event": "ok"}, {"type": "alias", "userId": "a"}, {"type": "identify", "userId": "b", "traits": {"x": 1}}]}).to_string())).unwrap(), expect: Expect::Partial(3, &[1]) },
        Case { name: "segment unknown write key", request: Request::post("/v1/track").header("authorization", format!("Basic {}", b64("nope:"))).body(Body::from(json!({"userId": "a", "event": "x"}).to_string())).unwrap(), expect: Expect::Refused(401, "") },
        Case { name: "segment track without event", request: Request::post("/v1/track").header("authorization", format!("Basic {}", b64(&format!("{token}:")))).body(Body::from(json!({"userId": "a"}).to_string())).unwrap(), expect: Expect::Partial(1, &[0]) },
    ]
}

#[tokio::test]
async fn malformed_inputs_get_clear_answers_and_good_events_are_kept() {
    let t = TestServer::start_with(|c| c.capture_limits.max_decompressed_bytes = 128 << 10).await;
    let cases = cases(&t.token);
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for case in cases {
        let name = case.name;

        let (status, body, _) = t.send(case.request).await;
        match case.expect {
            Expect::Refused(code, mentions) => {
                let message = body["message"].as_str().unwrap_or_default();
                if status.as_u16() != code
                    || body["code"].as_str().unwrap_or_default().is_empty()
                    || message.is_empty()
                    || !message.contains(mentions)
                {
                    failures.push(format!(
                        "{name}: expected {code} mentioning {mentions:?}, got {status} {body}"
                    ));
                }
            }
            Expect::Partial(total, bad) => {
                let rejected: Vec<usize> = body["rejected"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|e| e["index"].as_u64().map(|i| i as usize))
                            .collect()
                    })
                    .unwrap_or_default();
                let messages_ok = body["rejected"].as_array().is_some_and(|r| {
                    r.iter().all(|e| {
                        e["message"].as_str().is_some_and(|m| !m.is_empty())
                            && e["code"].is_string()
                    })
                });
                let accepted = body["accepted"].as_u64().unwrap_or(u64::MAX);
                if status != StatusCode::OK
                    || rejected != bad
                    || !messages_ok
                    || accepted != total - bad.len() as u64
                {
                    failures.push(format!(
                        "{name}: expected 200 rejecting {bad:?}, got {status} {body}"
                    ));
                }
            }
        }
        assert!(
            !status.is_server_error(),
            "{name}: server error {status} {body}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The good events of the partial batches were all kept.
    let kept = t.events("event=ok&limit=1000").await;
    assert!(kept.len() >= 2 * 13, "good events kept: {}", kept.len());
}

/// Errors answered by the framework (unknown path, wrong method, a query string that does not parse) have the one
/// JSON error shape too.
#[tokio::test]
async fn framework_errors_have_the_one_error_shape() {
    let t = TestServer::start().await;
    let key = t.personal_key.clone();
    let cases = [
        ("GET", "/no/such/path".to_owned(), 404, "not_found"),
        ("DELETE", "/healthz".to_owned(), 405, "method_not_allowed"),
        (
            "GET",
            format!("/api/v1/projects/{}/rewards?limit=many", t.project_id),
            400,
            "invalid_request",
        ),
        ("GET", "/api/v1/openapi.json".to_owned(), 200, ""),
    ];
    for (method, path, status, code) in cases {
        let req = Request::builder()
            .method(method)
            .uri(&path)
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        let (s, v, headers) = t.send(req).await;
        assert_eq!(s.as_u16(), status, "{method} {path}: {v}");
        assert_eq!(
            headers["content-type"], "application/json",
            "{method} {path}"
        );
        if status == 200 {
            assert_eq!(v["openapi"], "3.1.0");
            continue;
        }
        assert_eq!(v["code"], code, "{method} {path}: {v}");
        assert!(
            v["type"].is_string() && v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
}
