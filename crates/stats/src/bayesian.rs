//! Bayesian analysis: the Gaussian model on the lift (gbstats 0.8.0's `EffectBayesianABTest`) and the exact
//! Beta-binomial probability that each arm of a conversion metric is the best.
//!
//! **Gaussian effect model.** The data give `Δ̂ ~ N(Δ, V)` (effect and variance as in [`crate::frequentist`]);
//! with a proper prior `Δ ~ N(m₀, v₀)` the posterior is `N((Δ̂/V + m₀/v₀)/(1/V + 1/v₀), 1/(1/V + 1/v₀))`, with a
//! flat prior `N(Δ̂, V)`. A prior given on the other scale is converted with the control mean `μ̃_A`
//! (relative → absolute: `m₀|μ̃_A|`, `v₀ μ̃_A²`). From the posterior `N(μ, σ²)`, `z = μ/σ`:
//! - chance to win `P(Δ > 0) = Φ(z)` (`P(Δ < 0)` for an inverse metric, where lower is better);
//! - credible interval `μ + σ Φ⁻¹(α/2)`, `μ + σ Φ⁻¹(1 − α/2)`;
//! - risk (expected loss) of choosing the control `E[max(Δ, 0)] = σ G(z)` and of choosing the treatment
//!   `E[max(−Δ, 0)] = σ G(−z)` with `G(z) = φ(z) + z Φ(z)`; swapped for inverse metrics. gbstats computes the
//!   same quantities through scipy's truncated normal; `G(−w)` for large `w` is evaluated as
//!   `φ(w) K(w)/(w + K(w))` with the continued fraction `K(w) = 1/(w + 2/(w + 3/(w + …)))` instead of the
//!   cancelling `φ(w) − w Φ̄(w)`.
//!
//! **Beta-binomial probability to be best.** Arm `i` with `s_i` conversions out of `n_i` has the posterior
//! `p_i ~ Beta(α₀ + s_i, β₀ + n_i − s_i)`; `P(arm j best) = ∫ f_j(x) Π_{i≠j} F_i(x) dx`, integrated numerically
//! (Gauss–Legendre panels over the support of `f_j`, refined until two successive estimates agree to 1e-12), with
//! the incomplete beta of [`crate::special`] for the `F_i`. Exact up to that tolerance for any number of arms and
//! any counts (no Monte Carlo).

use serde::{Deserialize, Serialize};

use crate::data::{pair_stats, ArmData};
use crate::error::{finite, Error};
use crate::frequentist::{effect_of, Interval, LiftType};
use crate::special::{beta_inc, ln_beta, norm_cdf, norm_pdf, norm_ppf, norm_sf};

/// A Gaussian prior on the effect.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GaussianPrior {
    pub mean: f64,
    pub variance: f64,
    /// `false`: a flat (improper) prior; mean and variance are ignored.
    pub proper: bool,
}

impl Default for GaussianPrior {
    fn default() -> Self {
        GaussianPrior {
            mean: 0.0,
            variance: 1.0,
            proper: false,
        }
    }
}

/// Settings of the Bayesian test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BayesianConfig {
    pub lift: LiftType,
    pub prior: GaussianPrior,
    /// The scale the prior is expressed on (gbstats' experiment analysis uses relative priors).
    pub prior_scale: LiftType,
    /// Lower is better (e.g. errors, latency).
    pub inverse: bool,
    /// Credible interval level `1 − α`.
    pub alpha: f64,
}

impl Default for BayesianConfig {
    fn default() -> Self {
        BayesianConfig {
            lift: LiftType::Relative,
            prior: GaussianPrior::default(),
            prior_scale: LiftType::Relative,
            inverse: false,
            alpha: 0.05,
        }
    }
}

/// The posterior of the effect and the decisions it supports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BayesianResult {
    /// Posterior mean of the effect.
    pub expected: f64,
    /// Posterior standard deviation.
    pub std_dev: f64,
    pub ci: Interval,
    /// Probability that the treatment is better than the control.
    pub chance_to_win: f64,
    /// Expected loss of shipping the control.
    pub risk_control: f64,
    /// Expected loss of shipping the treatment.
    pub risk_treatment: f64,
    /// The scale of the effect and the risks.
    pub lift: LiftType,
}

