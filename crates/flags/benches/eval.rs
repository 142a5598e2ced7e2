//! Criterion benchmarks: one condition, one feature with 5 rules of 3
//! conditions, and all features of a 100-feature set for one user.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flywheel_flags::{Attributes, Condition, EvalContext, FeatureSet};
use serde_json::json;

#[path = "support/gen.rs"]
mod gen;

fn benches(c: &mut Criterion) {
    let attrs = Attributes::from_json(&gen::bench_user());

    let (cond, _) = Condition::compile(&json!({"country": {"$in": ["US", "CA", "GB"]}}));
    c.bench_function("condition/in_list", |b| {
        b.iter(|| black_box(&cond).eval(black_box(&attrs)))
    });

    let (cond, _) = Condition::compile(&json!({"email": {"$regex": "@example\\.com$"}}));
    c.bench_function("condition/regex", |b| {
        b.iter(|| black_box(&cond).eval(black_box(&attrs)))
    });

    let (cond, _) = Condition::compile(&json!({"appVersion": {"$vgte": "2.1.0"}}));
    c.bench_function("condition/version", |b| {
        b.iter(|| black_box(&cond).eval(black_box(&attrs)))
    });

    let set = FeatureSet::from_value(&gen::five_rule_feature()).unwrap();
    assert!(set.diagnostics().is_empty());
    let ctx = EvalContext::new(&attrs);
    assert_eq!(set.evaluate("checkout", &ctx).rule_id, "r5");
    c.bench_function("feature/5_rules_3_conditions", |b| {
        b.iter(|| black_box(&set).evaluate(black_box("checkout"), &ctx).on)
    });

    let set = FeatureSet::from_value(&gen::features(100)).unwrap();
    assert!(set.diagnostics().is_empty(), "{:?}", set.diagnostics());
    c.bench_function("feature_set/100_features_one_user", |b| {
        b.iter(|| {
            let mut on = 0;
            for (_, r) in black_box(&set).evaluate_all(&ctx) {
                on += r.on as u32;
            }
            on
        })
    });

    let users: Vec<Attributes> = (0..100)
        .map(|i| Attributes::from_json(&gen::user(i)))
        .collect();
    c.bench_function("feature_set/100_features_100_users", |b| {
        b.iter(|| {
            let mut on = 0;
            for a in &users {
                let ctx = EvalContext::new(a);
                for (_, r) in set.evaluate_all(&ctx) {
                    on += r.on as u32;
                }
            }
            on
        })
    });

    c.bench_function("attributes/from_json", |b| {
        let u = gen::bench_user();
        b.iter(|| Attributes::from_json(black_box(&u)))
    });

    let payload = serde_json::to_string(&gen::features(100)).unwrap();
    c.bench_function("feature_set/load_100_features", |b| {
        b.iter(|| FeatureSet::from_json(black_box(&payload)).unwrap())
    });
}

criterion_group!(eval, benches);
criterion_main!(eval);
