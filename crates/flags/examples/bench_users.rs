//! Evaluates a generated 100-feature set for 10,000 users, for the
//! side-by-side comparison with the GrowthBook JavaScript SDK
//! (`bench/flags-js/run.sh`).
//!
//! ```text
//! cargo run --release -p flywheel-flags --example bench_users -- generate DIR [USERS] [FEATURES]
//! cargo run --release -p flywheel-flags --example bench_users -- run DIR [ITERATIONS]
//! cargo run --release -p flywheel-flags --example bench_users -- windows
//! cargo run --release -p flywheel-flags --example bench_users -- count [N] [five|set|users|attrs]
//! ```
//!
//! `generate` writes `DIR/features.json` and `DIR/users.json`; `run` times
//! the evaluation of every feature for every user, writes one line of
//! results per user to `DIR/results-rust.jsonl` and prints a summary line.
//! `windows` times the 5-rule benchmark feature in short windows; `count`
//! runs a benchmark workload without timing, for instruction counts.

use flywheel_flags::{Attributes, EvalContext, FeatureSet};
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

#[path = "../benches/support/gen.rs"]
mod gen;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("generate") => {
            let dir = args.get(1).expect("DIR");
            let users: u64 = args.get(2).map_or(10_000, |s| s.parse().expect("USERS"));
            let features: usize = args.get(3).map_or(100, |s| s.parse().expect("FEATURES"));
            std::fs::create_dir_all(dir).unwrap();
            let f = gen::features(features);
            std::fs::write(
                format!("{dir}/features.json"),
                serde_json::to_string(&f).unwrap(),
            )
            .unwrap();
            let u: Vec<Value> = (0..users).map(gen::user).collect();
            std::fs::write(
                format!("{dir}/users.json"),
                serde_json::to_string(&u).unwrap(),
            )
            .unwrap();
            println!("wrote {features} features and {users} users to {dir}");
        }
        Some("windows") => windows(),
        Some("count") => {
            let n: u64 = args.get(1).map_or(1_000_000, |s| s.parse().expect("N"));
            count(n, args.get(2).map_or("five", String::as_str));
        }
        Some("conditions") => {
            let dir = args.get(1).expect("DIR");
            let n: u64 = args.get(2).map_or(100_000, |s| s.parse().expect("N"));
            random_conditions(dir, n);
        }
        Some("run") => {
            let dir = args.get(1).expect("DIR");
            let iterations: usize = args.get(2).map_or(10, |s| s.parse().expect("ITERATIONS"));
            run(dir, iterations);
        }
        _ => {
            eprintln!(
                "usage: bench_users generate DIR [USERS] [FEATURES] | run DIR [ITERATIONS] | conditions DIR [N] | windows | count [N] [five|set|users|attrs]"
            );
            std::process::exit(2);
        }
    }
}

/// The 5-rule benchmark timed in 40 windows of 200,000 evaluations: on a
/// shared machine the minimum is the least disturbed measurement.
fn windows() {
    let attrs = Attributes::from_json(&gen::bench_user());
    let ctx = EvalContext::new(&attrs);
    let set = FeatureSet::from_value(&gen::five_rule_feature()).unwrap();
    let mut v: Vec<f64> = (0..40)
        .map(|_| {
            let t = Instant::now();
            let mut k = 0u64;
            for _ in 0..200_000 {
                k += std::hint::black_box(&set)
                    .evaluate(std::hint::black_box("checkout"), &ctx)
                    .on as u64;
            }
            std::hint::black_box(k);
            t.elapsed().as_nanos() as f64 / 200_000.0
        })
        .collect();
    v.sort_by(f64::total_cmp);
    println!(
        "5-rule feature, ns per evaluation over 40 windows: min {:.1} p25 {:.1} median {:.1} p75 {:.1} max {:.1}",
        v[0], v[10], v[20], v[30], v[39]
    );
}