/// The Gaussian-effect Bayesian test of `treatment` against `control`.
pub fn bayesian_test(
    control: &ArmData,
    treatment: &ArmData,
    config: &BayesianConfig,
) -> Result<BayesianResult, Error> {
    if !(config.alpha > 0.0 && config.alpha < 1.0) {
        return Err(Error::invalid(
            "alpha",
            format!("{} is not in (0, 1)", config.alpha),
        ));
    }
    let prior = config.prior;
    if prior.proper
        && !(prior.variance > 0.0 && prior.variance.is_finite() && prior.mean.is_finite())
    {
        return Err(Error::invalid(
            "prior",
            "a proper prior needs a finite mean and a positive variance",
        ));
    }
    let (a, b) = pair_stats(control, treatment)?;
    let e = effect_of(&a, &b, config.lift)?;
    // Rescale the prior to the lift's scale.
    let ma = a.unadjusted_mean;
    let (m0, v0) = match (config.lift, config.prior_scale) {
        (LiftType::Relative, LiftType::Absolute) => {
            (prior.mean / ma.abs(), prior.variance / (ma * ma))
        }
        (LiftType::Absolute, LiftType::Relative) => {
            (prior.mean * ma.abs(), prior.variance * ma * ma)
        }
        _ => (prior.mean, prior.variance),
    };
    let (mean, var) = if prior.proper {
        if !(v0 > 0.0 && v0.is_finite()) {
            return Err(Error::ZeroBaseline);
        }
        let precision = 1.0 / e.variance + 1.0 / v0;
        (
            (e.estimate / e.variance + m0 / v0) / precision,
            1.0 / precision,
        )
    } else {
        (e.estimate, e.variance)
    };
    let sd = var.sqrt();
    let z = mean / sd;
    let win = if config.inverse {
        norm_sf(z)
    } else {
        norm_cdf(z)
    };
    let ci = Interval {
        lower: Some(mean + sd * norm_ppf(config.alpha / 2.0)),
        upper: Some(mean - sd * norm_ppf(config.alpha / 2.0)),
    };
    let loss_control = sd * expected_positive_part(z);
    let loss_treatment = sd * expected_positive_part(-z);
    let (risk_control, risk_treatment) = if config.inverse {
        (loss_treatment, loss_control)
    } else {
        (loss_control, loss_treatment)
    };
    finite(&[
        ("expected", mean),
        ("std_dev", sd),
        ("chance_to_win", win),
        ("risk", risk_control + risk_treatment),
    ])?;
    Ok(BayesianResult {
        expected: mean,
        std_dev: sd,
        ci,
        chance_to_win: win,
        risk_control,
        risk_treatment,
        lift: config.lift,
    })
}

/// `G(z) = E[max(Z + z, 0)] = φ(z) + z Φ(z)` for a standard normal `Z`, accurate for large negative `z`.
pub fn expected_positive_part(z: f64) -> f64 {
    if z > -2.0 {
        return norm_pdf(z) + z * norm_cdf(z);
    }
    // G(−w) = φ(w) − w Φ̄(w) = φ(w) K/(w + K), K = 1/(w + 2/(w + 3/(w + …))) (modified Lentz on w + 2/(w + …)).
    let w = -z;
    let tiny = 1e-300;
    let mut f = w;
    let mut c = w;
    let mut d = 0.0;
    for k in 2..10_000 {
        let a = k as f64;
        d = w + a * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = w + a / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    let k = 1.0 / f;
    norm_pdf(w) * k / (w + k)
}

/// Beta-binomial prior for [`probability_to_be_best`]: `Beta(alpha, beta)` (1, 1 is uniform).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BetaPrior {
    pub alpha: f64,
    pub beta: f64,
}

impl Default for BetaPrior {
    fn default() -> Self {
        BetaPrior {
            alpha: 1.0,
            beta: 1.0,
        }
    }
}

/// Conversions of one arm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Conversions {
    pub conversions: f64,
    pub trials: f64,
}

/// The probability that each arm has the highest conversion rate, under independent Beta posteriors.
pub fn probability_to_be_best(arms: &[Conversions], prior: BetaPrior) -> Result<Vec<f64>, Error> {
    if arms.len() < 2 {
        return Err(Error::invalid("arms", "at least two arms are needed"));
    }
    if !(prior.alpha > 0.0 && prior.beta > 0.0 && prior.alpha.is_finite() && prior.beta.is_finite())
    {
        return Err(Error::invalid("prior", "alpha and beta must be positive"));
    }
    let mut shapes = Vec::with_capacity(arms.len());
    for (i, arm) in arms.iter().enumerate() {
        if !(arm.trials >= 0.0
            && arm.conversions >= 0.0
            && arm.conversions <= arm.trials
            && arm.trials.is_finite())
        {
            return Err(Error::invalid(
                format!("arms[{i}]"),
                format!("{} conversions of {} trials", arm.conversions, arm.trials),
            ));
        }
        shapes.push((
            prior.alpha + arm.conversions,
            prior.beta + arm.trials - arm.conversions,
        ));
    }
    let mut out = Vec::with_capacity(arms.len());
    for j in 0..shapes.len() {
        let p = best_integral(&shapes, j)?;
        out.push(p);
    }
    Ok(out)
}

