//! Experiment kernel against `flywheel_truth::experiment`: random exposures (several variations, invalid codes,
//! blocks without codes, exposures outside the phase), metrics of every aggregation with delays, windows, caps,
//! ratios, CUPED and unit values; every output field compared. Values are multiples of 1/2 and caps too, so every
//! sum and product is exact in `f64` and the comparison is exact whatever the summation order.

mod common;

use flywheel_kernels::experiment::{
    experiment, Aggregation, Arm, ExperimentSpec, Metric, Moments, Steps,
};
use flywheel_kernels::{Block, DAY_US};
use flywheel_truth as truth;
use proptest::prelude::*;

const H: i64 = 3_600_000_000;
/// Timestamps fall on a 6-hour grid (or 1 µs off it now and then): ties, rows exactly at `t0`, at window edges,
/// at the analysis end and at the phase's bounds are common.
const GRID: i64 = 6 * H;
/// Event 0 is the exposure event.
const NAMES: [&str; 4] = ["exposure", "a", "b", "c"];
const EXPOSURE_BIT: u32 = 0;
/// Metric `m` has mask bit `METRIC_BIT + m` (set on the rows of its event); every row also has `NOISE`.
const METRIC_BIT: u32 = 8;
/// Event `e` also has mask bit `EVENT_BIT + e` (the steps of funnel metrics).
const EVENT_BIT: u32 = 40;
const NOISE: u32 = 63;
const VARIATIONS: u32 = 3;
/// Dense persons of the random cases (person 6 never has a row).
const PERSONS: u32 = 7;
/// What a value column holds on the rows of other events: the kernel must not read it.
const JUNK: f64 = 1e6;

fn base() -> i64 {
    truth::days_from_civil(2026, 1, 5) * DAY_US
}

#[derive(Debug, Clone, Copy)]
struct Ev {
    person: u32,
    ts: i64,
    event: usize,
    /// Exposure rows: the variation (`None`: no code, `u32::MAX` in the column); other rows: a junk code.
    variation: Option<u32>,
    value: Option<f64>,
}

struct Columns {
    person: Vec<u32>,
    ts: Vec<i64>,
    mask: Vec<u64>,
    code: Option<Vec<u32>>,
    values: Vec<Option<Vec<f64>>>,
}

