//! Guarded rollouts: a release plan that gives a feature's new value to a growing share of users, step by step,
//! while guardrail metrics compare the users who got it (treatment) with those who did not (control). The JSON body
//! of `POST /api/v1/projects/{id}/rollouts`, parsed like an insight definition (every problem at once, by field).
//!
//! ```
//! use flywheel_query::rollout::parse_rollout;
//! use serde_json::json;
//!
//! let r = parse_rollout(&json!({
//!     "key": "new-checkout", "name": "New checkout", "feature": "checkout-v2", "value": true,
//!     "steps": [{"percent": 5, "min_duration_secs": 3600, "min_units": 500}, {"percent": 50}, {"percent": 100}],
//!     "guardrails": [{"metric": "errors", "threshold": 0.02}],
//! })).unwrap();
//! assert_eq!(r.steps[1].percent, 50.0);
//! assert_eq!(r.environment, "production");
//!
//! let errors = parse_rollout(&json!({"key": "x", "name": "X", "feature": "f", "value": 1,
//!     "steps": [{"percent": 50}, {"percent": 20}]})).unwrap_err();
//! assert_eq!(errors[0].field, "steps[1].percent");
//! ```
//!
//! - `value`: what the treatment gets; `control_value` what the control gets (absent: the feature's default).
//! - `steps`: strictly increasing percentages in (0, 100], the last one 100. A step below 100 advances once it ran
//!   `min_duration_secs` and its treatment has `min_units` exposed units; reaching 100 ships the value.
//! - `guardrails`: metric keys; a guardrail regresses when the sequential test (always-valid, so it may be looked at
//!   continuously) finds the treatment significantly worse at `alpha` (the metric's `inverse` says which way is
//!   worse), or, once the step's treatment has `min_units`, when the treatment's value crosses `threshold` (above
//!   it for `inverse` metrics, below it otherwise). A regression rolls the rollout back.

use serde_json::{json, Value};

use crate::experiment::{number_between, read_key, MAX_KEY, MAX_METRICS, MAX_NAME};
use crate::read::{Errors, Obj};
use crate::FieldError;

/// Most steps in a plan.
pub const MAX_STEPS: usize = 20;
/// Longest minimum duration of a step, in seconds (90 days).
pub const MAX_STEP_SECS: u64 = 90 * 24 * 3600;

/// One step of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Share of the matching users that get the new value, in (0, 100].
    pub percent: f64,
    /// The step lasts at least this long.
    pub min_duration_secs: u64,
    /// The step's treatment has at least this many exposed units before it advances.
    pub min_units: u64,
}

/// A metric that must not get worse.
#[derive(Debug, Clone, PartialEq)]
pub struct Guardrail {
    /// The metric's key.
    pub metric: String,
    /// An absolute limit of the treatment's value (e.g. an error rate of 0.02).
    pub threshold: Option<f64>,
}

/// A parsed rollout definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Unique per project.
    pub key: String,
    /// For people.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The feature rolled out.
    pub feature: String,
    /// Its environment.
    pub environment: String,
    /// What the treatment gets.
    pub value: Value,
    /// What the control gets; `None`: the feature's default value.
    pub control_value: Option<Value>,
    /// The attribute users are bucketed on.
    pub hash_attribute: String,
    /// Targeting condition of the rollout's rule (GrowthBook condition syntax), if any.
    pub condition: Option<Value>,
    /// The plan.
    pub steps: Vec<Step>,
    /// Metrics that must not get worse.
    pub guardrails: Vec<Guardrail>,
    /// Significance level of the guardrails' sequential tests.
    pub alpha: f64,
    /// The sequential test's tuning (the sample size it is most powerful at).
    pub sequential_tuning: u64,
}

/// Default minimum duration of a step: an hour.
pub const DEFAULT_STEP_SECS: u64 = 3600;
/// Default minimum treatment units of a step.
pub const DEFAULT_STEP_UNITS: u64 = 100;

