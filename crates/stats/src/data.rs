//! Per-arm inputs (sufficient statistics) and the per-unit mean and variance each kind of metric implies.
//!
//! Conventions follow gbstats 0.8.0 (`gbstats/models/statistics.py`) exactly, since the results must agree with
//! it to 1e-9:
//! - a proportion's variance is the population `p (1 − p)`; a mean's is the sample variance
//!   `(Σx² − (Σx)²/n) / (n − 1)`;
//! - covariances are `(Σxy − Σx Σy / n) / (n − 1)`;
//! - a ratio `ΣM / ΣD` has the delta-method variance per unit
//!   `σ²_M/μ_D² − 2 σ_MD μ_M/μ_D³ + μ_M² σ²_D/μ_D⁴` (`RatioStatistic`);
//! - CUPED: `Y − θ X` with `θ` estimated on both arms pooled (`compute_theta`), adjusted mean
//!   `μ_Y − θ μ_X`, variance `σ²_Y + θ² σ²_X − 2 θ σ_XY` (`RegressionAdjustedStatistic`); relative lifts divide by
//!   the *unadjusted* baseline mean;
//! - quantiles carry their own interval (from the order statistics, see [`crate::sample`]) and the variance
//!   `(n*/n) (n − 1) ((upper − lower) / (2 z₀.₉₇₅))²` with a floor of 1e-5 from n = 100 (`QuantileStatistic`).
//!
//! CUPED for ratio metrics (not in gbstats 0.8.0) is the same construction on the delta-method linearisation:
//! `R − θ R_pre` with `R = ΣM/ΣD`, `R_pre = ΣM_pre/ΣD_pre`, the 4×4 covariance of `(M, D, M_pre, D_pre)` and the
//! gradients of the two ratios; `θ = Cov(R, R_pre) / Var(R_pre)` on both arms pooled. With `D = D_pre = 1` it is
//! exactly gbstats' CUPED (tested).

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// One variable's sums over the units of an arm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Moments {
    /// A 0/1 variable: `sum` units converted (its sum of squares is `sum`).
    Proportion { sum: f64 },
    /// A numeric variable: Σx and Σx².
    Mean { sum: f64, sum_squares: f64 },
}

impl Moments {
    pub fn sum(&self) -> f64 {
        match *self {
            Moments::Proportion { sum } | Moments::Mean { sum, .. } => sum,
        }
    }

    pub fn sum_squares(&self) -> f64 {
        match *self {
            Moments::Proportion { sum } => sum,
            Moments::Mean { sum_squares, .. } => sum_squares,
        }
    }

    /// Per-unit mean (0 when `n = 0`, as gbstats).
    pub fn mean(&self, n: f64) -> f64 {
        if n == 0.0 {
            0.0
        } else {
            self.sum() / n
        }
    }

    /// Per-unit variance: `p (1 − p)` for a proportion, the sample variance for a mean (0 when `n ≤ 1`).
    pub fn variance(&self, n: f64) -> f64 {
        match *self {
            Moments::Proportion { .. } => {
                let p = self.mean(n);
                p * (1.0 - p)
            }
            Moments::Mean { sum, sum_squares } => {
                if n <= 1.0 {
                    0.0
                } else {
                    (sum_squares - sum * sum / n) / (n - 1.0)
                }
            }
        }
    }

