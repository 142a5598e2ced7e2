//! Behaviour of the public API beyond the spec cases.

use flywheel_flags::{
    Attributes, Condition, Error, EvalContext, Experiment, FeatureSet, ForcedFeatures,
    InMemoryStickyBucketService, SavedGroups, Source, StickyBucketService,
};
use serde_json::{json, Value};
use std::sync::Arc;

const ENCRYPTED: &str =
    "m5ylFM6ndyOJA2OPadubkw==.Uu7ViqgKEt/dWvCyhI46q088PkAEJbnXKf3KPZjf9IEQQ+A8fojNoxw4wIbPX3aj";
const KEY: &str = "Zvwv/+uhpFDznZ6SX28Yjg==";

fn attrs(v: Value) -> Attributes {
    Attributes::from_json(&v)
}

#[test]
fn encrypted_payloads() {
    let payload = json!({ "encryptedFeatures": ENCRYPTED }).to_string();
    let set = FeatureSet::from_json_with_key(&payload, KEY).unwrap();
    let a = attrs(json!({}));
    let r = set.evaluate("feature", &EvalContext::new(&a));
    assert_eq!(r.value, &json!(true));
    assert_eq!(r.source, Source::DefaultValue);
    assert_eq!(
        FeatureSet::from_json(&payload).unwrap_err(),
        Error::MissingDecryptionKey
    );
    assert!(matches!(
        FeatureSet::from_json_with_key(&payload, "Zvwv/+uhpFDznZ6SX39Yjg=="),
        Err(Error::Decrypt(_))
    ));
    assert!(matches!(
        FeatureSet::from_json("{nope"),
        Err(Error::Json(_))
    ));
    assert!(matches!(
        FeatureSet::from_json("[]"),
        Err(Error::InvalidPayload(_))
    ));
}

#[test]
fn malformed_conditions_are_reported_and_false() {
    let set = FeatureSet::from_value(&json!({"features": {
        "f": {"defaultValue": "default", "rules": [
            {"id": "bad-regex", "condition": {"name": {"$regex": "(unclosed"}}, "force": "a"},
            {"id": "bad-op", "condition": {"name": {"$startsWith": "x"}}, "force": "b"},
            {"id": "bad-and", "condition": {"$and": {"name": "x"}}, "force": "c"},
            {"id": "bad-type", "condition": "name == x", "force": "d"},
            {"id": "missing-parent", "parentConditions": [{"id": "nope", "condition": {"value": null}}], "force": "e"}
        ]}
    }}))
    .unwrap();
    let d = set.diagnostics();
    assert_eq!(d.len(), 5, "{d:#?}");
    assert!(d.iter().all(|d| d.feature.as_deref() == Some("f")));
    assert!(
        d[0].message.contains("rules[0].condition.name.$regex"),
        "{}",
        d[0]
    );
    let a = attrs(json!({"name": "x"}));
    let r = set.evaluate("f", &EvalContext::new(&a));
    // The missing parent evaluates to null, so its condition passes.
    assert_eq!((r.value, r.rule_id), (&json!("e"), "missing-parent"));
}

#[test]
fn evaluate_all_and_overrides() {
    let set = FeatureSet::from_value(&json!({"features": {
        "b": {"defaultValue": 1},
        "a": {"defaultValue": 0, "rules": [{"force": 2, "condition": {"plan": "pro"}}]},
        "c": {"defaultValue": true}
    }}))
    .unwrap();
    let a = attrs(json!({"plan": "pro"}));
    let forced: ForcedFeatures = [("c".to_string(), json!(false))].into();
    let ctx = EvalContext::new(&a).with_forced_features(&forced);
    let all: Vec<(&str, Value, Source)> = set
        .evaluate_all(&ctx)
        .map(|(k, r)| (k, r.value.clone(), r.source))
        .collect();
    assert_eq!(
        all,
        vec![
            ("a", json!(2), Source::Force),
            ("b", json!(1), Source::DefaultValue),
            ("c", json!(false), Source::Override),
        ]
    );
    assert_eq!(set.evaluate("zzz", &ctx).source, Source::UnknownFeature);
    assert_eq!(set.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
}

#[test]
fn shared_across_threads() {
    let set = Arc::new(
        FeatureSet::from_value(&json!({"features": {
            "exp": {"defaultValue": 0, "rules": [{"variations": [0, 1, 2], "hashVersion": 2}]}
        }}))
        .unwrap(),
    );
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let set = Arc::clone(&set);
            std::thread::spawn(move || {
                (0..1000)
                    .map(|i| {
                        let a = attrs(json!({ "id": format!("u{}", t * 1000 + i) }));
                        let r = set.evaluate("exp", &EvalContext::new(&a));
                        r.value.as_i64().unwrap()
                    })
                    .sum::<i64>()
            })
        })
        .collect();
    let total: i64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    // 4,000 users spread over values 0..=2: mean close to 1.
    assert!((3_600..4_400).contains(&total), "{total}");
}

