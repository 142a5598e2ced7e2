//! The insight endpoint's JSON, built from an insight's numbers whichever engine computed them: the embedded
//! kernels (`insights`) or ClickHouse (`insights_clickhouse`). Both engines hand over the same shapes (series per
//! bucket and breakdown label, funnel step statistics, retention tables, stickiness counts, lifecycle counts), so
//! one definition gets the same answer, field for field, from either.

use chrono::SecondsFormat;
use flywheel_kernels as k;
use flywheel_query::plan::{Period, Plan};
use flywheel_query::{EventRef, Interval, Math, TimeRange};
use serde_json::{json, Value};

/// One planned read of a trends insight: per breakdown label (`None` without a breakdown) the label, and per
/// series one row of values per label (`rows[series][label][bucket]`).
pub type SeriesRows = (Vec<Option<Value>>, Vec<Vec<Vec<f64>>>);

/// The bucket labels of a range: dates, or date and time by the hour.
pub(crate) fn labels_of(range: &TimeRange) -> Vec<String> {
    range
        .buckets
        .iter()
        .map(|b| match range.interval {
            Interval::Hour => b.label.format("%Y-%m-%d %H:%M:%S").to_string(),
            _ => b.label.format("%Y-%m-%d").to_string(),
        })
        .collect()
}

pub(crate) fn event_label(spec: &EventRef) -> String {
    match spec {
        EventRef::All => "All events".into(),
        EventRef::Named(n) => n.clone(),
    }
}

/// `a / b`, `null` when `b` is zero.
pub(crate) fn ratio(a: u64, b: u64) -> Value {
    if b == 0 {
        Value::Null
    } else {
        json!(a as f64 / b as f64)
    }
}

/// Adds the resolved range to an answer, so a client knows exactly which instants were counted.
pub(crate) fn with_range(out: &mut Value, range: &TimeRange) {
    out["date_from"] = json!(range.from.to_rfc3339_opts(SecondsFormat::Micros, true));
    out["date_to"] = json!(range.to.to_rfc3339_opts(SecondsFormat::Micros, true));
    out["interval"] = json!(range.interval);
}

/// A trends answer: `reads[i]` holds the numbers of `plan.reads[i]` (the range, then with `compare` the previous
/// period). Breakdown labels with nothing in a read are left out of it; formulas are evaluated here.
pub(crate) fn trends(
    t: &flywheel_query::TrendsQuery,
    plan: &Plan,
    reads: Vec<SeriesRows>,
) -> Value {
    let mut result = Vec::new();
    for (read, rows) in plan.reads.iter().zip(reads) {
        let compare = t.compare.then_some(match read.period {
            Period::Current => "current",
            Period::Previous => "previous",
        });
        result.extend(trend_rows(t, &read.range, rows, compare));
    }
    json!({ "kind": "trends", "result": result })
}

fn trend_rows(
    t: &flywheel_query::TrendsQuery,
    range: &TimeRange,
    (labels, values): SeriesRows,
    compare: Option<&str>,
) -> Vec<Value> {
    let dates = labels_of(range);
    let mut out: Vec<Value> = Vec::new();
    for (code, label) in labels.iter().enumerate() {
        let rows: Vec<&Vec<f64>> = values.iter().map(|series| &series[code]).collect();
        if label.is_some() && rows.iter().all(|r| r.iter().all(|&x| x == 0.0)) {
            continue; // a breakdown value with nothing in this range
        }
        let mut push = |mut item: Value| {
            item["labels"] = json!(dates);
            item["compare"] = json!(compare);
            if let Some(l) = label {
                item["breakdown_value"] = l.clone();
            }
            out.push(item);
        };
        if let Some(formula) = &t.formula {
            let data: Vec<Value> = (0..dates.len())
                .map(|i| {
                    let row: Vec<f64> = rows.iter().map(|s| s[i]).collect();
                    formula.expr.eval(&row).map_or(Value::Null, |v| json!(v))
                })
                .collect();
            push(json!({"label": formula.text, "formula": formula.text, "data": data}));
        } else {
            for (i, (s, data)) in t.series.iter().zip(&rows).enumerate() {
                let count: f64 = data.iter().sum();
                push(json!({
                    "label": s.name.clone().unwrap_or_else(|| event_label(&s.event)),
                    "series": i,
                    "event": s.event,
                    "math": s.math.unwrap_or(Math::Total),
                    "data": data,
                    "count": count,
                }));
            }
        }
    }
    out
}