fn read_steps(o: &mut Obj<'_>, e: &mut Errors) -> Vec<Step> {
    let Some((at, items)) = o.array("steps", MAX_STEPS, e) else {
        if !o.has("steps") {
            e.push(o.at("steps"), "is required (e.g. 5 %, 25 %, 50 %, 100 %)");
        }
        return Vec::new();
    };
    if items.is_empty() {
        e.push(at.clone(), "needs at least one step");
    }
    let mut steps: Vec<Step> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let Some(mut s) = Obj::new(item, &here, e) else {
            continue;
        };
        let percent = match s.get("percent") {
            None => {
                e.push(format!("{here}.percent"), "is required");
                None
            }
            Some(v) => match v.as_f64() {
                Some(p) if p > 0.0 && p <= 100.0 => Some(p),
                _ => {
                    e.push(
                        format!("{here}.percent"),
                        "must be a number above 0 and at most 100",
                    );
                    None
                }
            },
        };
        let min_duration_secs = s
            .integer("min_duration_secs", 0, MAX_STEP_SECS, e)
            .unwrap_or(DEFAULT_STEP_SECS);
        let min_units = s
            .integer("min_units", 0, 1_000_000_000, e)
            .unwrap_or(DEFAULT_STEP_UNITS);
        s.finish(e);
        let Some(percent) = percent else { continue };
        if let Some(prev) = steps.last().filter(|p| percent <= p.percent) {
            e.push(
                format!("{here}.percent"),
                format!("must be above the previous step's {}", prev.percent),
            );
            continue;
        }
        steps.push(Step {
            percent,
            min_duration_secs,
            min_units,
        });
    }
    if steps.len() == items.len() && steps.last().is_some_and(|s| s.percent < 100.0) {
        e.push(
            format!("{at}[{}].percent", items.len() - 1),
            "the last step must be 100 (a rollout ends with everyone on the new value)",
        );
    }
    steps
}

fn read_guardrails(o: &mut Obj<'_>, e: &mut Errors) -> Vec<Guardrail> {
    let Some((at, items)) = o.array("guardrails", MAX_METRICS, e) else {
        return Vec::new();
    };
    let mut out: Vec<Guardrail> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let Some(mut g) = Obj::new(item, &here, e) else {
            continue;
        };
        let metric = g.required_string("metric", MAX_KEY, e);
        let threshold = match g.get("threshold") {
            None => None,
            Some(v) => match v.as_f64() {
                Some(t) => Some(t),
                None => {
                    e.push(format!("{here}.threshold"), "must be a number");
                    None
                }
            },
        };
        g.finish(e);
        let Some(metric) = metric else { continue };
        if out.iter().any(|x| x.metric == metric) {
            e.push(
                format!("{here}.metric"),
                format!("`{metric}` is listed twice"),
            );
            continue;
        }
        out.push(Guardrail { metric, threshold });
    }
    out
}

/// Parses a rollout definition (the API body; `status`, `step` and other state are not part of it).
pub fn parse_rollout(body: &Value) -> Result<Rollout, Vec<FieldError>> {
    let mut e = Errors::default();
    let Some(mut o) = Obj::new(body, "", &mut e) else {
        return Err(e.0);
    };
    let key = read_key(&mut o, &mut e);
    let name = o.required_string("name", MAX_NAME, &mut e);
    let description = o.string("description", 10_000, &mut e).unwrap_or_default();
    let feature = o.required_string("feature", MAX_KEY * 2, &mut e);
    let environment = o
        .string("environment", MAX_KEY, &mut e)
        .unwrap_or_else(|| "production".to_owned());
    let value = o.get("value").cloned();
    if value.is_none() {
        e.push("value", "is required: the value the rollout gives");
    }
    let control_value = o.get("control_value").cloned();
    let hash_attribute = o
        .string("hash_attribute", MAX_KEY, &mut e)
        .unwrap_or_else(|| "id".to_owned());
    let condition = match o.get("condition") {
        None => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => {
            e.push("condition", "must be an object (a targeting condition)");
            None
        }
    };
    let steps = read_steps(&mut o, &mut e);
    let guardrails = read_guardrails(&mut o, &mut e);
    let alpha = number_between(&mut o, "alpha", 0.0, 0.5, &mut e).unwrap_or(0.05);
    let sequential_tuning = o
        .integer("sequential_tuning", 100, 1_000_000_000, &mut e)
        .unwrap_or(5_000);
    o.finish(&mut e);
    if !e.0.is_empty() {
        return Err(e.0);
    }
    let (Some(key), Some(name), Some(feature), Some(value)) = (key, name, feature, value) else {
        return Err(vec![FieldError {
            field: "body".into(),
            message: "is not a rollout definition".into(),
        }]);
    };
    Ok(Rollout {
        key,
        name,
        description,
        feature,
        environment,
        value,
        control_value,
        hash_attribute,
        condition,
        steps,
        guardrails,
        alpha,
        sequential_tuning,
    })
}