#[test]
fn sticky_bucketing_persists_and_reuses() {
    let set = FeatureSet::from_value(&json!({"features": {
        "exp": {"defaultValue": "c", "rules": [{"key": "e1", "variations": ["c", "t"], "meta": [{"key": "c"}, {"key": "t"}], "hashVersion": 2}]}
    }}))
    .unwrap();
    let mut svc = InMemoryStickyBucketService::new();
    let a = attrs(json!({"id": "user-7"}));
    let first = {
        let ctx = EvalContext::new(&a).with_sticky(&mut svc);
        let r = set.evaluate("exp", &ctx);
        assert!(!r.experiment_result.as_ref().unwrap().sticky_bucket_used);
        r.value.clone()
    };
    let doc = svc.get_assignments("id", "user-7").expect("saved");
    assert_eq!(doc.assignments.len(), 1);
    // Flip the stored assignment: the engine must follow it.
    let other = if first == json!("c") { "t" } else { "c" };
    let mut doc2 = doc.clone();
    doc2.assignments.insert("e1__0".into(), other.into());
    svc.save_assignments(doc2);
    let ctx = EvalContext::new(&a).with_sticky(&mut svc);
    let r = set.evaluate("exp", &ctx);
    assert_eq!(r.value, &json!(other));
    assert!(r.experiment_result.unwrap().sticky_bucket_used);
}

#[test]
fn prerequisite_chains_and_cycles() {
    let mut features = serde_json::Map::new();
    for i in 0..300 {
        let rules = if i + 1 < 300 {
            json!([{"parentConditions": [{"id": format!("f{}", i + 1), "condition": {"value": true}, "gate": true}], "force": true}])
        } else {
            json!([])
        };
        features.insert(
            format!("f{i}"),
            json!({"defaultValue": true, "rules": rules}),
        );
    }
    features.insert("loop1".into(), json!({"defaultValue": 1, "rules": [{"parentConditions": [{"id": "loop2", "condition": {}}], "force": 2}]}));
    features.insert("loop2".into(), json!({"defaultValue": 1, "rules": [{"parentConditions": [{"id": "loop1", "condition": {}}], "force": 2}]}));
    let set = FeatureSet::from_value(&json!({ "features": features })).unwrap();
    let a = attrs(json!({}));
    let ctx = EvalContext::new(&a);
    assert_eq!(set.evaluate("f250", &ctx).source, Source::Force);
    // Deeper than MAX_PREREQUISITE_DEPTH: cut off, reported as cyclic.
    assert_eq!(set.evaluate("f0", &ctx).source, Source::CyclicPrerequisite);
    assert_eq!(
        set.evaluate("loop1", &ctx).source,
        Source::CyclicPrerequisite
    );
}

#[test]
fn inline_experiments_and_context_options() {
    let exp = Experiment::from_json(
        &json!({"key": "my-test", "variations": ["a", "b"], "condition": {"id": {"$inGroup": "g"}}}),
    );
    assert!(exp.diagnostics().is_empty());
    let (groups, _) = SavedGroups::from_json(&json!({"g": ["1"]}));
    let a = attrs(json!({"id": "1"}));
    let set = FeatureSet::empty();
    let r = set.run(&exp, &EvalContext::new(&a).with_saved_groups(&groups));
    assert!(r.in_experiment && r.hash_used);
    let r = set.run(&exp, &EvalContext::new(&a));
    assert!(!r.in_experiment, "no saved group given");
    let r = set.run(
        &exp,
        &EvalContext::new(&a)
            .with_saved_groups(&groups)
            .with_url("https://x.io/?my-test=0"),
    );
    assert!(r.in_experiment && !r.hash_used && r.variation_id == 0);
    let r = set.run(
        &exp,
        &EvalContext::new(&a)
            .with_saved_groups(&groups)
            .with_enabled(false),
    );
    assert!(!r.in_experiment);
}

