//! Frequentist tests of a treatment against the control: Welch's t-test (two- or one-sided) and the sequential
//! normal-mixture mSPRT (always-valid p-values and confidence sequences).
//!
//! The effect and its variance follow gbstats 0.8.0 (`frequentist_diff`, `frequentist_variance`):
//! - absolute: `Δ = μ_B − μ_A`, `Var = σ²_B/n_B + σ²_A/n_A`;
//! - relative: `Δ = (μ_B − μ_A) / μ̃_A` (μ̃: the unadjusted control mean), with the delta-method variance
//!   `σ²_B/(μ̃_A² n_B) + σ²_A μ̃_B²/(μ̃_A⁴ n_A)`.
//!
//! Welch–Satterthwaite degrees of freedom use the per-unit variances whatever the lift:
//! `ν = (σ²_B/n_B + σ²_A/n_A)² / (σ⁴_B/(n_B²(n_B−1)) + σ⁴_A/(n_A²(n_A−1)))`.
//!
//! p-values come from the t survival function (gbstats computes `2 (1 − cdf)`, which is 0 below ≈ 1e-16; ours
//! keeps the digits down to 1e-300).

use serde::{Deserialize, Serialize};

use crate::data::{pair_stats, ArmData, Stat};
use crate::error::{finite, Error};
use crate::special::{t_isf, t_sf};

/// Absolute difference of means or relative lift over the control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LiftType {
    Absolute,
    #[default]
    Relative,
}

/// The alternative hypothesis of a fixed-horizon test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Alternative {
    #[default]
    TwoSided,
    /// The treatment is greater than the control (gbstats' `OneSidedTreatmentGreaterTTest`).
    Greater,
    /// The treatment is less than the control.
    Less,
}

/// An interval; `None` is an unbounded side (one-sided tests), so results serialise to plain JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

/// Settings of the fixed-horizon t-test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TTestConfig {
    pub alpha: f64,
    pub lift: LiftType,
    pub alternative: Alternative,
}

impl Default for TTestConfig {
    fn default() -> Self {
        TTestConfig {
            alpha: 0.05,
            lift: LiftType::Relative,
            alternative: Alternative::TwoSided,
        }
    }
}

/// A fixed-horizon test's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TTestResult {
    /// Estimated effect (absolute difference or relative lift).
    pub estimate: f64,
    /// Its standard error.
    pub std_error: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub dof: f64,
    /// `(estimate − 0) / std_error`.
    pub t_statistic: f64,
    pub ci: Interval,
    pub p_value: f64,
}

/// Settings of the sequential test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialConfig {
    pub alpha: f64,
    pub lift: LiftType,
    /// The total sample size (both arms) at which the confidence sequence is tightest: gbstats'
    /// `sequential_tuning_parameter`, default 5,000.
    pub tuning: f64,
}

impl Default for SequentialConfig {
    fn default() -> Self {
        SequentialConfig {
            alpha: 0.05,
            lift: LiftType::Relative,
            tuning: 5000.0,
        }
    }
}

/// A sequential test's result: valid at every look.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialResult {
    pub estimate: f64,
    pub std_error: f64,
    /// The confidence sequence at this look.
    pub ci: Interval,
    /// The always-valid p-value `min(1, 1/e-value)`.
    pub p_value: f64,
}

/// The effect of B over A, its variance and Welch's degrees of freedom, with gbstats' validity checks.
pub(crate) struct Effect {
    pub estimate: f64,
    pub variance: f64,
    pub dof: f64,
    pub n_total: f64,
}

pub(crate) fn check_arms(a: &Stat, b: &Stat, lift: LiftType) -> Result<(), Error> {
    for (arm, s) in [(0, a), (1, b)] {
        if s.n < 2.0 {
            return Err(Error::TooFewUnits { arm, n: s.n as u64 });
        }
    }
    if lift == LiftType::Relative && (a.mean == 0.0 || a.unadjusted_mean == 0.0) {
        return Err(Error::ZeroBaseline);
    }
    for (arm, s) in [(0, a), (1, b)] {
        if s.zero_variance {
            return Err(Error::ZeroVariance { arm });
        }
    }
    Ok(())
}

