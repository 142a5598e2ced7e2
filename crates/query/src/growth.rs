//! Referral programs: how a product's users bring others, and what they earn for it. The JSON body of
//! `POST /api/v1/projects/{id}/referral-programs`, parsed like every definition (every problem at once, by field).
//!
//! ```
//! use flywheel_query::growth::{parse_program, Attribution};
//! use serde_json::json;
//!
//! let p = parse_program(&json!({
//!     "key": "friends", "name": "Invite friends", "landing_url": "https://example.com/signup",
//!     "qualify": {"event": "subscription_started", "properties": [{"key": "plan", "operator": "is_not", "value": "free"}]},
//!     "rewards": {"referrer": {"amount": 20, "unit": "USD"}, "referee": {"amount": 10, "unit": "USD"}},
//! })).unwrap();
//! assert_eq!(p.attribution, Attribution::FirstTouch);
//! assert_eq!((p.attribution_window_days, p.qualify.within_days, p.hold_days), (30, 30, 14));
//!
//! let errors = parse_program(&json!({"key": "x", "name": "X", "landing_url": "ftp://x",
//!     "qualify": {"event": "paid"}, "rewards": {"referrer": {"amount": 0, "unit": "USD"}}})).unwrap_err();
//! assert_eq!(errors[0].field, "landing_url");
//! assert_eq!(errors[1].field, "rewards.referrer.amount");
//! ```
//!
//! - A click on a referral link (`/r/{code}`) leads to `landing_url` with the code; a new person who arrives with it
//!   within `attribution_window_days` is attributed to the code's referrer (`first_touch`: the first code they came
//!   with; `last_touch`: the last one before they qualified).
//! - The referral **qualifies** when the referee does `qualify.event` (with `qualify.properties`) within
//!   `qualify.within_days` of the attribution; then the rewards are written to the ledger as pending, approved after
//!   `hold_days` unless a `reversal_events` event of the referee arrives first.
//! - `cap_per_referrer` limits rewarded referrals per referrer; `tiers` add bonuses at numbers of qualified
//!   referrals; `fraud` sets the risk scores (0–100) at which a referral is held for review or rejected, and the
//!   referrals per referrer per hour that count as a burst (`velocity_per_hour`, default 10).

use serde_json::{json, Value};

use crate::experiment::{read_key, MAX_NAME};
use crate::filter::{read_event, read_filters, EventRef, Filter};
use crate::read::{named_enum, Errors, Named, Obj};
use crate::FieldError;

/// Longest landing URL.
pub const MAX_URL: usize = 2048;
/// Longest window, in days.
pub const MAX_DAYS: u64 = 365;
/// Most milestone tiers.
pub const MAX_TIERS: usize = 20;
/// Most reversal events.
pub const MAX_REVERSALS: usize = 20;

named_enum! {
    /// Which referral link a new person is credited to.
    pub enum Attribution {
        /// The first link they came through.
        FirstTouch = "first_touch",
        /// The last link they came through before qualifying.
        LastTouch = "last_touch",
    }
}

/// What one side of a referral earns.
#[derive(Debug, Clone, PartialEq)]
pub struct Reward {
    /// How much (positive).
    pub amount: f64,
    /// Of what: a currency code, `credits`, `months`…
    pub unit: String,
}

/// The action that makes a referral count.
#[derive(Debug, Clone, PartialEq)]
pub struct Qualify {
    pub event: EventRef,
    pub properties: Vec<Filter>,
    /// Days after the attribution within which the event counts.
    pub within_days: u64,
}

/// A bonus for the referrer at a number of qualified referrals.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub qualified: u64,
    pub reward: Reward,
}

/// Risk scores (0–100) at which a referral is held for review or rejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FraudThresholds {
    pub hold_at: u64,
    pub reject_at: u64,
    /// Referrals per referrer per hour from which the `velocity` signal fires.
    pub velocity_per_hour: u64,
}

