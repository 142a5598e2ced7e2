//! flywheel-stats against GrowthBook's gbstats 0.8.0, called live through `tests/gbstats_oracle.py` with the
//! interpreter in `FLYWHEEL_TEST_PYTHON` (scripts/test sets it; the package is pinned in
//! tests/clients/requirements.txt). Cases are generated from a fixed seed and cover every metric type, engine and
//! lift, 2–5 arms, 5 to 1e8 units, p-values from 1 down to 1e-30 and below, and more than 1e6 degrees of freedom.
//!
//! Tolerances (issue 6): estimates, standard errors, degrees of freedom and risks 1e-9 relative; interval bounds
//! 1e-9 absolute (1e-13 relative for bounds above 1e4 in magnitude, where 1e-9 is below double precision);
//! p-values and chances to win max(1e-12, 1e-8·p), and where gbstats returns exactly 0 (its `2(1 − cdf)` rounds
//! anything below ≈ 1e-16 to 0) ours must be below 1e-15. A quantity that is zero up to cancellation (an A/A
//! estimate of 1e-17) is compared with an absolute floor of 1e-14 times its standard error.
//!
//! One documented deviation: gbstats' `OneSidedTreatmentLesserTTest` returns the interval
//! `(−∞, Δ − w]`, which does not contain its own estimate; ours is `(−∞, Δ + w]`. For those cases the half-width
//! `w` is compared instead of the bound.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use flywheel_stats::special;
use flywheel_stats::{
    adjust_p_values, analyze, srm, Alternative, ArmData, BayesianConfig, Correction, Engine,
    GaussianPrior, LiftType, Moments, RatioCrossSums, SequentialConfig, TTestConfig, TestResult,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn python() -> String {
    std::env::var("FLYWHEEL_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "FLYWHEEL_TEST_PYTHON is not set: run the suite with scripts/test, which installs gbstats==0.8.0 and \
             the other pinned packages (scripts/setup-test-env prints the interpreter to use)"
        )
    })
}

/// Runs the oracle script on the cases and returns its answers, in order.
fn oracle(cases: &[Value]) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gbstats_oracle.py");
    let py = python();
    let mut child = Command::new(&py)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {py}: {e}"));
    let input = serde_json::to_vec(cases).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the gbstats oracle failed (is gbstats==0.8.0 installed in {py}? scripts/setup-test-env installs it):\n{stderr}"
    );
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).expect("oracle output is JSON");
    assert_eq!(answers.len(), cases.len());
    answers
}

// ---------------------------------------------------------------------------------------------------------------
// Case generation

fn mean_moments(n: f64, mean: f64, sd: f64) -> Moments {
    Moments::Mean {
        sum: n * mean,
        sum_squares: (n - 1.0) * sd * sd + n * mean * mean,
    }
}

fn cross(n: f64, a: &Moments, b: &Moments, cov: f64) -> f64 {
    (n - 1.0) * cov + a.sum() * b.sum() / n
}

fn sd_of(m: &Moments, n: f64) -> f64 {
    m.variance(n).max(0.0).sqrt()
}

fn proportion(n: u64, p: f64) -> ArmData {
    ArmData::Proportion {
        n,
        sum: (n as f64 * p).round(),
    }
}

fn mean(n: u64, mu: f64, sd: f64) -> ArmData {
    let m = mean_moments(n as f64, mu, sd);
    ArmData::Mean {
        n,
        sum: m.sum(),
        sum_squares: m.sum_squares(),
    }
}

fn ratio(n: u64, mu_m: f64, sd_m: f64, mu_d: f64, sd_d: f64, corr: f64) -> ArmData {
    let nf = n as f64;
    let numerator = mean_moments(nf, mu_m, sd_m);
    let denominator = mean_moments(nf, mu_d, sd_d);
    let cross_sum = cross(nf, &numerator, &denominator, corr * sd_m * sd_d);
    ArmData::Ratio {
        n,
        numerator,
        denominator,
        cross_sum,
    }
}

fn cuped(n: u64, post: Moments, pre: Moments, corr: f64) -> ArmData {
    let nf = n as f64;
    let cov = corr * sd_of(&post, nf) * sd_of(&pre, nf);
    ArmData::Cuped {
        n,
        post,
        pre,
        cross_sum: cross(nf, &post, &pre, cov),
    }
}

