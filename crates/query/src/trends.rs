//! Trends: series of event counts (or per-person aggregates, or property aggregates) per bucket.

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::date::{DateBound, Interval, RelativeUnit};
use crate::filter::{
    read_breakdown, read_event, read_filters, Breakdown, EventRef, Filter, MAX_NAME,
};
use crate::formula::{check_formula, Expr};
use crate::read::{index, named_enum, Errors, Obj};
use crate::{normalize_breakdown, read_common, Common};

/// Most series in one trends insight (one per formula letter).
pub const MAX_SERIES: usize = 26;

named_enum! {
    /// What a series computes per bucket.
    pub enum Math {
        /// Number of events.
        Total = "total",
        /// Unique persons (daily active users when the interval is a day).
        Dau = "dau",
        /// Unique persons in the 7 days ending with the bucket (rolling).
        WeeklyActive = "weekly_active",
        /// Unique persons in the 30 days ending with the bucket (rolling).
        MonthlyActive = "monthly_active",
        /// An aggregate (`per_user`) of the number of events per person.
        PerUser = "per_user",
        /// Sum of `math_property`.
        Sum = "sum",
        /// Mean of `math_property`.
        Avg = "avg",
        /// Minimum of `math_property`.
        Min = "min",
        /// Maximum of `math_property`.
        Max = "max",
        /// Median of `math_property`.
        Median = "median",
        /// 90th percentile of `math_property`.
        P90 = "p90",
        /// 95th percentile of `math_property`.
        P95 = "p95",
        /// 99th percentile of `math_property`.
        P99 = "p99",
    }
}

impl Math {
    /// True for the maths that aggregate a numeric event property (`math_property`).
    pub fn is_property_math(self) -> bool {
        matches!(
            self,
            Math::Sum
                | Math::Avg
                | Math::Min
                | Math::Max
                | Math::Median
                | Math::P90
                | Math::P95
                | Math::P99
        )
    }
}

named_enum! {
    /// How `per_user` math summarises the events-per-person counts of a bucket.
    pub enum PerUserMath {
        /// Mean events per person.
        Avg = "avg",
        /// Fewest events of one person.
        Min = "min",
        /// Most events of one person.
        Max = "max",
        /// Median events per person.
        Median = "median",
    }
}

/// One series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// The event counted (`"$all"`: every event).
    pub event: EventRef,
    /// A display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What to compute (default `total`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub math: Option<Math>,
    /// The numeric event property for property math.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub math_property: Option<String>,
    /// The aggregate for `per_user` math (default `avg`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_user: Option<PerUserMath>,
    /// Filters on this series' events.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<Filter>,
}

/// A formula with its parsed form; serialized as its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    /// As written.
    pub text: String,
    /// Parsed (letters checked against the series).
    pub expr: Expr,
}

impl Serialize for Formula {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A trends insight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendsQuery {
    /// The series, `A` to `Z`.
    pub series: Vec<Series>,
    /// Date range, filters, interval.
    #[serde(flatten)]
    pub common: Common,
    /// Split each series by a property or cohorts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Breakdown>,
    /// Combine the series (`A/B`); the result shows the formula instead of the series.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formula: Option<Formula>,
    /// Also compute the previous period of the same length.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub compare: bool,
}

fn read_series(v: &Value, at: &str, e: &mut Errors) -> Option<Series> {
    let mut o = Obj::new(v, at, e)?;
    let event = read_event(&mut o, e);
    let name = o.string("name", MAX_NAME, e);
    let math = o.choice::<Math>("math", e);
    let math_property = o.string("math_property", MAX_NAME, e);
    let per_user = o.choice::<PerUserMath>("per_user", e);
    let properties = read_filters(&mut o, e);
    o.finish(e);
    Some(Series {
        event: event?,
        name,
        math,
        math_property,
        per_user,
        properties,
    })
}

pub(crate) fn read(o: &mut Obj<'_>, e: &mut Errors) -> TrendsQuery {
    let mut series = Vec::new();
    match o.array("series", MAX_SERIES, e) {
        Some((at, [])) => e.push(at, "must have at least one series"),
        Some((at, items)) => {
            for (i, v) in items.iter().enumerate() {
                // A series that failed to read keeps its place, so later letters stay right.
                series.push(read_series(v, &index(&at, i), e));
            }
        }
        None if !o.has("series") => e.push(o.at("series"), "is required"),
        None => {}
    }
    let common = read_common(o, e);
    let breakdown = read_breakdown(o, e);
    let formula_text = o.string("formula", crate::formula::MAX_FORMULA_LEN, e);
    let compare = o.boolean("compare", e).unwrap_or(false);
    let formula = formula_text.and_then(|text| match check_formula(&text, series.len()) {
        Ok(expr) => Some(Formula { text, expr }),
        Err(err) => {
            e.push(o.at("formula"), err.to_string());
            None
        }
    });
    TrendsQuery {
        series: series.into_iter().flatten().collect(),
        common,
        breakdown,
        formula,
        compare,
    }
}

impl TrendsQuery {
    /// Fills in defaults: `date_from` `-7d`, interval `day`, math `total`, `per_user` `avg`,
    /// breakdown limit 25. Idempotent.
    pub fn normalize(&mut self) {
        self.common.normalize(DateBound::Relative {
            amount: 7,
            unit: RelativeUnit::Day,
        });
        for s in &mut self.series {
            let math = *s.math.get_or_insert(Math::Total);
            if math == Math::PerUser && s.per_user.is_none() {
                s.per_user = Some(PerUserMath::Avg);
            }
        }
        normalize_breakdown(&mut self.breakdown);
    }

    pub(crate) fn check(&self, e: &mut Errors) {
        let interval = self.common.interval.unwrap_or(Interval::Day);
        for (i, s) in self.series.iter().enumerate() {
            let at = index("series", i);
            let math = s.math.unwrap_or(Math::Total);
            if math.is_property_math() {
                if s.math_property.is_none() {
                    e.push(
                        format!("{at}.math_property"),
                        format!("is required for math {math}"),
                    );
                }
            } else if s.math_property.is_some() {
                e.push(
                    format!("{at}.math_property"),
                    format!("is only used by property math (sum, avg, min, max, median, p90, p95, p99), not {math}"),
                );
            }
            if math != Math::PerUser && s.per_user.is_some() {
                e.push(format!("{at}.per_user"), "is only used with math per_user");
            }
            let too_coarse = match math {
                Math::WeeklyActive => matches!(interval, Interval::Week | Interval::Month),
                Math::MonthlyActive => interval == Interval::Month,
                _ => false,
            };
            if too_coarse {
                e.push(
                    format!("{at}.math"),
                    format!("{math} needs a shorter interval than {interval}"),
                );
            }
        }
    }
}
