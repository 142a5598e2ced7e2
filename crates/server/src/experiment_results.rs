//! `GET …/experiments/{key}/results`: an experiment's per-arm statistics for each metric, from the events.
//!
//! The analysed phase is the last one: exposures in `[started_at, stopped_at)` (until now while running), metric
//! events before the same end. Exposure rows are `$feature_flag_called` events of the experiment's feature
//! (`$feature_flag` = its key; the variation from `$feature_flag_variant`, else `$feature_flag_response`: a
//! variation key — the index as text, GrowthBook's default — or a variation's value) and GrowthBook's
//! `experiment_viewed` events of its tracking key (`experiment_id`, variation from `variation_id`). One kernel pass
//! ([`flywheel_kernels::experiment`]) gives every arm's sufficient statistics; [`flywheel_stats::analyze`]
//! compares every treatment with the control (variation 0) with the experiment's engine; the p-values (or, for
//! the Bayesian engine, nothing) are corrected across metrics and arms; SRM is checked against the phase's weights.

use std::sync::Arc;

use flywheel_engine::table::Snapshot;
use flywheel_kernels as k;
use flywheel_query::experiment::{Experiment, MeasureKind, Metric, MetricKind, StatsEngine};
use flywheel_query::plan::{Plan, Scan};
use flywheel_query::{EventRef, EventSpec, Filter, Named, Operator, PropertyFilter, PropertyType};
use flywheel_stats as st;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::insights::{Columns, Prepared, Specs};
use crate::state::AppState;

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

/// An arm below this many units gets a `low_sample` warning.
const LOW_SAMPLE: u64 = 100;

/// How the experiment's rule names its variations.
pub(crate) struct Variations {
    /// Each variation's value.
    pub values: Vec<Value>,
    /// The key exposures report (`$experiment_key`, `experiment_id`).
    pub tracking_key: String,
}

