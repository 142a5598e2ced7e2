//! Errors: every invalid input is reported, never a panic and never a silent `NaN`.

use serde::Serialize;

/// Why a statistic could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An input is outside its domain (negative count, sum above `n` for a proportion, `NaN`, `α ∉ (0, 1)`, …).
    #[error("{field}: {reason}")]
    InvalidInput { field: String, reason: String },
    /// An arm has fewer than two units: no variance can be estimated.
    #[error("arm {arm}: {n} units, at least 2 are needed")]
    TooFewUnits { arm: usize, n: u64 },
    /// An arm's variance is zero or negative (every unit has the same value): no test is possible.
    #[error("arm {arm}: zero or negative variance")]
    ZeroVariance { arm: usize },
    /// A relative lift (or a relative prior) needs a non-zero baseline mean.
    #[error("the baseline mean is zero: a relative lift is undefined")]
    ZeroBaseline,
    /// The arms of one metric do not have the same kind of data.
    #[error("arm {arm}: {reason}")]
    MismatchedArms { arm: usize, reason: String },
    /// A computation produced a non-finite number (reported instead of returned).
    #[error("numerical failure: {0}")]
    Numerical(String),
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A stable snake_case code for APIs.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "invalid_input",
            Error::TooFewUnits { .. } => "too_few_units",
            Error::ZeroVariance { .. } => "zero_variance",
            Error::ZeroBaseline => "zero_baseline",
            Error::MismatchedArms { .. } => "mismatched_arms",
            Error::Numerical(_) => "numerical_failure",
        }
    }

    /// The code and message, as serialised in results.
    pub fn info(&self) -> ErrorInfo {
        ErrorInfo {
            code: self.code().to_string(),
            message: self.to_string(),
        }
    }
}

/// An error as it appears in serialised results.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

/// Checks that every value is finite, naming the first that is not.
pub(crate) fn finite(values: &[(&str, f64)]) -> Result<(), Error> {
    for (name, v) in values {
        if !v.is_finite() {
            return Err(Error::Numerical(format!("{name} is {v}")));
        }
    }
    Ok(())
}
