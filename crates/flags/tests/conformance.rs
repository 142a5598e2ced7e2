//! GrowthBook SDK specification conformance (shared cases.json, spec 0.8.0).
//!
//! Every category is run; the only exclusions are listed in `EXCLUDED`
//! with the reason, and printed with their case counts.

use flywheel_flags::hash::{
    choose_variation, get_bucket_ranges, get_equal_weights, hash, in_namespace,
};
use flywheel_flags::{
    decrypt, get_query_string_override, Attributes, Condition, EvalContext, Experiment, FeatureSet,
    ForcedVariations, SavedGroups, StickyAssignmentsDoc, StickyBucketService,
};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/conformance/growthbook/cases.json"
);

/// Categories not run, with the reason (none: every category is pure logic
/// the engine implements).
const EXCLUDED: &[(&str, &str)] = &[];

/// Approximate JSON equality: numbers within 1e-6, objects by key set.
fn approx_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-6
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| approx_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| approx_eq(v, w)))
        }
        _ => a == b,
    }
}

struct Ctx {
    attrs: Attributes,
    set: FeatureSet,
    forced: ForcedVariations,
    url: Option<String>,
    enabled: bool,
    qa_mode: bool,
}

fn build_ctx(ctx: &Value) -> Ctx {
    let mut payload = Map::new();
    for k in [
        "features",
        "savedGroups",
        "contextualBandits",
        "experiments",
    ] {
        if let Some(v) = ctx.get(k) {
            payload.insert(k.to_string(), v.clone());
        }
    }
    let set = FeatureSet::from_value(&Value::Object(payload)).expect("payload loads");
    let forced = ctx
        .get("forcedVariations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
                .collect()
        })
        .unwrap_or_default();
    Ctx {
        attrs: Attributes::from_json(ctx.get("attributes").unwrap_or(&Value::Null)),
        set,
        forced,
        url: ctx.get("url").and_then(Value::as_str).map(String::from),
        enabled: ctx.get("enabled").and_then(Value::as_bool).unwrap_or(true),
        qa_mode: ctx.get("qaMode").and_then(Value::as_bool).unwrap_or(false),
    }
}

impl Ctx {
    fn eval_ctx(&self) -> EvalContext<'_> {
        let mut e = EvalContext::new(&self.attrs)
            .with_forced_variations(&self.forced)
            .with_enabled(self.enabled)
            .with_qa_mode(self.qa_mode);
        if let Some(u) = &self.url {
            e = e.with_url(u);
        }
        e
    }
}

/// Sticky service that remembers which documents the evaluation touched
/// (loaded for the user or saved), which is what the spec's context holds.
struct TrackingService {
    docs: HashMap<String, StickyAssignmentsDoc>,
    touched: RefCell<BTreeSet<String>>,
}

impl StickyBucketService for TrackingService {
    fn get_assignments(&self, name: &str, value: &str) -> Option<StickyAssignmentsDoc> {
        let key = format!("{name}||{value}");
        let doc = self.docs.get(&key).cloned();
        if doc.is_some() {
            self.touched.borrow_mut().insert(key);
        }
        doc
    }
    fn save_assignments(&mut self, doc: StickyAssignmentsDoc) {
        self.touched.borrow_mut().insert(doc.key());
        self.docs.insert(doc.key(), doc);
    }
}

type Outcome = Result<(), String>;

fn check(expected: &Value, actual: &Value) -> Outcome {
    if approx_eq(expected, actual) {
        Ok(())
    } else {
        Err(format!(
            "\n    expected: {expected}\n    actual:   {actual}"
        ))
    }
}