/// Runs a benchmark workload `n` times without timing it, for
/// instruction counts: run it under `valgrind --tool=cachegrind` (or
/// `perf stat -e instructions`) with two values of `n` and divide the
/// difference by the difference in `n`. Workloads: `five` (default, the
/// 5-rule feature), `set` (all 100 generated features for one user),
/// `users` (the same for 100 users) and `attrs` (building the user's
/// attributes from JSON).
fn count(n: u64, workload: &str) {
    let user = gen::bench_user();
    let attrs = Attributes::from_json(&user);
    let ctx = EvalContext::new(&attrs);
    let mut k = 0u64;
    match workload {
        "five" => {
            let set = FeatureSet::from_value(&gen::five_rule_feature()).unwrap();
            for _ in 0..n {
                k += std::hint::black_box(&set)
                    .evaluate(std::hint::black_box("checkout"), &ctx)
                    .on as u64;
            }
        }
        "set" | "users" => {
            let set = FeatureSet::from_value(&gen::features(100)).unwrap();
            let users: Vec<Attributes> = if workload == "set" {
                vec![attrs.clone()]
            } else {
                (0..100)
                    .map(|i| Attributes::from_json(&gen::user(i)))
                    .collect()
            };
            for _ in 0..n {
                for a in &users {
                    let ctx = EvalContext::new(a);
                    for (_, r) in std::hint::black_box(&set).evaluate_all(&ctx) {
                        k += r.on as u64;
                    }
                }
            }
        }
        "attrs" => {
            for _ in 0..n {
                k += Attributes::from_json(std::hint::black_box(&user)).len() as u64;
            }
        }
        other => panic!("unknown workload {other}"),
    }
    println!("{k} ({workload} x {n})");
}

/// Random conditions and attributes with the engine's verdicts, for a
/// differential check against the JavaScript SDK's `evalCondition`
/// (`bench/flags-js/diff_conditions.js`).
fn random_conditions(dir: &str, n: u64) {
    use flywheel_flags::{Condition, SavedGroups};
    std::fs::create_dir_all(dir).unwrap();
    let mut r = gen::Rng::new(7);
    let groups_doc = json!({
        "g1": ["a", 1, "10"],
        "g2": [],
        "g3": {"type": "list", "attributeKey": "a", "values": ["a", "US", 1]},
        "g4": {"type": "condition", "condition": {"n": {"$gt": 1}}},
        "g5": {"type": "condition", "condition": {"$not": {"$savedGroup": {"id": "g5"}}}},
        "g6": {"type": "weird"},
        "g7": {"type": "list", "values": 5},
        "g8": {"type": "condition", "condition": {"$savedGroup": {"id": "g3", "attributeKey": "o.x"}}}
    });
    std::fs::write(format!("{dir}/groups.json"), groups_doc.to_string()).unwrap();
    let (groups, _) = SavedGroups::from_json(&groups_doc);
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(format!("{dir}/conditions.jsonl")).unwrap());
    for _ in 0..n {
        let cond = random_condition(&mut r, 0);
        let attrs = random_attrs(&mut r);
        let (c, _) = Condition::compile(&cond);
        let verdict = c.eval_with_groups(&Attributes::from_json(&attrs), &groups);
        writeln!(out, "{}", json!([cond, attrs, verdict])).unwrap();
    }
    out.flush().unwrap();
    println!("wrote {n} conditions to {dir}/conditions.jsonl");
}

const FIELDS: &[&str] = &["a", "b", "n", "s", "v", "arr", "o.x", "o.y.z", "missing"];

