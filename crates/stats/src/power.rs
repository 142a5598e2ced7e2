//! Planning: sample size, power and minimum detectable effect of a two-sided Welch test (normal approximation).
//!
//! gbstats 0.8.0 has no power module, so the formulas are documented here and checked by round trips. For a
//! control with per-unit mean `μ` and variance `σ²_A`, a treatment variance `σ²_B` (default: the same), `n` units
//! per arm and a true effect `δ` (absolute, or `δ_rel |μ|` for a relative lift), the estimate has standard error
//! `s(n) = √((σ²_A + σ²_B)/n)` and the two-sided level-α test rejects with probability
//!
//! `power(n, δ) = Φ(δ/s − z_{1−α/2}) + Φ(−δ/s − z_{1−α/2})`.
//!
//! [`sample_size`] and [`minimum_detectable_effect`] solve `power = target` for `n` and `δ` exactly (Newton on
//! the formula above, started from the classic `n = (z_{1−α/2} + z_{power})² (σ²_A + σ²_B)/δ²`), so that
//! `power(sample_size(δ)) = target` to rounding. For relative lifts the delta-method variance of the ratio is
//! ignored (as in most calculators); `k` treatment arms tested against one control can be planned with
//! `α / k` (Bonferroni).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::frequentist::LiftType;
use crate::special::{norm_cdf, norm_pdf, norm_ppf};

/// The metric and test being planned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerInput {
    /// Per-unit mean of the control (needed for relative effects).
    pub mean: f64,
    /// Per-unit variance of the control.
    pub variance: f64,
    /// Per-unit variance of the treatment (`None`: the control's).
    pub treatment_variance: Option<f64>,
    pub alpha: f64,
    pub lift: LiftType,
}

impl PowerInput {
    fn validate(&self) -> Result<(), Error> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(Error::invalid(
                "alpha",
                format!("{} is not in (0, 1)", self.alpha),
            ));
        }
        if !(self.variance > 0.0 && self.variance.is_finite()) {
            return Err(Error::invalid("variance", "must be positive"));
        }
        if let Some(v) = self.treatment_variance {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::invalid("treatment_variance", "must be positive"));
            }
        }
        if self.lift == LiftType::Relative && !(self.mean != 0.0 && self.mean.is_finite()) {
            return Err(Error::ZeroBaseline);
        }
        Ok(())
    }

    fn total_variance(&self) -> f64 {
        self.variance + self.treatment_variance.unwrap_or(self.variance)
    }

    /// The effect on the absolute scale.
    fn absolute(&self, effect: f64) -> f64 {
        match self.lift {
            LiftType::Absolute => effect,
            LiftType::Relative => effect * self.mean.abs(),
        }
    }
}

fn check_power(power: f64) -> Result<(), Error> {
    if power > 0.0 && power < 1.0 {
        Ok(())
    } else {
        Err(Error::invalid("power", format!("{power} is not in (0, 1)")))
    }
}

/// Probability of rejecting with `n` units per arm when the true effect is `effect` (on the input's lift scale).
pub fn power(input: &PowerInput, n_per_arm: f64, effect: f64) -> Result<f64, Error> {
    input.validate()?;
    if !(n_per_arm > 0.0 && n_per_arm.is_finite()) {
        return Err(Error::invalid("n_per_arm", "must be positive"));
    }
    Ok(power_at(input, n_per_arm, input.absolute(effect).abs()))
}

fn power_at(input: &PowerInput, n: f64, delta: f64) -> f64 {
    let z = norm_ppf(1.0 - input.alpha / 2.0);
    let s = (input.total_variance() / n).sqrt();
    norm_cdf(delta / s - z) + norm_cdf(-delta / s - z)
}

/// d power / d (δ/s).
fn power_slope(input: &PowerInput, x: f64) -> f64 {
    let z = norm_ppf(1.0 - input.alpha / 2.0);
    norm_pdf(x - z) - norm_pdf(-x - z)
}

/// Solves `power(x) = target` for `x = δ/s` (monotone increasing in `x ≥ 0`).
fn solve_ratio(input: &PowerInput, target: f64) -> Result<f64, Error> {
    let z = norm_ppf(1.0 - input.alpha / 2.0);
    if target <= input.alpha {
        return Err(Error::invalid(
            "power",
            format!(
                "{target} is not above alpha = {}: any sample has it",
                input.alpha
            ),
        ));
    }
    let mut x = z + norm_ppf(target);
    for _ in 0..100 {
        let f = norm_cdf(x - z) + norm_cdf(-x - z) - target;
        let step = f / power_slope(input, x);
        x -= step;
        if step.abs() <= 1e-15 * x.abs() {
            break;
        }
    }
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(Error::Numerical("power equation".into()))
    }
}

/// Units per arm needed to detect `effect` (on the input's lift scale) with probability `target_power`.
pub fn sample_size(input: &PowerInput, effect: f64, target_power: f64) -> Result<f64, Error> {
    input.validate()?;
    check_power(target_power)?;
    let delta = input.absolute(effect).abs();
    if !(delta > 0.0 && delta.is_finite()) {
        return Err(Error::invalid("effect", "must be non-zero"));
    }
    let x = solve_ratio(input, target_power)?;
    // δ/s = x  ⇔  n = x² (σ²_A + σ²_B) / δ²
    Ok(x * x * input.total_variance() / (delta * delta))
}

/// The smallest effect (on the input's lift scale, positive) detected with probability `target_power` with
/// `n_per_arm` units per arm.
pub fn minimum_detectable_effect(
    input: &PowerInput,
    n_per_arm: f64,
    target_power: f64,
) -> Result<f64, Error> {
    input.validate()?;
    check_power(target_power)?;
    if !(n_per_arm > 0.0 && n_per_arm.is_finite()) {
        return Err(Error::invalid("n_per_arm", "must be positive"));
    }
    let x = solve_ratio(input, target_power)?;
    let delta = x * (input.total_variance() / n_per_arm).sqrt();
    Ok(match input.lift {
        LiftType::Absolute => delta,
        LiftType::Relative => delta / input.mean.abs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for lift in [LiftType::Absolute, LiftType::Relative] {
            for &(alpha, target, effect) in &[
                (0.05, 0.8, 0.02),
                (0.01, 0.9, 0.1),
                (0.1, 0.5, 0.001),
                (0.05, 0.06, 0.3),
            ] {
                let input = PowerInput {
                    mean: 0.3,
                    variance: 0.21,
                    treatment_variance: None,
                    alpha,
                    lift,
                };
                let n = sample_size(&input, effect, target).unwrap();
                let p = power(&input, n, effect).unwrap();
                assert!((p - target).abs() < 1e-12, "{lift:?} {alpha} {target}: {p}");
                let mde = minimum_detectable_effect(&input, n, target).unwrap();
                assert!((mde - effect).abs() < 1e-12 * effect, "{mde} vs {effect}");
                // More units, more power.
                assert!(power(&input, 2.0 * n, effect).unwrap() > target);
            }
        }
        // The classic rule of thumb: 80% power at α = 0.05 needs ≈ 15.7 σ²/δ² per arm (2 (1.96 + 0.84)²).
        let input = PowerInput {
            mean: 1.0,
            variance: 1.0,
            treatment_variance: None,
            alpha: 0.05,
            lift: LiftType::Absolute,
        };
        let n = sample_size(&input, 0.1, 0.8).unwrap();
        assert!((n - 1569.8).abs() < 1.0, "{n}");
        assert!(sample_size(&input, 0.0, 0.8).is_err());
        assert!(sample_size(&input, 0.1, 0.01).is_err());
    }
}
