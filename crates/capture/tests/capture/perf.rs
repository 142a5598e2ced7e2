//! Throughput check (ignored by default; run in release):
//! `cargo test -p flywheel-capture --release --test capture perf -- --ignored --nocapture`

use std::time::Instant;

use flywheel_capture::{parse_posthog, parse_segment, Limits, RawRequest, SegmentCall};
use serde_json::json;

use crate::util::{gzip, now};

fn posthog_js_event(i: usize) -> serde_json::Value {
    json!({
        "uuid": uuid::Uuid::now_v7().to_string(),
        "event": (["$pageview", "$autocapture", "$autocapture"][i % 3]),
        "timestamp": "2024-06-01T11:59:58.123Z",
        "properties": {
            "$os": "Mac OS X", "$os_version": "14.4.1", "$browser": "Chrome", "$browser_version": 124,
            "$device_type": "Desktop", "$current_url": format!("https://app.example.com/projects/{i}/insights?tab=trends"),
            "$host": "app.example.com", "$pathname": "/projects/1/insights", "$raw_user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            "$screen_height": 1117, "$screen_width": 1728, "$viewport_height": 992, "$viewport_width": 1728,
            "$lib": "web", "$lib_version": "1.130.2", "$insert_id": "c3hj4k5l6m7n8o9p", "$time": 1717243198.123,
            "distinct_id": "0190c5a4-1c2b-7d3e-8f40-123456789abc", "$device_id": "0190c5a4-1c2b-7d3e-8f40-123456789abc",
            "$referrer": "$direct", "$referring_domain": "$direct", "token": "phc_abcdefghijklmnopqrstuvwxyz0123456789ABCDEF",
            "$session_id": "0190c5a4-1c2b-7d3e-8f40-123456789abd", "$window_id": "0190c5a4-1c2b-7d3e-8f40-123456789abe",
            "$pageview_id": "0190c5a4-1c2b-7d3e-8f40-123456789abf", "$is_identified": true, "$process_person_profile": true,
            "$elements_chain": "a.btn:nth-child=\"1\"nth-of-type=\"1\"href=\"/x\"attr__class=\"btn\";div:nth-child=\"2\"",
            "$event_type": "click", "$ce_version": 1, "$sent_at": "2024-06-01T11:59:59.000Z"
        }
    })
}

fn measure(name: &str, events_per_request: usize, mut f: impl FnMut() -> usize) {
    // PERF_ONLY=<substring> restricts the run to matching sections (for profiling).
    if std::env::var("PERF_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    // Warm up, then run for about a second.
    for _ in 0..10 {
        f();
    }
    let start = Instant::now();
    let mut events = 0usize;
    let mut requests = 0usize;
    while start.elapsed().as_millis() < 1000 {
        events += f();
        requests += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(events, requests * events_per_request);
    println!(
        "{name}: {:.0} events/s on one core ({requests} requests)",
        events as f64 / secs
    );
}

#[test]
#[ignore = "throughput measurement; run in release"]
fn perf() {
    let limits = Limits::default();
    let batch: Vec<_> = (0..50).map(posthog_js_event).collect();
    let body = json!({"api_key": "phc_abcdefghijklmnopqrstuvwxyz0123456789ABCDEF", "sent_at": "2024-06-01T11:59:59.000Z", "batch": batch}).to_string();
    let gz = gzip(body.as_bytes());
    println!(
        "posthog batch: {} bytes JSON, {} bytes gzip",
        body.len(),
        gz.len()
    );
    measure("posthog json", 50, || {
        parse_posthog(&RawRequest::post(body.as_bytes()), &limits, now())
            .unwrap()
            .events
            .len()
    });
    measure("posthog gzip", 50, || {
        parse_posthog(&RawRequest::post(&gz), &limits, now())
            .unwrap()
            .events
            .len()
    });
    let lz = lz_str::compress_to_base64(body.as_str());
    let req = RawRequest {
        query: Some("compression=lz64"),
        ..RawRequest::post(lz.as_bytes())
    };
    measure("posthog lz64", 50, || {
        parse_posthog(&req, &limits, now()).unwrap().events.len()
    });
    measure("json parse only (serde_json::Value)", 50, || {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["batch"].as_array().unwrap().len()
    });

    let messages: Vec<_> = (0..50)
        .map(|i| json!({"type": "track", "userId": format!("user-{i}"), "event": "Order Completed", "messageId": format!("ajs-{i}-abcdef"),
            "timestamp": "2024-06-01T11:59:58.123Z", "properties": {"total": 19.99, "currency": "EUR", "items": 3},
            "context": {"ip": "203.0.113.9", "library": {"name": "analytics.js", "version": "2.11.1"}, "page": {"url": "https://shop.example/cart"}, "userAgent": "Mozilla/5.0"}}))
        .collect();
    let body = json!({"writeKey": "wk", "sentAt": "2024-06-01T11:59:59.000Z", "batch": messages})
        .to_string();
    measure("segment json", 50, || {
        parse_segment(
            SegmentCall::Batch,
            &RawRequest::post(body.as_bytes()),
            &limits,
            now(),
        )
        .unwrap()
        .events
        .len()
    });
}
