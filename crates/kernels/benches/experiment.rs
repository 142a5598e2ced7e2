//! Criterion benchmark of the experiment kernel: 1M exposed persons over 2 variations, about 10M rows in 28 daily
//! blocks, 5 metrics — conversion within 7 days, page views (count, with CUPED over the 14 days before exposure),
//! revenue (sum), revenue per order (ratio) and orders (count, the ratio's denominator).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flywheel_kernels::experiment::{experiment, Aggregation, ExperimentSpec, Metric};
use flywheel_kernels::{default_threads, Block, DAY_US};

const PERSONS: u32 = 1_000_000;
const DAYS: i64 = 28;
/// Metric rows per person (plus one exposure, and a second one for a few).
const EVENTS: u64 = 9;
const EXPOSURE: u64 = 1;
const PAGEVIEW: u64 = 2;
const PURCHASE: u64 = 4;
const ORDER: u64 = 8;

struct Day {
    person: Vec<u32>,
    ts: Vec<i64>,
    mask: Vec<u64>,
    code: Vec<u32>,
    revenue: Vec<f64>,
}

/// A deterministic xorshift64 generator.
fn rng(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn data() -> Vec<Day> {
    let mut days: Vec<Day> = (0..DAYS)
        .map(|_| Day {
            person: Vec::new(),
            ts: Vec::new(),
            mask: Vec::new(),
            code: Vec::new(),
            revenue: Vec::new(),
        })
        .collect();
    let mut next = rng(0x9e37_79b9_7f4a_7c15);
    let mut evs: Vec<(i64, u64, u32, f64)> = Vec::new();
    for p in 0..PERSONS {
        evs.clear();
        // Exposed in the second and third weeks; 1 in 100 also sees the other variation later.
        let t0 = 7 * DAY_US + (next() % (14 * DAY_US as u64)) as i64;
        let v = (next() % 2) as u32;
        evs.push((t0, EXPOSURE, v, f64::NAN));
        if next().is_multiple_of(100) {
            evs.push((t0 + DAY_US, EXPOSURE, 1 - v, f64::NAN));
        }
        for _ in 0..EVENTS {
            let ts = (next() % (DAYS * DAY_US) as u64) as i64;
            let (mask, value) = match next() % 10 {
                0 => (PURCHASE | ORDER, (next() % 10_000) as f64 / 100.0),
                1 => (ORDER, f64::NAN),
                _ => (PAGEVIEW, f64::NAN),
            };
            evs.push((ts, mask, 0, value));
        }
        evs.sort_by_key(|e| e.0);
        for &(ts, mask, code, value) in &evs {
            let d = &mut days[(ts / DAY_US) as usize];
            d.person.push(p);
            d.ts.push(ts);
            d.mask.push(mask);
            d.code.push(code);
            d.revenue.push(value);
        }
    }
    days
}

fn metric(bit: u32, aggregation: Aggregation) -> Metric {
    Metric {
        bit,
        aggregation,
        delay_us: 0,
        window_us: None,
        cap: None,
        denominator: None,
        cuped_pre_window_us: None,
        unit_values: false,
    }
}

fn spec() -> ExperimentSpec {
    ExperimentSpec {
        exposure_bit: 0,
        variations: 2,
        exposure_from_us: 0,
        entry_from_us: 0,
        exposure_to_us: DAYS * DAY_US,
        analysis_end_us: DAYS * DAY_US,
        metrics: vec![
            Metric {
                window_us: Some(7 * DAY_US),
                ..metric(1, Aggregation::Conversion)
            },
            Metric {
                cuped_pre_window_us: Some(14 * DAY_US),
                ..metric(1, Aggregation::Count)
            },
            metric(2, Aggregation::Sum),
            Metric {
                denominator: Some(4),
                ..metric(2, Aggregation::Sum)
            },
            metric(3, Aggregation::Count),
        ],
    }
}

fn bench(c: &mut Criterion) {
    let days = data();
    let rows: usize = days.iter().map(|d| d.person.len()).sum();
    let blocks: Vec<Block<'_>> = days
        .iter()
        .map(|d| Block {
            person: &d.person,
            ts: &d.ts,
            mask: &d.mask,
            breakdown: Some(&d.code),
            value: None,
        })
        .collect();
    let values: Vec<Vec<Option<&[f64]>>> = days
        .iter()
        .map(|d| {
            let r = Some(&d.revenue[..]);
            vec![None, None, r, r, None]
        })
        .collect();
    let spec = spec();
    let arms = experiment(&blocks, &values, PERSONS, default_threads(), &spec);
    eprintln!(
        "{rows} rows; arms n = {:?}, multiple exposures = {:?}",
        arms.iter().map(|a| a.n).collect::<Vec<_>>(),
        arms.iter()
            .map(|a| a.multiple_exposures)
            .collect::<Vec<_>>()
    );
    let mut g = c.benchmark_group("experiment");
    g.sample_size(10);
    for threads in [1, default_threads()] {
        g.bench_function(format!("1M units, 5 metrics, {threads} threads"), |b| {
            b.iter(|| experiment(black_box(&blocks), &values, PERSONS, threads, &spec))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
