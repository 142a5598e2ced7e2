//! Experiment metrics: what an experiment measures per unit (person, or group for account-level experiments) in a
//! window after the unit's first exposure. The JSON body of `POST /api/v1/projects/{id}/metrics`, parsed like an
//! insight definition (every problem at once, each with its field path; unknown fields named).
//!
//! ```
//! use flywheel_query::experiment::{parse_metric, MetricKind};
//! use serde_json::json;
//!
//! let m = parse_metric(&json!({
//!     "key": "checkout", "name": "Checkout conversion", "kind": "conversion",
//!     "event": "checkout_completed", "window_hours": 72,
//! })).unwrap();
//! assert_eq!(m.kind, MetricKind::Conversion);
//!
//! let errors = parse_metric(&json!({"key": "revenue", "kind": "sum", "event": "paid"})).unwrap_err();
//! assert_eq!(errors[0].field, "name");
//! assert_eq!(errors[1].field, "value_property");
//! ```
//!
//! Kinds (the per-unit value; units without a matching event count with 0):
//! - `conversion`: 1 when the unit did `event` (with `properties`) in its window, else 0; with `steps` (2–10
//!   objects of `event` and `properties`) instead, a funnel: 1 when the unit did every step, in order, in its window;
//! - `count`: the number of such events;
//! - `sum`: the sum of their numeric `value_property` (events without a number are skipped);
//! - `ratio`: `numerator` over `denominator`, each a measure (`{"kind": "count" | "sum" | "conversion", "event",
//!   "properties", "value_property"}`), analysed with the delta method over units;
//! - `quantile`: the `quantile` (e.g. 0.9) of the units' sums of `value_property`.
//!
//! The window starts `delay_hours` after the unit's first exposure and lasts `window_hours` (absent: until the
//! analysis ends). `cap` caps each unit's value (absolute capping); `inverse` says lower is better (errors,
//! latency).

use serde::Serialize;
use serde_json::{json, Value};

use crate::filter::{read_event, read_filters, EventRef, Filter};
use crate::read::{named_enum, type_name, Errors, Named, Obj};
use crate::FieldError;

/// Longest metric key.
pub const MAX_KEY: usize = 100;
/// Longest name.
pub const MAX_NAME: usize = 200;
/// Longest window or delay, in hours (a year).
pub const MAX_HOURS: u64 = 24 * 366;

named_enum! {
    /// What a metric computes per unit.
    pub enum MetricKind {
        /// 1 when the unit did the event in its window.
        Conversion = "conversion",
        /// Number of events in the window.
        Count = "count",
        /// Sum of a numeric property of the events in the window.
        Sum = "sum",
        /// A measure over another, by the delta method.
        Ratio = "ratio",
        /// A quantile of the units' sums.
        Quantile = "quantile",
    }
}

named_enum! {
    /// What a ratio's numerator or denominator counts per unit.
    pub enum MeasureKind {
        /// 1 when the unit did the event.
        Conversion = "conversion",
        /// Number of events.
        Count = "count",
        /// Sum of a numeric property.
        Sum = "sum",
    }
}

/// Events of one kind (with filters) and what to take of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measure {
    /// How the unit's events become a number.
    pub kind: MeasureKind,
    /// The event.
    pub event: EventRef,
    /// Filters on the event's, the person's or a group's properties.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<Filter>,
    /// The numeric event property summed (`sum` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_property: Option<String>,
}

