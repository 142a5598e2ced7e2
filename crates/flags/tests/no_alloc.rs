//! Proves the evaluation hot path does not allocate: a counting global
//! allocator wraps the system allocator, and evaluating features for a user
//! whose attributes are already built must not touch it.
#![allow(unsafe_code)] // a GlobalAlloc implementation requires `unsafe`

use flywheel_flags::{Attributes, EvalContext, FeatureSet, Source};
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCS.with(Cell::get);
    let r = f();
    let after = ALLOCS.with(Cell::get);
    (r, after - before)
}

const PAYLOAD: &str = r#"{
  "features": {
    "checkout-v2": {
      "defaultValue": false,
      "rules": [
        {"id": "r1", "condition": {"country": {"$in": ["DE", "FR"]}, "plan": "free"}, "force": false},
        {"id": "r2", "condition": {"email": {"$regex": "@example\\.com$"}, "age": {"$gte": 18}}, "force": true},
        {"id": "r3", "condition": {"$or": [{"beta": true}, {"appVersion": {"$vgte": "2.1.0"}}], "company.size": {"$gt": 50}}, "force": true, "coverage": 0.5, "hashAttribute": "id"},
        {"id": "r4", "condition": {"id": {"$inGroup": "vips"}}, "force": true},
        {"id": "r5", "condition": {"country": "US", "plan": {"$ne": "free"}, "tags": {"$elemMatch": {"$eq": "early"}}}, "force": true, "range": [0, 1], "seed": "checkout", "hashVersion": 2}
      ]
    },
    "parent": {"defaultValue": true},
    "gated": {
      "defaultValue": false,
      "rules": [{"parentConditions": [{"id": "parent", "condition": {"value": true}, "gate": true}], "force": true, "coverage": 1}]
    },
    "experiment": {
      "defaultValue": "control",
      "rules": [{"key": "exp1", "variations": ["control", "a", "b"], "weights": [0.34, 0.33, 0.33], "hashVersion": 2, "meta": [{"key": "c"}, {"key": "a"}, {"key": "b"}]}]
    }
  },
  "savedGroups": {"vips": ["x1", "x2"]}
}"#;

#[test]
fn boolean_feature_evaluation_does_not_allocate() {
    let set = FeatureSet::from_json(PAYLOAD).unwrap();
    assert!(set.diagnostics().is_empty(), "{:?}", set.diagnostics());
    let users = [
        json!({"id": "u1", "country": "US", "plan": "pro", "email": "a@b.org", "age": 30, "beta": false,
               "appVersion": "2.0.1", "company": {"size": 10}, "tags": ["early", "x"]}),
        json!({"id": "u2", "country": "FR", "plan": "free"}),
        json!({"id": 12345, "email": "me@example.com", "age": "19"}),
        json!({"id": "x1"}),
        json!({"id": "u3", "beta": true, "company": {"size": 51}}),
        json!({}),
    ];
    let attrs: Vec<Attributes> = users.iter().map(Attributes::from_json).collect();
    // Warm up lazily initialised statics.
    for a in &attrs {
        let ctx = EvalContext::new(a);
        for key in ["checkout-v2", "gated", "experiment", "missing"] {
            let _ = set.evaluate(key, &ctx);
        }
    }
    let mut sources = Vec::with_capacity(64);
    for a in &attrs {
        let ctx = EvalContext::new(a);
        let ((), n) = allocations(|| {
            for key in ["checkout-v2", "gated", "experiment", "missing"] {
                let r = set.evaluate(key, &ctx);
                std::hint::black_box(&r);
                sources.push(r.source);
            }
            for (k, r) in set.evaluate_all(&ctx) {
                std::hint::black_box((k, &r));
            }
        });
        assert_eq!(n, 0, "evaluation allocated {n} times for {:?}", a.to_json());
    }
    // Sanity: the rules really did fire for some users.
    assert!(sources.contains(&Source::Force));
    assert!(sources.contains(&Source::Experiment));
    assert!(sources.contains(&Source::UnknownFeature));
}

#[test]
fn counting_allocator_counts() {
    let (_, n) = allocations(|| std::hint::black_box(vec![1u8; 10]));
    assert!(n >= 1);
}
