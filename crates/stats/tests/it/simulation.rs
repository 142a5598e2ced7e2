//! Seeded simulations of the properties the tests promise: A/A false-positive rate and interval coverage,
//! sequential testing under peeking, SRM p-values uniform under a correct split, and the Beta-binomial
//! probability to be best against Monte Carlo and a brute-force grid. Deterministic (fixed seeds) and fast in
//! debug builds: units are drawn individually, sufficient statistics accumulated as a warehouse would.

use flywheel_stats::{
    analyze, probability_to_be_best, sequential_test, srm, t_test, ArmData, BetaPrior, Conversions,
    Engine, LiftType, SequentialConfig, TTestConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::normal;

fn normal_arm(rng: &mut StdRng, n: usize, mu: f64, sd: f64) -> ArmData {
    let (mut s, mut ss) = (0.0, 0.0);
    for _ in 0..n {
        let x = mu + sd * normal(rng);
        s += x;
        ss += x * x;
    }
    ArmData::Mean {
        n: n as u64,
        sum: s,
        sum_squares: ss,
    }
}

fn binomial_arm(rng: &mut StdRng, n: usize, p: f64) -> ArmData {
    let sum = (0..n).filter(|_| rng.gen::<f64>() < p).count();
    ArmData::Proportion {
        n: n as u64,
        sum: sum as f64,
    }
}

/// Over 4,000 A/A tests (conversion, relative lift) the 5 % test rejects 5 % ± 1 %; over 10,000 tests with a
/// true absolute effect (normal data, unequal variances and sizes) the 95 % interval covers it 95 % ± 1 %.
#[test]
fn aa_false_positive_rate_and_interval_coverage() {
    let mut rng = StdRng::seed_from_u64(1);
    let runs = 4_000;
    let config = TTestConfig::default();
    let mut rejected = 0;
    for _ in 0..runs {
        let a = binomial_arm(&mut rng, 1_000, 0.2);
        let b = binomial_arm(&mut rng, 1_000, 0.2);
        if t_test(&a, &b, &config).unwrap().p_value < 0.05 {
            rejected += 1;
        }
    }
    let fpr = rejected as f64 / runs as f64;

    let absolute = TTestConfig {
        lift: LiftType::Absolute,
        ..Default::default()
    };
    let effect = 0.4;
    let mut covered = 0;
    let coverage_runs = 10_000;
    for _ in 0..coverage_runs {
        let a = normal_arm(&mut rng, 60, 10.0, 2.0);
        let b = normal_arm(&mut rng, 40, 10.0 + effect, 3.0);
        let ci = t_test(&a, &b, &absolute).unwrap().ci;
        if ci.lower.unwrap() <= effect && effect <= ci.upper.unwrap() {
            covered += 1;
        }
    }
    let coverage = covered as f64 / coverage_runs as f64;
    eprintln!("A/A false-positive rate {fpr:.4} ({runs} tests); coverage of a true effect {coverage:.4} ({coverage_runs} tests)");
    assert!((fpr - 0.05).abs() <= 0.01, "false-positive rate {fpr}");
    assert!((coverage - 0.95).abs() <= 0.01, "coverage {coverage}");
}

/// 1,000 A/A experiments looked at 50 times each (every 20 units per arm): the sequential test rejects at some
/// look in at most α of them, while the fixed-horizon t-test looked at the same 50 times rejects far more often
/// (so the simulation does detect peeking).
#[test]
fn sequential_test_survives_fifty_peeks() {
    let mut rng = StdRng::seed_from_u64(2);
    let experiments = 1_000;
    let peeks = 50;
    let step = 20;
    let alpha = 0.05;
    let seq = SequentialConfig {
        alpha,
        lift: LiftType::Absolute,
        tuning: 2_000.0,
    };
    let fixed = TTestConfig {
        alpha,
        lift: LiftType::Absolute,
        ..Default::default()
    };
    let (mut seq_rejected, mut naive_rejected) = (0, 0);
    for _ in 0..experiments {
        let mut sums = [(0.0, 0.0); 2];
        let (mut seq_hit, mut naive_hit) = (false, false);
        for peek in 1..=peeks {
            for arm in &mut sums {
                for _ in 0..step {
                    let x = 5.0 + 2.0 * normal(&mut rng);
                    arm.0 += x;
                    arm.1 += x * x;
                }
            }
            let n = (peek * step) as u64;
            let a = ArmData::Mean {
                n,
                sum: sums[0].0,
                sum_squares: sums[0].1,
            };
            let b = ArmData::Mean {
                n,
                sum: sums[1].0,
                sum_squares: sums[1].1,
            };
            seq_hit |= sequential_test(&a, &b, &seq).unwrap().p_value < alpha;
            naive_hit |= t_test(&a, &b, &fixed).unwrap().p_value < alpha;
        }
        seq_rejected += seq_hit as usize;
        naive_rejected += naive_hit as usize;
    }
    let seq_rate = seq_rejected as f64 / experiments as f64;
    let naive_rate = naive_rejected as f64 / experiments as f64;
    eprintln!("50 peeks, no effect: sequential rejects {seq_rate:.3}, fixed-horizon t-test {naive_rate:.3} ({experiments} experiments)");
    assert!(
        seq_rate <= alpha,
        "sequential false-positive rate {seq_rate}"
    );
    assert!(
        naive_rate > 2.0 * alpha,
        "peeking at the t-test should inflate its error ({naive_rate})"
    );
}

/// Under a correct 50/25/25 split the SRM p-values of 2,000 experiments are uniform (Kolmogorov–Smirnov
/// distance below the 1 % critical value 1.63/√m), and a 2 % imbalance is flagged.
#[test]
fn srm_p_values_are_uniform_under_the_null() {
    let mut rng = StdRng::seed_from_u64(3);
    let m = 2_000;
    let weights = [0.5, 0.25, 0.25];
    let mut p: Vec<f64> = (0..m)
        .map(|_| {
            let mut users = [0u64; 3];
            for _ in 0..2_000 {
                let u: f64 = rng.gen();
                users[if u < 0.5 {
                    0
                } else if u < 0.75 {
                    1
                } else {
                    2
                }] += 1;
            }
            srm(&users, &weights).unwrap().p_value
        })
        .collect();
    p.sort_by(f64::total_cmp);
    let d = p
        .iter()
        .enumerate()
        .map(|(i, &x)| ((i + 1) as f64 / m as f64 - x).max(x - i as f64 / m as f64))
        .fold(0.0, f64::max);
    let critical = 1.63 / (m as f64).sqrt();
    let flagged = p.iter().filter(|&&x| x < 0.001).count();
    eprintln!("SRM under the null: KS distance {d:.4} (1 % critical value {critical:.4}), {flagged} of {m} flagged");
    assert!(d < critical, "KS distance {d}");
    assert!(flagged <= 10);
    let broken = srm(&[51_000, 24_500, 24_500], &weights).unwrap();
    assert!(broken.mismatch, "{broken:?}");
}

/// A Gamma(shape, 1) draw (Marsaglia–Tsang), for Beta draws in the Monte Carlo check.
fn gamma(rng: &mut StdRng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.gen();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.gen();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Probability to be best for 3 and 4 arms against 200,000 Monte Carlo draws (within 5 standard errors) and
/// against a brute-force midpoint grid whose CDFs are running sums of the densities (no incomplete beta).
#[test]
fn probability_to_be_best_matches_monte_carlo_and_a_grid() {
    let mut rng = StdRng::seed_from_u64(4);
    let cases: [&[(f64, f64)]; 3] = [
        &[(30.0, 300.0), (36.0, 300.0), (33.0, 310.0)],
        &[(2.0, 40.0), (0.0, 35.0), (5.0, 45.0), (3.0, 38.0)],
        &[
            (1_020.0, 10_000.0),
            (1_000.0, 10_000.0),
            (1_080.0, 10_100.0),
        ],
    ];
    for arms in cases {
        let input: Vec<Conversions> = arms
            .iter()
            .map(|&(c, t)| Conversions {
                conversions: c,
                trials: t,
            })
            .collect();
        let exact = probability_to_be_best(&input, BetaPrior::default()).unwrap();
        assert!((exact.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{exact:?}");

        // Monte Carlo.
        let draws = 200_000;
        let mut wins = vec![0usize; arms.len()];
        for _ in 0..draws {
            let mut best = (0, f64::MIN);
            for (i, &(c, t)) in arms.iter().enumerate() {
                let x = gamma(&mut rng, 1.0 + c);
                let y = gamma(&mut rng, 1.0 + t - c);
                let p = x / (x + y);
                if p > best.1 {
                    best = (i, p);
                }
            }
            wins[best.0] += 1;
        }
        for (i, &w) in wins.iter().enumerate() {
            let mc = w as f64 / draws as f64;
            let se = (exact[i] * (1.0 - exact[i]) / draws as f64)
                .sqrt()
                .max(1e-4);
            assert!(
                (mc - exact[i]).abs() < 5.0 * se,
                "arm {i}: exact {} vs Monte Carlo {mc}",
                exact[i]
            );
        }

        // Grid: densities on a fine midpoint grid, CDFs as running sums.
        let cells = 400_000;
        let h = 1.0 / cells as f64;
        let ln_dens: Vec<Box<dyn Fn(f64) -> f64>> = arms
            .iter()
            .map(|&(c, t)| {
                let (a, b) = (1.0 + c, 1.0 + t - c);
                let lb = flywheel_stats::special::ln_beta(a, b);
                Box::new(move |x: f64| (a - 1.0) * x.ln() + (b - 1.0) * (1.0 - x).ln() - lb)
                    as Box<dyn Fn(f64) -> f64>
            })
            .collect();
        let mut cdf = vec![0.0; arms.len()];
        let mut grid = vec![0.0; arms.len()];
        for k in 0..cells {
            let x = (k as f64 + 0.5) * h;
            let dens: Vec<f64> = ln_dens.iter().map(|f| f(x).exp() * h).collect();
            for j in 0..arms.len() {
                // CDF at x: the cells before plus half of this one.
                let others: f64 = (0..arms.len())
                    .filter(|&i| i != j)
                    .map(|i| cdf[i] + 0.5 * dens[i])
                    .product();
                grid[j] += dens[j] * others;
            }
            for i in 0..arms.len() {
                cdf[i] += dens[i];
            }
        }
        for j in 0..arms.len() {
            assert!(
                (grid[j] - exact[j]).abs() < 1e-6,
                "arm {j}: exact {} vs grid {}",
                exact[j],
                grid[j]
            );
        }
        eprintln!(
            "probability to be best {exact:?}: Monte Carlo {wins:?} of {draws}, grid {grid:?}"
        );
    }
}

/// Analysing several treatments runs each against the control and reports SRM.
#[test]
fn three_arm_analysis_compares_each_treatment_with_the_control() {
    let mut rng = StdRng::seed_from_u64(5);
    let arms = [
        binomial_arm(&mut rng, 20_000, 0.10),
        binomial_arm(&mut rng, 20_000, 0.10),
        binomial_arm(&mut rng, 20_000, 0.115),
    ];
    let a = analyze(
        &arms,
        &[1.0, 1.0, 1.0],
        &Engine::Frequentist(TTestConfig::default()),
    )
    .unwrap();
    assert_eq!(a.comparisons.len(), 2);
    assert_eq!(a.comparisons[1].arm, 2);
    let p = |i: usize| match a.comparisons[i].result.unwrap() {
        flywheel_stats::TestResult::Frequentist(r) => r.p_value,
        _ => unreachable!(),
    };
    assert!(p(0) > 0.01 && p(1) < 1e-3, "{} {}", p(0), p(1));
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json["comparisons"][1]["result"]["engine"], "frequentist");
}

/// The order-statistic interval of a quantile covers the true p50/p90/p99 of an exponential distribution in
/// about 95 % of 2,000 samples of 2,000 values (at least 94 %: the interval's ranks are rounded outwards).
#[test]
fn quantile_interval_covers_the_true_quantile() {
    let mut rng = StdRng::seed_from_u64(6);
    for level in [0.5, 0.9, 0.99] {
        let truth = -(1.0_f64 - level).ln();
        let runs = 2_000;
        let mut covered = 0;
        for _ in 0..runs {
            let values: Vec<f64> = (0..2_000).map(|_| -(1.0 - rng.gen::<f64>()).ln()).collect();
            match flywheel_stats::sample::quantile_from_sample(&values, level, 0.05).unwrap() {
                ArmData::Quantile { lower, upper, .. } => {
                    covered += (lower <= truth && truth <= upper) as usize
                }
                _ => unreachable!(),
            }
        }
        let coverage = covered as f64 / runs as f64;
        eprintln!(
            "p{}: quantile interval coverage {coverage:.4} ({runs} samples)",
            level * 100.0
        );
        assert!((0.94..=0.975).contains(&coverage), "p{level}: {coverage}");
    }
}
