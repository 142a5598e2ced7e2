//! Deterministic generator of a realistic feature set and user population,
//! shared by the Criterion benches and the `bench_users` example (whose
//! JSON output the JavaScript comparison in `bench/flags-js` reads).

#![allow(dead_code)]

use serde_json::{json, Map, Value};

/// xorshift64*: deterministic, dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const COUNTRIES: &[&str] = &["US", "CA", "GB", "DE", "FR", "BR", "IN", "JP", "AU", "ES"];
const PLANS: &[&str] = &["free", "starter", "pro", "enterprise"];
const DOMAINS: &[&str] = &[
    "example.com",
    "gmail.com",
    "acme.io",
    "corp.example.org",
    "yahoo.com",
];
const BROWSERS: &[&str] = &["chrome", "firefox", "safari", "edge"];
const TAGS: &[&str] = &["early", "beta", "vip", "churn-risk", "partner"];

/// One user's attributes.
pub fn user(i: u64) -> Value {
    let mut r = Rng::new(i + 1);
    let tags: Vec<&str> = (0..r.below(4)).map(|_| *r.pick(TAGS)).collect();
    json!({
        "id": format!("user-{i}"),
        "deviceId": format!("d{:x}", r.next() >> 16),
        "country": r.pick(COUNTRIES),
        "plan": r.pick(PLANS),
        "age": 13 + r.below(70),
        "email": format!("u{}@{}", i, r.pick(DOMAINS)),
        "appVersion": format!("{}.{}.{}", 1 + r.below(3), r.below(12), r.below(20)),
        "beta": r.chance(20),
        "browser": r.pick(BROWSERS),
        "company": {"size": r.below(1000), "industry": if r.chance(50) { "saas" } else { "retail" }},
        "tags": tags,
    })
}

/// A random targeting clause.
fn clause(r: &mut Rng) -> (String, Value) {
    match r.below(11) {
        0 => {
            let n = 1 + r.below(4);
            let list: Vec<&str> = (0..n).map(|_| *r.pick(COUNTRIES)).collect();
            ("country".into(), json!({"$in": list}))
        }
        1 => ("plan".into(), json!(r.pick(PLANS))),
        2 => ("age".into(), json!({"$gte": 18 + r.below(40)})),
        3 => (
            "email".into(),
            json!({"$regex": format!("@{}$", r.pick(DOMAINS).replace('.', "\\."))}),
        ),
        4 => (
            "appVersion".into(),
            json!({"$vgte": format!("{}.{}.0", 1 + r.below(3), r.below(10))}),
        ),
        5 => ("beta".into(), json!(true)),
        6 => ("company.size".into(), json!({"$gt": r.below(900)})),
        7 => ("tags".into(), json!({"$elemMatch": {"$eq": r.pick(TAGS)}})),
        8 => ("browser".into(), json!({"$ne": r.pick(BROWSERS)})),
        9 => (
            "plan".into(),
            json!({"$nin": [r.pick(PLANS), r.pick(PLANS)]}),
        ),
        _ => ("company.industry".into(), json!({"$exists": true})),
    }
}

fn condition(r: &mut Rng, clauses: u64) -> Value {
    let mut m = Map::new();
    for _ in 0..clauses {
        let (k, v) = clause(r);
        m.insert(k, v);
    }
    if r.chance(15) {
        let (k1, v1) = clause(r);
        let (k2, v2) = clause(r);
        m.insert("$or".into(), json!([{ k1: v1 }, { k2: v2 }]));
    }
    Value::Object(m)
}

fn value_for(kind: u64, r: &mut Rng) -> Value {
    match kind {
        0 => json!(r.chance(50)),
        1 => json!(r.below(100)),
        2 => json!(format!("variant-{}", r.below(5))),
        _ => json!({"color": r.pick(&["red", "blue", "green"]), "limit": r.below(50)}),
    }
}