/// A parsed referral program.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub key: String,
    pub name: String,
    pub description: String,
    /// Where a referral link leads (`http` or `https`).
    pub landing_url: String,
    pub attribution: Attribution,
    pub attribution_window_days: u64,
    pub qualify: Qualify,
    /// The referrer's reward.
    pub referrer_reward: Reward,
    /// The referee's reward (double-sided programs).
    pub referee_reward: Option<Reward>,
    /// Days a reward stays pending before approval.
    pub hold_days: u64,
    /// Events of the referee that reverse a pending reward (refund, churn).
    pub reversal_events: Vec<String>,
    /// Most rewarded referrals per referrer.
    pub cap_per_referrer: Option<u64>,
    /// Milestone bonuses, by increasing `qualified`.
    pub tiers: Vec<Tier>,
    pub fraud: FraudThresholds,
    /// Inactive programs record no clicks and attribute nobody.
    pub active: bool,
}

fn read_reward(v: &Value, at: &str, e: &mut Errors) -> Option<Reward> {
    let mut o = Obj::new(v, at, e)?;
    let amount = match o.get("amount") {
        None => {
            e.push(o.at("amount"), "is required");
            None
        }
        Some(v) => match v.as_f64() {
            Some(a) if a > 0.0 && a.is_finite() => Some(a),
            _ => {
                e.push(o.at("amount"), "must be a number above 0");
                None
            }
        },
    };
    let unit = o.required_string("unit", 32, e);
    o.finish(e);
    Some(Reward {
        amount: amount?,
        unit: unit?,
    })
}

/// Whether `url` is an absolute `http://` or `https://` URL with a host and no whitespace.
pub fn valid_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or_default();
        !host.is_empty() && !r.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