/// A funnel answer: the steps (per breakdown label in `labels` order, labels nobody entered left out), and
/// without a breakdown the per-bucket trend when the funnel asked for one.
pub(crate) fn funnel(
    f: &flywheel_query::FunnelQuery,
    range: &TimeRange,
    labels: Option<&[Value]>,
    r: &k::funnel::FunnelResult,
) -> Value {
    let render = |stats: &[k::funnel::StepStats]| -> Value {
        let first = stats.first().map_or(0, |s| s.reached);
        let last = stats.last().map_or(0, |s| s.reached);
        let steps_json: Vec<Value> = f
            .steps
            .iter()
            .zip(stats)
            .enumerate()
            .map(|(i, (step, s))| {
                let previous = if i == 0 {
                    s.reached
                } else {
                    stats[i - 1].reached
                };
                json!({
                    "order": i,
                    "event": step.event,
                    "name": step.name.clone().unwrap_or_else(|| event_label(&step.event)),
                    "count": s.reached,
                    "conversion_from_first": ratio(s.reached, first),
                    "conversion_from_previous": ratio(s.reached, previous),
                    "dropped_from_previous": previous - s.reached,
                    "average_conversion_time_s": s.avg_time_us.map(|t| t / 1e6),
                    "median_conversion_time_s": s.median_time_us.map(|t| t / 1e6),
                })
            })
            .collect();
        json!({
            "steps": steps_json,
            "entered": first,
            "converted": last,
            "conversion_rate": ratio(last, first),
        })
    };
    let mut out = match labels {
        None => json!({
            "kind": "funnel",
            "result": render(r.by_breakdown.first().map_or(&[][..], |s| &s[..])),
        }),
        Some(labels) => {
            let rows: Vec<Value> = labels
                .iter()
                .zip(&r.by_breakdown)
                .filter(|(_, stats)| stats.first().is_some_and(|s| s.reached > 0))
                .map(|(label, stats)| {
                    let mut v = render(stats);
                    v["breakdown_value"] = label.clone();
                    v
                })
                .collect();
            json!({"kind": "funnel", "result": rows})
        }
    };
    if let (Some(trend), None) = (&r.trend, labels) {
        out["result"]["trend"] = trend
            .iter()
            .zip(labels_of(range))
            .map(|(&(entered, completed), label)| {
                json!({"label": label, "entered": entered, "converted": completed, "conversion_rate": ratio(completed, entered)})
            })
            .collect();
    }
    out
}

/// A retention answer: one table without a breakdown (`tables[0]`), else per label in `labels` order its table
/// (labels whose cohorts are all empty left out). `table[p][k]`: of period `p`'s cohort, the persons returning `k`
/// periods later.
pub(crate) fn retention(
    range: &TimeRange,
    labels: Option<&[Value]>,
    tables: &[Vec<Vec<u64>>],
) -> Value {
    let render = |table: &[Vec<u64>]| -> Vec<Value> {
        let n = range.buckets.len();
        table
            .iter()
            .zip(labels_of(range))
            .map(|(row, label)| {
                let size = row.first().copied().unwrap_or(0);
                let values: Vec<u64> = row.iter().copied().take(n).collect();
                json!({
                    "label": label,
                    "size": size,
                    "values": values,
                    "percentages": values.iter().map(|&v| ratio(v, size)).collect::<Vec<_>>(),
                })
            })
            .collect()
    };
    let result = match labels {
        None => json!(render(tables.first().map_or(&[][..], |t| &t[..]))),
        Some(labels) => labels
            .iter()
            .zip(tables)
            .filter(|(_, t)| t.iter().any(|row| row.first().is_some_and(|&n| n > 0)))
            .map(|(label, t)| json!({"breakdown_value": label, "cohorts": render(t)}))
            .collect(),
    };
    json!({"kind": "retention", "result": result})
}

/// A stickiness answer: `counts[n - 1]` persons active in exactly `n` buckets.
pub(crate) fn stickiness(
    s: &flywheel_query::StickinessQuery,
    range: &TimeRange,
    counts: &[u64],
) -> Value {
    let unit = match range.interval {
        Interval::Hour => "hour",
        Interval::Day => "day",
        Interval::Week => "week",
        Interval::Month => "month",
    };
    json!({
        "kind": "stickiness",
        "result": {
            "label": s.event.name.clone().unwrap_or_else(|| event_label(&s.event.event)),
            "labels": (1..=counts.len()).map(|n| format!("{n} {unit}{}", if n == 1 { "" } else { "s" })).collect::<Vec<_>>(),
            "data": counts,
        }
    })
}

/// A lifecycle answer (dormant persons as negative counts, PostHog's convention).
pub(crate) fn lifecycle(range: &TimeRange, out: &k::lifecycle::Lifecycle) -> Value {
    json!({
        "kind": "lifecycle",
        "result": {
            "labels": labels_of(range),
            "new": out.new,
            "returning": out.returning,
            "resurrecting": out.resurrecting,
            "dormant": out.dormant.iter().map(|&d| -(d as i64)).collect::<Vec<_>>(),
        }
    })
}