/// A set of `n` features: rollouts, targeted force rules, experiments,
/// prerequisites and defaults, roughly like a real project's flags.
pub fn features(n: usize) -> Value {
    let mut r = Rng::new(42);
    let mut features = Map::new();
    for i in 0..n {
        let key = format!("flag-{i:03}");
        let kind = if i % 10 < 5 { 0 } else { r.below(4) };
        let default = value_for(kind, &mut r);
        let mut rules = Vec::new();
        match i % 10 {
            // Targeted force rules with rollouts.
            0..=4 => {
                for j in 0..1 + r.below(5) {
                    let clauses = 1 + r.below(3);
                    let mut rule = json!({
                        "id": format!("fr-{i}-{j}"),
                        "condition": condition(&mut r, clauses),
                        "force": value_for(kind, &mut r),
                    });
                    if r.chance(40) {
                        rule["coverage"] = json!((r.below(100) as f64) / 100.0);
                        rule["hashAttribute"] = json!("id");
                    }
                    rules.push(rule);
                }
            }
            // Experiments.
            5 | 6 => {
                let nv = 2 + r.below(2);
                let variations: Vec<Value> = (0..nv).map(|_| value_for(kind, &mut r)).collect();
                let mut rule = json!({
                    "id": format!("exp-rule-{i}"),
                    "key": format!("exp-{i}"),
                    "variations": variations,
                    "hashVersion": 2,
                    "seed": format!("exp-{i}"),
                    "meta": (0..nv).map(|v| json!({"key": format!("v{v}")})).collect::<Vec<_>>(),
                });
                if r.chance(50) {
                    rule["coverage"] = json!(0.5 + (r.below(50) as f64) / 100.0);
                }
                if r.chance(30) {
                    rule["condition"] = condition(&mut r, 1);
                }
                if r.chance(20) {
                    let start = (r.below(5) as f64) / 10.0;
                    rule["namespace"] = json!(["ns-a", start, start + 0.5]);
                }
                rules.push(rule);
            }
            // Prerequisites on earlier features.
            7 if i > 10 => {
                let parent = format!("flag-{:03}", (i - 7) - (i - 7) % 10);
                rules.push(json!({
                    "id": format!("pre-{i}"),
                    "parentConditions": [{"id": parent, "condition": {"value": {"$exists": true}}, "gate": true}],
                    "condition": condition(&mut r, 1),
                    "force": value_for(kind, &mut r),
                }));
            }
            // Percentage rollout without targeting.
            8 => rules.push(json!({"id": format!("roll-{i}"), "force": value_for(kind, &mut r), "coverage": 0.3, "hashAttribute": "id"})),
            // Default only.
            _ => {}
        }
        features.insert(key, json!({"defaultValue": default, "rules": rules}));
    }
    json!({ "features": features })
}

/// The 5-rule feature used by the "one feature" benchmark: each rule has 3
/// conditions; the user matches only the last rule.
pub fn five_rule_feature() -> Value {
    json!({"features": {"checkout": {"defaultValue": false, "rules": [
        {"id": "r1", "condition": {"country": {"$in": ["DE", "FR", "ES"]}, "plan": "free", "age": {"$gte": 18}}, "force": true},
        {"id": "r2", "condition": {"plan": "enterprise", "email": {"$regex": "@acme\\.io$"}, "beta": true}, "force": true},
        {"id": "r3", "condition": {"appVersion": {"$vgte": "3.0.0"}, "country": "US", "company.size": {"$gt": 500}}, "force": true},
        {"id": "r4", "condition": {"browser": "safari", "tags": {"$elemMatch": {"$eq": "vip"}}, "age": {"$lt": 30}}, "force": true},
        {"id": "r5", "condition": {"country": {"$in": ["US", "CA"]}, "plan": {"$ne": "free"}, "age": {"$gte": 21}}, "force": true, "coverage": 1.0, "hashAttribute": "id"}
    ]}}})
}

/// The user the single-feature benchmarks evaluate.
pub fn bench_user() -> Value {
    json!({
        "id": "user-123", "country": "US", "plan": "pro", "age": 34, "email": "jane@example.com",
        "appVersion": "2.4.1", "beta": false, "browser": "chrome",
        "company": {"size": 120, "industry": "saas"}, "tags": ["early"]
    })
}
