//! The compiled feature/experiment model and its loading from the
//! GrowthBook JSON shapes (camelCase fields as in the spec).

use crate::attributes::{AttrKey, FastMap};
use crate::condition::{Condition, SavedGroups};
use crate::hash::{get_bucket_ranges, get_equal_weights};
use crate::js;
use serde_json::{Map, Value};
use std::fmt;

/// A problem found while loading a payload. The affected part is skipped or
/// evaluates to `false`; loading itself still succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The feature the problem belongs to, when there is one.
    pub feature: Option<String>,
    /// Location (JSON path) and description of the problem.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A hash version the spec does not define; hashing with it yields no bucket.
pub(crate) const BAD_HASH_VERSION: u32 = u32::MAX;

/// Collects diagnostics with a JSON-path prefix.
pub(crate) struct Diags<'d> {
    pub out: &'d mut Vec<String>,
    pub path: String,
}

impl Diags<'_> {
    pub fn report(&mut self, field: &str, msg: impl fmt::Display) {
        self.out.push(format!("{}.{field}: {msg}", self.path));
    }
    pub fn at(&self, field: &str) -> String {
        format!("{}.{field}", self.path)
    }
}

/// `hashVersion || 1` (or `|| 2` for filters): 1 and 2 are known.
fn hash_version(obj: &Map<String, Value>, default: u32, d: &mut Diags) -> u32 {
    match obj.get("hashVersion") {
        None | Some(Value::Null) => default,
        Some(Value::Number(n)) => {
            let f = js::num(n);
            if f == 0.0 {
                default
            } else if f == 1.0 {
                1
            } else if f == 2.0 {
                2
            } else {
                d.report("hashVersion", format_args!("unknown hash version {f}"));
                BAD_HASH_VERSION
            }
        }
        Some(_) => {
            d.report("hashVersion", "expected a number");
            BAD_HASH_VERSION
        }
    }
}

fn opt_f64(obj: &Map<String, Value>, key: &str, d: &mut Diags) -> Option<f64> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(js::num(n)),
        Some(_) => {
            d.report(key, "expected a number");
            None
        }
    }
}

/// A truthy string field (`rule.seed || fallback` semantics).
fn opt_str<'v>(obj: &'v Map<String, Value>, key: &str, d: &mut Diags) -> Option<&'v str> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            d.report(key, "expected a string");
            None
        }
    }
}

fn opt_int(obj: &Map<String, Value>, key: &str, d: &mut Diags) -> Option<i64> {
    opt_f64(obj, key, d).map(|f| if f.fract() == 0.0 { f as i64 } else { -1 })
}

fn range_of(v: &Value) -> Option<(f64, f64)> {
    match v {
        Value::Array(a) if a.len() == 2 => Some((a[0].as_f64()?, a[1].as_f64()?)),
        _ => None,
    }
}

fn ranges_of(v: &Value) -> Option<Vec<(f64, f64)>> {
    match v {
        Value::Array(a) => a.iter().map(range_of).collect(),
        _ => None,
    }
}

/// A hash-based filter (`filters` on rules and experiments).
#[derive(Debug)]
pub(crate) struct Filter {
    pub attribute: AttrKey,
    pub seed: Box<str>,
    pub hash_version: u32,
    pub ranges: Vec<(f64, f64)>,
}