pub(crate) fn effect_of(a: &Stat, b: &Stat, lift: LiftType) -> Result<Effect, Error> {
    check_arms(a, b, lift)?;
    let (estimate, variance) = match lift {
        LiftType::Absolute => (b.mean - a.mean, b.variance / b.n + a.variance / a.n),
        LiftType::Relative => {
            let ma = a.unadjusted_mean;
            let mb = b.unadjusted_mean;
            (
                (b.mean - a.mean) / ma,
                b.variance / (ma * ma * b.n) + a.variance * mb * mb / (ma * ma * ma * ma * a.n),
            )
        }
    };
    let va = a.variance / a.n;
    let vb = b.variance / b.n;
    let dof = (vb + va).powi(2) / (vb * vb / (b.n - 1.0) + va * va / (a.n - 1.0));
    finite(&[("estimate", estimate), ("variance", variance), ("dof", dof)])?;
    if variance <= 0.0 {
        return Err(Error::ZeroVariance { arm: 1 });
    }
    Ok(Effect {
        estimate,
        variance,
        dof,
        n_total: a.n + b.n,
    })
}

fn check_alpha(alpha: f64) -> Result<(), Error> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(Error::invalid("alpha", format!("{alpha} is not in (0, 1)")))
    }
}

/// Welch's t-test of `treatment` against `control`.
pub fn t_test(
    control: &ArmData,
    treatment: &ArmData,
    config: &TTestConfig,
) -> Result<TTestResult, Error> {
    check_alpha(config.alpha)?;
    let (a, b) = pair_stats(control, treatment)?;
    t_test_stats(&a, &b, config)
}

pub(crate) fn t_test_stats(a: &Stat, b: &Stat, config: &TTestConfig) -> Result<TTestResult, Error> {
    let e = effect_of(a, b, config.lift)?;
    let se = e.variance.sqrt();
    let t = e.estimate / se;
    let (ci, p_value) = match config.alternative {
        Alternative::TwoSided => {
            let w = t_isf(config.alpha / 2.0, e.dof) * se;
            (
                Interval {
                    lower: Some(e.estimate - w),
                    upper: Some(e.estimate + w),
                },
                (2.0 * t_sf(t.abs(), e.dof)).min(1.0),
            )
        }
        Alternative::Greater => {
            let w = t_isf(config.alpha, e.dof) * se;
            (
                Interval {
                    lower: Some(e.estimate - w),
                    upper: None,
                },
                t_sf(t, e.dof),
            )
        }
        Alternative::Less => {
            let w = t_isf(config.alpha, e.dof) * se;
            (
                Interval {
                    lower: None,
                    upper: Some(e.estimate + w),
                },
                t_sf(-t, e.dof),
            )
        }
    };
    finite(&[
        ("p_value", p_value),
        ("ci.lower", ci.lower.unwrap_or(0.0)),
        ("ci.upper", ci.upper.unwrap_or(0.0)),
    ])?;
    Ok(TTestResult {
        estimate: e.estimate,
        std_error: se,
        dof: e.dof,
        t_statistic: t,
        ci,
        p_value,
    })
}

/// The mixing parameter `ρ` of the normal-mixture mSPRT tuned so that the confidence sequence is tightest at
/// `tuning` total units (Waudby-Smith et al. 2023, eq. 161; gbstats' `SequentialTwoSidedTTest.rho`):
/// `ρ² = (−2 ln α + ln(−2 ln α + 1)) / tuning`.
pub fn sequential_rho(alpha: f64, tuning: f64) -> f64 {
    let l = -2.0 * alpha.ln();
    ((l + (l + 1.0).ln()) / tuning).sqrt()
}

/// The sequential two-sided test (normal-mixture mSPRT) of `treatment` against `control`, valid however often
/// it is looked at.
///
/// With `N = n_A + n_B`, `s² = Var(Δ) N` and `ρ` from [`sequential_rho`]:
/// - confidence sequence `Δ ± s √(2 (Nρ² + 1) ln(√(Nρ² + 1)/α) / (N² ρ²))` (Waudby-Smith et al. eq. 9);
/// - always-valid p-value `min(1, 1/E)` with `ln E = ρ² N Δ² / (2 s² (Nρ² + 1)) − ½ ln(Nρ² + 1)` (eq. 155).
///
/// gbstats computes `E` by `exp`, which overflows to a p-value of exactly 0 when `ln E > 709`; here the p-value
/// is `exp(−ln E)` and keeps its digits.
pub fn sequential_test(
    control: &ArmData,
    treatment: &ArmData,
    config: &SequentialConfig,
) -> Result<SequentialResult, Error> {
    check_alpha(config.alpha)?;
    if !(config.tuning > 0.0 && config.tuning.is_finite()) {
        return Err(Error::invalid(
            "tuning",
            format!("{} is not a positive sample size", config.tuning),
        ));
    }
    let (a, b) = pair_stats(control, treatment)?;
    sequential_stats(&a, &b, config)
}

