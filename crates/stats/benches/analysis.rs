//! Criterion benchmark: one experiment's results, 5 metrics × 3 arms (≈ 333k users per arm, so Welch's degrees of
//! freedom are ≈ 6.7e5 and the t distribution takes its large-df path), with each engine.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flywheel_stats::{
    analyze, ArmData, BayesianConfig, Engine, Moments, SequentialConfig, TTestConfig,
};

fn moments(n: f64, mean: f64, sd: f64) -> Moments {
    Moments::Mean {
        sum: n * mean,
        sum_squares: (n - 1.0) * sd * sd + n * mean * mean,
    }
}

fn metrics() -> Vec<Vec<ArmData>> {
    let n = 333_333u64;
    let nf = n as f64;
    let arms = |f: &dyn Fn(f64) -> ArmData| vec![f(1.0), f(1.01), f(1.03)];
    vec![
        arms(&|k| ArmData::Proportion {
            n,
            sum: (nf * 0.1 * k).round(),
        }),
        arms(&|k| {
            let m = moments(nf, 3.0 * k, 4.0);
            ArmData::Mean {
                n,
                sum: m.sum(),
                sum_squares: m.sum_squares(),
            }
        }),
        arms(&|k| {
            let (num, den) = (moments(nf, 20.0 * k, 15.0), moments(nf, 2.0, 1.5));
            ArmData::Ratio {
                n,
                numerator: num,
                denominator: den,
                cross_sum: (nf - 1.0) * 0.5 * 15.0 * 1.5 + num.sum() * den.sum() / nf,
            }
        }),
        arms(&|k| {
            let (post, pre) = (moments(nf, 10.0 * k, 6.0), moments(nf, 9.5, 5.5));
            ArmData::Cuped {
                n,
                post,
                pre,
                cross_sum: (nf - 1.0) * 0.7 * 6.0 * 5.5 + post.sum() * pre.sum() / nf,
            }
        }),
        arms(&|k| ArmData::Quantile {
            n,
            n_star: n,
            level: 0.9,
            estimate: 250.0 * k,
            lower: 249.0 * k,
            upper: 251.0 * k,
        }),
    ]
}

fn benches(c: &mut Criterion) {
    use flywheel_stats::special::{t_isf, t_sf};
    c.bench_function("special/t_sf/df_6.7e5", |b| {
        b.iter(|| t_sf(black_box(2.1), black_box(666_664.0)))
    });
    c.bench_function("special/t_isf/df_6.7e5", |b| {
        b.iter(|| t_isf(black_box(0.025), black_box(666_664.0)))
    });
    c.bench_function("special/t_sf/df_50", |b| {
        b.iter(|| t_sf(black_box(2.1), black_box(50.0)))
    });
    let metrics = metrics();
    let weights = [1.0, 1.0, 1.0];
    for (name, engine) in [
        ("frequentist", Engine::Frequentist(TTestConfig::default())),
        (
            "sequential",
            Engine::Sequential(SequentialConfig::default()),
        ),
        ("bayesian", Engine::Bayesian(BayesianConfig::default())),
    ] {
        for m in &metrics {
            let a = analyze(m, &weights, &engine).unwrap();
            assert!(
                a.comparisons.iter().all(|c| c.result.is_some()),
                "{name}: {a:?}"
            );
        }
        c.bench_function(&format!("experiment/5_metrics_3_arms/{name}"), |b| {
            b.iter(|| {
                for m in black_box(&metrics) {
                    black_box(analyze(m, &weights, &engine).unwrap());
                }
            })
        });
    }
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