/// A parsed metric. Its API form is [`Metric::to_json`] (which parses back to the same metric).
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Unique per project; how experiments name it.
    pub key: String,
    /// For people.
    pub name: String,
    /// Free text.
    pub description: String,
    /// What it computes.
    pub kind: MetricKind,
    /// The events (`conversion`, `count`, `sum`, `quantile`), or the numerator (`ratio`).
    pub measure: Measure,
    /// The denominator (`ratio` only).
    pub denominator: Option<Measure>,
    /// A funnel conversion's steps after the first (`measure`): the unit converts when it did them in order in
    /// its window. Empty for every other metric.
    pub then: Vec<Measure>,
    /// The quantile level, in (0, 1) (`quantile` only).
    pub quantile: Option<f64>,
    /// Hours between the first exposure and the start of the window.
    pub delay_hours: u64,
    /// Length of the window in hours; `None`: until the end of the analysis.
    pub window_hours: Option<u64>,
    /// Each unit's value is capped at this (not for `conversion`).
    pub cap: Option<f64>,
    /// Lower is better.
    pub inverse: bool,
}

impl Measure {
    /// The measure's fields in the API form (`kind` only where the caller wants it: nested measures).
    fn write(&self, out: &mut serde_json::Map<String, Value>, with_kind: bool) {
        if with_kind {
            out.insert("kind".into(), json!(self.kind.name()));
        }
        out.insert("event".into(), json!(self.event));
        if !self.properties.is_empty() {
            out.insert("properties".into(), json!(self.properties));
        }
        if let Some(p) = &self.value_property {
            out.insert("value_property".into(), json!(p));
        }
    }
}

impl Metric {
    /// The definition in its API form: what [`parse_metric`] reads (round trip: the same metric).
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("key".into(), json!(self.key));
        out.insert("name".into(), json!(self.name));
        if !self.description.is_empty() {
            out.insert("description".into(), json!(self.description));
        }
        out.insert("kind".into(), json!(self.kind.name()));
        match &self.denominator {
            Some(den) => {
                let (mut num, mut d) = (serde_json::Map::new(), serde_json::Map::new());
                self.measure.write(&mut num, true);
                den.write(&mut d, true);
                out.insert("numerator".into(), Value::Object(num));
                out.insert("denominator".into(), Value::Object(d));
            }
            None if !self.then.is_empty() => {
                let steps: Vec<Value> = std::iter::once(&self.measure)
                    .chain(&self.then)
                    .map(|m| {
                        let mut step = serde_json::Map::new();
                        m.write(&mut step, false);
                        Value::Object(step)
                    })
                    .collect();
                out.insert("steps".into(), Value::Array(steps));
            }
            None => self.measure.write(&mut out, false),
        }
        if let Some(q) = self.quantile {
            out.insert("quantile".into(), json!(q));
        }
        if self.delay_hours > 0 {
            out.insert("delay_hours".into(), json!(self.delay_hours));
        }
        if let Some(w) = self.window_hours {
            out.insert("window_hours".into(), json!(w));
        }
        if let Some(c) = self.cap {
            out.insert("cap".into(), json!(c));
        }
        if self.inverse {
            out.insert("inverse".into(), json!(true));
        }
        Value::Object(out)
    }
}

/// Reads a measure's fields from `o` (the metric itself, or a ratio's `numerator`/`denominator` object).
fn read_measure(o: &mut Obj<'_>, kind: Option<MeasureKind>, e: &mut Errors) -> Option<Measure> {
    let event = read_event(o, e);
    let properties = read_filters(o, e);
    let value_property = o.string("value_property", MAX_NAME, e);
    if kind == Some(MeasureKind::Sum) && value_property.is_none() && !o.has("value_property") {
        e.push(o.at("value_property"), "is required for a sum");
    }
    if kind.is_some_and(|k| k != MeasureKind::Sum) && value_property.is_some() {
        e.push(o.at("value_property"), "is only for a sum");
    }
    Some(Measure {
        kind: kind?,
        event: event?,
        properties,
        value_property,
    })
}

/// A nested measure object (`numerator`, `denominator`).
fn read_nested(o: &mut Obj<'_>, key: &'static str, e: &mut Errors) -> Option<Measure> {
    let Some(v) = o.get(key) else {
        e.push(o.at(key), "is required for a ratio");
        return None;
    };
    let at = o.at(key);
    let mut m = Obj::new(v, &at, e)?;
    let kind = m.choice::<MeasureKind>("kind", e);
    if !m.has("kind") {
        e.push(m.at("kind"), "is required");
    }
    let measure = read_measure(&mut m, kind, e);
    m.finish(e);
    measure
}