/// Parses a referral program definition (the API body).
pub fn parse_program(body: &Value) -> Result<Program, Vec<FieldError>> {
    let mut e = Errors::default();
    let Some(mut o) = Obj::new(body, "", &mut e) else {
        return Err(e.0);
    };
    let key = read_key(&mut o, &mut e);
    let name = o.required_string("name", MAX_NAME, &mut e);
    let description = o.string("description", 10_000, &mut e).unwrap_or_default();
    let landing_url = o.required_string("landing_url", MAX_URL, &mut e);
    if landing_url.as_deref().is_some_and(|u| !valid_url(u)) {
        e.push(
            "landing_url",
            "must be an absolute http:// or https:// URL without spaces",
        );
    }
    let attribution = o
        .choice::<Attribution>("attribution", &mut e)
        .unwrap_or(Attribution::FirstTouch);
    let attribution_window_days = o
        .integer("attribution_window_days", 1, MAX_DAYS, &mut e)
        .unwrap_or(30);
    let qualify = match o.get("qualify") {
        None => {
            e.push(
                "qualify",
                "is required: the event that makes a referral count",
            );
            None
        }
        Some(v) => Obj::new(v, "qualify", &mut e).and_then(|mut q| {
            let event = read_event(&mut q, &mut e);
            let properties = read_filters(&mut q, &mut e);
            let within_days = q.integer("within_days", 1, MAX_DAYS, &mut e).unwrap_or(30);
            q.finish(&mut e);
            Some(Qualify {
                event: event?,
                properties,
                within_days,
            })
        }),
    };
    let (mut referrer_reward, mut referee_reward) = (None, None);
    match o.get("rewards") {
        None => e.push("rewards", "is required (at least the referrer's reward)"),
        Some(v) => {
            if let Some(mut r) = Obj::new(v, "rewards", &mut e) {
                match r.get("referrer") {
                    None => e.push("rewards.referrer", "is required"),
                    Some(v) => referrer_reward = read_reward(v, "rewards.referrer", &mut e),
                }
                if let Some(v) = r.get("referee") {
                    referee_reward = read_reward(v, "rewards.referee", &mut e);
                }
                r.finish(&mut e);
            }
        }
    }
    let hold_days = o.integer("hold_days", 0, MAX_DAYS, &mut e).unwrap_or(14);
    let mut reversal_events = Vec::new();
    if let Some((at, items)) = o.array("reversal_events", MAX_REVERSALS, &mut e) {
        for (i, v) in items.iter().enumerate() {
            match v.as_str() {
                Some(s) if !s.is_empty() && s.chars().count() <= MAX_NAME => {
                    reversal_events.push(s.to_owned())
                }
                _ => e.push(format!("{at}[{i}]"), "must be an event name"),
            }
        }
    }
    let cap_per_referrer = o.integer("cap_per_referrer", 1, 1_000_000, &mut e);
    let mut tiers: Vec<Tier> = Vec::new();
    if let Some((at, items)) = o.array("tiers", MAX_TIERS, &mut e) {
        for (i, v) in items.iter().enumerate() {
            let here = format!("{at}[{i}]");
            let Some(mut t) = Obj::new(v, &here, &mut e) else {
                continue;
            };
            let qualified = t.integer("qualified", 1, 1_000_000, &mut e);
            if !t.has("qualified") {
                e.push(format!("{here}.qualified"), "is required");
            }
            let amount = t.get("amount").cloned();
            let unit = t.get("unit").cloned();
            t.finish(&mut e);
            let reward = read_reward(&json!({"amount": amount, "unit": unit}), &here, &mut e);
            let (Some(qualified), Some(reward)) = (qualified, reward) else {
                continue;
            };
            if tiers.last().is_some_and(|p| qualified <= p.qualified) {
                e.push(
                    format!("{here}.qualified"),
                    "must be above the previous tier's",
                );
                continue;
            }
            tiers.push(Tier { qualified, reward });
        }
    }
    let mut fraud = FraudThresholds {
        hold_at: 50,
        reject_at: 80,
        velocity_per_hour: 10,
    };
    if let Some(v) = o.get("fraud") {
        if let Some(mut f) = Obj::new(v, "fraud", &mut e) {
            if let Some(x) = f.integer("hold_at", 0, 100, &mut e) {
                fraud.hold_at = x;
            }
            if let Some(x) = f.integer("reject_at", 0, 100, &mut e) {
                fraud.reject_at = x;
            }
            if let Some(x) = f.integer("velocity_per_hour", 1, 1_000_000, &mut e) {
                fraud.velocity_per_hour = x;
            }
            f.finish(&mut e);
            if fraud.hold_at > fraud.reject_at {
                e.push("fraud.hold_at", "must not be above `reject_at`");
            }
        }
    }
    let active = o.boolean("active", &mut e).unwrap_or(true);
    o.finish(&mut e);
    if !e.0.is_empty() {
        return Err(e.0);
    }
    let (Some(key), Some(name), Some(landing_url), Some(qualify), Some(referrer_reward)) =
        (key, name, landing_url, qualify, referrer_reward)
    else {
        return Err(vec![FieldError {
            field: "body".into(),
            message: "is not a referral program".into(),
        }]);
    };
    Ok(Program {
        key,
        name,
        description,
        landing_url,
        attribution,
        attribution_window_days,
        qualify,
        referrer_reward,
        referee_reward,
        hold_days,
        reversal_events,
        cap_per_referrer,
        tiers,
        fraud,
        active,
    })
}

fn reward_json(r: &Reward) -> Value {
    json!({"amount": r.amount, "unit": r.unit})
}