#[test]
fn url_targeting() {
    let exp = Experiment::from_json(&json!({
        "key": "k", "variations": [0, 1],
        "urlPatterns": [{"type": "simple", "include": true, "pattern": "https://shop.example.com/checkout/*"}]
    }));
    let a = attrs(json!({"id": "42"}));
    let set = FeatureSet::empty();
    assert!(!set.run(&exp, &EvalContext::new(&a)).in_experiment);
    assert!(
        !set.run(
            &exp,
            &EvalContext::new(&a).with_url("https://shop.example.com/cart")
        )
        .in_experiment
    );
    assert!(
        set.run(
            &exp,
            &EvalContext::new(&a).with_url("https://shop.example.com/checkout/pay?x=1")
        )
        .in_experiment
    );
}

#[test]
fn results_serialize_in_spec_shape() {
    let set = FeatureSet::from_value(&json!({"features": {
        "f": {"defaultValue": false, "rules": [{"id": "r", "key": "e", "variations": [false, true], "weights": [0, 1], "meta": [{"key": "off", "name": "Off"}, {"key": "on", "name": "On"}]}]}
    }}))
    .unwrap();
    let a = attrs(json!({"id": 7}));
    let r = set.evaluate("f", &EvalContext::new(&a));
    let j = r.to_json();
    assert_eq!(j["value"], json!(true));
    assert_eq!(j["ruleId"], json!("r"));
    assert_eq!(j["source"], json!("experiment"));
    assert_eq!(j["experimentResult"]["key"], json!("on"));
    assert_eq!(j["experimentResult"]["name"], json!("On"));
    assert_eq!(j["experimentResult"]["hashValue"], json!(7));
    assert_eq!(j["experiment"]["key"], json!("e"));
}

#[test]
fn saved_groups_v2_and_saved_group_references() {
    let (groups, diags) = SavedGroups::from_json(&json!({
        "v1": ["a", 1],
        "list": {"type": "list", "attributeKey": "country", "values": ["US", "CA"]},
        "cond": {"type": "condition", "condition": {"plan": "pro", "$savedGroup": {"id": "list"}}},
        "loop": {"type": "condition", "condition": {"$not": {"$savedGroup": {"id": "loop"}}}},
        "bad": {"type": "list", "values": 3}
    }));
    assert_eq!(diags.len(), 1, "{diags:?}");
    let a = attrs(json!({"id": "a", "country": "US", "plan": "pro", "alt": "CA"}));
    let check = |cond: Value| Condition::compile(&cond).0.eval_with_groups(&a, &groups);
    assert!(check(json!({"id": {"$inGroup": "v1"}})));
    assert!(check(json!({"country": {"$inGroup": "list"}})));
    assert!(
        !check(json!({"id": {"$inGroup": "cond"}})),
        "condition groups are not lists"
    );
    assert!(
        !check(json!({"id": {"$notInGroup": "cond"}})),
        "and match nobody either way"
    );
    assert!(
        check(json!({"id": {"$notInGroup": "unknown"}})),
        "unknown group = empty list"
    );
    assert!(
        !check(json!({"id": {"$notInGroup": "bad"}})),
        "malformed group matches nobody"
    );
    assert!(check(json!({"$savedGroup": {"id": "list"}})));
    assert!(check(
        json!({"$savedGroup": {"id": "list", "attributeKey": "alt"}})
    ));
    assert!(!check(
        json!({"$savedGroup": {"id": "list", "attributeKey": "plan"}})
    ));
    assert!(check(json!({"$savedGroup": {"id": "cond"}})));
    assert!(
        !check(json!({"$savedGroup": {"id": "v1"}})),
        "bare arrays are not references"
    );
    // The inner reference to the group being resolved is false, so $not makes it true.
    assert!(check(json!({"$savedGroup": {"id": "loop"}})));
    let (_, d) = Condition::compile(&json!({"$savedGroup": "list"}));
    assert_eq!(d.len(), 1);
}