/// The required `key` of a document: letters, digits, `-`, `_` and `.`, at most [`MAX_KEY`] characters.
pub(crate) fn read_key(o: &mut Obj<'_>, e: &mut Errors) -> Option<String> {
    let key = o.required_string("key", MAX_KEY, e);
    if key.as_ref().is_some_and(|k| {
        !k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    }) {
        e.push("key", "may only hold letters, digits, `-`, `_` and `.`");
    }
    key
}

/// Most steps of a funnel conversion.
pub const MAX_STEPS: usize = 10;

/// A funnel conversion's `steps`: 2 to [`MAX_STEPS`] objects of `event` and `properties`.
fn read_steps(o: &mut Obj<'_>, e: &mut Errors) -> Vec<Measure> {
    let Some((at, items)) = o.array("steps", MAX_STEPS, e) else {
        return Vec::new();
    };
    if items.len() < 2 {
        e.push(
            at.clone(),
            "needs at least 2 steps (one event is an ordinary conversion)",
        );
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let Some(mut step) = Obj::new(item, &here, e) else {
            continue;
        };
        if let Some(m) = read_measure(&mut step, Some(MeasureKind::Conversion), e) {
            out.push(m);
        }
        step.finish(e);
    }
    out
}

/// A finite number in `(lo, hi)`, exclusive.
pub(crate) fn number_between(
    o: &mut Obj<'_>,
    key: &'static str,
    lo: f64,
    hi: f64,
    e: &mut Errors,
) -> Option<f64> {
    let v = o.get(key)?;
    match v.as_f64() {
        Some(x) if x > lo && x < hi => Some(x),
        Some(_) if hi.is_infinite() => {
            e.push(o.at(key), format!("must be a number above {lo}"));
            None
        }
        Some(_) => {
            e.push(
                o.at(key),
                format!("must be between {lo} and {hi} (exclusive)"),
            );
            None
        }
        None => {
            e.push(o.at(key), format!("must be a number, not {}", type_name(v)));
            None
        }
    }
}