fn layout(
    evs: &[Ev],
    metrics: &[truth::ExperimentMetric<'_>],
    width: i64,
    drop: bool,
) -> Vec<Columns> {
    common::layout(evs.len(), width, |i| (evs[i].person, evs[i].ts))
        .into_iter()
        .map(|idx| {
            let rows: Vec<Ev> = idx.iter().map(|&i| evs[i]).collect();
            // A block whose exposure rows carry no variation may come without codes.
            let no_codes = drop && rows.iter().all(|e| e.event != 0 || e.variation.is_none());
            let values = metrics
                .iter()
                .map(|m| {
                    let ours = |e: &Ev| NAMES[e.event] == m.event;
                    // A block whose rows of the metric have no numbers may come without the column.
                    if drop && rows.iter().filter(|e| ours(e)).all(|e| e.value.is_none()) {
                        return None;
                    }
                    Some(
                        rows.iter()
                            .map(|e| {
                                if ours(e) {
                                    e.value.unwrap_or(f64::NAN)
                                } else {
                                    JUNK
                                }
                            })
                            .collect(),
                    )
                })
                .collect();
            Columns {
                person: rows.iter().map(|e| e.person).collect(),
                ts: rows.iter().map(|e| e.ts).collect(),
                mask: rows
                    .iter()
                    .map(|e| {
                        let mut m = 1u64 << NOISE
                            | u64::from(e.event == 0) << EXPOSURE_BIT
                            | 1 << (EVENT_BIT + e.event as u32);
                        for (k, metric) in metrics.iter().enumerate() {
                            if NAMES[e.event] == metric.event {
                                m |= 1 << (METRIC_BIT + k as u32);
                            }
                        }
                        m
                    })
                    .collect(),
                code: (!no_codes).then(|| {
                    rows.iter()
                        .map(|e| e.variation.unwrap_or(u32::MAX))
                        .collect()
                }),
                values,
            }
        })
        .collect()
}

fn event_bit(name: &str) -> u32 {
    EVENT_BIT + NAMES.iter().position(|n| *n == name).unwrap() as u32
}

fn kernel_metric(k: usize, m: &truth::ExperimentMetric<'_>, unit_values: bool) -> Metric {
    let steps: Vec<u32> = std::iter::once(m.event)
        .chain(m.then.iter().copied())
        .map(event_bit)
        .collect();
    Metric {
        bit: METRIC_BIT + k as u32,
        aggregation: match m.aggregation {
            _ if !m.then.is_empty() => Aggregation::Steps(Steps::new(&steps).unwrap()),
            truth::ExperimentAggregation::Conversion => Aggregation::Conversion,
            truth::ExperimentAggregation::Count => Aggregation::Count,
            truth::ExperimentAggregation::Sum => Aggregation::Sum,
        },
        delay_us: m.delay_us,
        window_us: m.window_us,
        cap: m.cap,
        denominator: m.denominator,
        cuped_pre_window_us: m.pre_window_us,
        unit_values,
    }
}

fn moments(xs: impl Iterator<Item = f64>) -> Moments {
    let mut m = Moments::default();
    for x in xs {
        m.sum += x;
        m.sum_squares += x * x;
    }
    m
}

/// Compares the kernel's arms with the truth's units, summed here.
fn compare(
    got: &[Arm],
    want: &[truth::ExperimentArm],
    unit_values: &[bool],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (v, (g, w)) in got.iter().zip(want).enumerate() {
        prop_assert_eq!(g.n, w.n, "arm {} n", v);
        prop_assert_eq!(
            (g.multiple_exposures, g.carried_over),
            (w.multiple_exposures, w.carried_over),
            "arm {} multiple",
            v
        );
        prop_assert_eq!(g.metrics.len(), w.units.len());
        for (k, (s, units)) in g.metrics.iter().zip(&w.units).enumerate() {
            let ctx = format!("arm {v} metric {k}");
            prop_assert_eq!(s.value, moments(units.iter().map(|u| u.value)), "{}", ctx);
            let opt = |f: fn(&truth::ExperimentUnit) -> Option<f64>| {
                let xs: Option<Vec<f64>> = units.iter().map(f).collect();
                // No units: the truth cannot tell whether the variable applies; the kernel says so with zeros.
                xs.map(|xs| moments(xs.into_iter()))
            };
            let applies = |m: &Option<Moments>, f: fn(&truth::ExperimentUnit) -> Option<f64>| {
                if units.is_empty() {
                    m.is_none() || *m == Some(Moments::default())
                } else {
                    *m == opt(f)
                }
            };
            prop_assert!(
                applies(&s.denominator, |u| u.denominator),
                "{} denominator {:?}",
                ctx,
                s.denominator
            );
            prop_assert!(applies(&s.pre, |u| u.pre), "{} pre {:?}", ctx, s.pre);
            prop_assert!(
                applies(&s.pre_denominator, |u| u.pre_denominator),
                "{} pre denominator {:?}",
                ctx,
                s.pre_denominator
            );
            let cross = |a: fn(&truth::ExperimentUnit) -> f64,
                         b: fn(&truth::ExperimentUnit) -> f64| {
                units.iter().map(|u| a(u) * b(u)).sum::<f64>()
            };
            let den = |u: &truth::ExperimentUnit| u.denominator.unwrap_or(0.0);
            let pre = |u: &truth::ExperimentUnit| u.pre.unwrap_or(0.0);
            let pre_den = |u: &truth::ExperimentUnit| u.pre_denominator.unwrap_or(0.0);
            let val = |u: &truth::ExperimentUnit| u.value;
            let c = &s.cross;
            prop_assert_eq!(c.value_denominator, cross(val, den), "{}", ctx);
            prop_assert_eq!(c.value_pre, cross(val, pre), "{}", ctx);
            prop_assert_eq!(c.value_pre_denominator, cross(val, pre_den), "{}", ctx);
            // Only a ratio with CUPED fills the cross sums of its four variables.
            let full = units.first().is_some_and(|u| u.pre_denominator.is_some());
            let (dp, ddp, ppd) = if full {
                (cross(den, pre), cross(den, pre_den), cross(pre, pre_den))
            } else {
                (0.0, 0.0, 0.0)
            };
            prop_assert_eq!(c.denominator_pre, dp, "{}", ctx);
            prop_assert_eq!(c.denominator_pre_denominator, ddp, "{}", ctx);
            prop_assert_eq!(c.pre_pre_denominator, ppd, "{}", ctx);
            let want_values: Vec<f64> = if unit_values[k] {
                units.iter().map(|u| u.value).collect()
            } else {
                Vec::new()
            };
            prop_assert_eq!(&s.unit_values, &want_values, "{} unit values", ctx);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check(
    persons: u32,
    evs: &[Ev],
    metrics: &[truth::ExperimentMetric<'_>],
    unit_values: &[bool],
    exposure: (i64, i64, i64),
    analysis_end: i64,
    width: i64,
    drop: bool,
    threads: usize,
) -> Result<(), TestCaseError> {
    let cols = layout(evs, metrics, width, drop);
    let blocks: Vec<Block<'_>> = cols
        .iter()
        .map(|c| Block {
            person: &c.person,
            ts: &c.ts,
            mask: &c.mask,
            breakdown: c.code.as_deref(),
            value: None,
        })
        .collect();
    let values: Vec<Vec<Option<&[f64]>>> = cols
        .iter()
        .map(|c| c.values.iter().map(|v| v.as_deref()).collect())
        .collect();
    let spec = ExperimentSpec {
        exposure_bit: EXPOSURE_BIT,
        variations: VARIATIONS,
        exposure_from_us: exposure.0,
        exposure_to_us: exposure.2,
        entry_from_us: exposure.1,
        analysis_end_us: analysis_end,
        metrics: metrics
            .iter()
            .enumerate()
            .map(|(k, m)| kernel_metric(k, m, unit_values[k]))
            .collect(),
    };
    let got = experiment(&blocks, &values, persons, threads, &spec);
    let rows: Vec<truth::ExperimentRow<'_>> = evs
        .iter()
        .map(|e| truth::ExperimentRow {
            person: u64::from(e.person),
            ts_us: e.ts,
            event: NAMES[e.event],
            variation: if e.event == 0 { e.variation } else { None },
            value: e.value,
        })
        .collect();
    let q = truth::Experiment {
        exposure_event: NAMES[0],
        variations: VARIATIONS,
        exposure_from_us: exposure.0,
        exposure_to_us: exposure.2,
        entry_from_us: exposure.1,
        analysis_end_us: analysis_end,
        metrics,
    };
    compare(&got, &truth::experiment(&rows, &q), unit_values)
}

/// A time on the grid, `g` grid steps from the base, 1 µs off when `off` is ±1.
fn at(g: i64, off: i64) -> i64 {
    base() + g * GRID + off
}

prop_compose! {
    fn arb_ev()(
        person in 0u32..6,
        g in 0i64..40,
        off in prop::sample::select(vec![0i64, 0, 0, 0, 1, -1]),
        event in prop::sample::select(vec![0usize, 0, 1, 2, 3]),
        variation in prop::option::weighted(0.9, 0u32..4),
        value in prop::option::weighted(0.8, -4i32..12),
    ) -> Ev {
        Ev { person, ts: at(g, off), event, variation, value: value.map(|v| f64::from(v) * 0.5) }
    }
}

prop_compose! {
    fn arb_metric(count: usize)(
        event in prop::sample::select(vec![1usize, 2, 3, 0]),
        aggregation in prop::sample::select(vec![
            truth::ExperimentAggregation::Conversion,
            truth::ExperimentAggregation::Count,
            truth::ExperimentAggregation::Sum,
        ]),
        delay in prop::sample::select(vec![0i64, 0, GRID, 2 * GRID, -GRID, 1]),
        window in prop::option::of(prop::sample::select(vec![GRID, 2 * GRID, 5 * GRID, 0, 1])),
        cap in prop::option::weighted(0.3, prop::sample::select(vec![0.5f64, 1.0, 2.0, 3.5])),
        denominator in prop::option::weighted(0.4, 0..count),
        pre in prop::option::weighted(0.4, prop::sample::select(vec![GRID, 3 * GRID, 10 * GRID, 1])),
        then in prop::sample::select(vec![
            &[][..], &[][..], &[][..], &["b"][..], &["a"][..], &["b", "c"][..], &["c", "a", "a"][..],
        ]),
    ) -> truth::ExperimentMetric<'static> {
        truth::ExperimentMetric {
            event: NAMES[event],
            // An ordered funnel is a conversion.
            aggregation: if then.is_empty() { aggregation } else { truth::ExperimentAggregation::Conversion },
            then,
            delay_us: delay,
            window_us: window,
            cap,
            denominator,
            pre_window_us: pre,
        }
    }
}

fn arb_metrics() -> impl Strategy<Value = Vec<truth::ExperimentMetric<'static>>> {
    (1usize..=5).prop_flat_map(|n| prop::collection::vec(arb_metric(n), n))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn matches_the_truth(
        evs in prop::collection::vec(arb_ev(), 0..60),
        metrics in arb_metrics(),
        unit_values in prop::collection::vec(any::<bool>(), 5),
        from in 0i64..20,
        len in 0i64..30,
        entry in prop::sample::select(vec![0i64, 0, 0, 3, 8, 40]),
        end in 0i64..45,
        width in common::arb_width(),
        drop in any::<bool>(),
        threads in 1usize..=3,
    ) {
        check(
            PERSONS, &evs, &metrics, &unit_values, (at(from, 0), at(from + entry, 0), at(from + len, 0)), at(end, 0), width, drop, threads,
        )?;
    }
}

/// Many units: the kernel works through a shard a chunk of units at a time; units on both sides of every chunk
/// boundary, and shards of uneven size, must come out as the truth says.
#[test]
fn many_units_across_chunks_and_shards() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let persons = 20_000u32;
    let mut evs = Vec::new();
    for _ in 0..80_000 {
        let event = (next() % 4) as usize;
        evs.push(Ev {
            // Half the persons have rows: gaps and runs across chunk boundaries.
            person: (next() % u64::from(persons / 2)) as u32 * 2 + (next() % 2 == 0) as u32,
            ts: at((next() % 40) as i64, 0),
            event,
            variation: (event == 0).then(|| (next() % 10).min(3) as u32 % 3),
            value: (next() % 5 != 0).then(|| (next() % 16) as f64 * 0.5 - 2.0),
        });
    }
    let metrics = [
        truth::ExperimentMetric {
            event: "a",
            aggregation: truth::ExperimentAggregation::Sum,
            delay_us: 0,
            window_us: Some(4 * GRID),
            cap: Some(3.5),
            denominator: Some(1),
            pre_window_us: Some(5 * GRID),
            then: &[],
        },
        truth::ExperimentMetric {
            event: "b",
            aggregation: truth::ExperimentAggregation::Count,
            delay_us: GRID,
            window_us: None,
            cap: None,
            denominator: None,
            pre_window_us: Some(2 * GRID),
            then: &[],
        },
        truth::ExperimentMetric {
            event: "c",
            aggregation: truth::ExperimentAggregation::Conversion,
            delay_us: 0,
            window_us: Some(GRID),
            cap: None,
            denominator: None,
            pre_window_us: None,
            then: &[],
        },
    ];
    for threads in [1, 2, 3] {
        let result = check(
            persons,
            &evs,
            &metrics,
            &[true, false, true],
            (at(5, 0), at(12, 0), at(30, 0)),
            at(38, 0),
            DAY_US,
            false,
            threads,
        );
        assert!(result.is_ok(), "{threads} threads: {result:?}");
    }
}
