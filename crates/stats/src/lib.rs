//! Flywheel's experiment statistics: pure functions from per-arm sufficient statistics to results, checked
//! against GrowthBook's stats engine (`gbstats` 0.8.0) in CI.
//!
//! ```
//! use flywheel_stats::{analyze, ArmData, Engine, TTestConfig, TestResult};
//!
//! // Conversions: control 1,000 of 10,000 users, treatment 1,100 of 10,000.
//! let arms = [ArmData::Proportion { n: 10_000, sum: 1_000.0 }, ArmData::Proportion { n: 10_000, sum: 1_100.0 }];
//! let analysis = analyze(&arms, &[0.5, 0.5], &Engine::Frequentist(TTestConfig::default())).unwrap();
//! let Some(TestResult::Frequentist(r)) = analysis.comparisons[0].result else { panic!() };
//! assert!((r.estimate - 0.10).abs() < 1e-12); // +10 % relative lift
//! assert!(r.p_value < 0.05 && r.p_value > 0.01);
//! assert!(!analysis.srm.mismatch);
//! ```
//!
//! - [`data`]: the inputs ([`ArmData`]: proportion, mean, ratio, CUPED, CUPED on a ratio, quantile) and the
//!   per-unit mean and variance each implies;
//! - [`frequentist`]: Welch's t-test (two- and one-sided) and the sequential mSPRT;
//! - [`bayesian`]: the Gaussian effect model and the Beta-binomial probability to be best;
//! - [`checks`]: SRM and multiple-testing corrections; [`power`]: sample size, power and MDE;
//! - [`sample`]: from raw values (capping, quantiles); [`analysis`]: one metric across all arms;
//! - [`special`]: the distributions, to full double precision.
//!
//! Invalid input is an [`Error`], never a panic or a `NaN`.

pub mod analysis;
pub mod bayesian;
pub mod checks;
pub mod data;
mod error;
pub mod frequentist;
pub mod power;
pub mod sample;
pub mod special;

pub use analysis::{analyze, Comparison, Engine, MetricAnalysis, TestResult};
pub use bayesian::{
    bayesian_test, probability_to_be_best, BayesianConfig, BayesianResult, BetaPrior, Conversions,
    GaussianPrior,
};
pub use checks::{adjust_p_values, srm, Correction, Srm};
pub use data::{ArmData, Moments, RatioCrossSums};
pub use error::{Error, ErrorInfo};
pub use frequentist::{
    sequential_test, t_test, Alternative, Interval, LiftType, SequentialConfig, SequentialResult,
    TTestConfig, TTestResult,
};