/// Parses a metric definition (the API body).
pub fn parse_metric(body: &Value) -> Result<Metric, Vec<FieldError>> {
    let mut e = Errors::default();
    let Some(mut o) = Obj::new(body, "", &mut e) else {
        return Err(e.0);
    };
    let key = read_key(&mut o, &mut e);
    let name = o.required_string("name", MAX_NAME, &mut e);
    let description = o.string("description", 10_000, &mut e).unwrap_or_default();
    if !o.has("kind") {
        e.push("kind", "is required");
    }
    let kind = o.choice::<MetricKind>("kind", &mut e);
    let mut then = Vec::new();
    let (measure, denominator) = match kind {
        Some(MetricKind::Ratio) => {
            for key in ["event", "properties", "value_property"] {
                if o.has(key) {
                    e.push(key, "a ratio takes `numerator` and `denominator` instead");
                }
            }
            o.allow("event");
            o.allow("properties");
            o.allow("value_property");
            (
                read_nested(&mut o, "numerator", &mut e),
                read_nested(&mut o, "denominator", &mut e),
            )
        }
        other => {
            let measure_kind = other.map(|k| match k {
                MetricKind::Conversion => MeasureKind::Conversion,
                MetricKind::Count => MeasureKind::Count,
                MetricKind::Sum | MetricKind::Quantile | MetricKind::Ratio => MeasureKind::Sum,
            });
            for key in ["numerator", "denominator"] {
                if o.has(key) {
                    e.push(key, "is only for a ratio");
                }
            }
            o.allow("numerator");
            o.allow("denominator");
            if o.has("steps") {
                if other != Some(MetricKind::Conversion) {
                    e.push("steps", "is only for a conversion (a funnel conversion)");
                }
                for key in ["event", "properties", "value_property"] {
                    if o.has(key) {
                        e.push(key, "a funnel conversion takes its events in `steps`");
                    }
                }
                o.allow("event");
                o.allow("properties");
                o.allow("value_property");
                let mut steps = read_steps(&mut o, &mut e).into_iter();
                let first = steps.next();
                then = steps.collect();
                (first, None)
            } else {
                o.allow("steps");
                (read_measure(&mut o, measure_kind, &mut e), None)
            }
        }
    };
    let quantile = number_between(&mut o, "quantile", 0.0, 1.0, &mut e);
    match (kind, quantile.is_some() || o.has("quantile")) {
        (Some(MetricKind::Quantile), false) => e.push("quantile", "is required for a quantile"),
        (Some(k), true) if k != MetricKind::Quantile => {
            e.push("quantile", "is only for a quantile")
        }
        _ => {}
    }
    let delay_hours = o.integer("delay_hours", 0, MAX_HOURS, &mut e).unwrap_or(0);
    let window_hours = o.integer("window_hours", 1, MAX_HOURS, &mut e);
    let cap = number_between(&mut o, "cap", 0.0, f64::INFINITY, &mut e);
    if kind == Some(MetricKind::Conversion) && o.has("cap") {
        e.push("cap", "does not apply to a conversion");
    }
    let inverse = o.boolean("inverse", &mut e).unwrap_or(false);
    o.finish(&mut e);
    if !e.0.is_empty() {
        return Err(e.0);
    }
    let (Some(key), Some(name), Some(kind), Some(measure)) = (key, name, kind, measure) else {
        return Err(vec![FieldError {
            field: "body".into(),
            message: "is not a metric definition".into(),
        }]);
    };
    Ok(Metric {
        key,
        name,
        description,
        kind,
        measure,
        denominator,
        then,
        quantile,
        delay_hours,
        window_hours,
        cap,
        inverse,
    })
}

named_enum! {
    /// How an experiment's results are computed (see `flywheel-stats`).
    pub enum StatsEngine {
        /// Gaussian model on the lift: chance to win, risk, credible interval.
        Bayesian = "bayesian",
        /// Welch's t-test: p-value and confidence interval, valid when looked at once, at the planned end.
        Frequentist = "frequentist",
        /// mSPRT: always-valid p-values and confidence sequences, for looking at results while it runs.
        Sequential = "sequential",
    }
}

named_enum! {
    /// Correction of p-values across metrics and arms.
    pub enum Correction {
        /// None.
        None = "none",
        /// Holm's step-down (family-wise error).
        Holm = "holm",
        /// Benjamini–Hochberg (false discovery rate).
        BenjaminiHochberg = "bh",
        /// Bonferroni.
        Bonferroni = "bonferroni",
    }
}

named_enum! {
    /// How the difference between a treatment and the control is expressed.
    pub enum Lift {
        /// (treatment − control) / control.
        Relative = "relative",
        /// treatment − control, in the metric's unit (defined when the control is 0, e.g. an error rate).
        Absolute = "absolute",
    }
}

/// How an experiment is analysed.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The statistics.
    pub engine: StatsEngine,
    /// CUPED variance reduction with each metric's value before exposure.
    pub cuped: bool,
    /// Days before exposure that CUPED uses.
    pub pre_window_days: u64,
    /// Significance level (frequentist and sequential), in (0, 0.5).
    pub alpha: f64,
    /// Multiple-testing correction.
    pub correction: Correction,
    /// The sequential test's tuning: the sample size it is most powerful at.
    pub sequential_tuning: u64,
    /// Relative or absolute lift.
    pub lift: Lift,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            engine: StatsEngine::Bayesian,
            cuped: true,
            pre_window_days: 14,
            alpha: 0.05,
            correction: Correction::Holm,
            sequential_tuning: 5_000,
            lift: Lift::Relative,
        }
    }
}

