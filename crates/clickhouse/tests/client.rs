//! The HTTP client against a real ClickHouse 18.16: statements, inserts, both read formats, and errors that carry
//! ClickHouse's own message.

use flywheel_clickhouse::test_support;
use flywheel_clickhouse::{ClickHouseError, Client};
use serde_json::json;

#[tokio::test(flavor = "current_thread")]
async fn queries_inserts_and_errors() {
    let server = test_support::start();
    let client = Client::new(&server.url).unwrap();
    client
        .execute("CREATE TABLE t (k String, n Int64, x Float64) ENGINE = Memory")
        .await
        .unwrap();
    let rows = vec![
        json!({"k": "tab\there", "n": -5, "x": 1.5}),
        json!({"k": "quote ' and \\ backslash\nnewline", "n": 9_007_199_254_740_993i64, "x": "nan"}),
    ];
    client.insert("t", &rows).await.unwrap();
    client.insert::<serde_json::Value>("t", &[]).await.unwrap();
    let got = client
        .query_rows("SELECT k, n, x FROM t ORDER BY n")
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            vec!["tab\there".to_string(), "-5".into(), "1.5".into()],
            vec![
                "quote ' and \\ backslash\nnewline".to_string(),
                "9007199254740993".into(),
                "nan".into()
            ],
        ]
    );
    let doc = client
        .query_json("SELECT count() AS c FROM t")
        .await
        .unwrap();
    assert_eq!(doc["rows"], 1);
    assert_eq!(
        doc["data"][0]["c"]
            .as_str()
            .or(doc["data"][0]["c"].as_u64().map(|_| "2")),
        Some("2")
    );

    // Statements longer than ClickHouse's default limit (256 KiB): an insight over 10,000 hour buckets.
    let long: Vec<String> = (0..20_000i64)
        .map(|i| (1_772_323_200_000_000 + i * 3_600_000_000).to_string())
        .collect();
    let sql = format!("SELECT length(CAST([{}] AS Array(Int64)))", long.join(","));
    assert!(sql.len() > 300_000);
    assert_eq!(
        client.query_rows(&sql).await.unwrap(),
        vec![vec!["20000".to_string()]]
    );
    // A statement slower than the client's patience.
    let impatient = client
        .clone()
        .with_timeout(std::time::Duration::from_millis(200));
    match impatient.query_rows("SELECT sleep(2)").await {
        Err(ClickHouseError::Timeout { statement, .. }) => assert_eq!(statement, "SELECT sleep(2)"),
        other => panic!("{other:?}"),
    }

    match client.query_rows("SELECT no_such_function(1)").await {
        Err(ClickHouseError::Server {
            status,
            statement,
            message,
        }) => {
            assert!(status >= 400);
            assert_eq!(statement, "SELECT no_such_function(1)");
            assert!(message.contains("no_such_function"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match client.insert("t", &[json!({"n": "not a number"})]).await {
        Err(ClickHouseError::Server { message, .. }) => {
            assert!(message.contains("Cannot parse"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    drop(server);
    match client.execute("SELECT 1").await {
        Err(ClickHouseError::Unreachable { url, .. }) => assert_eq!(url, client.url()),
        other => panic!("{other:?}"),
    }
}