/// CUPED on a ratio whose denominators are 1 per unit (the only form gbstats 0.8.0 can check).
fn cuped_ratio_unit(n: u64, post: Moments, pre: Moments, corr: f64) -> ArmData {
    let nf = n as f64;
    let one = Moments::Mean {
        sum: nf,
        sum_squares: nf,
    };
    let cov = corr * sd_of(&post, nf) * sd_of(&pre, nf);
    ArmData::CupedRatio {
        n,
        numerator: post,
        denominator: one,
        pre_numerator: pre,
        pre_denominator: one,
        cross: RatioCrossSums {
            numerator_denominator: post.sum(),
            numerator_pre_numerator: cross(nf, &post, &pre, cov),
            numerator_pre_denominator: post.sum(),
            denominator_pre_numerator: pre.sum(),
            denominator_pre_denominator: nf,
            pre_numerator_pre_denominator: pre.sum(),
        },
    }
}

fn quantile(n: u64, level: f64, estimate: f64, half_width: f64, skew: f64) -> ArmData {
    ArmData::Quantile {
        n,
        n_star: n,
        level,
        estimate,
        lower: estimate - half_width * (1.0 - skew),
        upper: estimate + half_width * (1.0 + skew),
    }
}

/// A test case: arms, engine settings and the category it counts under.
struct Case {
    category: &'static str,
    arms: Vec<ArmData>,
    engine: Engine,
    /// gbstats' engine name.
    gb_engine: &'static str,
}