impl Rollout {
    /// The definition in its API form (parses back to the same rollout).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "key": self.key,
            "name": self.name,
            "feature": self.feature,
            "environment": self.environment,
            "value": self.value,
            "hash_attribute": self.hash_attribute,
            "steps": self.steps.iter().map(|s| json!({
                "percent": s.percent, "min_duration_secs": s.min_duration_secs, "min_units": s.min_units,
            })).collect::<Vec<_>>(),
            "guardrails": self.guardrails.iter().map(|g| {
                let mut v = json!({"metric": g.metric});
                if let Some(t) = g.threshold {
                    v["threshold"] = json!(t);
                }
                v
            }).collect::<Vec<_>>(),
            "alpha": self.alpha,
            "sequential_tuning": self.sequential_tuning,
        });
        if !self.description.is_empty() {
            v["description"] = json!(self.description);
        }
        if let Some(c) = &self.control_value {
            v["control_value"] = c.clone();
        }
        if let Some(c) = &self.condition {
            v["condition"] = c.clone();
        }
        v
    }

    /// The id of the experiment rule the rollout puts first in its environment's rules.
    pub fn rule_id(&self) -> String {
        format!("rollout-{}", self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: Value) -> Vec<String> {
        parse_rollout(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_full_definition_round_trips() {
        let r = parse_rollout(&json!({
            "key": "r1", "name": "R", "description": "d", "feature": "f", "environment": "staging",
            "value": {"layout": "new"}, "control_value": {"layout": "old"}, "hash_attribute": "company_id",
            "condition": {"country": "NL"},
            "steps": [{"percent": 1, "min_duration_secs": 60, "min_units": 10}, {"percent": 100}],
            "guardrails": [{"metric": "errors", "threshold": 0.01}, {"metric": "latency"}],
            "alpha": 0.01, "sequential_tuning": 2000,
        }))
        .unwrap();
        assert_eq!(r.steps[0].min_units, 10);
        assert_eq!(
            (r.steps[1].min_duration_secs, r.steps[1].min_units),
            (DEFAULT_STEP_SECS, DEFAULT_STEP_UNITS)
        );
        assert_eq!(r.guardrails[1].threshold, None);
        assert_eq!(r.rule_id(), "rollout-r1");
        assert_eq!(parse_rollout(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn problems_are_reported_per_field() {
        assert_eq!(
            fields(json!({})),
            ["key", "name", "feature", "value", "steps"]
        );
        assert_eq!(
            fields(
                json!({"key": "a b", "name": "A", "feature": "f", "value": 1, "steps": [], "x": 1})
            ),
            ["key", "steps", "x"]
        );
        assert_eq!(
            fields(json!({"key": "a", "name": "A", "feature": "f", "value": 1,
                "steps": [{"percent": 0}, {"percent": 150}, {"percent": 20, "min_units": -1, "y": 2}],
                "guardrails": [{"metric": "m"}, {"metric": "m"}, {"threshold": "high"}],
                "alpha": 0.7})),
            [
                "steps[0].percent",
                "steps[1].percent",
                "steps[2].min_units",
                "steps[2].y",
                "guardrails[1].metric",
                "guardrails[2].metric",
                "guardrails[2].threshold",
                "alpha"
            ]
        );
        assert_eq!(
            fields(json!({"key": "a", "name": "A", "feature": "f", "value": 1,
                "steps": [{"percent": 10}, {"percent": 50}]})),
            ["steps[1].percent"],
            "the last step is 100"
        );
    }
}
