//! `POST /api/v1/projects/{project_id}/power`: planning an experiment before it runs — the units it needs, the
//! smallest effect it can find, or its power (`flywheel_stats::power`, a two-sided Welch test).
//!
//! The body describes the metric's control (`conversion_rate` for a conversion, or `mean` and `std_dev` for a
//! mean), the test (`alpha`, default 0.05; target `power`, default 0.8; `lift`: `relative` (default) or
//! `absolute`; `arms`, default 2: with more, each treatment is compared with the control at `alpha / (arms − 1)`,
//! Bonferroni) and what is known: `effect` → the units needed per arm; `units_per_arm` → the minimum detectable
//! effect; both → the power. Every problem is reported with its field.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use flywheel_query::FieldError;
use flywheel_stats::power::{minimum_detectable_effect, power, sample_size, PowerInput};
use flywheel_stats::LiftType;
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/projects/{project_id}/power", post(plan))
}

const FIELDS: &[&str] = &[
    "conversion_rate",
    "mean",
    "std_dev",
    "alpha",
    "power",
    "lift",
    "arms",
    "effect",
    "units_per_arm",
];

async fn plan(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    crate::features::project_context(&state, &caller, &project_id).await?;
    let mut errors = crate::experiments::unknown_fields(&body, FIELDS);
    let mut number = |key: &str, ok: fn(f64) -> bool, what: &str| -> Option<f64> {
        let v = body.get(key).filter(|v| !v.is_null())?;
        match v.as_f64() {
            Some(x) if x.is_finite() && ok(x) => Some(x),
            _ => {
                errors.push(FieldError {
                    field: key.into(),
                    message: format!("must be {what}"),
                });
                None
            }
        }
    };
    let rate = number(
        "conversion_rate",
        |x| x > 0.0 && x < 1.0,
        "a number between 0 and 1 (exclusive)",
    );
    let mean = number("mean", |_| true, "a number");
    let std_dev = number("std_dev", |x| x > 0.0, "a positive number");
    let alpha = number(
        "alpha",
        |x| x > 0.0 && x < 0.5,
        "between 0 and 0.5 (exclusive)",
    )
    .unwrap_or(0.05);
    let target = number(
        "power",
        |x| x > 0.0 && x < 1.0,
        "between 0 and 1 (exclusive)",
    )
    .unwrap_or(0.8);
    let arms = number(
        "arms",
        |x| x.fract() == 0.0 && (2.0..=100.0).contains(&x),
        "a whole number from 2 to 100",
    )
    .unwrap_or(2.0);
    let effect = number("effect", |x| x != 0.0, "a non-zero number");
    let units = number("units_per_arm", |x| x >= 2.0, "a number of at least 2");
    let lift = match body.get("lift").and_then(Value::as_str) {
        None if body.get("lift").is_none_or(Value::is_null) => LiftType::Relative,
        Some("relative") => LiftType::Relative,
        Some("absolute") => LiftType::Absolute,
        _ => {
            errors.push(FieldError {
                field: "lift".into(),
                message: "must be `relative` or `absolute`".into(),
            });
            LiftType::Relative
        }
    };
    let (mean, variance) = match (rate, mean, std_dev) {
        (Some(p), None, None) => (p, p * (1.0 - p)),
        (None, Some(m), Some(s)) => (m, s * s),
        (None, None, None) => {
            let given = ["conversion_rate", "mean", "std_dev"]
                .iter()
                .any(|k| body.contains_key(*k));
            if !given {
                errors.push(FieldError {
                    field: "conversion_rate".into(),
                    message: "the control is needed: `conversion_rate`, or `mean` and `std_dev`"
                        .into(),
                });
            }
            (0.0, 0.0)
        }
        (Some(_), _, _) => {
            errors.push(FieldError {
                field: "conversion_rate".into(),
                message: "give `conversion_rate` or `mean` and `std_dev`, not both".into(),
            });
            (0.0, 0.0)
        }
        (None, m, s) => {
            if m.is_none() && !body.contains_key("mean") {
                errors.push(FieldError {
                    field: "mean".into(),
                    message: "is required with `std_dev`".into(),
                });
            }
            if s.is_none() && !body.contains_key("std_dev") {
                errors.push(FieldError {
                    field: "std_dev".into(),
                    message: "is required with `mean`".into(),
                });
            }
            (0.0, 0.0)
        }
    };
    if effect.is_none() && units.is_none() && errors.is_empty() {
        errors.push(FieldError {
            field: "effect".into(),
            message:
                "give `effect` (for the units needed), `units_per_arm` (for the minimum detectable \
                      effect), or both (for the power)"
                    .into(),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation("power analysis", &errors));
    }
    let comparisons = arms - 1.0;
    let input = PowerInput {
        mean,
        variance,
        treatment_variance: None,
        alpha: alpha / comparisons,
        lift,
    };
    let stats_error =
        |e: flywheel_stats::Error| ApiError::invalid_field("power analysis", "body", e.to_string());
    let mut out = json!({
        "alpha_per_comparison": input.alpha,
        "arms": arms,
        "lift": if lift == LiftType::Relative { "relative" } else { "absolute" },
        "control": {"mean": mean, "variance": variance},
    });
    match (effect, units) {
        (None, None) => {
            return Err(ApiError::invalid_field(
                "power analysis",
                "effect",
                "give `effect`, `units_per_arm`, or both",
            ))
        }
        (Some(effect), Some(n)) => {
            out["effect"] = json!(effect);
            out["units_per_arm"] = json!(n);
            out["power"] = json!(power(&input, n, effect).map_err(stats_error)?);
        }
        (Some(effect), None) => {
            let n = sample_size(&input, effect, target)
                .map_err(stats_error)?
                .ceil();
            out["effect"] = json!(effect);
            out["power"] = json!(target);
            out["units_per_arm"] = json!(n);
            out["total_units"] = json!(n * arms);
        }
        (None, Some(n)) => {
            out["units_per_arm"] = json!(n);
            out["power"] = json!(target);
            out["minimum_detectable_effect"] =
                json!(minimum_detectable_effect(&input, n, target).map_err(stats_error)?);
        }
    }
    Ok(Json(out))
}