fn filters_of(obj: &Map<String, Value>, d: &mut Diags) -> Option<Vec<Filter>> {
    let list = match obj.get("filters") {
        None | Some(Value::Null) => return None,
        Some(Value::Array(list)) => list,
        Some(_) => {
            d.report("filters", "expected an array");
            // A malformed filter excludes everyone rather than no one.
            return Some(vec![Filter {
                attribute: AttrKey::new("id"),
                seed: "".into(),
                hash_version: BAD_HASH_VERSION,
                ranges: Vec::new(),
            }]);
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, f) in list.iter().enumerate() {
        let mut fd = Diags {
            out: d.out,
            path: format!("{}.filters[{i}]", d.path),
        };
        let Value::Object(fm) = f else {
            fd.out.push(format!("{}: expected an object", fd.path));
            out.push(Filter {
                attribute: AttrKey::new("id"),
                seed: "".into(),
                hash_version: BAD_HASH_VERSION,
                ranges: Vec::new(),
            });
            continue;
        };
        let ranges = match fm.get("ranges").map(ranges_of) {
            Some(Some(r)) => r,
            _ => {
                fd.report("ranges", "expected an array of [start, end] pairs");
                Vec::new()
            }
        };
        out.push(Filter {
            attribute: AttrKey::new(opt_str(fm, "attribute", &mut fd).unwrap_or("id")),
            seed: match fm.get("seed") {
                Some(v) => js::to_js_string(v).into_boxed_str(),
                None => "undefined".into(),
            },
            hash_version: hash_version(fm, 2, &mut fd),
            ranges,
        });
    }
    Some(out)
}

/// A prerequisite: the parent feature's value must satisfy `condition`.
#[derive(Debug)]
pub(crate) struct ParentCondition {
    pub id: Box<str>,
    /// Index of the parent feature, resolved after loading.
    pub target: Option<usize>,
    pub condition: Condition,
    pub gate: bool,
}

fn parent_conditions_of(obj: &Map<String, Value>, d: &mut Diags) -> Vec<ParentCondition> {
    let list = match obj.get("parentConditions") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => {
            d.report("parentConditions", "expected an array");
            return vec![ParentCondition {
                id: "".into(),
                target: None,
                condition: Condition::compile_with(&Value::Null, &mut Vec::new(), ""),
                gate: true,
            }];
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let path = format!("{}.parentConditions[{i}]", d.path);
            let empty = Map::new();
            let pm = match p {
                Value::Object(pm) => pm,
                _ => {
                    d.out.push(format!("{path}: expected an object"));
                    &empty
                }
            };
            let id = match pm.get("id") {
                Some(Value::String(s)) => s.as_str(),
                _ => {
                    d.out.push(format!("{path}.id: expected a string"));
                    ""
                }
            };
            let condition = match pm.get("condition") {
                None | Some(Value::Null) => Condition::always(),
                Some(c) => Condition::compile_with(c, d.out, &format!("{path}.condition")),
            };
            ParentCondition {
                id: id.into(),
                target: None,
                condition,
                gate: pm.get("gate").is_some_and(js::truthy),
            }
        })
        .collect()
}

/// A namespace `[id, start, end]`.
#[derive(Debug)]
pub(crate) struct Namespace {
    pub id: Box<str>,
    pub start: f64,
    pub end: f64,
}

/// A compiled experiment: an inline experiment for [`crate::FeatureSet::run`]
/// or the experiment behind an experiment rule.
///
/// ```
/// use flywheel_flags::{Attributes, EvalContext, Experiment, FeatureSet};
/// let exp = Experiment::from_json(&serde_json::json!({"key": "my-test", "variations": [0, 1]}));
/// let attrs = Attributes::from_json(&serde_json::json!({"id": "1"}));
/// let r = FeatureSet::empty().run(&exp, &EvalContext::new(&attrs));
/// assert!(r.in_experiment);
/// assert_eq!(r.value, &serde_json::json!(1));
/// ```
#[derive(Debug)]
pub struct Experiment {
    pub(crate) key: Box<str>,
    pub(crate) variations: Vec<Value>,
    /// `meta[i].key || String(i)`
    pub(crate) variation_keys: Vec<Box<str>>,
    /// `meta[i].key` as written (used to resolve sticky buckets).
    pub(crate) meta_keys: Vec<Option<Box<str>>>,
    pub(crate) variation_names: Vec<Option<Box<str>>>,
    pub(crate) passthrough: Vec<bool>,
    /// `weights`, or equal weights: the marginal weights of a bandit.
    pub(crate) marginal_weights: Vec<f64>,
    pub(crate) coverage: Option<f64>,
    pub(crate) ranges: Option<Vec<(f64, f64)>>,
    /// `ranges` or `getBucketRanges(n, coverage, weights)`, precomputed.
    pub(crate) bucket_ranges: Vec<(f64, f64)>,
    pub(crate) filters: Option<Vec<Filter>>,
    pub(crate) namespace: Option<Option<Namespace>>,
    pub(crate) seed: Box<str>,
    pub(crate) hash_version: u32,
    pub(crate) hash_attribute: AttrKey,
    pub(crate) fallback_attribute: Option<AttrKey>,
    pub(crate) disable_sticky_bucketing: bool,
    pub(crate) bucket_version: i64,
    pub(crate) min_bucket_version: i64,
    pub(crate) condition: Option<Condition>,
    pub(crate) parent_conditions: Vec<ParentCondition>,
    /// `Some(i)` when the experiment has a `force` field.
    pub(crate) force: Option<i64>,
    pub(crate) active: bool,
    pub(crate) status: Option<Box<str>>,
    pub(crate) url_patterns: Option<Vec<crate::url::UrlPattern>>,
    pub(crate) bandit_ref: Option<Box<str>>,
    pub(crate) persist_query_string: bool,
    pub(crate) json: Value,
    pub(crate) diagnostics: Vec<String>,
}