/// `∫ f_j Π_{i≠j} F_i`, on `[lo, hi]`, the region where `f_j` is above 1e-40 of its peak (found from the mean
/// and standard deviation, widened until the log density there is low enough), with composite 20-point
/// Gauss–Legendre, doubling the panels until two estimates agree to 1e-12 (absolute).
fn best_integral(shapes: &[(f64, f64)], j: usize) -> Result<f64, Error> {
    let (a, b) = shapes[j];
    let ln_b = ln_beta(a, b);
    let ln_density = |x: f64| (a - 1.0) * x.ln() + (b - 1.0) * (-x).ln_1p() - ln_b;
    let mean = a / (a + b);
    let sd = (a * b / ((a + b) * (a + b) * (a + b + 1.0))).sqrt();
    let mut lo = (mean - 40.0 * sd).max(0.0);
    let mut hi = (mean + 40.0 * sd).min(1.0);
    // Skewed posteriors (few conversions): widen until the density at the ends is negligible.
    let peak = if a > 1.0 && b > 1.0 {
        ln_density((a - 1.0) / (a + b - 2.0))
    } else {
        f64::INFINITY
    };
    if peak.is_finite() {
        while lo > 0.0 && ln_density(lo) > peak - 92.0 {
            lo = (lo - 10.0 * sd).max(0.0);
        }
        while hi < 1.0 && ln_density(hi) > peak - 92.0 {
            hi = (hi + 10.0 * sd).min(1.0);
        }
    }
    let integrand = |x: f64| {
        if x <= 0.0 || x >= 1.0 {
            return 0.0;
        }
        let mut v = ln_density(x).exp();
        for (i, &(ai, bi)) in shapes.iter().enumerate() {
            if i != j && v != 0.0 {
                v *= beta_inc(ai, bi, x, 1.0 - x).0;
            }
        }
        v
    };
    let (nodes, weights) = crate::special::gauss_legendre_20();
    let composite = |panels: usize| {
        let width = (hi - lo) / panels as f64;
        let mut total = 0.0;
        for p in 0..panels {
            let mid = lo + (p as f64 + 0.5) * width;
            let half = 0.5 * width;
            let mut s = 0.0;
            for (z, w) in nodes.iter().zip(weights) {
                s += w * integrand(mid + half * z);
            }
            total += s * half;
        }
        total
    };
    // A Beta(a<1, ·) density is unbounded at 0: Gauss–Legendre never evaluates the end points, and the doubling
    // below checks that the singular panel has converged too.
    let mut panels = 8;
    let mut prev = composite(panels);
    loop {
        panels *= 2;
        let next = composite(panels);
        if (next - prev).abs() <= 1e-12 {
            finite(&[("probability", next)])?;
            return Ok(next.clamp(0.0, 1.0));
        }
        if panels >= 1 << 14 {
            return Err(Error::Numerical(format!(
                "probability to be best of arm {j} did not converge"
            )));
        }
        prev = next;
    }
}

/// The closed form for two arms with integer posterior shapes (Evan Miller):
/// `P(p_B > p_A) = Σ_{i<α_B} B(α_A + i, β_A + β_B) / ((β_B + i) B(1 + i, β_B) B(α_A, β_A))`.
pub fn two_arm_closed_form(alpha_a: f64, beta_a: f64, alpha_b: f64, beta_b: f64) -> f64 {
    let mut total = 0.0;
    let mut i = 0.0;
    while i < alpha_b {
        total += (ln_beta(alpha_a + i, beta_a + beta_b)
            - (beta_b + i).ln()
            - ln_beta(1.0 + i, beta_b)
            - ln_beta(alpha_a, beta_a))
        .exp();
        i += 1.0;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_positive_part_matches_both_forms() {
        for z in [-1.9, -2.1, -5.0, 3.0] {
            let direct = norm_pdf(z) + z * norm_cdf(z);
            let g = expected_positive_part(z);
            assert!(
                (g - direct).abs() <= 1e-13 * direct.abs().max(1e-3),
                "{z}: {g} vs {direct}"
            );
        }
        // Far tail: G(−w) ≈ φ(w)/w² (1 − 3/w² + 15/w⁴ − 105/w⁶).
        let w: f64 = 30.0;
        let r = 1.0 / (w * w);
        let asym = norm_pdf(w)
            * r
            * (1.0 - 3.0 * r + 15.0 * r * r - 105.0 * r * r * r + 945.0 * r.powi(4));
        assert!((expected_positive_part(-w) / asym - 1.0).abs() < 1e-10);
    }

    #[test]
    fn two_arm_probability_matches_the_closed_form() {
        for &(sa, na, sb, nb) in &[
            (10.0, 100.0, 14.0, 100.0),
            (3.0, 20.0, 1.0, 25.0),
            (480.0, 5000.0, 530.0, 5000.0),
            (0.0, 50.0, 2.0, 50.0),
        ] {
            let p = probability_to_be_best(
                &[
                    Conversions {
                        conversions: sa,
                        trials: na,
                    },
                    Conversions {
                        conversions: sb,
                        trials: nb,
                    },
                ],
                BetaPrior::default(),
            )
            .unwrap();
            let closed = two_arm_closed_form(1.0 + sa, 1.0 + na - sa, 1.0 + sb, 1.0 + nb - sb);
            assert!((p[1] - closed).abs() < 1e-9, "{p:?} vs {closed}");
            assert!((p[0] + p[1] - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn invalid_conversions_are_errors() {
        let bad = [
            Conversions {
                conversions: 5.0,
                trials: 3.0,
            },
            Conversions {
                conversions: 1.0,
                trials: 3.0,
            },
        ];
        assert!(probability_to_be_best(&bad, BetaPrior::default()).is_err());
        let one = [Conversions {
            conversions: 1.0,
            trials: 3.0,
        }];
        assert!(probability_to_be_best(&one, BetaPrior::default()).is_err());
    }
}
