//! One metric across all arms: every treatment against the control with the chosen engine, plus the SRM check.

use serde::{Deserialize, Serialize};

use crate::bayesian::{bayesian_test, BayesianConfig, BayesianResult};
use crate::checks::{srm, Srm};
use crate::data::{pair_stats, ArmData};
use crate::error::{Error, ErrorInfo};
use crate::frequentist::{
    sequential_stats, t_test_stats, SequentialConfig, SequentialResult, TTestConfig, TTestResult,
};

/// The statistics engine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "snake_case")]
pub enum Engine {
    Frequentist(TTestConfig),
    Sequential(SequentialConfig),
    Bayesian(BayesianConfig),
}

/// One engine's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "snake_case")]
pub enum TestResult {
    Frequentist(TTestResult),
    Sequential(SequentialResult),
    Bayesian(BayesianResult),
}

/// A treatment against the control: a result, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Index of the treatment arm (the control is arm 0).
    pub arm: usize,
    /// Per-unit value of the treatment (conversion rate, mean, ratio, quantile), unadjusted.
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<TestResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// A metric analysed across arms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricAnalysis {
    /// Per-unit value of the control.
    pub control_value: f64,
    pub comparisons: Vec<Comparison>,
    pub srm: Srm,
}

/// Analyses `arms[1..]` against `arms[0]` with `engine`; `weights` are the configured traffic split (for SRM).
/// Invalid input for the whole metric (mismatched weights) is an error; a comparison that cannot be computed
/// (zero variance, a zero baseline for a relative lift…) carries its error and the others are still computed.
pub fn analyze(
    arms: &[ArmData],
    weights: &[f64],
    engine: &Engine,
) -> Result<MetricAnalysis, Error> {
    if arms.len() < 2 {
        return Err(Error::invalid(
            "arms",
            "a control and at least one treatment are needed",
        ));
    }
    let users: Vec<u64> = arms.iter().map(ArmData::n).collect();
    let srm = srm(&users, weights)?;
    let comparisons = arms[1..]
        .iter()
        .enumerate()
        .map(|(i, treatment)| {
            let arm = i + 1;
            let outcome = compare(&arms[0], treatment, engine).map_err(|e| match e {
                // Errors are reported with the arm index of the whole experiment.
                Error::ZeroVariance { arm: 1 }
                | Error::TooFewUnits { arm: 1, .. }
                | Error::MismatchedArms { arm: 1, .. } => renumber(e, arm),
                e => e,
            });
            match outcome {
                Ok(r) => Comparison {
                    arm,
                    value: treatment.value(),
                    result: Some(r),
                    error: None,
                },
                Err(e) => Comparison {
                    arm,
                    value: treatment.value(),
                    result: None,
                    error: Some(e.info()),
                },
            }
        })
        .collect();
    Ok(MetricAnalysis {
        control_value: arms[0].value(),
        comparisons,
        srm,
    })
}

fn renumber(e: Error, arm: usize) -> Error {
    match e {
        Error::ZeroVariance { .. } => Error::ZeroVariance { arm },
        Error::TooFewUnits { n, .. } => Error::TooFewUnits { arm, n },
        Error::MismatchedArms { reason, .. } => Error::MismatchedArms { arm, reason },
        e => e,
    }
}

fn compare(control: &ArmData, treatment: &ArmData, engine: &Engine) -> Result<TestResult, Error> {
    match engine {
        Engine::Frequentist(c) => {
            if !(c.alpha > 0.0 && c.alpha < 1.0) {
                return Err(Error::invalid(
                    "alpha",
                    format!("{} is not in (0, 1)", c.alpha),
                ));
            }
            let (a, b) = pair_stats(control, treatment)?;
            t_test_stats(&a, &b, c).map(TestResult::Frequentist)
        }
        Engine::Sequential(c) => {
            if !(c.alpha > 0.0 && c.alpha < 1.0 && c.tuning > 0.0 && c.tuning.is_finite()) {
                return Err(Error::invalid(
                    "sequential",
                    "alpha must be in (0, 1) and tuning positive",
                ));
            }
            let (a, b) = pair_stats(control, treatment)?;
            sequential_stats(&a, &b, c).map(TestResult::Sequential)
        }
        Engine::Bayesian(c) => bayesian_test(control, treatment, c).map(TestResult::Bayesian),
    }
}