impl Experiment {
    /// Compiles an inline experiment from its JSON definition. Problems are
    /// listed by [`Experiment::diagnostics`].
    pub fn from_json(doc: &Value) -> Experiment {
        let mut diags = Vec::new();
        let empty = Map::new();
        let obj = match doc {
            Value::Object(m) => m,
            _ => {
                diags.push("experiment: expected an object".to_string());
                &empty
            }
        };
        let key = match obj.get("key") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => js::to_js_string(other),
            None => {
                diags.push("experiment.key: missing".to_string());
                String::new()
            }
        };
        let mut d = Diags {
            out: &mut diags,
            path: "experiment".into(),
        };
        let mut exp = compile_experiment(obj, &key, doc.clone(), &mut d);
        exp.parent_conditions = parent_conditions_of(obj, &mut d);
        exp.diagnostics = diags;
        exp
    }

    /// The experiment key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The variation values.
    pub fn variations(&self) -> &[Value] {
        &self.variations
    }

    /// Problems found while compiling an inline experiment.
    pub fn diagnostics(&self) -> &[String] {
        &self.diagnostics
    }

    /// The experiment as the spec reports it in feature results.
    pub fn to_json(&self) -> Value {
        self.json.clone()
    }
}

pub(crate) fn compile_experiment(
    obj: &Map<String, Value>,
    key: &str,
    json: Value,
    d: &mut Diags,
) -> Experiment {
    let variations = match obj.get("variations") {
        Some(Value::Array(v)) => v.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => {
            d.report("variations", "expected an array");
            Vec::new()
        }
    };
    let n = variations.len();
    let meta: &[Value] = match obj.get("meta") {
        Some(Value::Array(m)) => m,
        None | Some(Value::Null) => &[],
        Some(_) => {
            d.report("meta", "expected an array");
            &[]
        }
    };
    let meta_field = |i: usize, f: &str| -> Option<&Value> { meta.get(i).and_then(|m| m.get(f)) };
    let meta_keys: Vec<Option<Box<str>>> = (0..meta.len().max(n))
        .map(|i| match meta_field(i, "key") {
            Some(Value::String(s)) => Some(s.as_str().into()),
            Some(Value::Null) | None => None,
            Some(v) => Some(js::to_js_string(v).into_boxed_str()),
        })
        .collect();
    let variation_keys = (0..n)
        .map(|i| match meta_field(i, "key") {
            Some(v) if js::truthy(v) => js::to_js_string(v).into_boxed_str(),
            _ => i.to_string().into_boxed_str(),
        })
        .collect();
    let variation_names = (0..n)
        .map(|i| match meta_field(i, "name") {
            Some(v) if js::truthy(v) => Some(js::to_js_string(v).into_boxed_str()),
            _ => None,
        })
        .collect();
    let passthrough = (0..n)
        .map(|i| meta_field(i, "passthrough").is_some_and(js::truthy))
        .collect();
    let weights = match obj.get("weights") {
        None | Some(Value::Null) => None,
        Some(Value::Array(w)) => {
            let parsed: Option<Vec<f64>> = w.iter().map(Value::as_f64).collect();
            if parsed.is_none() {
                d.report("weights", "expected an array of numbers");
            }
            parsed
        }
        Some(_) => {
            d.report("weights", "expected an array of numbers");
            None
        }
    };
    let coverage = opt_f64(obj, "coverage", d);
    let ranges = match obj.get("ranges") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let r = ranges_of(v);
            if r.is_none() {
                d.report("ranges", "expected an array of [start, end] pairs");
            }
            r
        }
    };
    let bucket_ranges = match &ranges {
        Some(r) => r.clone(),
        None => get_bucket_ranges(n, coverage.unwrap_or(1.0), weights.as_deref()),
    };
    let namespace = match obj.get("namespace") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a))
            if a.len() == 3 && a[0].is_string() && a[1].is_number() && a[2].is_number() =>
        {
            Some(Some(Namespace {
                id: a[0].as_str().unwrap_or("").into(),
                start: a[1].as_f64().unwrap_or(0.0),
                end: a[2].as_f64().unwrap_or(0.0),
            }))
        }
        Some(_) => {
            d.report("namespace", "expected [id, start, end]");
            Some(None)
        }
    };
    let condition = match obj.get("condition") {
        None | Some(Value::Null) => None,
        Some(c) => Some(Condition::compile_with(c, d.out, &d.at("condition"))),
    };
    let force = if obj.contains_key("force") {
        Some(match obj.get("force") {
            Some(Value::Number(n)) if js::num(n).fract() == 0.0 => js::num(n) as i64,
            _ => -1,
        })
    } else {
        None
    };
    let url_patterns = match obj.get("urlPatterns") {
        None | Some(Value::Null) => None,
        Some(v) => Some(crate::url::UrlPattern::parse_list(v, d)),
    };
    Experiment {
        key: key.into(),
        marginal_weights: match &weights {
            Some(w) => w.clone(),
            None => get_equal_weights(n as i64),
        },
        variation_keys,
        meta_keys,
        variation_names,
        passthrough,
        coverage,
        ranges,
        bucket_ranges,
        filters: filters_of(obj, d),
        namespace,
        seed: opt_str(obj, "seed", d).unwrap_or(key).into(),
        hash_version: hash_version(obj, 1, d),
        hash_attribute: AttrKey::new(opt_str(obj, "hashAttribute", d).unwrap_or("id")),
        fallback_attribute: opt_str(obj, "fallbackAttribute", d).map(AttrKey::new),
        disable_sticky_bucketing: obj.get("disableStickyBucketing").is_some_and(js::truthy),
        bucket_version: opt_int(obj, "bucketVersion", d).unwrap_or(0),
        min_bucket_version: opt_int(obj, "minBucketVersion", d).unwrap_or(0),
        condition,
        parent_conditions: Vec::new(),
        force,
        active: !matches!(obj.get("active"), Some(Value::Bool(false))),
        status: opt_str(obj, "status", d).map(Into::into),
        url_patterns,
        bandit_ref: None,
        persist_query_string: obj.get("persistQueryString").is_some_and(js::truthy),
        variations,
        json,
        diagnostics: Vec::new(),
    }
}

