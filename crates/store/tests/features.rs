//! The audit log is append-only at the storage level, whatever code runs against the database.

use flywheel_store::{Actor, Store};
use serde_json::json;

#[tokio::test]
async fn audit_rows_cannot_be_updated_or_deleted_even_with_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let store = Store::open(&path).await.unwrap();
    let boot = store.bootstrap("Org", "P").await.unwrap();
    let actor = Actor {
        label: "test".into(),
        source_ip: None,
    };
    store
        .create_feature(
            boot.project_id,
            "f",
            &json!({"value_type": "boolean", "default_value": true}),
            &actor,
        )
        .await
        .unwrap();
    assert_eq!(
        store.environments(boot.project_id).await.unwrap().len(),
        3,
        "default environments"
    );
    store.close().await;

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 3, "the two keys made by bootstrap and the feature");
    let update = sqlx::query("UPDATE audit_log SET actor = 'someone else'")
        .execute(&pool)
        .await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM audit_log").execute(&pool).await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 3, "nothing was removed");
}

#[tokio::test]
async fn first_project_is_the_smallest_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("meta.db")).await.unwrap();
    assert_eq!(store.first_project().await.unwrap(), None);
    let boot = store.bootstrap("Org", "P").await.unwrap();
    store
        .create_project(boot.organization_id, "Second")
        .await
        .unwrap();
    assert_eq!(store.first_project().await.unwrap(), Some(boot.project_id));
}