fn scalar(r: &mut gen::Rng) -> Value {
    match r.below(14) {
        0 => json!(null),
        1 => json!(true),
        2 => json!(false),
        3 => json!(0),
        4 => json!(r.below(20) as i64 - 5),
        5 => json!((r.below(400) as f64) / 8.0 - 10.0),
        6 => json!(""),
        7 => json!(r.below(20).to_string()),
        8 => json!(format!(" {} ", r.below(10))),
        9 => json!(*r.pick(&[
            "a",
            "B",
            "abc",
            "Abc",
            "10",
            "9",
            "1e1",
            "0x10",
            "1.2.3",
            "v2.0.0",
            "1.10.0-beta.2"
        ])),
        10 => json!(*r.pick(&["US", "us", "CA", "true", "null", "-1", "2.5"])),
        11 => json!(*r.pick(&["1.0.0", "2.1.3", "10.0.0", "1.2.3-rc.1", "1.2.3+build"])),
        12 => json!(r.below(3) as f64 + 0.5),
        _ => json!("a,b"),
    }
}

fn value(r: &mut gen::Rng, depth: u32) -> Value {
    match if depth > 2 { 0 } else { r.below(8) } {
        0..=4 => scalar(r),
        5 | 6 => Value::Array((0..r.below(4)).map(|_| value(r, depth + 1)).collect()),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..r.below(3) {
                m.insert((*r.pick(&["x", "y", "z"])).to_string(), value(r, depth + 1));
            }
            Value::Object(m)
        }
    }
}

fn random_attrs(r: &mut gen::Rng) -> Value {
    let mut m = serde_json::Map::new();
    for k in ["a", "b", "n", "s", "v"] {
        if r.chance(85) {
            m.insert(k.into(), scalar(r));
        }
    }
    if r.chance(80) {
        m.insert(
            "arr".into(),
            Value::Array((0..r.below(4)).map(|_| scalar(r)).collect()),
        );
    }
    if r.chance(70) {
        m.insert("o".into(), json!({"x": scalar(r), "y": {"z": scalar(r)}}));
    }
    Value::Object(m)
}

fn operator(r: &mut gen::Rng, depth: u32) -> (String, Value) {
    let ops = [
        "$eq",
        "$ne",
        "$lt",
        "$lte",
        "$gt",
        "$gte",
        "$in",
        "$nin",
        "$ini",
        "$nini",
        "$all",
        "$alli",
        "$size",
        "$elemMatch",
        "$exists",
        "$type",
        "$not",
        "$regex",
        "$regexi",
        "$veq",
        "$vne",
        "$vgt",
        "$vgte",
        "$vlt",
        "$vlte",
        "$inGroup",
        "$notInGroup",
    ];
    let op = *r.pick(&ops);
    let arg = match op {
        "$in" | "$nin" | "$ini" | "$nini" | "$all" | "$alli" => {
            Value::Array((0..1 + r.below(3)).map(|_| scalar(r)).collect())
        }
        "$size" => {
            if r.chance(50) {
                json!(r.below(4))
            } else {
                json!({"$gt": r.below(3)})
            }
        }
        "$elemMatch" => {
            if r.chance(50) || depth > 1 {
                let (o, a) = operator(r, depth + 1);
                json!({ o: a })
            } else {
                random_condition(r, depth + 1)
            }
        }
        "$exists" => json!(r.chance(50)),
        "$type" => json!(*r.pick(&[
            "string",
            "number",
            "boolean",
            "null",
            "array",
            "object",
            "undefined"
        ])),
        "$not" => {
            let (o, a) = operator(r, depth + 1);
            json!({ o: a })
        }
        "$regex" | "$regexi" => {
            json!(*r.pick(&["^a", "b$", "^US$", "[0-9]+", "a|b", "^1\\.", "", "c", "^v?2"]))
        }
        "$inGroup" | "$notInGroup" => json!(*r.pick(&["g1", "g2", "g3", "g4", "g6", "g7", "nope"])),
        _ => scalar(r),
    };
    (op.to_string(), arg)
}