/// How a force rule decides who is included.
#[derive(Debug)]
pub(crate) struct Rollout {
    pub seed: Box<str>,
    pub hash_attribute: AttrKey,
    pub fallback_attribute: Option<AttrKey>,
    pub disable_sticky_bucketing: bool,
    pub range: Option<(f64, f64)>,
    pub coverage: Option<f64>,
    pub hash_version: u32,
    /// No range, coverage >= 1 and a valid hash version: every user with a
    /// truthy hash attribute is included, no hashing needed.
    pub full: bool,
}

#[derive(Debug)]
pub(crate) enum RuleKind {
    Force {
        value: Value,
        /// JavaScript truthiness of `value`.
        on: bool,
        /// [`Condition::always`] when the rule has none.
        condition: Condition,
        /// `None` when the rule has neither `coverage` nor `range`.
        rollout: Option<Box<Rollout>>,
    },
    Experiment(Box<Experiment>),
    /// Neither `force` nor `variations`: ignored.
    Empty,
}

/// One ordered rule of a feature.
#[derive(Debug)]
pub(crate) struct Rule {
    pub id: Box<str>,
    /// Whether the rule has prerequisites or filters to check first.
    pub gated: bool,
    pub parent_conditions: Vec<ParentCondition>,
    pub filters: Option<Vec<Filter>>,
    pub kind: RuleKind,
}

/// A compiled feature: default value and ordered rules.
#[derive(Debug)]
pub(crate) struct Feature {
    pub key: Box<str>,
    pub default_value: Value,
    /// JavaScript truthiness of `default_value`.
    pub default_on: bool,
    pub rules: Vec<Rule>,
}