fn frequentist(lift: LiftType, alpha: f64, alternative: Alternative) -> (Engine, &'static str) {
    let name = match alternative {
        Alternative::TwoSided => "frequentist",
        Alternative::Greater => "greater",
        Alternative::Less => "less",
    };
    (
        Engine::Frequentist(TTestConfig {
            alpha,
            lift,
            alternative,
        }),
        name,
    )
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

fn generate() -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(20_260_601);
    let mut cases = Vec::new();
    let lifts = [LiftType::Relative, LiftType::Absolute];
    let sizes: [u64; 8] = [5, 12, 20, 300, 10_000, 1_000_000, 30_000_000, 100_000_000];
    let two = Alternative::TwoSided;
    let mut push = |category, arms, (engine, gb_engine): (Engine, &'static str)| {
        cases.push(Case {
            category,
            arms,
            engine,
            gb_engine,
        });
    };

    // Binomial: tiny to huge samples, tiny to huge effects.
    for i in 0..24 {
        let n = sizes[i % sizes.len()];
        let p = pick(&mut rng, &[0.02, 0.1, 0.35, 0.5, 0.8]);
        let lift =
            pick(&mut rng, &[0.0, 0.001, 0.02, 0.1, 0.5]) * if rng.gen() { 1.0 } else { -1.0 };
        let nb = (n as f64 * rng.gen_range(0.9..1.1)).round().max(5.0) as u64;
        let arms = vec![
            proportion(n, p),
            proportion(nb, (p * (1.0 + lift)).clamp(0.01, 0.99)),
        ];
        push(
            "binomial",
            arms,
            frequentist(lifts[i % 2], pick(&mut rng, &[0.05, 0.1, 0.01]), two),
        );
    }
    // p ≈ 1e-30 and beyond at large samples.
    for &(n, p, q) in &[
        (1_000_000u64, 0.1, 0.1012),
        (100_000_000, 0.05, 0.05003),
        (50_000, 0.2, 0.23),
        (1_000_000, 0.3, 0.33),
    ] {
        push(
            "binomial",
            vec![proportion(n, p), proportion(n, q)],
            frequentist(LiftType::Relative, 0.05, two),
        );
    }
    // Count / mean metrics.
    for i in 0..20 {
        let n = sizes[(i + 3) % sizes.len()];
        let mu = pick(&mut rng, &[0.5, 3.0, 40.0, 250.0]);
        let sd = mu * pick(&mut rng, &[0.3, 1.0, 4.0]);
        let eff = pick(&mut rng, &[0.0, 0.005, 0.05, 0.3]);
        let arms = vec![
            mean(n, mu, sd),
            mean(
                n + (i as u64 % 3),
                mu * (1.0 + eff),
                sd * rng.gen_range(0.7..1.4),
            ),
        ];
        push("count", arms, frequentist(lifts[i % 2], 0.05, two));
    }
    // Ratio metrics (delta method).
    for i in 0..12 {
        let n = sizes[(i + 2) % sizes.len()].max(12);
        let (mm, md) = (
            pick(&mut rng, &[2.0, 30.0]),
            pick(&mut rng, &[1.0, 1.5, 4.0]),
        );
        let corr = pick(&mut rng, &[0.0, 0.4, 0.8]);
        let eff = pick(&mut rng, &[0.0, 0.02, 0.2]);
        let arms = vec![
            ratio(n, mm, mm * 0.8, md, md * 0.5, corr),
            ratio(n, mm * (1.0 + eff), mm * 0.9, md, md * 0.6, corr),
        ];
        push("ratio", arms, frequentist(lifts[i % 2], 0.05, two));
    }
    // CUPED: mean and proportion covariates; and CUPED on a ratio with unit denominators.
    for i in 0..14 {
        let n = sizes[(i + 3) % sizes.len()].max(20);
        let nf = n as f64;
        let corr = pick(&mut rng, &[0.3, 0.7, 0.95]);
        let eff = pick(&mut rng, &[0.0, 0.01, 0.1]);
        let arm = |scale: f64, rng: &mut StdRng| {
            let post = mean_moments(nf, 10.0 * scale, 6.0);
            let pre = if i % 3 == 0 {
                Moments::Proportion {
                    sum: (nf * 0.4).round(),
                }
            } else {
                mean_moments(nf, 9.5, 5.0 + rng.gen_range(0.0..0.5))
            };
            (post, pre)
        };
        let (pa, qa) = arm(1.0, &mut rng);
        let (pb, qb) = arm(1.0 + eff, &mut rng);
        if i % 2 == 0 {
            push(
                "cuped",
                vec![cuped(n, pa, qa, corr), cuped(n, pb, qb, corr)],
                frequentist(lifts[i % 4 / 2], 0.05, two),
            );
        } else {
            let arms = vec![
                cuped_ratio_unit(n, pa, qa, corr),
                cuped_ratio_unit(n, pb, qb, corr),
            ];
            push(
                "cuped_ratio",
                arms,
                frequentist(lifts[i % 4 / 2], 0.05, two),
            );
        }
    }
    // 3 to 5 arms, every treatment against the control.
    for i in 0..8 {
        let k = 3 + i % 3;
        let n = sizes[(i + 4) % sizes.len()];
        let arms: Vec<ArmData> = (0..k)
            .map(|j| {
                if i % 2 == 0 {
                    proportion(n, 0.1 * (1.0 + 0.03 * j as f64))
                } else {
                    mean(n, 5.0 + 0.1 * j as f64, 3.0)
                }
            })
            .collect();
        let engine = match i % 3 {
            0 => frequentist(LiftType::Relative, 0.05, two),
            1 => (
                Engine::Sequential(SequentialConfig {
                    alpha: 0.05,
                    lift: LiftType::Relative,
                    tuning: 5000.0,
                }),
                "sequential",
            ),
            _ => (Engine::Bayesian(BayesianConfig::default()), "bayesian"),
        };
        push("multi_arm", arms, engine);
    }
    // Sequential with several tuning parameters.
    for i in 0..14 {
        let n = sizes[(i + 2) % sizes.len()].max(12);
        let tuning = pick(&mut rng, &[100.0, 1000.0, 5000.0, 100_000.0, 1e7]);
        let alpha = pick(&mut rng, &[0.05, 0.1, 0.01]);
        let arms = if i % 2 == 0 {
            vec![
                proportion(n, 0.2),
                proportion(n, 0.2 * (1.0 + pick(&mut rng, &[0.0, 0.02, 0.3]))),
            ]
        } else {
            vec![
                mean(n, 10.0, 4.0),
                mean(n, 10.0 * (1.0 + pick(&mut rng, &[0.0, 0.01, 0.2])), 4.5),
            ]
        };
        push(
            "sequential",
            arms,
            (
                Engine::Sequential(SequentialConfig {
                    alpha,
                    lift: lifts[i % 2],
                    tuning,
                }),
                "sequential",
            ),
        );
    }
    // Bayesian: flat and proper priors, both prior scales, inverse metrics.
    for i in 0..16 {
        let n = sizes[(i + 1) % sizes.len()].max(12);
        let proper = i % 2 == 1;
        let prior = GaussianPrior {
            mean: pick(&mut rng, &[0.0, 0.05, -0.1]),
            variance: pick(&mut rng, &[0.01, 0.09, 1.0]),
            proper,
        };
        let config = BayesianConfig {
            lift: lifts[i / 2 % 2],
            prior,
            prior_scale: lifts[i / 4 % 2],
            inverse: i % 5 == 0,
            alpha: pick(&mut rng, &[0.05, 0.1]),
        };
        let arms = if i % 3 == 0 {
            vec![
                mean(n, 8.0, 5.0),
                mean(n, 8.0 * (1.0 + pick(&mut rng, &[0.0, 0.03, 0.5])), 5.5),
            ]
        } else {
            vec![
                proportion(n, 0.12),
                proportion(n, 0.12 * (1.0 + pick(&mut rng, &[0.0, 0.05, 0.4]))),
            ]
        };
        push("bayesian", arms, (Engine::Bayesian(config), "bayesian"));
    }
    // One-sided tests.
    for i in 0..8 {
        let n = sizes[(i + 3) % sizes.len()];
        let alt = if i % 2 == 0 {
            Alternative::Greater
        } else {
            Alternative::Less
        };
        let arms = vec![
            mean(n, 4.0, 2.0),
            mean(n, 4.0 * (1.0 + pick(&mut rng, &[-0.05, 0.0, 0.05])), 2.0),
        ];
        push("one_sided", arms, frequentist(lifts[i / 2 % 2], 0.05, alt));
    }
    // Quantiles (p50, p90, p99), including too few observations for the interval.
    for i in 0..10 {
        let n = pick(&mut rng, &[8u64, 50, 150, 2_000, 1_000_000]);
        let level = [0.5, 0.9, 0.99][i % 3];
        let est = pick(&mut rng, &[12.0, 250.0]);
        let hw = est * pick(&mut rng, &[0.01, 0.1]) / (n as f64).sqrt().max(1.0) * 5.0;
        let arms = vec![
            quantile(n, level, est, hw, 0.1),
            quantile(
                n,
                level,
                est * (1.0 + pick(&mut rng, &[0.0, 0.05])),
                hw * 1.1,
                -0.05,
            ),
        ];
        push("quantile", arms, frequentist(lifts[i % 2], 0.05, two));
    }
    // df > 1e6 with very unequal variances.
    push(
        "large_df",
        vec![mean(3_000_000, 10.0, 1.0), mean(5_000_000, 10.001, 9.0)],
        frequentist(LiftType::Absolute, 0.05, two),
    );
    push(
        "large_df",
        vec![mean(80_000_000, 1.0, 2.0), mean(90_000_000, 1.0004, 2.0)],
        frequentist(LiftType::Relative, 0.05, two),
    );
    cases
}