/// An experiment's definition: the flag rule it analyses and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// Unique per project.
    pub key: String,
    /// For people.
    pub name: String,
    /// What the team expects, free text.
    pub hypothesis: String,
    /// The feature flag whose experiment rule assigns the variations.
    pub feature: String,
    /// The rule's id in that feature.
    pub rule_id: String,
    /// The environment whose rule it is.
    pub environment: String,
    /// Metric keys: the decision metrics.
    pub primary: Vec<String>,
    /// Metric keys: watched, not decided on.
    pub secondary: Vec<String>,
    /// Metric keys: must not get worse.
    pub guardrail: Vec<String>,
    /// How to analyse.
    pub analysis: Analysis,
    /// Account-level experiments: the group type (e.g. `company`) whose groups are the units, randomised by the
    /// rule's hash attribute and taken from the events' `$groups`; `None`: persons are the units.
    pub unit: Option<String>,
}

/// Most metrics in one list.
pub const MAX_METRICS: usize = 20;

fn read_keys(o: &mut Obj<'_>, key: &'static str, e: &mut Errors) -> Vec<String> {
    let Some((at, items)) = o.array(key, MAX_METRICS, e) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (i, v) in items.iter().enumerate() {
        match v.as_str() {
            Some(k) if !k.is_empty() && !out.iter().any(|x| x == k) => out.push(k.to_owned()),
            Some(k) if !k.is_empty() => {
                e.push(format!("{at}[{i}]"), format!("`{k}` is listed twice"))
            }
            _ => e.push(format!("{at}[{i}]"), "must be a metric key"),
        }
    }
    out
}

/// Parses an experiment definition (the API body; `status`, `phases` and other state are not part of it).
pub fn parse_experiment(body: &Value) -> Result<Experiment, Vec<FieldError>> {
    let mut e = Errors::default();
    let Some(mut o) = Obj::new(body, "", &mut e) else {
        return Err(e.0);
    };
    let key = read_key(&mut o, &mut e);
    let name = o.required_string("name", MAX_NAME, &mut e);
    let hypothesis = o.string("hypothesis", 10_000, &mut e).unwrap_or_default();
    let feature = o.required_string("feature", MAX_KEY * 2, &mut e);
    let rule_id = o.required_string("rule_id", MAX_KEY * 2, &mut e);
    let environment = o
        .string("environment", MAX_KEY, &mut e)
        .unwrap_or_else(|| "production".to_owned());
    let (mut primary, mut secondary, mut guardrail) = (Vec::new(), Vec::new(), Vec::new());
    match o.get("metrics") {
        None => e.push("metrics", "is required (at least one primary metric)"),
        Some(v) => {
            if let Some(mut m) = Obj::new(v, "metrics", &mut e) {
                primary = read_keys(&mut m, "primary", &mut e);
                secondary = read_keys(&mut m, "secondary", &mut e);
                guardrail = read_keys(&mut m, "guardrail", &mut e);
                m.finish(&mut e);
                if primary.is_empty() && !e.0.iter().any(|x| x.field.starts_with("metrics.primary"))
                {
                    e.push("metrics.primary", "needs at least one metric");
                }
            }
        }
    }
    let unit = o.string("unit", MAX_KEY, &mut e).filter(|u| u != "person");
    let mut analysis = Analysis::default();
    if let Some(v) = o.get("analysis") {
        if let Some(mut a) = Obj::new(v, "analysis", &mut e) {
            if let Some(x) = a.choice::<StatsEngine>("engine", &mut e) {
                analysis.engine = x;
            }
            if let Some(x) = a.boolean("cuped", &mut e) {
                analysis.cuped = x;
            }
            if let Some(x) = a.integer("pre_window_days", 1, 90, &mut e) {
                analysis.pre_window_days = x;
            }
            if let Some(x) = number_between(&mut a, "alpha", 0.0, 0.5, &mut e) {
                analysis.alpha = x;
            }
            if let Some(x) = a.choice::<Correction>("correction", &mut e) {
                analysis.correction = x;
            }
            if let Some(x) = a.integer("sequential_tuning", 100, 1_000_000_000, &mut e) {
                analysis.sequential_tuning = x;
            }
            if let Some(x) = a.choice::<Lift>("lift", &mut e) {
                analysis.lift = x;
            }
            a.finish(&mut e);
        }
    }
    o.finish(&mut e);
    if !e.0.is_empty() {
        return Err(e.0);
    }
    let (Some(key), Some(name), Some(feature), Some(rule_id)) = (key, name, feature, rule_id)
    else {
        return Err(vec![FieldError {
            field: "body".into(),
            message: "is not an experiment definition".into(),
        }]);
    };
    Ok(Experiment {
        key,
        name,
        hypothesis,
        feature,
        rule_id,
        environment,
        primary,
        secondary,
        guardrail,
        analysis,
        unit,
    })
}