impl Program {
    /// The definition in its API form (parses back to the same program).
    pub fn to_json(&self) -> Value {
        let mut qualify =
            json!({"event": self.qualify.event, "within_days": self.qualify.within_days});
        if !self.qualify.properties.is_empty() {
            qualify["properties"] = json!(self.qualify.properties);
        }
        let mut rewards = json!({"referrer": reward_json(&self.referrer_reward)});
        if let Some(r) = &self.referee_reward {
            rewards["referee"] = reward_json(r);
        }
        let mut v = json!({
            "key": self.key,
            "name": self.name,
            "landing_url": self.landing_url,
            "attribution": self.attribution.name(),
            "attribution_window_days": self.attribution_window_days,
            "qualify": qualify,
            "rewards": rewards,
            "hold_days": self.hold_days,
            "reversal_events": self.reversal_events,
            "tiers": self.tiers.iter().map(|t| json!({
                "qualified": t.qualified, "amount": t.reward.amount, "unit": t.reward.unit,
            })).collect::<Vec<_>>(),
            "fraud": {"hold_at": self.fraud.hold_at, "reject_at": self.fraud.reject_at,
                      "velocity_per_hour": self.fraud.velocity_per_hour},
            "active": self.active,
        });
        if !self.description.is_empty() {
            v["description"] = json!(self.description);
        }
        if let Some(c) = self.cap_per_referrer {
            v["cap_per_referrer"] = json!(c);
        }
        v
    }
}

/// Longest vanity code.
pub const MAX_CODE: usize = 32;

/// Checks a vanity referral code: 3 to [`MAX_CODE`] letters, digits, `-` or `_`. Codes are compared without case.
pub fn check_code(code: &str) -> Result<(), String> {
    let n = code.chars().count();
    if !(3..=MAX_CODE).contains(&n) {
        return Err(format!("must be 3 to {MAX_CODE} characters"));
    }
    if !code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("may only hold letters, digits, `-` and `_`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: Value) -> Vec<String> {
        parse_program(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_full_program_round_trips() {
        let p = parse_program(&json!({
            "key": "pro", "name": "Pro referrals", "description": "d", "landing_url": "https://x.io/join?src=ref",
            "attribution": "last_touch", "attribution_window_days": 7,
            "qualify": {"event": "paid", "properties": [{"key": "plan", "value": "pro"}], "within_days": 60},
            "rewards": {"referrer": {"amount": 25, "unit": "USD"}, "referee": {"amount": 1, "unit": "months"}},
            "hold_days": 30, "reversal_events": ["refund_issued", "subscription_cancelled"],
            "cap_per_referrer": 50, "tiers": [{"qualified": 3, "amount": 10, "unit": "USD"},
                                              {"qualified": 10, "amount": 50, "unit": "USD"}],
            "fraud": {"hold_at": 40, "reject_at": 90}, "active": false,
        }))
        .unwrap();
        assert_eq!(p.attribution, Attribution::LastTouch);
        assert_eq!(p.tiers[1].qualified, 10);
        assert_eq!(p.referee_reward.as_ref().unwrap().unit, "months");
        assert_eq!(parse_program(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn problems_are_reported_per_field() {
        assert_eq!(
            fields(json!({})),
            ["key", "name", "landing_url", "qualify", "rewards"]
        );
        assert_eq!(
            fields(
                json!({"key": "k", "name": "N", "landing_url": "https://x.io",
                "qualify": {"within_days": 0}, "rewards": {"referrer": {"unit": ""}, "referee": 3},
                "tiers": [{"qualified": 5, "amount": 1, "unit": "USD"}, {"qualified": 2, "amount": 1, "unit": "USD"}],
                "fraud": {"hold_at": 90, "reject_at": 10}, "reversal_events": [""], "extra": true})
            ),
            [
                "qualify.event",
                "qualify.within_days",
                "rewards.referrer.amount",
                "rewards.referrer.unit",
                "rewards.referee",
                "reversal_events[0]",
                "tiers[1].qualified",
                "fraud.hold_at",
                "extra"
            ]
        );
    }

    #[test]
    fn codes_are_checked() {
        assert!(check_code("ANNA-2026").is_ok());
        assert!(check_code("ab").is_err());
        assert!(check_code("a b c").is_err());
        assert!(check_code(&"x".repeat(33)).is_err());
    }
}
