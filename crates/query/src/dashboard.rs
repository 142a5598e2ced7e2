//! Dashboards: named lists of saved insights. Each saved insight is a name, a kind and the query body of
//! `POST …/insights/{kind}` (validated as that kind's definition when the dashboard is saved, so a tile never holds a
//! query the engine refuses), and how to draw it.

use serde_json::{json, Value};

use crate::experiment::{read_key, MAX_NAME};
use crate::read::{index, Errors, Named, Obj};
use crate::{parse_kind, FieldError, InsightKind};

/// Most insights on one dashboard.
pub const MAX_INSIGHTS: usize = 50;

/// One saved insight.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedInsight {
    pub name: String,
    pub kind: InsightKind,
    /// The request body as given (it parsed as `kind`).
    pub query: Value,
    /// `line` or `bar` (trends).
    pub chart: Option<String>,
}

/// A dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    pub key: String,
    pub name: String,
    pub description: String,
    pub insights: Vec<SavedInsight>,
}

/// Validates a dashboard document; every problem is reported with its field path.
pub fn parse_dashboard(body: &Value) -> Result<Dashboard, Vec<FieldError>> {
    let mut e = Errors::default();
    let Some(mut o) = Obj::new(body, "", &mut e) else {
        return Err(e.0);
    };
    let key = read_key(&mut o, &mut e);
    let name = o.required_string("name", MAX_NAME, &mut e);
    let description = o.string("description", 10_000, &mut e).unwrap_or_default();
    let mut insights = Vec::new();
    if let Some((at, items)) = o.array("insights", MAX_INSIGHTS, &mut e) {
        for (i, item) in items.iter().enumerate() {
            let path = index(&at, i);
            if let Some(s) = read_insight(item, &path, &mut e) {
                insights.push(s);
            }
        }
    }
    o.finish(&mut e);
    match (key, name) {
        (Some(key), Some(name)) if e.0.is_empty() => Ok(Dashboard {
            key,
            name,
            description,
            insights,
        }),
        _ => Err(e.0),
    }
}

fn read_insight(v: &Value, path: &str, e: &mut Errors) -> Option<SavedInsight> {
    let mut o = Obj::new(v, path, e)?;
    let name = o.required_string("name", MAX_NAME, e);
    let kind_text = o.required_string("kind", 20, e);
    let kind = kind_text.as_deref().and_then(|k| {
        let found = InsightKind::from_name(k);
        if found.is_none() {
            e.push(
                o.at("kind"),
                format!("must be one of {}", InsightKind::NAMES.join(", ")),
            );
        }
        found
    });
    let query = o.get("query").cloned();
    if query.is_none() {
        e.push(o.at("query"), "is required");
    }
    let chart = o.string("chart", 10, e);
    if let Some(c) = &chart {
        if c != "line" && c != "bar" {
            e.push(o.at("chart"), "must be `line` or `bar`");
        }
    }
    let at_query = o.at("query");
    o.finish(e);
    let (kind, query) = (kind?, query?);
    if let Err(errors) = parse_kind(kind.name(), &query) {
        for fe in errors {
            e.push(
                if fe.field.is_empty() || fe.field == "body" {
                    at_query.clone()
                } else {
                    format!("{at_query}.{}", fe.field)
                },
                fe.message,
            );
        }
        return None;
    }
    Some(SavedInsight {
        name: name?,
        kind,
        query,
        chart,
    })
}

impl Dashboard {
    /// The document in its API form (parses back to the same dashboard).
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "key": self.key,
            "name": self.name,
            "insights": self.insights.iter().map(|s| {
                let mut v = json!({"name": s.name, "kind": s.kind.name(), "query": s.query});
                if let Some(c) = &s.chart {
                    v["chart"] = json!(c);
                }
                v
            }).collect::<Vec<_>>(),
        });
        if !self.description.is_empty() {
            out["description"] = json!(self.description);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dashboard_round_trips_and_bad_tiles_are_named() {
        let body = json!({"key": "growth", "name": "Growth", "insights": [
            {"name": "Views", "kind": "trends", "query": {"series": [{"event": "$pageview"}]}, "chart": "bar"},
            {"name": "Signup funnel", "kind": "funnel", "query": {"steps": [{"event": "a"}, {"event": "b"}]}}
        ]});
        let d = parse_dashboard(&body).unwrap();
        assert_eq!(d.insights.len(), 2);
        assert_eq!(parse_dashboard(&d.to_json()).unwrap(), d);

        let bad = json!({"key": "x y", "name": "X", "insights": [
            {"name": "T", "kind": "trends", "query": {"series": [{"event": "$pageview", "math": "nope"}]}},
            {"name": "K", "kind": "pie", "query": {}},
            {"kind": "funnel", "query": {"steps": [{"event": "a"}]}, "extra": 1}
        ]});
        let errors = parse_dashboard(&bad).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"key"), "{fields:?}");
        assert!(
            fields.contains(&"insights[0].query.series[0].math"),
            "{fields:?}"
        );
        assert!(fields.contains(&"insights[1].kind"), "{fields:?}");
        assert!(fields.contains(&"insights[2].name"), "{fields:?}");
        assert!(fields.contains(&"insights[2].extra"), "{fields:?}");
        assert!(
            fields
                .iter()
                .any(|f| f.starts_with("insights[2].query.steps")),
            "{fields:?}"
        );
    }
}