fn random_condition(r: &mut gen::Rng, depth: u32) -> Value {
    let mut m = serde_json::Map::new();
    for _ in 0..1 + r.below(3) {
        let choice = if depth > 2 { 0 } else { r.below(10) };
        match choice {
            0..=6 => {
                let field = (*r.pick(FIELDS)).to_string();
                let test = match r.below(4) {
                    0 => scalar(r),
                    1 if r.chance(30) => value(r, 1),
                    _ => {
                        let mut ops = serde_json::Map::new();
                        for _ in 0..1 + r.below(2) {
                            let (o, a) = operator(r, depth + 1);
                            ops.insert(o, a);
                        }
                        Value::Object(ops)
                    }
                };
                m.insert(field, test);
            }
            7 => {
                if r.chance(50) {
                    m.insert("$not".into(), random_condition(r, depth + 1));
                } else {
                    let id = *r.pick(&["g1", "g3", "g4", "g5", "g6", "g7", "g8", "nope"]);
                    let reference = match r.below(3) {
                        0 => json!({ "id": id }),
                        1 => json!({ "id": id, "attributeKey": *r.pick(FIELDS) }),
                        _ => json!({ "id": id, "attributeKey": 3 }),
                    };
                    m.insert("$savedGroup".into(), reference);
                }
            }
            _ => {
                let k = *r.pick(&["$and", "$or", "$nor"]);
                let list: Vec<Value> = (0..r.below(3))
                    .map(|_| random_condition(r, depth + 1))
                    .collect();
                m.insert(k.into(), Value::Array(list));
            }
        }
    }
    Value::Object(m)
}

fn run(dir: &str, iterations: usize) {
    let payload = std::fs::read_to_string(format!("{dir}/features.json")).unwrap();
    let users: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/users.json")).unwrap())
            .unwrap();
    let set = FeatureSet::from_json(&payload).unwrap();
    assert!(set.diagnostics().is_empty(), "{:?}", set.diagnostics());
    let keys: Vec<&str> = set.keys().collect();
    let evals = (users.len() * keys.len()) as f64;

    // Results for the cross-check (not timed).
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(format!("{dir}/results-rust.jsonl")).unwrap(),
    );
    for u in &users {
        let attrs = Attributes::from_json(u);
        let ctx = EvalContext::new(&attrs);
        let line: Vec<Value> = keys
            .iter()
            .map(|k| {
                let r = set.evaluate(k, &ctx);
                json!([
                    r.value,
                    r.source.as_str(),
                    r.rule_id,
                    r.experiment_result.as_ref().map(|e| e.variation_id)
                ])
            })
            .collect();
        writeln!(out, "{}", Value::Array(line)).unwrap();
    }
    out.flush().unwrap();

    // Timed: evaluate every feature for every user, attributes prebuilt.
    let attrs: Vec<Attributes> = users.iter().map(Attributes::from_json).collect();
    let mut best_eval = Duration::MAX;
    let mut best_with_attrs = Duration::MAX;
    let mut sink = 0u64;
    for _ in 0..iterations {
        let t = Instant::now();
        for a in &attrs {
            let ctx = EvalContext::new(a);
            for k in &keys {
                sink += set.evaluate(k, &ctx).on as u64;
            }
        }
        best_eval = best_eval.min(t.elapsed());

        // Including building the attributes from JSON for each user.
        let t = Instant::now();
        for u in &users {
            let a = Attributes::from_json(u);
            let ctx = EvalContext::new(&a);
            for k in &keys {
                sink += set.evaluate(k, &ctx).on as u64;
            }
        }
        best_with_attrs = best_with_attrs.min(t.elapsed());
    }
    std::hint::black_box(sink);
    println!(
        "rust: users={} features={} best_of={} eval_ms={:.2} ns_per_eval={:.1} with_attrs_ms={:.2} ns_per_eval_with_attrs={:.1}",
        users.len(),
        keys.len(),
        iterations,
        best_eval.as_secs_f64() * 1e3,
        best_eval.as_secs_f64() * 1e9 / evals,
        best_with_attrs.as_secs_f64() * 1e3,
        best_with_attrs.as_secs_f64() * 1e9 / evals,
    );
}