fn run_case(category: &str, c: &[Value]) -> Outcome {
    match category {
        "evalCondition" => {
            let (cond, _) = Condition::compile(&c[1]);
            let (groups, _) = SavedGroups::from_json(c.get(4).unwrap_or(&Value::Null));
            let attrs = Attributes::from_json(&c[2]);
            check(&c[3], &json!(cond.eval_with_groups(&attrs, &groups)))
        }
        "hash" => {
            let v = hash(
                c[0].as_str().unwrap(),
                c[1].as_str().unwrap(),
                c[2].as_u64().unwrap() as u32,
            );
            check(&c[3], &json!(v))
        }
        "getBucketRange" => {
            let args = c[1].as_array().unwrap();
            let weights: Option<Vec<f64>> = args[2]
                .as_array()
                .map(|w| w.iter().map(|x| x.as_f64().unwrap()).collect());
            let r = get_bucket_ranges(
                args[0].as_u64().unwrap() as usize,
                args[1].as_f64().unwrap(),
                weights.as_deref(),
            );
            let r: Vec<[f64; 2]> = r.into_iter().map(|(a, b)| [a, b]).collect();
            check(&c[2], &json!(r))
        }
        "chooseVariation" => {
            let ranges: Vec<(f64, f64)> = c[2]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r[0].as_f64().unwrap(), r[1].as_f64().unwrap()))
                .collect();
            let v = choose_variation(c[1].as_f64().unwrap(), &ranges).map_or(-1, |i| i as i64);
            check(&c[3], &json!(v))
        }
        "getQueryStringOverride" => {
            let v = get_query_string_override(
                c[1].as_str().unwrap(),
                c[2].as_str().unwrap(),
                c[3].as_u64().unwrap() as usize,
            );
            check(&c[4], &json!(v))
        }
        "inNamespace" => {
            let ns = c[2].as_array().unwrap();
            let v = in_namespace(
                c[1].as_str().unwrap(),
                ns[0].as_str().unwrap(),
                ns[1].as_f64().unwrap(),
                ns[2].as_f64().unwrap(),
            );
            check(&c[3], &json!(v))
        }
        "getEqualWeights" => check(&c[1], &json!(get_equal_weights(c[0].as_i64().unwrap()))),
        "decrypt" => {
            let v = decrypt(c[1].as_str().unwrap(), c[2].as_str().unwrap()).ok();
            check(&c[3], &json!(v))
        }
        "feature" | "contextualBandit" => {
            let ctx = build_ctx(&c[1]);
            let e = ctx.eval_ctx();
            let r = ctx.set.evaluate(c[2].as_str().unwrap(), &e);
            check(&c[3], &r.to_json())
        }
        "run" => {
            let ctx = build_ctx(&c[1]);
            let e = ctx.eval_ctx();
            let exp = Experiment::from_json(&c[2]);
            let r = ctx.set.run(&exp, &e);
            check(
                &json!([c[3], c[4], c[5]]),
                &json!([r.value, r.in_experiment, r.hash_used]),
            )
        }
        "stickyBucket" => {
            let ctx = build_ctx(&c[1]);
            let mut svc = TrackingService {
                docs: HashMap::new(),
                touched: RefCell::new(BTreeSet::new()),
            };
            let preloaded = c[1]
                .get("stickyBucketAssignmentDocs")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|m| m.values())
                .chain(c[2].as_array().unwrap());
            for d in preloaded {
                let doc: StickyAssignmentsDoc = serde_json::from_value(d.clone()).unwrap();
                svc.docs.insert(doc.key(), doc);
            }
            // The spec's context holds the documents of the user's sticky
            // bucket identifier attributes, whether or not they get used.
            for name in ctx.set.sticky_bucket_attributes() {
                if let Some(v) = ctx.attrs.get(name) {
                    let v = v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string());
                    let key = format!("{name}||{v}");
                    if svc.docs.contains_key(&key) {
                        svc.touched.borrow_mut().insert(key);
                    }
                }
            }
            let actual_result = {
                let e = ctx.eval_ctx().with_sticky(&mut svc);
                let r = ctx.set.evaluate(c[3].as_str().unwrap(), &e);
                r.experiment_result
                    .map(|x| x.to_json())
                    .unwrap_or(Value::Null)
            };
            let touched = svc.touched.borrow().clone();
            let docs: BTreeMap<String, Value> = touched
                .iter()
                .map(|k| (k.clone(), serde_json::to_value(&svc.docs[k]).unwrap()))
                .collect();
            check(&json!([c[4], c[5]]), &json!([actual_result, docs]))
        }
        "urlRedirect" => {
            let ctx = build_ctx(&c[1]);
            let e = ctx.eval_ctx();
            let actual: Vec<Value> = ctx
                .set
                .url_redirect(&e)
                .into_iter()
                .map(|r| {
                    json!({
                        "inExperiment": r.result.in_experiment,
                        "urlRedirect": r.url_redirect,
                        "urlWithParams": r.url_with_params,
                    })
                })
                .collect();
            check(&c[2], &json!(actual))
        }
        other => Err(format!("no runner for category {other}")),
    }
}

