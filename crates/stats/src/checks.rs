//! Health checks and corrections: sample-ratio mismatch and multiple-testing adjustments.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::special::chi2_sf;

/// The SRM threshold: a traffic split this unlikely under the configured weights is flagged.
pub const SRM_THRESHOLD: f64 = 0.001;

/// Result of the sample-ratio-mismatch check.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Srm {
    pub chi_square: f64,
    pub dof: f64,
    pub p_value: f64,
    /// `p_value < 0.001`.
    pub mismatch: bool,
}

/// Pearson's chi-square test of the observed units per arm against the expected split, as gbstats'
/// `check_srm`: arms with weight ≤ 0 are skipped in the statistic, the degrees of freedom are
/// `arms − 1`, and no units at all gives p = 1.
pub fn srm(users: &[u64], weights: &[f64]) -> Result<Srm, Error> {
    if users.len() != weights.len() {
        return Err(Error::invalid(
            "weights",
            format!("{} weights for {} arms", weights.len(), users.len()),
        ));
    }
    if users.len() < 2 {
        return Err(Error::invalid("users", "at least two arms are needed"));
    }
    if let Some(i) = weights.iter().position(|w| !w.is_finite() || *w < 0.0) {
        return Err(Error::invalid(
            format!("weights[{i}]"),
            format!("{} is not a non-negative weight", weights[i]),
        ));
    }
    let total_weight: f64 = weights.iter().sum();
    if total_weight <= 0.0 {
        return Err(Error::invalid("weights", "all weights are zero"));
    }
    let dof = (users.len() - 1) as f64;
    let total: f64 = users.iter().map(|&u| u as f64).sum();
    if total == 0.0 {
        return Ok(Srm {
            chi_square: 0.0,
            dof,
            p_value: 1.0,
            mismatch: false,
        });
    }
    let mut x = 0.0;
    for (&o, &w) in users.iter().zip(weights) {
        if w <= 0.0 {
            continue;
        }
        let e = w / total_weight * total;
        let d = o as f64 - e;
        x += d * d / e;
    }
    let p_value = chi2_sf(x, dof);
    if !p_value.is_finite() {
        return Err(Error::Numerical(format!("SRM p-value of chi-square {x}")));
    }
    Ok(Srm {
        chi_square: x,
        dof,
        p_value,
        mismatch: p_value < SRM_THRESHOLD,
    })
}

/// A multiple-testing correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// `min(1, m p)`: controls the family-wise error rate.
    Bonferroni,
    /// Holm's step-down: `p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))`; controls the family-wise error rate
    /// and is uniformly more powerful than Bonferroni.
    Holm,
    /// Benjamini–Hochberg step-up: `p̃_(i) = min_{j ≥ i} min(1, m p_(j) / j)`; controls the false discovery rate
    /// (the adjusted p-values of R's `p.adjust(method = "BH")` and scipy's `false_discovery_control`).
    BenjaminiHochberg,
}

/// Adjusted p-values, in the input order. Compare each with α.
pub fn adjust_p_values(p_values: &[f64], correction: Correction) -> Result<Vec<f64>, Error> {
    if let Some(i) = p_values.iter().position(|p| !(0.0..=1.0).contains(p)) {
        return Err(Error::invalid(
            format!("p_values[{i}]"),
            format!("{} is not in [0, 1]", p_values[i]),
        ));
    }
    let m = p_values.len();
    let mf = m as f64;
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut out = vec![0.0; m];
    match correction {
        Correction::Bonferroni => {
            for (o, p) in out.iter_mut().zip(p_values) {
                *o = (p * mf).min(1.0);
            }
        }
        Correction::Holm => {
            let mut running: f64 = 0.0;
            for (rank, &i) in order.iter().enumerate() {
                running = running.max(((mf - rank as f64) * p_values[i]).min(1.0));
                out[i] = running;
            }
        }
        Correction::BenjaminiHochberg => {
            let mut running: f64 = 1.0;
            for (rank, &i) in order.iter().enumerate().rev() {
                running = running.min((mf * p_values[i] / (rank as f64 + 1.0)).min(1.0));
                out[i] = running;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definitions, brute force: Holm's max over the smaller p-values, BH's min over the larger ones.
    fn brute(p: &[f64], c: Correction) -> Vec<f64> {
        let m = p.len();
        let rank_of = |i: usize| {
            p.iter()
                .enumerate()
                .filter(|&(j, &q)| q < p[i] || (q == p[i] && j < i))
                .count()
        };
        (0..m)
            .map(|i| match c {
                Correction::Bonferroni => (p[i] * m as f64).min(1.0),
                Correction::Holm => (0..m)
                    .filter(|&j| rank_of(j) <= rank_of(i))
                    .map(|j| ((m - rank_of(j)) as f64 * p[j]).min(1.0))
                    .fold(0.0, f64::max),
                Correction::BenjaminiHochberg => (0..m)
                    .filter(|&j| rank_of(j) >= rank_of(i))
                    .map(|j| (m as f64 * p[j] / (rank_of(j) + 1) as f64).min(1.0))
                    .fold(1.0, f64::min),
            })
            .collect()
    }

    #[test]
    fn corrections_match_their_definitions() {
        let p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04, 0.9, 1e-9];
        for c in [
            Correction::Bonferroni,
            Correction::Holm,
            Correction::BenjaminiHochberg,
        ] {
            let got = adjust_p_values(&p, c).unwrap();
            let want = brute(&p, c);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-15, "{c:?}: {got:?} vs {want:?}");
            }
            // Adjusted p-values never decrease and follow the order of the raw ones.
            for i in 0..p.len() {
                assert!(got[i] >= p[i]);
                for j in 0..p.len() {
                    if p[i] < p[j] {
                        assert!(got[i] <= got[j]);
                    }
                }
            }
        }
        assert!(adjust_p_values(&[0.5, 1.5], Correction::Holm).is_err());
    }

    #[test]
    fn srm_flags_a_broken_split() {
        let ok = srm(&[10_050, 9_950], &[0.5, 0.5]).unwrap();
        assert!(!ok.mismatch && ok.p_value > 0.4);
        let bad = srm(&[10_500, 9_500], &[0.5, 0.5]).unwrap();
        assert!(bad.mismatch && bad.p_value < 1e-10);
        assert!(srm(&[1, 2], &[0.5]).is_err());
        assert!(srm(&[1, 2], &[0.5, -1.0]).is_err());
        assert_eq!(srm(&[0, 0], &[0.5, 0.5]).unwrap().p_value, 1.0);
    }
}