fn to_json(c: &Case) -> Value {
    let arms = serde_json::to_value(&c.arms).unwrap();
    match &c.engine {
        Engine::Frequentist(t) => {
            json!({"kind": "test", "engine": c.gb_engine, "lift": t.lift, "alpha": t.alpha, "arms": arms})
        }
        Engine::Sequential(s) => {
            json!({"kind": "test", "engine": "sequential", "lift": s.lift, "alpha": s.alpha, "tuning": s.tuning, "arms": arms})
        }
        Engine::Bayesian(b) => json!({
            "kind": "test", "engine": "bayesian", "lift": b.lift, "alpha": b.alpha, "inverse": b.inverse,
            "prior": {"mean": b.prior.mean, "variance": b.prior.variance, "proper": b.prior.proper},
            "prior_scale": b.prior_scale, "arms": arms,
        }),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Comparison

/// `diff ≤ tol`, false for NaN.
fn within(diff: f64, tol: f64) -> bool {
    diff <= tol
}

#[derive(Default)]
struct Report {
    failures: Vec<String>,
    /// Comparisons both engines refused (zero variance, zero baseline, too few observations for a quantile).
    both_refused: usize,
    compared: usize,
    smallest_p: f64,
    largest_dof: f64,
    per_category: BTreeMap<&'static str, (usize, usize)>,
    values: usize,
}

impl Report {
    fn rel(&mut self, ctx: &str, what: &str, ours: f64, theirs: f64, floor: f64) {
        self.values += 1;
        let tol = 1e-9 * theirs.abs() + floor;
        if !within((ours - theirs).abs(), tol) {
            self.failures.push(format!(
                "{ctx}: {what}: ours {ours:e}, gbstats {theirs:e}, |diff| {:e} > {tol:e}",
                (ours - theirs).abs()
            ));
        }
    }

    fn bound(&mut self, ctx: &str, what: &str, ours: f64, theirs: f64) {
        self.values += 1;
        let tol = 1e-9_f64.max(1e-13 * theirs.abs());
        if !within((ours - theirs).abs(), tol) {
            self.failures.push(format!(
                "{ctx}: {what}: ours {ours:e}, gbstats {theirs:e}, |diff| {:e} > {tol:e}",
                (ours - theirs).abs()
            ));
        }
    }

    fn prob(&mut self, ctx: &str, what: &str, ours: f64, theirs: f64) {
        self.values += 1;
        let ok = if theirs == 0.0 {
            ours < 1e-15
        } else {
            (ours - theirs).abs() <= 1e-12_f64.max(1e-8 * theirs)
        };
        if !ok {
            self.failures
                .push(format!("{ctx}: {what}: ours {ours:e}, gbstats {theirs:e}"));
        }
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn compare_case(report: &mut Report, idx: usize, case: &Case, answer: &Value) -> bool {
    let before = report.failures.len();
    let weights = vec![1.0; case.arms.len()];
    let analysis = analyze(&case.arms, &weights, &case.engine).expect("valid case");
    let theirs = answer["comparisons"].as_array().unwrap();
    for (k, (ours, gb)) in analysis.comparisons.iter().zip(theirs).enumerate() {
        let ctx = format!(
            "case {idx} ({}, arm {}) {}",
            case.category,
            k + 1,
            serde_json::to_string(&case.arms).unwrap()
        );
        match (&ours.result, gb["error"].as_str()) {
            (None, Some(_)) => {
                report.both_refused += 1;
                continue;
            }
            (None, None) => {
                report.failures.push(format!(
                    "{ctx}: we failed ({:?}) where gbstats answered {gb}",
                    ours.error
                ));
                continue;
            }
            (Some(_), Some(e)) => {
                report.failures.push(format!(
                    "{ctx}: gbstats refused ({e}) where we answered {:?}",
                    ours.result
                ));
                continue;
            }
            (Some(_), None) => report.compared += 1,
        }
        let se_ref = f(&gb["std_error"]);
        let floor = 1e-14 * se_ref;
        let ci = &gb["ci"];
        match ours.result.unwrap() {
            TestResult::Frequentist(r) => {
                report.rel(&ctx, "estimate", r.estimate, f(&gb["estimate"]), floor);
                report.rel(&ctx, "std_error", r.std_error, se_ref, 0.0);
                report.rel(&ctx, "dof", r.dof, f(&gb["dof"]), 0.0);
                report.prob(&ctx, "p_value", r.p_value, f(&gb["p_value"]));
                report.smallest_p = report.smallest_p.min(r.p_value);
                report.largest_dof = report.largest_dof.max(r.dof);
                match case.gb_engine {
                    "greater" => {
                        report.bound(&ctx, "ci.lower", r.ci.lower.unwrap(), f(&ci[0]));
                        assert!(
                            r.ci.upper.is_none() && ci[1].is_null(),
                            "{ctx}: upper bound"
                        );
                    }
                    "less" => {
                        // gbstats: (−∞, Δ − w]; ours (−∞, Δ + w]: compare w.
                        let w_gb = f(&gb["estimate"]) - f(&ci[1]);
                        report.bound(
                            &ctx,
                            "ci half-width",
                            r.ci.upper.unwrap() - r.estimate,
                            w_gb,
                        );
                        assert!(
                            r.ci.lower.is_none() && ci[0].is_null(),
                            "{ctx}: lower bound"
                        );
                    }
                    _ => {
                        report.bound(&ctx, "ci.lower", r.ci.lower.unwrap(), f(&ci[0]));
                        report.bound(&ctx, "ci.upper", r.ci.upper.unwrap(), f(&ci[1]));
                    }
                }
            }
            TestResult::Sequential(r) => {
                report.rel(&ctx, "estimate", r.estimate, f(&gb["estimate"]), floor);
                report.rel(&ctx, "std_error", r.std_error, se_ref, 0.0);
                report.prob(&ctx, "p_value", r.p_value, f(&gb["p_value"]));
                report.bound(&ctx, "ci.lower", r.ci.lower.unwrap(), f(&ci[0]));
                report.bound(&ctx, "ci.upper", r.ci.upper.unwrap(), f(&ci[1]));
            }
            TestResult::Bayesian(r) => {
                report.rel(&ctx, "expected", r.expected, f(&gb["estimate"]), floor);
                report.rel(&ctx, "std_dev", r.std_dev, se_ref, 0.0);
                report.prob(
                    &ctx,
                    "chance_to_win",
                    r.chance_to_win,
                    f(&gb["chance_to_win"]),
                );
                report.bound(&ctx, "ci.lower", r.ci.lower.unwrap(), f(&ci[0]));
                report.bound(&ctx, "ci.upper", r.ci.upper.unwrap(), f(&ci[1]));
                report.rel(
                    &ctx,
                    "risk_control",
                    r.risk_control,
                    f(&gb["risk"][0]),
                    floor,
                );
                report.rel(
                    &ctx,
                    "risk_treatment",
                    r.risk_treatment,
                    f(&gb["risk"][1]),
                    floor,
                );
            }
        }
    }
    report.failures.len() == before
}

#[test]
fn agrees_with_gbstats_0_8_0() {
    let cases = generate();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut json_cases: Vec<Value> = cases.iter().map(to_json).collect();

    // SRM: balanced and unbalanced splits, 2–5 arms, zero weights, mismatches down to p ≈ 0.
    let mut rng = StdRng::seed_from_u64(7);
    let mut srm_cases = Vec::new();
    for i in 0..20 {
        let k = 2 + i % 4;
        let weights: Vec<f64> = (0..k)
            .map(|j| {
                if i % 7 == 3 && j == k - 1 {
                    0.0
                } else {
                    1.0 + (j % 2) as f64
                }
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let n = pick(&mut rng, &[50.0, 10_000.0, 1e7]);
        let users: Vec<u64> = weights
            .iter()
            .map(|w| {
                (n * w / total * (1.0 + pick(&mut rng, &[0.0, 0.001, 0.01, 0.05]))).round() as u64
            })
            .collect();
        srm_cases.push((users, weights));
    }
    for (users, weights) in &srm_cases {
        json_cases.push(json!({"kind": "srm", "users": users, "weights": weights}));
    }
    // Benjamini–Hochberg against scipy.
    let bh_cases: Vec<Vec<f64>> = (0..5)
        .map(|i| {
            (0..(3 + 4 * i))
                .map(|_| rng.gen::<f64>().powi(1 + i))
                .collect()
        })
        .collect();
    for p in &bh_cases {
        json_cases.push(json!({"kind": "bh", "p_values": p}));
    }
    // Special functions against mpmath (60 digits; scipy for the t quantile).
    let mut special_cases: Vec<(&str, Vec<f64>, f64)> = Vec::new();
    for &x in &[-38.0, -12.5, -3.0, -0.3, 0.0, 0.7, 1.96, 5.0, 20.0, 37.5] {
        special_cases.push(("norm_sf", vec![x], special::norm_sf(x)));
        special_cases.push(("norm_cdf", vec![x], special::norm_cdf(x)));
    }
    for &p in &[1e-300, 1e-30, 1e-8, 0.025, 0.3, 0.5, 0.8, 0.975, 0.999_999] {
        special_cases.push(("norm_ppf", vec![p], special::norm_ppf(p)));
    }
    for &df in &[0.7, 1.0, 2.5, 7.0, 33.3, 150.0, 4_000.0, 2e6, 3e7, 1e9] {
        for &t in &[-4.0, 0.4, 1.7, 2.9, 8.0, 35.0] {
            special_cases.push(("t_sf", vec![t, df], special::t_sf(t, df)));
        }
        for &p in &[1e-12, 0.025, 0.4, 0.95, 0.995] {
            special_cases.push(("t_ppf", vec![p, df], special::t_ppf(p, df)));
        }
    }
    for &(x, k) in &[
        (0.5, 1.0),
        (3.0, 2.0),
        (10.0, 3.0),
        (150.0, 4.0),
        (2.0, 9.0),
        (900.0, 1.0),
    ] {
        special_cases.push(("chi2_sf", vec![x, k], special::chi2_sf(x, k)));
    }
    for &(a, b, x) in &[
        (0.5, 0.5, 0.2),
        (2.0, 3.0, 0.6),
        (30.0, 70.0, 0.25),
        (1500.0, 30_000.0, 0.0466),
        (200.0, 5.0, 0.99),
        (0.3, 400.0, 1e-4),
    ] {
        special_cases.push((
            "beta_inc",
            vec![a, b, x],
            special::beta_inc(a, b, x, 1.0 - x).0,
        ));
    }
    for (name, args, _) in &special_cases {
        json_cases.push(json!({"kind": "special", "fn": name, "args": args}));
    }

    let answers = oracle(&json_cases);
    let mut report = Report {
        smallest_p: 1.0,
        ..Default::default()
    };
    for (i, (case, answer)) in cases.iter().zip(&answers).enumerate() {
        let ok = compare_case(&mut report, i, case, answer);
        let e = report.per_category.entry(case.category).or_default();
        e.0 += 1;
        e.1 += ok as usize;
    }
    let mut at = cases.len();
    for (users, weights) in &srm_cases {
        let before = report.failures.len();
        let ours = srm(users, weights).unwrap().p_value;
        report.prob(
            &format!("srm {users:?} {weights:?}"),
            "p_value",
            ours,
            f(&answers[at]["p_value"]),
        );
        let e = report.per_category.entry("srm").or_default();
        e.0 += 1;
        e.1 += (report.failures.len() == before) as usize;
        at += 1;
    }
    for p in &bh_cases {
        let before = report.failures.len();
        let ours = adjust_p_values(p, Correction::BenjaminiHochberg).unwrap();
        for (o, t) in ours.iter().zip(answers[at]["adjusted"].as_array().unwrap()) {
            report.prob(&format!("bh {p:?}"), "adjusted", *o, f(t));
        }
        let e = report.per_category.entry("benjamini_hochberg").or_default();
        e.0 += 1;
        e.1 += (report.failures.len() == before) as usize;
        at += 1;
    }
    for (name, args, ours) in &special_cases {
        let before = report.failures.len();
        let Some(theirs) = answers[at]["value"].as_f64() else {
            panic!("no reference value for {name}{args:?}: {}", answers[at]);
        };
        report.values += 1;
        // 1e-12 relative (tails: relative to the value itself, never 1 − value).
        if !within((ours - theirs).abs(), 1e-12 * theirs.abs() + 1e-300) {
            report.failures.push(format!(
                "{name}{args:?}: ours {ours:e}, reference {theirs:e}"
            ));
        }
        let e = report.per_category.entry("special_functions").or_default();
        e.0 += 1;
        e.1 += (report.failures.len() == before) as usize;
        at += 1;
    }

    eprintln!(
        "gbstats 0.8.0 oracle: {} values compared; {} comparisons computed by both, {} refused by both; smallest \
         p-value {:e}, largest dof {:e}",
        report.values, report.compared, report.both_refused, report.smallest_p, report.largest_dof
    );
    for (cat, (n, ok)) in &report.per_category {
        eprintln!("  {cat:<20} {ok:>4} / {n:<4} cases agree");
    }
    let total: usize = report.per_category.values().map(|(n, _)| n).sum();
    assert!(total >= 100);
    // The fixture set reaches what it claims to cover.
    assert!(report.smallest_p < 1e-30, "no case with p < 1e-30");
    assert!(
        report.largest_dof > 1e6,
        "no case with more than 1e6 degrees of freedom"
    );
    assert!(
        report.compared >= 140 && report.both_refused <= 15,
        "{} compared, {} refused",
        report.compared,
        report.both_refused
    );
    assert!(
        report.failures.is_empty(),
        "{} disagreements:\n{}",
        report.failures.len(),
        report.failures.join("\n")
    );
}