/// Fields of an experiment rule copied into the reported experiment, with
/// the truthiness test the reference SDK applies to each.
const EXPERIMENT_FIELDS: &[(&str, bool)] = &[
    // (field, copy when merely present rather than truthy)
    ("coverage", true),
    ("weights", false),
    ("hashAttribute", false),
    ("fallbackAttribute", false),
    ("disableStickyBucketing", false),
    ("bucketVersion", true),
    ("minBucketVersion", true),
    ("namespace", false),
    ("meta", false),
    ("ranges", false),
    ("name", false),
    ("phase", false),
    ("seed", false),
    ("hashVersion", false),
    ("filters", false),
    ("condition", false),
];

pub(crate) fn compile_feature(key: &str, doc: &Value, diags: &mut Vec<String>) -> Feature {
    let path = format!("features.{key}");
    let empty = Map::new();
    let obj = match doc {
        Value::Object(m) => m,
        _ => {
            diags.push(format!("{path}: expected an object"));
            &empty
        }
    };
    let rules = match obj.get("rules") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(r)) => r.as_slice(),
        Some(_) => {
            diags.push(format!("{path}.rules: expected an array"));
            &[][..]
        }
    };
    let rules = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut d = Diags {
                out: diags,
                path: format!("{path}.rules[{i}]"),
            };
            compile_rule(key, r, &mut d)
        })
        .collect();
    let default_value = obj.get("defaultValue").cloned().unwrap_or(Value::Null);
    Feature {
        key: key.into(),
        default_on: js::truthy(&default_value),
        default_value,
        rules,
    }
}

fn compile_rule(feature: &str, doc: &Value, d: &mut Diags) -> Rule {
    let empty = Map::new();
    let obj = match doc {
        Value::Object(m) => m,
        _ => {
            d.out.push(format!("{}: expected an object", d.path));
            &empty
        }
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) => s.as_str().into(),
        None | Some(Value::Null) => "".into(),
        Some(v) => js::to_js_string(v).into_boxed_str(),
    };
    let parent_conditions = parent_conditions_of(obj, d);
    let filters = filters_of(obj, d);
    let kind = if obj.contains_key("force") {
        let value = obj.get("force").cloned().unwrap_or(Value::Null);
        RuleKind::Force {
            on: js::truthy(&value),
            value,
            condition: match obj.get("condition") {
                None | Some(Value::Null) => Condition::always(),
                Some(c) => Condition::compile_with(c, d.out, &d.at("condition")),
            },
            rollout: Some(Box::new(Rollout {
                seed: opt_str(obj, "seed", d).unwrap_or(feature).into(),
                hash_attribute: AttrKey::new(opt_str(obj, "hashAttribute", d).unwrap_or("id")),
                fallback_attribute: opt_str(obj, "fallbackAttribute", d).map(AttrKey::new),
                disable_sticky_bucketing: obj.get("disableStickyBucketing").is_some_and(js::truthy),
                range: match obj.get("range") {
                    None | Some(Value::Null) => None,
                    Some(v) => {
                        let r = range_of(v);
                        if r.is_none() {
                            d.report("range", "expected [start, end]");
                            Some((0.0, 0.0))
                        } else {
                            r
                        }
                    }
                },
                coverage: opt_f64(obj, "coverage", d),
                hash_version: hash_version(obj, 1, d),
                full: false,
            }))
            .filter(|r| r.range.is_some() || r.coverage.is_some())
            .map(|mut r| {
                r.full = r.range.is_none()
                    && r.coverage.is_some_and(|c| c >= 1.0)
                    && r.hash_version != BAD_HASH_VERSION;
                r
            }),
        }
    } else {
        let variations = obj
            .get("variations")
            .filter(|v| !v.is_null())
            .or_else(|| obj.get("contextualVariations").filter(|v| !v.is_null()));
        match variations {
            Some(variations) => {
                let key = match obj.get("key") {
                    Some(v) if js::truthy(v) => js::to_js_string(v),
                    _ => feature.to_string(),
                };
                let mut json = Map::new();
                json.insert("variations".into(), variations.clone());
                json.insert("key".into(), Value::String(key.clone()));
                for &(field, present) in EXPERIMENT_FIELDS {
                    if let Some(v) = obj.get(field) {
                        if present || js::truthy(v) {
                            json.insert(field.into(), v.clone());
                        }
                    }
                }
                let mut exp = compile_experiment(&json, &key, Value::Null, d);
                exp.json = Value::Object(json);
                exp.bandit_ref = match obj.get("contextualBanditRef") {
                    Some(Value::String(s)) if obj.get("variations").is_none() => {
                        Some(s.as_str().into())
                    }
                    _ => None,
                };
                RuleKind::Experiment(Box::new(exp))
            }
            None => RuleKind::Empty,
        }
    };
    Rule {
        id,
        gated: !parent_conditions.is_empty() || filters.is_some(),
        parent_conditions,
        filters,
        kind,
    }
}