    fn validate(&self, field: &str, n: f64) -> Result<(), Error> {
        match *self {
            Moments::Proportion { sum } => {
                if !sum.is_finite() || sum < 0.0 || sum > n {
                    return Err(Error::invalid(
                        format!("{field}.sum"),
                        format!("{sum} is not in [0, n = {n}]"),
                    ));
                }
            }
            Moments::Mean { sum, sum_squares } => {
                if !sum.is_finite() || !sum_squares.is_finite() {
                    return Err(Error::invalid(field, "sums must be finite"));
                }
                if sum_squares < 0.0 {
                    return Err(Error::invalid(format!("{field}.sum_squares"), "negative"));
                }
                // Cauchy–Schwarz: (Σx)² ≤ n Σx², up to rounding.
                if n > 0.0 && sum * sum > n * sum_squares * (1.0 + 1e-9) + 1e-300 {
                    return Err(Error::invalid(
                        format!("{field}.sum_squares"),
                        format!(
                            "{sum_squares} is below sum²/n = {}: inconsistent sums",
                            sum * sum / n
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn same_kind(&self, other: &Moments) -> bool {
        matches!(
            (self, other),
            (Moments::Proportion { .. }, Moments::Proportion { .. })
                | (Moments::Mean { .. }, Moments::Mean { .. })
        )
    }

    fn add(&self, other: &Moments) -> Moments {
        match (*self, *other) {
            (Moments::Proportion { sum: a }, Moments::Proportion { sum: b }) => {
                Moments::Proportion { sum: a + b }
            }
            _ => Moments::Mean {
                sum: self.sum() + other.sum(),
                sum_squares: self.sum_squares() + other.sum_squares(),
            },
        }
    }
}

/// Σ of products for CUPED on a ratio metric: the six pairs of (numerator, denominator, pre-numerator,
/// pre-denominator).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatioCrossSums {
    pub numerator_denominator: f64,
    pub numerator_pre_numerator: f64,
    pub numerator_pre_denominator: f64,
    pub denominator_pre_numerator: f64,
    pub denominator_pre_denominator: f64,
    pub pre_numerator_pre_denominator: f64,
}

impl RatioCrossSums {
    fn add(&self, o: &RatioCrossSums) -> RatioCrossSums {
        RatioCrossSums {
            numerator_denominator: self.numerator_denominator + o.numerator_denominator,
            numerator_pre_numerator: self.numerator_pre_numerator + o.numerator_pre_numerator,
            numerator_pre_denominator: self.numerator_pre_denominator + o.numerator_pre_denominator,
            denominator_pre_numerator: self.denominator_pre_numerator + o.denominator_pre_numerator,
            denominator_pre_denominator: self.denominator_pre_denominator
                + o.denominator_pre_denominator,
            pre_numerator_pre_denominator: self.pre_numerator_pre_denominator
                + o.pre_numerator_pre_denominator,
        }
    }
}

/// The sufficient statistics of one arm for one metric. `n` is the number of units (users) in the arm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ArmData {
    /// Conversion: `sum` of `n` units converted.
    Proportion { n: u64, sum: f64 },
    /// A mean per unit (count, sum, duration…): Σx and Σx² over the `n` units.
    Mean { n: u64, sum: f64, sum_squares: f64 },
    /// A ratio of sums `ΣM / ΣD` over units (e.g. revenue per order), with `cross_sum = Σ M·D`.
    Ratio {
        n: u64,
        numerator: Moments,
        denominator: Moments,
        cross_sum: f64,
    },
    /// CUPED: the metric `post` and its pre-exposure covariate `pre`, `cross_sum = Σ post·pre`.
    Cuped {
        n: u64,
        post: Moments,
        pre: Moments,
        cross_sum: f64,
    },
    /// CUPED on a ratio metric: the ratio now and the same ratio before exposure.
    CupedRatio {
        n: u64,
        numerator: Moments,
        denominator: Moments,
        pre_numerator: Moments,
        pre_denominator: Moments,
        cross: RatioCrossSums,
    },
    /// A quantile (`level` = 0.5, 0.9, 0.99…) with its interval from the data (see
    /// [`crate::sample::quantile_from_sample`]); `n` observations, `n_star` the sample size the interval used.
    Quantile {
        n: u64,
        n_star: u64,
        level: f64,
        estimate: f64,
        lower: f64,
        upper: f64,
    },
}

/// What a test needs of an arm: per-unit mean (CUPED-adjusted), the unadjusted mean (baseline of relative lifts),
/// the per-unit variance and the number of units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stat {
    pub n: f64,
    pub mean: f64,
    pub unadjusted_mean: f64,
    pub variance: f64,
    /// gbstats' `_has_zero_variance` (for quantiles: also too few observations for the interval).
    pub zero_variance: bool,
}

impl ArmData {
    /// Number of units.
    pub fn n(&self) -> u64 {
        match *self {
            ArmData::Proportion { n, .. }
            | ArmData::Mean { n, .. }
            | ArmData::Ratio { n, .. }
            | ArmData::Cuped { n, .. }
            | ArmData::CupedRatio { n, .. }
            | ArmData::Quantile { n, .. } => n,
        }
    }

    /// The unadjusted per-unit value of the metric (conversion rate, mean, ratio, quantile).
    pub fn value(&self) -> f64 {
        let n = self.n() as f64;
        match *self {
            ArmData::Proportion { sum, .. } | ArmData::Mean { sum, .. } => {
                if n == 0.0 {
                    0.0
                } else {
                    sum / n
                }
            }
            ArmData::Ratio {
                numerator,
                denominator,
                ..
            }
            | ArmData::CupedRatio {
                numerator,
                denominator,
                ..
            } => ratio(numerator.sum(), denominator.sum()),
            ArmData::Cuped { post, .. } => post.mean(n),
            ArmData::Quantile { estimate, .. } => estimate,
        }
    }

    /// Checks the sums for consistency (finite, proportions within `[0, n]`, `Σx² ≥ (Σx)²/n`).
    pub fn validate(&self, arm: usize) -> Result<(), Error> {
        let n = self.n() as f64;
        let field = |f: &str| format!("arms[{arm}].{f}");
        let finite = |name: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(Error::invalid(field(name), format!("{v} is not finite")))
            }
        };
        match self {
            ArmData::Proportion { sum, .. } => {
                Moments::Proportion { sum: *sum }.validate(&field("sum"), n)
            }
            ArmData::Mean {
                sum, sum_squares, ..
            } => Moments::Mean {
                sum: *sum,
                sum_squares: *sum_squares,
            }
            .validate(&field("mean"), n),
            ArmData::Ratio {
                numerator,
                denominator,
                cross_sum,
                ..
            } => {
                numerator.validate(&field("numerator"), n)?;
                denominator.validate(&field("denominator"), n)?;
                finite("cross_sum", *cross_sum)
            }
            ArmData::Cuped {
                post,
                pre,
                cross_sum,
                ..
            } => {
                post.validate(&field("post"), n)?;
                pre.validate(&field("pre"), n)?;
                finite("cross_sum", *cross_sum)
            }
            ArmData::CupedRatio {
                numerator,
                denominator,
                pre_numerator,
                pre_denominator,
                cross,
                ..
            } => {
                numerator.validate(&field("numerator"), n)?;
                denominator.validate(&field("denominator"), n)?;
                pre_numerator.validate(&field("pre_numerator"), n)?;
                pre_denominator.validate(&field("pre_denominator"), n)?;
                for (name, v) in [
                    ("numerator_denominator", cross.numerator_denominator),
                    ("numerator_pre_numerator", cross.numerator_pre_numerator),
                    ("numerator_pre_denominator", cross.numerator_pre_denominator),
                    ("denominator_pre_numerator", cross.denominator_pre_numerator),
                    (
                        "denominator_pre_denominator",
                        cross.denominator_pre_denominator,
                    ),
                    (
                        "pre_numerator_pre_denominator",
                        cross.pre_numerator_pre_denominator,
                    ),
                ] {
                    finite(&format!("cross.{name}"), v)?;
                }
                Ok(())
            }
            ArmData::Quantile {
                n_star,
                level,
                estimate,
                lower,
                upper,
                ..
            } => {
                if !(*level > 0.0 && *level < 1.0) {
                    return Err(Error::invalid(
                        field("level"),
                        format!("{level} is not in (0, 1)"),
                    ));
                }
                finite("estimate", *estimate)?;
                finite("lower", *lower)?;
                finite("upper", *upper)?;
                if lower > upper {
                    return Err(Error::invalid(field("lower"), "above upper"));
                }
                if *n_star == 0 && self.n() > 0 {
                    return Err(Error::invalid(field("n_star"), "zero"));
                }
                Ok(())
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ArmData::Proportion { .. } => "proportion",
            ArmData::Mean { .. } => "mean",
            ArmData::Ratio { .. } => "ratio",
            ArmData::Cuped { .. } => "cuped",
            ArmData::CupedRatio { .. } => "cuped_ratio",
            ArmData::Quantile { .. } => "quantile",
        }
    }
}

fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

fn covariance(n: f64, cross: f64, sum_x: f64, sum_y: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else {
        (cross - sum_x * sum_y / n) / (n - 1.0)
    }
}

/// z₀.₉₇₅, the multiplier gbstats' quantile statistic uses whatever α is.
fn z975() -> f64 {
    crate::special::norm_ppf(0.975)
}

/// Delta-method pieces of CUPED on a ratio metric for one arm (or the pooled arms): the two ratios, their
/// variances and covariance (per unit).
struct RatioPair {
    post: f64,
    pre: f64,
    var_post: f64,
    var_pre: f64,
    cov: f64,
}

#[allow(clippy::too_many_arguments)]
fn ratio_pair(
    n: f64,
    m: &Moments,
    d: &Moments,
    mp: &Moments,
    dp: &Moments,
    c: &RatioCrossSums,
) -> RatioPair {
    let (mu_m, mu_d, mu_mp, mu_dp) = (m.mean(n), d.mean(n), mp.mean(n), dp.mean(n));
    // Covariance matrix of (M, D, Mp, Dp) per unit.
    let v = [m.variance(n), d.variance(n), mp.variance(n), dp.variance(n)];
    let cov = |cross: f64, a: &Moments, b: &Moments| covariance(n, cross, a.sum(), b.sum());
    let c_md = cov(c.numerator_denominator, m, d);
    let c_mmp = cov(c.numerator_pre_numerator, m, mp);
    let c_mdp = cov(c.numerator_pre_denominator, m, dp);
    let c_dmp = cov(c.denominator_pre_numerator, d, mp);
    let c_ddp = cov(c.denominator_pre_denominator, d, dp);
    let c_mpdp = cov(c.pre_numerator_pre_denominator, mp, dp);
    if mu_d == 0.0 || mu_dp == 0.0 || n <= 1.0 {
        return RatioPair {
            post: ratio(m.sum(), d.sum()),
            pre: ratio(mp.sum(), dp.sum()),
            var_post: 0.0,
            var_pre: 0.0,
            cov: 0.0,
        };
    }
    // Gradients of M/D and Mp/Dp.
    let (g1, g2) = (1.0 / mu_d, -mu_m / (mu_d * mu_d));
    let (h1, h2) = (1.0 / mu_dp, -mu_mp / (mu_dp * mu_dp));
    let var_post = g1 * g1 * v[0] + 2.0 * g1 * g2 * c_md + g2 * g2 * v[1];
    let var_pre = h1 * h1 * v[2] + 2.0 * h1 * h2 * c_mpdp + h2 * h2 * v[3];
    let cov = g1 * h1 * c_mmp + g1 * h2 * c_mdp + g2 * h1 * c_dmp + g2 * h2 * c_ddp;
    RatioPair {
        post: ratio(m.sum(), d.sum()),
        pre: ratio(mp.sum(), dp.sum()),
        var_post,
        var_pre,
        cov,
    }
}

/// Per-unit statistics of a control/treatment pair: the same as each arm alone, except CUPED, whose `θ` comes
/// from both arms pooled (as gbstats' `compute_theta` for each treatment against the control).
pub(crate) fn pair_stats(a: &ArmData, b: &ArmData) -> Result<(Stat, Stat), Error> {
    a.validate(0)?;
    b.validate(1)?;
    if a.kind() != b.kind() {
        return Err(Error::MismatchedArms {
            arm: 1,
            reason: format!("{} data compared with {} data", b.kind(), a.kind()),
        });
    }
    let stats = match (a, b) {
        (
            ArmData::Cuped {
                n: na,
                post: pa,
                pre: qa,
                cross_sum: ca,
            },
            ArmData::Cuped {
                n: nb,
                post: pb,
                pre: qb,
                cross_sum: cb,
            },
        ) => {
            if !pa.same_kind(pb) || !qa.same_kind(qb) {
                return Err(Error::MismatchedArms {
                    arm: 1,
                    reason: "component kinds differ".into(),
                });
            }
            let (na, nb) = (*na as f64, *nb as f64);
            let n = na + nb;
            let post = pa.add(pb);
            let pre = qa.add(qb);
            let (var_post, var_pre) = (post.variance(n), pre.variance(n));
            let theta = if var_pre == 0.0 || var_post == 0.0 {
                0.0
            } else {
                covariance(n, ca + cb, post.sum(), pre.sum()) / var_pre
            };
            let one = |n: f64, post: &Moments, pre: &Moments, cross: f64| {
                let var = if n <= 1.0 {
                    0.0
                } else {
                    post.variance(n) + theta * theta * pre.variance(n)
                        - 2.0 * theta * covariance(n, cross, post.sum(), pre.sum())
                };
                Stat {
                    n,
                    mean: post.mean(n) - theta * pre.mean(n),
                    unadjusted_mean: post.mean(n),
                    variance: var,
                    zero_variance: var <= 0.0,
                }
            };
            (one(na, pa, qa, *ca), one(nb, pb, qb, *cb))
        }
        (
            ArmData::CupedRatio {
                n: na,
                numerator: ma,
                denominator: da,
                pre_numerator: mpa,
                pre_denominator: dpa,
                cross: ca,
            },
            ArmData::CupedRatio {
                n: nb,
                numerator: mb,
                denominator: db,
                pre_numerator: mpb,
                pre_denominator: dpb,
                cross: cb,
            },
        ) => {
            if !ma.same_kind(mb) || !da.same_kind(db) || !mpa.same_kind(mpb) || !dpa.same_kind(dpb)
            {
                return Err(Error::MismatchedArms {
                    arm: 1,
                    reason: "component kinds differ".into(),
                });
            }
            let (na, nb) = (*na as f64, *nb as f64);
            let pooled = ratio_pair(
                na + nb,
                &ma.add(mb),
                &da.add(db),
                &mpa.add(mpb),
                &dpa.add(dpb),
                &ca.add(cb),
            );
            let theta = if pooled.var_pre <= 0.0 || pooled.var_post <= 0.0 {
                0.0
            } else {
                pooled.cov / pooled.var_pre
            };
            let one = |n: f64, r: RatioPair| {
                let var = if n <= 1.0 {
                    0.0
                } else {
                    r.var_post + theta * theta * r.var_pre - 2.0 * theta * r.cov
                };
                Stat {
                    n,
                    mean: r.post - theta * r.pre,
                    unadjusted_mean: r.post,
                    variance: var,
                    zero_variance: var <= 0.0,
                }
            };
            (
                one(na, ratio_pair(na, ma, da, mpa, dpa, ca)),
                one(nb, ratio_pair(nb, mb, db, mpb, dpb, cb)),
            )
        }
        _ => (single_stat(a), single_stat(b)),
    };
    Ok(stats)
}

/// Statistics of an arm that do not depend on the other arm.
fn single_stat(d: &ArmData) -> Stat {
    let n = d.n() as f64;
    let plain = |mean: f64, variance: f64| Stat {
        n,
        mean,
        unadjusted_mean: mean,
        variance,
        zero_variance: variance <= 0.0,
    };
    match d {
        ArmData::Proportion { sum, .. } => {
            let m = Moments::Proportion { sum: *sum };
            plain(m.mean(n), m.variance(n))
        }
        ArmData::Mean {
            sum, sum_squares, ..
        } => {
            let m = Moments::Mean {
                sum: *sum,
                sum_squares: *sum_squares,
            };
            plain(m.mean(n), m.variance(n))
        }
        ArmData::Ratio {
            numerator,
            denominator,
            cross_sum,
            ..
        } => {
            let mu_d = denominator.mean(n);
            let mean = ratio(numerator.sum(), denominator.sum());
            let variance = if mu_d == 0.0 || n <= 1.0 {
                0.0
            } else {
                let mu_m = numerator.mean(n);
                let cov = covariance(n, *cross_sum, numerator.sum(), denominator.sum());
                numerator.variance(n) / (mu_d * mu_d) - 2.0 * cov * mu_m / (mu_d * mu_d * mu_d)
                    + mu_m * mu_m * denominator.variance(n) / (mu_d * mu_d * mu_d * mu_d)
            };
            plain(mean, variance)
        }
        ArmData::Quantile {
            n_star,
            level,
            estimate,
            lower,
            upper,
            ..
        } => {
            let z = z975();
            let variance_init = if n <= 1.0 {
                0.0
            } else {
                let half = (upper - lower) / (2.0 * z);
                (*n_star as f64 / n) * (n - 1.0) * half * half
            };
            let variance = if n < 100.0 {
                variance_init
            } else {
                variance_init.max(1e-5)
            };
            // gbstats: the interval would leave [0, 1] in quantile space, or no spread among few observations.
            let above_one = n <= z * z * level / (1.0 - level);
            let below_zero = n <= z * z * (1.0 - level) / level;
            let zero_variance = above_one || below_zero || (variance_init <= 0.0 && n < 1000.0);
            Stat {
                n,
                mean: *estimate,
                unadjusted_mean: *estimate,
                variance,
                zero_variance,
            }
        }
        ArmData::Cuped { .. } | ArmData::CupedRatio { .. } => unreachable!("paired above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuped_from_units(post: &[f64], pre: &[f64]) -> ArmData {
        ArmData::Cuped {
            n: post.len() as u64,
            post: Moments::Mean {
                sum: post.iter().sum(),
                sum_squares: post.iter().map(|x| x * x).sum(),
            },
            pre: Moments::Mean {
                sum: pre.iter().sum(),
                sum_squares: pre.iter().map(|x| x * x).sum(),
            },
            cross_sum: post.iter().zip(pre).map(|(a, b)| a * b).sum(),
        }
    }

    fn ones(n: usize) -> Moments {
        Moments::Mean {
            sum: n as f64,
            sum_squares: n as f64,
        }
    }

    #[test]
    fn cuped_ratio_with_unit_denominators_is_cuped() {
        let post_a = [3.0, 5.0, 2.0, 8.0, 1.0, 4.0];
        let pre_a = [2.0, 4.0, 2.5, 7.0, 0.5, 3.0];
        let post_b = [4.0, 6.0, 3.5, 9.0, 2.0];
        let pre_b = [2.2, 5.0, 2.0, 8.0, 1.0];
        let as_ratio = |post: &[f64], pre: &[f64]| {
            let n = post.len();
            let sum = |v: &[f64]| v.iter().sum::<f64>();
            ArmData::CupedRatio {
                n: n as u64,
                numerator: Moments::Mean {
                    sum: sum(post),
                    sum_squares: post.iter().map(|x| x * x).sum(),
                },
                denominator: ones(n),
                pre_numerator: Moments::Mean {
                    sum: sum(pre),
                    sum_squares: pre.iter().map(|x| x * x).sum(),
                },
                pre_denominator: ones(n),
                cross: RatioCrossSums {
                    numerator_denominator: sum(post),
                    numerator_pre_numerator: post.iter().zip(pre).map(|(a, b)| a * b).sum(),
                    numerator_pre_denominator: sum(post),
                    denominator_pre_numerator: sum(pre),
                    denominator_pre_denominator: n as f64,
                    pre_numerator_pre_denominator: sum(pre),
                },
            }
        };
        let (ca, cb) = pair_stats(
            &cuped_from_units(&post_a, &pre_a),
            &cuped_from_units(&post_b, &pre_b),
        )
        .unwrap();
        let (ra, rb) = pair_stats(&as_ratio(&post_a, &pre_a), &as_ratio(&post_b, &pre_b)).unwrap();
        for (c, r) in [(ca, ra), (cb, rb)] {
            assert!((c.mean - r.mean).abs() < 1e-12, "{c:?} {r:?}");
            assert!(
                (c.variance - r.variance).abs() < 1e-12 * c.variance,
                "{c:?} {r:?}"
            );
        }
        // And θ ≠ 0 here: the adjusted mean differs from the raw one.
        assert!((ca.mean - ca.unadjusted_mean).abs() > 0.1);
    }

    #[test]
    fn inconsistent_sums_are_rejected() {
        let bad = ArmData::Mean {
            n: 10,
            sum: 10.0,
            sum_squares: 5.0,
        };
        assert_eq!(bad.validate(0).unwrap_err().code(), "invalid_input");
        let bad = ArmData::Proportion { n: 10, sum: 11.0 };
        assert!(bad.validate(0).is_err());
        let bad = ArmData::Mean {
            n: 10,
            sum: f64::NAN,
            sum_squares: 5.0,
        };
        assert!(bad.validate(0).is_err());
        let a = ArmData::Proportion { n: 10, sum: 3.0 };
        let b = ArmData::Mean {
            n: 10,
            sum: 3.0,
            sum_squares: 5.0,
        };
        assert_eq!(pair_stats(&a, &b).unwrap_err().code(), "mismatched_arms");
    }
}