pub(crate) fn sequential_stats(
    a: &Stat,
    b: &Stat,
    config: &SequentialConfig,
) -> Result<SequentialResult, Error> {
    let e = effect_of(a, b, config.lift)?;
    let n = e.n_total;
    let rho = sequential_rho(config.alpha, config.tuning);
    let rho2 = rho * rho;
    let s2 = e.variance * n;
    let nr = n * rho2 + 1.0;
    let width = s2.sqrt() * (2.0 * nr * (nr.sqrt() / config.alpha).ln() / (n * rho).powi(2)).sqrt();
    let st2 = e.estimate * e.estimate * n / e.variance;
    let ln_e = rho2 * st2 / (2.0 * nr) - 0.5 * nr.ln();
    let p_value = (-ln_e).exp().min(1.0);
    finite(&[("width", width), ("p_value", p_value)])?;
    Ok(SequentialResult {
        estimate: e.estimate,
        std_error: e.variance.sqrt(),
        ci: Interval {
            lower: Some(e.estimate - width),
            upper: Some(e.estimate + width),
        },
        p_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_baseline_and_tiny_arms_are_errors() {
        let a = ArmData::Mean {
            n: 100,
            sum: 0.0,
            sum_squares: 0.0,
        };
        let b = ArmData::Mean {
            n: 100,
            sum: 10.0,
            sum_squares: 30.0,
        };
        assert_eq!(
            t_test(&a, &b, &TTestConfig::default()).unwrap_err(),
            Error::ZeroBaseline
        );
        let abs = TTestConfig {
            lift: LiftType::Absolute,
            ..Default::default()
        };
        assert_eq!(
            t_test(&a, &b, &abs).unwrap_err(),
            Error::ZeroVariance { arm: 0 }
        );
        let one = ArmData::Mean {
            n: 1,
            sum: 1.0,
            sum_squares: 1.0,
        };
        assert_eq!(t_test(&one, &b, &abs).unwrap_err().code(), "too_few_units");
        let bad_alpha = TTestConfig {
            alpha: 1.5,
            ..Default::default()
        };
        assert_eq!(
            t_test(&b, &b, &bad_alpha).unwrap_err().code(),
            "invalid_input"
        );
    }

    #[test]
    fn huge_effects_keep_tiny_p_values() {
        let a = ArmData::Proportion {
            n: 100_000,
            sum: 10_000.0,
        };
        let b = ArmData::Proportion {
            n: 100_000,
            sum: 11_500.0,
        };
        let r = t_test(&a, &b, &TTestConfig::default()).unwrap();
        assert!(r.p_value > 0.0 && r.p_value < 1e-20, "{}", r.p_value);
        let s = sequential_test(&a, &b, &SequentialConfig::default()).unwrap();
        assert!(s.p_value > r.p_value && s.p_value < 1e-10);
        // The confidence sequence is wider than the fixed-horizon interval.
        assert!(
            s.ci.lower.unwrap() < r.ci.lower.unwrap() && s.ci.upper.unwrap() > r.ci.upper.unwrap()
        );
    }

    #[test]
    fn one_sided_p_values_split_the_two_sided_one() {
        let a = ArmData::Mean {
            n: 50,
            sum: 100.0,
            sum_squares: 260.0,
        };
        let b = ArmData::Mean {
            n: 60,
            sum: 130.0,
            sum_squares: 330.0,
        };
        let two = t_test(&a, &b, &TTestConfig::default()).unwrap();
        let g = t_test(
            &a,
            &b,
            &TTestConfig {
                alternative: Alternative::Greater,
                ..Default::default()
            },
        )
        .unwrap();
        let l = t_test(
            &a,
            &b,
            &TTestConfig {
                alternative: Alternative::Less,
                ..Default::default()
            },
        )
        .unwrap();
        assert!((g.p_value + l.p_value - 1.0).abs() < 1e-14);
        assert!((two.p_value - 2.0 * g.p_value.min(l.p_value)).abs() < 1e-14);
        assert!(g.ci.upper.is_none() && l.ci.lower.is_none());
        assert!(l.ci.upper.unwrap() > l.estimate && g.ci.lower.unwrap() < g.estimate);
    }
}