/// One leaf of a contextual bandit: users matching `condition` get `weights`.
#[derive(Debug)]
pub(crate) struct BanditLeaf {
    pub leaf_id: i64,
    pub condition: Condition,
    pub weights: Vec<f64>,
}

/// A contextual bandit definition referenced by `contextualBanditRef`.
#[derive(Debug)]
pub(crate) struct BanditDef {
    pub version: Option<i64>,
    pub contexts: Vec<BanditLeaf>,
}

/// Contextual bandit definitions (`{"ref": {"banditVersion", "contexts"}}`),
/// compiled once.
#[derive(Debug, Default)]
pub struct ContextualBandits {
    pub(crate) defs: FastMap<Box<str>, BanditDef>,
}

impl ContextualBandits {
    /// Compiles bandit definitions; problems are returned as diagnostics.
    pub fn from_json(doc: &Value) -> (ContextualBandits, Vec<String>) {
        let mut diags = Vec::new();
        let mut defs = FastMap::default();
        if let Value::Object(m) = doc {
            for (name, def) in m {
                let path = format!("contextualBandits.{name}");
                let empty = Map::new();
                let dm = match def {
                    Value::Object(dm) => dm,
                    _ => {
                        diags.push(format!("{path}: expected an object"));
                        &empty
                    }
                };
                let version = dm
                    .get("banditVersion")
                    .and_then(Value::as_f64)
                    .map(|f| f as i64);
                let contexts = match dm.get("contexts") {
                    Some(Value::Array(list)) => list
                        .iter()
                        .enumerate()
                        .filter_map(|(i, leaf)| {
                            let lp = format!("{path}.contexts[{i}]");
                            let Value::Object(lm) = leaf else {
                                diags.push(format!("{lp}: expected an object"));
                                return None;
                            };
                            let weights =
                                lm.get("weights").and_then(Value::as_array).and_then(|w| {
                                    w.iter().map(Value::as_f64).collect::<Option<Vec<_>>>()
                                });
                            let Some(weights) = weights else {
                                diags.push(format!("{lp}.weights: expected an array of numbers"));
                                return None;
                            };
                            Some(BanditLeaf {
                                leaf_id: lm.get("leafId").and_then(Value::as_f64).unwrap_or(-1.0)
                                    as i64,
                                condition: match lm.get("condition") {
                                    None | Some(Value::Null) => Condition::always(),
                                    Some(c) => Condition::compile_with(
                                        c,
                                        &mut diags,
                                        &format!("{lp}.condition"),
                                    ),
                                },
                                weights,
                            })
                        })
                        .collect(),
                    None | Some(Value::Null) => Vec::new(),
                    Some(_) => {
                        diags.push(format!("{path}.contexts: expected an array"));
                        Vec::new()
                    }
                };
                defs.insert(name.as_str().into(), BanditDef { version, contexts });
            }
        } else if !doc.is_null() {
            diags.push("contextualBandits: expected an object".into());
        }
        (ContextualBandits { defs }, diags)
    }
}

/// Saved groups and bandits have public constructors; re-exported here for
/// the feature-set loader.
pub(crate) fn saved_groups_of(doc: Option<&Value>, diags: &mut Vec<String>) -> SavedGroups {
    match doc {
        Some(v) => {
            let (g, mut d) = SavedGroups::from_json(v);
            diags.append(&mut d);
            g
        }
        None => SavedGroups::default(),
    }
}