#[test]
fn growthbook_spec_cases() {
    let text = std::fs::read_to_string(CASES).expect("read shared cases.json");
    let doc: Value = serde_json::from_str(&text).unwrap();
    let root = doc.as_object().unwrap();
    println!("GrowthBook spec {}", root["specVersion"]);
    if EXCLUDED.is_empty() {
        println!("excluded: none");
    }
    let mut failures = Vec::new();
    let (mut total_run, mut total_passed) = (0, 0);
    for (category, cases) in root {
        let Some(cases) = cases.as_array() else {
            continue;
        };
        if let Some((_, why)) = EXCLUDED.iter().find(|(c, _)| c == category) {
            println!("excluded: {category} ({} cases, {why})", cases.len());
            continue;
        }
        let mut passed = 0;
        for case in cases {
            let c = case.as_array().unwrap();
            let name = c[0]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| c[0].to_string());
            let outcome = std::panic::catch_unwind(|| run_case(category, c))
                .unwrap_or_else(|_| Err("panicked".to_string()));
            match outcome {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!("{category} / {name}: {e}")),
            }
        }
        println!("{category}: {passed}/{} passed", cases.len());
        total_run += cases.len();
        total_passed += passed;
    }
    println!("total: {total_passed}/{total_run} passed");
    if !failures.is_empty() {
        panic!("{} failing cases:\n{}", failures.len(), failures.join("\n"));
    }
}

/// `explain` walks the same steps as `evaluate`: on every feature case of the spec, the rule it says applied is
/// the one `evaluate` reports, a default value means no rule applied after every rule was tried, and a stop
/// names the same source.
#[test]
fn explain_agrees_with_evaluate_on_every_feature_case() {
    use flywheel_flags::{RuleOutcome, Source};
    let text = std::fs::read_to_string(CASES).expect("read shared cases.json");
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    let mut applied = 0;
    for case in doc["feature"].as_array().unwrap() {
        let c = case.as_array().unwrap();
        let ctx = build_ctx(&c[1]);
        let e = ctx.eval_ctx();
        let key = c[2].as_str().unwrap();
        let r = ctx.set.evaluate(key, &e);
        let trace = ctx.set.explain(key, &e);
        let name = c[0].as_str().unwrap_or_default();
        let rules = c[1]["features"][key]["rules"]
            .as_array()
            .map_or(0, Vec::len);
        match r.source {
            Source::Force | Source::Experiment => {
                let last = trace
                    .last()
                    .unwrap_or_else(|| panic!("{name}: empty trace"));
                assert_eq!(last.outcome, RuleOutcome::Applied, "{name}: {trace:?}");
                assert_eq!(last.rule_id, r.rule_id, "{name}");
                assert!(
                    trace[..trace.len() - 1]
                        .iter()
                        .all(|t| t.outcome != RuleOutcome::Applied),
                    "{name}: {trace:?}"
                );
                applied += 1;
            }
            Source::DefaultValue => {
                assert_eq!(trace.len(), rules, "{name}: every rule tried: {trace:?}");
                assert!(
                    trace.iter().all(|t| t.outcome != RuleOutcome::Applied),
                    "{name}: {trace:?}"
                );
            }
            Source::Prerequisite | Source::CyclicPrerequisite => {
                let last = trace
                    .last()
                    .unwrap_or_else(|| panic!("{name}: empty trace"));
                assert_eq!(last.outcome, RuleOutcome::Stopped(r.source), "{name}");
            }
            Source::UnknownFeature | Source::Override => {
                assert!(trace.is_empty(), "{name}: {trace:?}")
            }
        }
        checked += 1;
    }
    println!("explain: {checked} feature cases, {applied} with an applied rule");
    assert!(checked > 50 && applied > 20, "{checked} {applied}");
}
