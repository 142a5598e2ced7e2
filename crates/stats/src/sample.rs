//! From raw per-unit values to the inputs of the tests: moments, winsorisation (capping) and quantiles with
//! their order-statistic interval.

use serde::{Deserialize, Serialize};

use crate::data::ArmData;
use crate::error::Error;
use crate::special::norm_ppf;

/// How to cap outliers before summing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Cap {
    /// Values above `value` become `value` (GrowthBook's absolute capping).
    Absolute { value: f64 },
    /// Values above the `percentile` (e.g. 0.99) of the values become that percentile (GrowthBook's percentile
    /// capping); with `ignore_zeros` the percentile is taken over non-zero values only.
    Percentile { percentile: f64, ignore_zeros: bool },
}

/// Caps `values` in place (winsorisation from above) and returns the cap used.
pub fn winsorize(values: &mut [f64], cap: Cap) -> Result<f64, Error> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!("values[{i}]"), "not finite"));
    }
    let limit = match cap {
        Cap::Absolute { value } => {
            if !value.is_finite() {
                return Err(Error::invalid("cap", "not finite"));
            }
            value
        }
        Cap::Percentile {
            percentile,
            ignore_zeros,
        } => {
            if !(percentile > 0.0 && percentile <= 1.0) {
                return Err(Error::invalid(
                    "percentile",
                    format!("{percentile} is not in (0, 1]"),
                ));
            }
            let mut v: Vec<f64> = values
                .iter()
                .copied()
                .filter(|x| !ignore_zeros || *x != 0.0)
                .collect();
            if v.is_empty() {
                return Ok(f64::INFINITY);
            }
            v.sort_by(f64::total_cmp);
            // The inverse empirical CDF: the smallest value with at least `percentile` of the values at or below.
            let k = ((percentile * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[k - 1]
        }
    };
    for x in values.iter_mut() {
        if *x > limit {
            *x = limit;
        }
    }
    Ok(limit)
}

/// Σx and Σx² of per-unit values, as [`ArmData::Mean`].
pub fn mean_data(values: &[f64]) -> Result<ArmData, Error> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!("values[{i}]"), "not finite"));
    }
    Ok(ArmData::Mean {
        n: values.len() as u64,
        sum: values.iter().sum(),
        sum_squares: values.iter().map(|x| x * x).sum(),
    })
}

/// A quantile of the values with its distribution-free interval, as [`ArmData::Quantile`].
///
/// The estimate is the order statistic `x_(⌈nν⌉)`; the interval is `[x_(l), x_(u)]` with the ranks
/// `l = ⌊nν − z √(nν(1−ν))⌋`, `u = ⌈nν + z √(nν(1−ν))⌉ + 1` (clamped to `1..=n`), `z = z_{1−α/2}`: the normal
/// approximation of the binomial count of values below the true quantile, which is the interval GrowthBook's
/// SQL computes for its quantile metrics (`quantile_lower`, `quantile_upper`, with `n_star = n`).
pub fn quantile_from_sample(values: &[f64], level: f64, alpha: f64) -> Result<ArmData, Error> {
    if !(level > 0.0 && level < 1.0) {
        return Err(Error::invalid("level", format!("{level} is not in (0, 1)")));
    }
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(Error::invalid("alpha", format!("{alpha} is not in (0, 1)")));
    }
    if values.is_empty() {
        return Err(Error::TooFewUnits { arm: 0, n: 0 });
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!("values[{i}]"), "not finite"));
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let nf = n as f64;
    let z = norm_ppf(1.0 - alpha / 2.0);
    let at = |rank: f64| v[(rank.max(1.0) as usize).clamp(1, n) - 1];
    let spread = z * (nf * level * (1.0 - level)).sqrt();
    Ok(ArmData::Quantile {
        n: n as u64,
        n_star: n as u64,
        level,
        estimate: at((nf * level).ceil()),
        lower: at((nf * level - spread).floor()),
        upper: at((nf * level + spread).ceil() + 1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capping() {
        let mut v = vec![1.0, 2.0, 3.0, 100.0, 0.0, 0.0];
        assert_eq!(
            winsorize(&mut v, Cap::Absolute { value: 10.0 }).unwrap(),
            10.0
        );
        assert_eq!(v, vec![1.0, 2.0, 3.0, 10.0, 0.0, 0.0]);
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let cap = winsorize(
            &mut v,
            Cap::Percentile {
                percentile: 0.9,
                ignore_zeros: false,
            },
        )
        .unwrap();
        assert_eq!(cap, 90.0);
        assert_eq!(v.iter().copied().fold(0.0, f64::max), 90.0);
        let mut v = vec![0.0, 0.0, 0.0, 0.0, 5.0, 7.0];
        let cap = winsorize(
            &mut v,
            Cap::Percentile {
                percentile: 0.5,
                ignore_zeros: true,
            },
        )
        .unwrap();
        assert_eq!(cap, 5.0);
        assert!(winsorize(&mut [f64::NAN], Cap::Absolute { value: 1.0 }).is_err());
    }

    #[test]
    fn quantile_interval_brackets_the_estimate() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        match quantile_from_sample(&v, 0.9, 0.05).unwrap() {
            ArmData::Quantile {
                estimate,
                lower,
                upper,
                n,
                ..
            } => {
                assert_eq!(n, 1000);
                assert_eq!(estimate, 900.0);
                assert!(lower < estimate && estimate < upper);
                // ±1.96 √(1000 · 0.09) ≈ ±18.6 ranks
                assert!(
                    (lower - 881.0).abs() <= 1.0 && (upper - 920.0).abs() <= 1.0,
                    "{lower} {upper}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