impl Variations {
    /// The variation a reported key or value stands for: an index as text, or a variation's value (a string
    /// value also matches its text).
    fn code_of(&self, v: &Value) -> Option<u32> {
        let n = self.values.len();
        if let Some(i) = v.as_u64().filter(|&i| (i as usize) < n) {
            if !self.values.iter().any(|x| x == v) {
                return Some(i as u32);
            }
        }
        if let Some(i) = self.values.iter().position(|x| x == v) {
            return Some(i as u32);
        }
        if let Some(s) = v.as_str() {
            // A value as text: a string as it is, anything else as JSON.
            let text = |x: &Value| match x {
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            if let Some(i) = self.values.iter().position(|x| text(x) == s) {
                return Some(i as u32);
            }
            if let Some(i) = s.parse::<usize>().ok().filter(|&i| i < n) {
                return Some(i as u32);
            }
        }
        None
    }
}

/// A metric's events as a scan with its filters.
fn scan(field: String, event: &EventRef, properties: &[Filter]) -> Scan {
    Scan {
        field,
        spec: EventSpec {
            event: event.clone(),
            name: None,
            properties: properties.to_vec(),
        },
    }
}

fn exact(key: &str, value: &str) -> Filter {
    Filter::Property(PropertyFilter {
        key: key.to_owned(),
        operator: Operator::Exact,
        value: Some(json!(value)),
        property_type: PropertyType::Event,
        group_type_index: None,
    })
}

/// What the kernel computes for one metric of the definition, and where its inputs are.
struct Planned {
    /// The kernel metric of the metric's value (its denominator, for a ratio, is `metrics[index + 1]`).
    index: usize,
    /// The value property of each kernel metric it uses (`Sum` aggregations), by kernel metric index.
    value_properties: Vec<(usize, String)>,
}

fn aggregation(kind: MeasureKind) -> k::experiment::Aggregation {
    match kind {
        MeasureKind::Conversion => k::experiment::Aggregation::Conversion,
        MeasureKind::Count => k::experiment::Aggregation::Count,
        MeasureKind::Sum => k::experiment::Aggregation::Sum,
    }
}

/// The kernel's spec (without exposure window and end), the scans (bit 0: `$feature_flag_called`, bit 1:
/// `experiment_viewed`, then one per measure) and where each definition metric is.
fn plan_metrics(
    x: &Experiment,
    feature: &str,
    variations: &Variations,
    metrics: &[Metric],
) -> (Vec<k::experiment::Metric>, Vec<Scan>, Vec<Planned>) {
    let mut scans = vec![
        scan(
            "exposures".into(),
            &EventRef::Named("$feature_flag_called".into()),
            &[exact("$feature_flag", feature)],
        ),
        scan(
            "exposures".into(),
            &EventRef::Named("experiment_viewed".into()),
            &[exact("experiment_id", &variations.tracking_key)],
        ),
    ];
    let pre = x
        .analysis
        .cuped
        .then_some(x.analysis.pre_window_days as i64 * DAY_US);
    let mut kernel = Vec::new();
    let mut planned = Vec::new();
    for m in metrics {
        let base = k::experiment::Metric {
            bit: 0,
            aggregation: aggregation(m.measure.kind),
            delay_us: m.delay_hours as i64 * HOUR_US,
            window_us: m.window_hours.map(|h| h as i64 * HOUR_US),
            cap: m.cap,
            denominator: None,
            cuped_pre_window_us: if m.kind == MetricKind::Quantile {
                None
            } else {
                pre
            },
            unit_values: m.kind == MetricKind::Quantile,
        };
        let mut value_properties = Vec::new();
        let index = kernel.len();
        let mut add = |measure: &flywheel_query::experiment::Measure,
                       mut km: k::experiment::Metric,
                       kernel: &mut Vec<k::experiment::Metric>,
                       scans: &mut Vec<Scan>| {
            km.bit = scans.len() as u32;
            km.aggregation = aggregation(measure.kind);
            scans.push(scan(
                format!("metrics.{}", m.key),
                &measure.event,
                &measure.properties,
            ));
            if let Some(p) = &measure.value_property {
                value_properties.push((kernel.len(), p.clone()));
            }
            kernel.push(km);
        };
        match &m.denominator {
            Some(den) => {
                add(
                    &m.measure,
                    k::experiment::Metric {
                        denominator: Some(index + 1),
                        ..base
                    },
                    &mut kernel,
                    &mut scans,
                );
                add(
                    den,
                    k::experiment::Metric {
                        cuped_pre_window_us: None,
                        unit_values: false,
                        ..base
                    },
                    &mut kernel,
                    &mut scans,
                );
            }
            None if !m.then.is_empty() => {
                // A funnel conversion: a scan (bit) per step, the kernel follows them in order.
                let mut bits = Vec::new();
                for step in std::iter::once(&m.measure).chain(&m.then) {
                    bits.push(scans.len() as u32);
                    scans.push(scan(
                        format!("metrics.{}", m.key),
                        &step.event,
                        &step.properties,
                    ));
                }
                kernel.push(k::experiment::Metric {
                    bit: bits[0],
                    aggregation: k::experiment::Steps::new(&bits)
                        .map_or(k::experiment::Aggregation::Conversion, |s| {
                            k::experiment::Aggregation::Steps(s)
                        }),
                    ..base
                });
            }
            None => add(&m.measure, base, &mut kernel, &mut scans),
        }
        planned.push(Planned {
            index,
            value_properties,
        });
    }
    (kernel, scans, planned)
}

fn moments(m: &k::experiment::Moments, proportion: bool) -> st::Moments {
    if proportion {
        st::Moments::Proportion { sum: m.sum }
    } else {
        st::Moments::Mean {
            sum: m.sum,
            sum_squares: m.sum_squares,
        }
    }
}

/// The stats crate's input for metric `m` of one arm.
fn arm_data(
    m: &Metric,
    planned: &Planned,
    arm: &k::experiment::Arm,
    cuped: bool,
    alpha: f64,
) -> Result<st::ArmData, st::Error> {
    let sums = &arm.metrics[planned.index];
    let n = arm.n;
    let proportion = |kind: MeasureKind| kind == MeasureKind::Conversion;
    Ok(match (m.kind, &m.denominator) {
        (MetricKind::Quantile, _) => {
            st::sample::quantile_from_sample(&sums.unit_values, m.quantile.unwrap_or(0.5), alpha)?
        }
        (_, Some(den)) => {
            let num = moments(&sums.value, proportion(m.measure.kind));
            let d = moments(&sums.denominator.unwrap_or_default(), proportion(den.kind));
            match (cuped, sums.pre, sums.pre_denominator) {
                (true, Some(pre), Some(pre_den)) => st::ArmData::CupedRatio {
                    n,
                    numerator: num,
                    denominator: d,
                    pre_numerator: moments(&pre, proportion(m.measure.kind)),
                    pre_denominator: moments(&pre_den, proportion(den.kind)),
                    cross: st::RatioCrossSums {
                        numerator_denominator: sums.cross.value_denominator,
                        numerator_pre_numerator: sums.cross.value_pre,
                        numerator_pre_denominator: sums.cross.value_pre_denominator,
                        denominator_pre_numerator: sums.cross.denominator_pre,
                        denominator_pre_denominator: sums.cross.denominator_pre_denominator,
                        pre_numerator_pre_denominator: sums.cross.pre_pre_denominator,
                    },
                },
                _ => st::ArmData::Ratio {
                    n,
                    numerator: num,
                    denominator: d,
                    cross_sum: sums.cross.value_denominator,
                },
            }
        }
        (kind, None) => {
            let post = moments(&sums.value, kind == MetricKind::Conversion);
            match (cuped, sums.pre) {
                (true, Some(pre)) => st::ArmData::Cuped {
                    n,
                    post,
                    pre: moments(&pre, kind == MetricKind::Conversion),
                    cross_sum: sums.cross.value_pre,
                },
                _ => match post {
                    st::Moments::Proportion { sum } => st::ArmData::Proportion { n, sum },
                    st::Moments::Mean { sum, sum_squares } => st::ArmData::Mean {
                        n,
                        sum,
                        sum_squares,
                    },
                },
            }
        }
    })
}

fn engine(x: &Experiment, inverse: bool) -> st::Engine {
    let a = &x.analysis;
    let lift = match a.lift {
        flywheel_query::experiment::Lift::Relative => st::LiftType::Relative,
        flywheel_query::experiment::Lift::Absolute => st::LiftType::Absolute,
    };
    match a.engine {
        StatsEngine::Frequentist => st::Engine::Frequentist(st::TTestConfig {
            alpha: a.alpha,
            lift,
            ..Default::default()
        }),
        StatsEngine::Sequential => st::Engine::Sequential(st::SequentialConfig {
            alpha: a.alpha,
            tuning: a.sequential_tuning as f64,
            lift,
        }),
        StatsEngine::Bayesian => st::Engine::Bayesian(st::BayesianConfig {
            inverse,
            alpha: a.alpha,
            lift,
            ..Default::default()
        }),
    }
}

/// Per prepared partition: the variation code of each row, and each kernel metric's value column.
type RowInputs = (Vec<Vec<u32>>, Vec<Vec<Option<Vec<f64>>>>);

/// Per prepared partition: the variation code of each exposure row (`u32::MAX` elsewhere) and each value column.
fn row_inputs(
    snap: &Snapshot,
    prepared: &[Prepared],
    variations: &Variations,
    value_properties: &[(usize, String)],
    kernel_metrics: usize,
) -> Result<RowInputs, flywheel_engine::EngineError> {
    let mut codes = Vec::with_capacity(prepared.len());
    let mut values = Vec::with_capacity(prepared.len());
    for p in prepared {
        let rows = p.storage_rows();
        let part = p.partition();
        let mut c = vec![u32::MAX; rows.len()];
        // The reported variation, read only in partitions that hold exposure rows, mapped to a code per
        // dictionary value (or number) rather than per row: `ABSENT` when the property is not there, `UNKNOWN`
        // when it names no variation.
        if p.mask.iter().any(|m| m & 0b11 != 0) {
            const ABSENT: u32 = u32::MAX;
            const UNKNOWN: u32 = u32::MAX - 1;
            let code = |v: &Value| {
                if v.is_null() {
                    ABSENT
                } else {
                    variations.code_of(v).unwrap_or(UNKNOWN)
                }
            };
            let read = |key: &str| {
                crate::insight_filters::map_event_property(snap, part, key, ABSENT, code)
            };
            let variant = read("$feature_flag_variant")?;
            let response = read("$feature_flag_response")?;
            let viewed = read("variation_id")?;
            for (i, (&row, m)) in rows.iter().zip(&p.mask).enumerate() {
                if m & 0b11 == 0 {
                    continue;
                }
                let r = row as usize;
                // The first property present decides (a variant that names no variation is not overridden).
                let reported = [variant[r], response[r], viewed[r]]
                    .into_iter()
                    .find(|&x| x != ABSENT);
                if let Some(x) = reported.filter(|&x| x != UNKNOWN) {
                    c[i] = x;
                }
            }
        }
        codes.push(c);
        let mut cols: Vec<Option<Vec<f64>>> = vec![None; kernel_metrics];
        for (index, property) in value_properties {
            let by_row =
                crate::insight_filters::map_event_property(snap, part, property, f64::NAN, |v| {
                    v.as_f64().unwrap_or(f64::NAN)
                })?;
            cols[*index] = Some(rows.iter().map(|&r| by_row[r as usize]).collect());
        }
        values.push(cols);
    }
    Ok((codes, values))
}

/// The results of experiment `x` over its last phase.
pub(crate) async fn results(
    state: &AppState,
    project_id: i64,
    x: &Experiment,
    phase: &Value,
    variations: Variations,
    metrics: Vec<Metric>,
) -> Result<Value, ApiError> {
    let micros = |v: &Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_micros())
    };
    let from_us = micros(&phase["started_at"])
        .ok_or_else(|| ApiError::internal("a phase without a start"))?;
    // A phase that continues a run (weights changed; sticky assignment kept everyone where they were) sees the
    // run's exposures, and analyses the units that entered in it.
    let run_from_us = micros(&phase["run_started_at"]).map_or(from_us, |r| r.min(from_us));
    let now_us = state.clock.now().timestamp_micros();
    let to_us = micros(&phase["stopped_at"]).unwrap_or(now_us).min(now_us);
    let weights: Vec<f64> = phase["weights"]
        .as_array()
        .map(|w| w.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let arms = variations.values.len();
    let (kernel_metrics, scans, planned) = plan_metrics(x, &x.feature, &variations, &metrics);
    // One mask bit per scan, and the kernel's limit (checked when the experiment is written, again here).
    if kernel_metrics.len() > k::experiment::MAX_METRICS {
        return Err(ApiError::invalid_field(
            "experiment",
            "metrics",
            format!(
                "the metrics need {} measures (a ratio is two); at most {} are analysed at once",
                kernel_metrics.len(),
                k::experiment::MAX_METRICS
            ),
        ));
    }
    if scans.len() > 63 {
        return Err(ApiError::invalid_field(
            "experiment",
            "metrics",
            format!(
                "the metrics read {} kinds of events (each funnel step, numerator and denominator is one); \
                 at most 61 can be analysed at once",
                scans.len() - 2
            ),
        ));
    }
    let complete = state.tables_catch_up().await;
    let epoch = state.flags.subjects.epoch();
    let mut columns = Columns::default();
    let person_keys: Vec<String> = scans
        .iter()
        .flat_map(|s| &s.spec.properties)
        .filter_map(|f| match f {
            Filter::Property(p) if p.property_type == PropertyType::Person => Some(p.key.clone()),
            _ => None,
        })
        .collect();
    crate::insights::load_person_columns(state, project_id, &person_keys, epoch, &mut columns)
        .await?;
    let Some(snap) = state.tables.snapshot(project_id) else {
        return Ok(json!({"complete": complete, "units": 0, "metrics": []}));
    };
    let plan = Plan {
        specs: scans,
        common: Vec::new(),
        every_row: false,
        reads: Vec::new(),
    };
    let pre = if x.analysis.cuped {
        x.analysis.pre_window_days as i64 * DAY_US
    } else {
        0
    };
    let spec = k::experiment::ExperimentSpec {
        exposure_bit: 0,
        variations: arms as u32,
        exposure_from_us: run_from_us,
        exposure_to_us: to_us,
        entry_from_us: from_us,
        analysis_end_us: to_us,
        metrics: kernel_metrics,
    };
    let value_properties: Vec<(usize, String)> = planned
        .iter()
        .flat_map(|p| p.value_properties.iter().cloned())
        .collect();
    let snap = Arc::new(snap);
    let arms_out = {
        let snap = snap.clone();
        let variations = Arc::new(variations);
        let unit = x.unit.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<k::experiment::Arm>, ApiError> {
            let specs = Specs::new(&snap, &plan, &columns)
                .map_err(|u| crate::insights::run_error(u.into()))?;
            let mut prepared = specs
                .prepare(&snap, Some((run_from_us.saturating_sub(pre), to_us)), true)
                .map_err(ApiError::internal)?;
            // Both exposure specs are exposure rows for the kernel.
            for p in &mut prepared {
                for m in &mut p.mask {
                    if *m & 0b10 != 0 {
                        *m |= 1;
                    }
                }
            }
            let (codes, values) = row_inputs(
                &snap,
                &prepared,
                &variations,
                &value_properties,
                spec.metrics.len(),
            )
            .map_err(ApiError::internal)?;
            let blocks: Vec<k::Block<'_>> = prepared
                .iter()
                .zip(&codes)
                .map(|(p, c)| k::Block {
                    person: p.person(),
                    ts: p.ts(),
                    mask: &p.mask,
                    breakdown: Some(c.as_slice()),
                    value: None,
                })
                .collect();
            let value_refs: Vec<Vec<Option<&[f64]>>> = values
                .iter()
                .map(|cols| cols.iter().map(|c| c.as_deref()).collect())
                .collect();
            let Some(unit) = &unit else {
                return Ok(k::experiment::experiment(
                    &blocks,
                    &value_refs,
                    snap.persons(),
                    k::default_threads(),
                    &spec,
                ));
            };
            // Account-level: the same rows keyed by the event's group (`$groups`), codes and values carried over.
            let grouped = crate::insights::group_rows(&snap, &prepared, Some(unit))
                .map_err(ApiError::internal)?;
            let carry = |from: &[u32], column: &[f64]| -> Vec<f64> {
                from.iter().map(|&i| column[i as usize]).collect()
            };
            let group_codes: Vec<Vec<u32>> = grouped
                .parts
                .iter()
                .zip(&codes)
                .map(|(g, c)| g.from.iter().map(|&i| c[i as usize]).collect())
                .collect();
            let group_values: Vec<Vec<Option<Vec<f64>>>> = grouped
                .parts
                .iter()
                .zip(&values)
                .map(|(g, cols)| {
                    cols.iter()
                        .map(|c| c.as_deref().map(|c| carry(&g.from, c)))
                        .collect()
                })
                .collect();
            let group_blocks: Vec<k::Block<'_>> = grouped
                .parts
                .iter()
                .zip(&group_codes)
                .map(|(g, c)| k::Block {
                    person: &g.group,
                    ts: &g.ts,
                    mask: &g.mask,
                    breakdown: Some(c.as_slice()),
                    value: None,
                })
                .collect();
            let group_value_refs: Vec<Vec<Option<&[f64]>>> = group_values
                .iter()
                .map(|cols| cols.iter().map(|c| c.as_deref()).collect())
                .collect();
            Ok(k::experiment::experiment(
                &group_blocks,
                &group_value_refs,
                grouped.keys.len() as u32,
                k::default_threads(),
                &spec,
            ))
        })
        .await
        .map_err(ApiError::internal)??
    };

    let units: Vec<u64> = arms_out.iter().map(|a| a.n).collect();
    let multiple: Vec<u64> = arms_out.iter().map(|a| a.multiple_exposures).collect();
    let carried_over: Vec<u64> = arms_out.iter().map(|a| a.carried_over).collect();
    let srm = st::srm(&units, &weights).ok();
    let mut warnings = Vec::new();
    if units.iter().any(|&n| n < LOW_SAMPLE) {
        warnings.push(json!({"code": "low_sample",
            "message": format!("an arm has fewer than {LOW_SAMPLE} units: results are not reliable yet")}));
    }
    let total: u64 = units.iter().sum::<u64>() + multiple.iter().sum::<u64>();
    let excluded: u64 = multiple.iter().sum();
    if total > 0 && excluded * 100 > total {
        warnings.push(json!({"code": "multiple_exposures",
            "message": format!("{excluded} of {total} units saw more than one variation and are excluded")}));
    }
    if srm.as_ref().is_some_and(|s| s.mismatch) {
        warnings.push(json!({"code": "srm",
            "message": "sample ratio mismatch: the arms' sizes do not match the weights (p < 0.001); do not trust the results"}));
    }
    let mut out_metrics = Vec::new();
    let mut p_values: Vec<(usize, usize, f64)> = Vec::new();
    for (mi, (m, pl)) in metrics.iter().zip(&planned).enumerate() {
        let role = if x.primary.contains(&m.key) {
            "primary"
        } else if x.guardrail.contains(&m.key) {
            "guardrail"
        } else {
            "secondary"
        };
        let data: Result<Vec<st::ArmData>, st::Error> = arms_out
            .iter()
            .map(|a| arm_data(m, pl, a, x.analysis.cuped, x.analysis.alpha))
            .collect();
        let analysis = data.and_then(|d| st::analyze(&d, &weights, &engine(x, m.inverse)));
        let value = match analysis {
            Ok(a) => {
                for c in &a.comparisons {
                    let p = match &c.result {
                        Some(st::TestResult::Frequentist(r)) => Some(r.p_value),
                        Some(st::TestResult::Sequential(r)) => Some(r.p_value),
                        _ => None,
                    };
                    if let Some(p) = p {
                        p_values.push((mi, c.arm, p));
                    }
                }
                serde_json::to_value(&a).map_err(ApiError::internal)?
            }
            Err(e) => json!({"error": e.to_string()}),
        };
        let arms: Vec<Value> = arms_out
            .iter()
            .map(|a| json!({"units": a.n, "sum": a.metrics[pl.index].value.sum}))
            .collect();
        out_metrics.push(
            json!({"key": m.key, "name": m.name, "role": role, "kind": m.kind.name(),
                                "inverse": m.inverse, "arms": arms, "analysis": value}),
        );
    }
    let correction = match x.analysis.correction {
        flywheel_query::experiment::Correction::None => None,
        flywheel_query::experiment::Correction::Holm => Some(st::Correction::Holm),
        flywheel_query::experiment::Correction::BenjaminiHochberg => {
            Some(st::Correction::BenjaminiHochberg)
        }
        flywheel_query::experiment::Correction::Bonferroni => Some(st::Correction::Bonferroni),
    };
    if let Some(c) = correction.filter(|_| !p_values.is_empty()) {
        let raw: Vec<f64> = p_values.iter().map(|(_, _, p)| *p).collect();
        if let Ok(adjusted) = st::adjust_p_values(&raw, c) {
            for ((mi, arm, _), adj) in p_values.iter().zip(adjusted) {
                let comparisons = &mut out_metrics[*mi]["analysis"]["comparisons"];
                if let Some(list) = comparisons.as_array_mut() {
                    if let Some(entry) = list.iter_mut().find(|e| e["arm"] == json!(arm)) {
                        entry["adjusted_p_value"] = json!(adj);
                    }
                }
            }
        }
    }
    Ok(json!({
        "complete": complete,
        "phase": phase,
        "units": units,
        "multiple_exposures": multiple,
        "carried_over": carried_over,
        "srm": srm,
        "warnings": warnings,
        "metrics": out_metrics,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposures_name_variations_by_index_key_or_value() {
        let v = |values: Value| Variations {
            values: values.as_array().unwrap().clone(),
            tracking_key: "x".into(),
        };
        let strings = v(json!(["control", "new", "newer"]));
        for (reported, want) in [
            (json!("new"), Some(1)),
            (json!("2"), Some(2)),
            (json!(0), Some(0)),
            (json!(3), None),
            (json!("other"), None),
            (json!(true), None),
        ] {
            assert_eq!(strings.code_of(&reported), want, "{reported}");
        }
        let flags = v(json!([false, true]));
        assert_eq!(flags.code_of(&json!(true)), Some(1));
        assert_eq!(
            flags.code_of(&json!("true")),
            Some(1),
            "PostHog sends values as text"
        );
        assert_eq!(
            flags.code_of(&json!("0")),
            Some(0),
            "GrowthBook's default variation key"
        );
        let numbers = v(json!([10, 20]));
        assert_eq!(
            numbers.code_of(&json!(20)),
            Some(1),
            "a value before an index"
        );
        assert_eq!(numbers.code_of(&json!(1)), Some(1), "an index");
        assert_eq!(numbers.code_of(&json!("10")), Some(0));
        let objects = v(json!([{"a": 1}, {"a": 2}]));
        assert_eq!(objects.code_of(&json!({"a": 2})), Some(1));
    }
}
