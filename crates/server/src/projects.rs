//! `GET/PATCH /api/v1/projects/{project_id}`: a project's settings — name, the time zone its insights count days
//! in, the filters that leave out test accounts, ingestion settings, and `retention_days` (events older than that
//! many days are dropped, see `retention.rs`; `null`: kept forever). Changes are audited (`project.updated`).

use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use flywheel_query::FieldError;
use flywheel_store::ProjectUpdate;
use serde_json::{json, Map, Value};

use crate::api::{parse_project, Caller, JsonBody};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/v1/projects/{project_id}",
        get(get_project).patch(patch_project),
    )
}

async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = parse_project(&project_id)?;
    caller.authorize(&state, project_id).await?;
    let settings = state
        .store
        .project_settings(project_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project {project_id} not found")))?;
    Ok(Json(json!(settings)))
}

/// The longest retention period accepted (100 years).
const MAX_RETENTION_DAYS: i64 = 36_500;

/// Validates a settings update: every problem, each naming its field.
fn read_update(body: &Value) -> Result<ProjectUpdate, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut update = ProjectUpdate::default();
    let err = |field: &str, message: String| FieldError {
        field: field.into(),
        message,
    };
    let Some(o) = body.as_object() else {
        return Err(vec![err("body", "must be a JSON object".into())]);
    };
    for (k, v) in o {
        match k.as_str() {
            "name" => match v.as_str().map(str::trim) {
                Some(n) if !n.is_empty() && n.chars().count() <= 200 => {
                    update.name = Some(n.into())
                }
                _ => errors.push(err("name", "must be text of 1 to 200 characters".into())),
            },
            "time_zone" => match v.as_str() {
                Some(tz) => match flywheel_query::parse_time_zone(tz) {
                    Ok(parsed) => update.time_zone = Some(parsed.name().to_owned()),
                    Err(e) => errors.push(err("time_zone", e.message)),
                },
                None => errors.push(err("time_zone", "must be an IANA time zone name".into())),
            },
            "test_account_filters" => {
                // The insight filter language, validated by the query crate as a definition's `properties`.
                let probe = json!({"series": [{"event": "$pageview"}], "properties": v});
                match flywheel_query::parse(flywheel_query::InsightKind::Trends, &probe) {
                    Ok(_) => update.test_account_filters = Some(v.clone()),
                    Err(es) => errors.extend(es.into_iter().map(|e| FieldError {
                        field: e.field.replacen("properties", "test_account_filters", 1),
                        message: e.message,
                    })),
                }
            }
            "ingestion" => {
                let problems = crate::privacy::check_ingestion(v);
                if problems.is_empty() {
                    update.ingestion = Some(v.clone());
                }
                errors.extend(problems);
            }
            "retention_days" => match v {
                Value::Null => update.retention_days = Some(None),
                Value::Number(n) => match n.as_i64() {
                    Some(days) if (1..=MAX_RETENTION_DAYS).contains(&days) => {
                        update.retention_days = Some(Some(days))
                    }
                    _ => errors.push(err(
                        k,
                        format!("must be a whole number of days from 1 to {MAX_RETENTION_DAYS}, or null (keep forever)"),
                    )),
                },
                _ => errors.push(err(
                    k,
                    format!("must be a whole number of days from 1 to {MAX_RETENTION_DAYS}, or null (keep forever)"),
                )),
            },
            "id" | "created_at" => errors.push(err(k, "cannot be changed".into())),
            other => errors.push(err(
                other,
                "unknown field (use name, time_zone, test_account_filters, ingestion, retention_days)".into(),
            )),
        }
    }
    if errors.is_empty() {
        Ok(update)
    } else {
        Err(errors)
    }
}

async fn patch_project(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = parse_project(&project_id)?;
    caller.authorize(&state, project_id).await?;
    let update = read_update(&Value::Object(body))
        .map_err(|errors| ApiError::validation("project settings", &errors))?;
    let actor = crate::features::actor(&caller, &headers, peer);
    let settings = state
        .store
        .update_project_settings(project_id, &update, &actor)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project {project_id} not found")))?;
    state.policies.forget(project_id);
    Ok(Json(json!(settings)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_validated_field_by_field() {
        let ok = read_update(&json!({"name": " Web ", "time_zone": "Europe/Berlin",
            "test_account_filters": [{"key": "email", "type": "person", "operator": "not_contains", "value": "@acme.io"}]}))
        .unwrap();
        assert_eq!(ok.name.as_deref(), Some("Web"));
        assert_eq!(ok.time_zone.as_deref(), Some("Europe/Berlin"));
        let errors = read_update(&json!({"time_zone": "Mars/Olympus", "name": "",
            "test_account_filters": [{"key": "x", "operator": "sometimes"}], "color": 1}))
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"time_zone"), "{fields:?}");
        assert!(fields.contains(&"name"));
        assert!(fields.contains(&"color"));
        assert!(
            fields
                .iter()
                .any(|f| f.starts_with("test_account_filters[0]")),
            "{fields:?}"
        );
    }

    #[test]
    fn retention_days_is_a_whole_number_of_days_or_null() {
        assert_eq!(
            read_update(&json!({"retention_days": 30}))
                .unwrap()
                .retention_days,
            Some(Some(30))
        );
        assert_eq!(
            read_update(&json!({"retention_days": null}))
                .unwrap()
                .retention_days,
            Some(None)
        );
        assert_eq!(read_update(&json!({})).unwrap().retention_days, None);
        for bad in [
            json!(0),
            json!(-3),
            json!(2.5),
            json!("30"),
            json!(true),
            json!(36_501),
        ] {
            let errors = read_update(&json!({"retention_days": bad})).unwrap_err();
            assert_eq!(errors.len(), 1, "{bad}");
            assert_eq!(errors[0].field, "retention_days");
        }
    }
}
