//! Property tests: no condition document, payload or attribute value —
//! however malformed or deeply nested — makes the engine panic; malformed
//! conditions evaluate to false and are reported at load time.

use flywheel_flags::{Attributes, Condition, EvalContext, FeatureSet, SavedGroups, MAX_DEPTH};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const OPS: &[&str] = &[
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
    "$and",
    "$or",
    "$nor",
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
    "$regx",
    "$",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(OPS).prop_map(String::from),
        "[abc]{1,2}(\\.[abc0-2]{1,2}){0,2}",
        Just("value".to_string()),
        Just(String::new()),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-c0-9.\\-v+]{0,8}".prop_map(Value::from),
        prop::sample::select(vec!["(", "[a-", "^a.*$", "(?=x)", "\\", "1.2.3", "g1", "*"])
            .prop_map(Value::from),
        prop::sample::select(OPS).prop_map(Value::from),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(10, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn groups() -> SavedGroups {
    SavedGroups::from_json(&json!({"g1": ["a", 1, true], "$in": [null]})).0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn conditions_never_panic(doc in arb_json(), attrs in arb_json()) {
        let (cond, diags) = Condition::compile(&doc);
        let a = Attributes::from_json(&attrs);
        let r = cond.eval_with_groups(&a, &groups());
        let _ = cond.eval_value(&attrs, &groups());
        if !doc.is_object() {
            prop_assert!(!r);
            prop_assert!(!diags.is_empty());
        }
    }

    #[test]
    fn malformed_operands_are_false_and_reported(
        field in "[abc]{1,3}",
        op in prop::sample::select(vec!["$in", "$nin", "$ini", "$nini", "$all", "$alli", "$elemMatch"]),
        bad in prop_oneof![Just(Value::Null), any::<i32>().prop_map(Value::from), "[a-z]{0,4}".prop_map(Value::from)],
        attrs in arb_json(),
    ) {
        let doc = json!({ field.clone(): { op: bad } });
        let (cond, diags) = Condition::compile(&doc);
        prop_assert!(!diags.is_empty(), "no diagnostic for {doc}");
        prop_assert!(!cond.eval(&Attributes::from_json(&attrs)));
        // Unknown operators and logical operators with wrong operands too.
        let (c2, d2) = Condition::compile(&json!({ field: { "$nope": 1 } }));
        prop_assert!(!d2.is_empty());
        prop_assert!(!c2.eval(&Attributes::from_json(&attrs)));
        let (c3, d3) = Condition::compile(&json!({ "$or": "x" }));
        prop_assert!(!d3.is_empty());
        prop_assert!(!c3.eval(&Attributes::from_json(&attrs)));
    }

    #[test]
    fn payloads_never_panic(features in prop::collection::btree_map("[a-d]{1,3}", arb_json(), 0..6),
                            rules in prop::collection::vec(arb_json(), 0..4),
                            attrs in arb_json()) {
        let mut fs = Map::new();
        for (k, v) in features {
            fs.insert(k, v);
        }
        fs.insert("r".into(), json!({"defaultValue": 1, "rules": rules}));
        let payload = json!({"features": fs, "savedGroups": {"g1": ["a"]}});
        if let Ok(set) = FeatureSet::from_value(&payload) {
            let a = Attributes::from_json(&attrs);
            let ctx = EvalContext::new(&a);
            for (_, r) in set.evaluate_all(&ctx) {
                let _ = r.to_json();
            }
        }
    }
}

fn obj(k: &str, v: Value) -> Value {
    let mut m = Map::new();
    m.insert(k.to_string(), v);
    Value::Object(m)
}

fn arr(v: Value) -> Value {
    Value::Array(vec![v])
}

fn nest(depth: usize, f: impl Fn(Value) -> Value) -> Value {
    let mut v = json!({"a": 1});
    for _ in 0..depth {
        v = f(v);
    }
    v
}

#[test]
fn deep_nesting_is_cut_off_not_overflowing() {
    let attrs = Attributes::from_json(&json!({"a": 1}));
    for depth in [MAX_DEPTH - 2, MAX_DEPTH + 1, 200, 2_000] {
        let docs = [
            nest(depth, |v| obj("$not", v)),
            nest(depth, |v| obj("$and", arr(v))),
            nest(depth, |v| {
                obj("$or", Value::Array(vec![v, json!({"b": 2})]))
            }),
            nest(depth, |v| obj("x", obj("$elemMatch", v))),
            nest(depth, |v| obj("$not", obj("$not", v))),
        ];
        for doc in docs {
            let (cond, diags) = Condition::compile(&doc);
            let r = cond.eval(&attrs);
            if depth > MAX_DEPTH {
                assert!(!diags.is_empty(), "depth {depth} not reported");
            }
            let _ = r;
            big_stack_drop(doc);
        }
        // Deeply nested operators on a field.
        let mut op = json!(1);
        for _ in 0..depth {
            op = obj("$not", op);
        }
        let doc = obj("a", op);
        let (cond, diags) = Condition::compile(&doc);
        big_stack_drop(doc);
        let _ = cond.eval(&attrs);
        if depth > MAX_DEPTH {
            assert!(!diags.is_empty());
            assert!(!cond.eval(&attrs));
        }
    }
}

/// serde_json drops values recursively; drop deep test values on a big stack.
fn big_stack_drop(v: Value) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || drop(v))
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn deep_attribute_values_do_not_overflow() {
    // serde_json itself recurses when cloning or dropping values, so build
    // and drop on a big stack; the evaluation runs on a small one.
    let mut v = json!("x");
    for _ in 0..5_000 {
        v = Value::Array(vec![v]);
    }
    let mut map = Map::new();
    map.insert("a".to_string(), v);
    let attrs = Attributes::from_map(map);
    let attrs = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            evaluate_deep(&attrs);
            attrs
        })
        .unwrap()
        .join()
        .expect("evaluation on a 256 KiB stack");
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || drop(attrs))
        .unwrap()
        .join()
        .unwrap();
}

fn evaluate_deep(attrs: &Attributes) {
    for doc in [
        json!({"a": "x"}),
        json!({"a": {"$gt": 1}}),
        json!({"a": {"$regex": "x"}}),
        json!({"a": {"$in": ["x"]}}),
        json!({"a": [[["x"]]]}),
        json!({"a": {"$elemMatch": {"$elemMatch": {"$eq": "x"}}}}),
        json!({"a": {"$vgt": "1.0.0"}}),
        json!({"a.0.0.0": "x"}),
    ] {
        let (cond, _) = Condition::compile(&doc);
        let _ = cond.eval(attrs);
    }
}

#[test]
fn deep_payload_json_is_an_error_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let payload = format!(r#"{{"features": {{"f": {{"defaultValue": {deep}}}}}}}"#);
    assert!(FeatureSet::from_json(&payload).is_err());
    let cond = format!(
        r#"{{"features": {{"f": {{"rules": [{{"condition": {{"a": {deep}}}, "force": 1}}]}}}}}}"#
    );
    assert!(FeatureSet::from_json(&cond).is_err());
}