impl Experiment {
    /// Every metric key, primary first.
    pub fn metric_keys(&self) -> impl Iterator<Item = &String> {
        self.primary
            .iter()
            .chain(&self.secondary)
            .chain(&self.guardrail)
    }

    /// The definition in its API form (parses back to the same experiment).
    pub fn to_json(&self) -> Value {
        let a = &self.analysis;
        let mut v = json!({
            "key": self.key,
            "name": self.name,
            "feature": self.feature,
            "rule_id": self.rule_id,
            "environment": self.environment,
            "metrics": {"primary": self.primary, "secondary": self.secondary, "guardrail": self.guardrail},
            "analysis": {
                "engine": a.engine.name(),
                "cuped": a.cuped,
                "pre_window_days": a.pre_window_days,
                "alpha": a.alpha,
                "correction": a.correction.name(),
                "sequential_tuning": a.sequential_tuning,
                "lift": a.lift.name(),
            },
        });
        if !self.hypothesis.is_empty() {
            v["hypothesis"] = json!(self.hypothesis);
        }
        if let Some(u) = &self.unit {
            v["unit"] = json!(u);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(body: Value) -> Vec<String> {
        parse_metric(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_funnel_conversion_takes_ordered_steps() {
        let m = parse_metric(&json!({
            "key": "activated", "name": "Activated", "kind": "conversion", "window_hours": 72,
            "steps": [{"event": "signed_up"}, {"event": "project_created", "properties": [{"key": "template", "value": "blank"}]},
                      {"event": "invited"}],
        }))
        .unwrap();
        assert_eq!(m.then.len(), 2);
        assert_eq!(m.then[0].properties.len(), 1);
        assert_eq!(parse_metric(&m.to_json()).unwrap(), m, "{}", m.to_json());
        assert_eq!(
            fields(
                json!({"key": "a", "name": "A", "kind": "count", "event": "x",
                          "steps": [{"event": "x"}, {"event": "y"}]})
            ),
            ["steps", "event"]
        );
        assert_eq!(
            fields(json!({"key": "a", "name": "A", "kind": "conversion",
                          "steps": [{"event": "x"}]})),
            ["steps"]
        );
        assert_eq!(
            fields(json!({"key": "a", "name": "A", "kind": "conversion",
                          "steps": [{"event": "x"}, {"nope": 1}]})),
            ["steps[1].event", "steps[1].nope"]
        );
    }

    #[test]
    fn every_kind_parses_and_round_trips_through_its_fields() {
        let ratio = parse_metric(&json!({
            "key": "rev_per_order", "name": "Revenue per order", "kind": "ratio",
            "numerator": {"kind": "sum", "event": "paid", "value_property": "amount"},
            "denominator": {"kind": "count", "event": "paid", "properties": [{"key": "currency", "value": "EUR"}]},
            "window_hours": 168, "cap": 5000, "inverse": false,
        }))
        .unwrap();
        assert_eq!(ratio.kind, MetricKind::Ratio);
        assert_eq!(ratio.measure.value_property.as_deref(), Some("amount"));
        let den = ratio.denominator.as_ref().unwrap();
        assert_eq!((den.kind, den.properties.len()), (MeasureKind::Count, 1));
        let q = parse_metric(&json!({
            "key": "p90", "name": "p90 load time", "kind": "quantile", "quantile": 0.9,
            "event": "page_loaded", "value_property": "ms", "inverse": true, "delay_hours": 1,
        }))
        .unwrap();
        assert_eq!((q.quantile, q.inverse, q.delay_hours), (Some(0.9), true, 1));
        assert_eq!(q.measure.kind, MeasureKind::Sum);
        let c =
            parse_metric(&json!({"key": "x", "name": "X", "kind": "count", "event": "$pageview"}))
                .unwrap();
        assert_eq!((c.window_hours, c.cap, c.delay_hours), (None, None, 0));
        for m in [ratio, q, c] {
            assert_eq!(parse_metric(&m.to_json()).unwrap(), m, "{}", m.to_json());
        }
    }

    #[test]
    fn problems_are_reported_per_field() {
        assert_eq!(fields(json!({})), ["key", "name", "kind", "event"]);
        assert_eq!(
            fields(json!({"key": "a b", "name": "A", "kind": "sum", "event": "e"})),
            ["key", "value_property"]
        );
        assert_eq!(
            fields(
                json!({"key": "a", "name": "A", "kind": "ratio", "event": "e",
                          "numerator": {"kind": "count", "event": "e"}})
            ),
            ["event", "denominator"]
        );
        assert_eq!(
            fields(
                json!({"key": "a", "name": "A", "kind": "conversion", "event": "e", "cap": 3,
                          "quantile": 0.5, "window_hours": 0, "colour": "red"})
            ),
            ["quantile", "window_hours", "cap", "colour"]
        );
        assert_eq!(
            fields(
                json!({"key": "a", "name": "A", "kind": "quantile", "event": "e",
                          "value_property": "v", "quantile": 1.0})
            ),
            ["quantile"]
        );
        assert_eq!(
            fields(json!({"key": "a", "name": "A", "kind": "ratio",
                          "numerator": {"kind": "sum", "event": "e"},
                          "denominator": {"kind": "median", "event": "e", "extra": 1}})),
            [
                "numerator.value_property",
                "denominator.kind",
                "denominator.extra"
            ]
        );
        assert_eq!(fields(json!([1])), ["body"]);
    }

    #[test]
    fn experiments_parse_with_defaults_and_round_trip() {
        let x = parse_experiment(&json!({
            "key": "onboarding-v2", "name": "Onboarding v2", "feature": "onboarding", "rule_id": "exp",
            "metrics": {"primary": ["activated"], "guardrail": ["errors"]},
            "analysis": {"engine": "sequential", "alpha": 0.01},
        }))
        .unwrap();
        assert_eq!(x.environment, "production");
        assert_eq!(x.analysis.engine, StatsEngine::Sequential);
        assert_eq!(
            (
                x.analysis.alpha,
                x.analysis.cuped,
                x.analysis.pre_window_days
            ),
            (0.01, true, 14)
        );
        assert_eq!(x.metric_keys().collect::<Vec<_>>(), ["activated", "errors"]);
        assert_eq!(parse_experiment(&x.to_json()).unwrap(), x);
        let errors: Vec<String> = parse_experiment(&json!({
            "key": "k", "name": "N", "feature": "f",
            "metrics": {"primary": [], "secondary": ["a", "a", 3]},
            "analysis": {"engine": "magic", "alpha": 0.7, "pre_window_days": 0},
            "status": "running",
        }))
        .unwrap_err()
        .into_iter()
        .map(|e| e.field)
        .collect();
        assert_eq!(
            errors,
            [
                "rule_id",
                "metrics.secondary[1]",
                "metrics.secondary[2]",
                "metrics.primary",
                "analysis.engine",
                "analysis.pre_window_days",
                "analysis.alpha",
                "status"
            ]
        );
    }
}
