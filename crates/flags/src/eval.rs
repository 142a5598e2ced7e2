//! Evaluation: features (rules, prerequisites, rollouts, experiment rules)
//! and experiments (the `run` algorithm), with results that say why.

use crate::attributes::{AttrKey, Attributes, ValueRoot};
use crate::condition::{SavedGroups, Scope, NULL};
use crate::hash::{choose_variation, get_bucket_ranges, hash_value, in_namespace, in_range};
use crate::js;
use crate::model::{
    ContextualBandits, Experiment, Feature, Filter, Rollout, Rule, RuleKind, BAD_HASH_VERSION,
};
use crate::sticky::{experiment_key, StickyAssignmentsDoc, StickyBucketService};
use crate::url::{get_query_string_override, is_url_targeted};
use crate::FeatureSet;
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// Prerequisite chains deeper than this are treated as cyclic.
pub const MAX_PREREQUISITE_DEPTH: usize = 64;

static EMPTY_STRING: Value = Value::String(String::new());

/// Variations forced by experiment key (`forcedVariations` in the spec).
pub type ForcedVariations = HashMap<String, i64>;

/// Feature values forced by feature key (results get source `override`).
pub type ForcedFeatures = HashMap<String, Value>;

/// Everything an evaluation needs besides the feature set: the user's
/// attributes and optional overrides. Cheap to build; borrows everything.
pub struct EvalContext<'a> {
    pub(crate) attributes: &'a Attributes,
    pub(crate) forced_variations: Option<&'a ForcedVariations>,
    pub(crate) forced_features: Option<&'a ForcedFeatures>,
    pub(crate) saved_groups: Option<&'a SavedGroups>,
    pub(crate) bandits: Option<&'a ContextualBandits>,
    pub(crate) url: Option<&'a str>,
    pub(crate) enabled: bool,
    pub(crate) qa_mode: bool,
    pub(crate) sticky: Option<RefCell<&'a mut dyn StickyBucketService>>,
}

impl<'a> EvalContext<'a> {
    /// A context for the given attributes.
    pub fn new(attributes: &'a Attributes) -> Self {
        EvalContext {
            attributes,
            forced_variations: None,
            forced_features: None,
            saved_groups: None,
            bandits: None,
            url: None,
            enabled: true,
            qa_mode: false,
            sticky: None,
        }
    }

    /// Forces experiment variations by experiment key.
    pub fn with_forced_variations(mut self, forced: &'a ForcedVariations) -> Self {
        self.forced_variations = Some(forced);
        self
    }

    /// Forces feature values by feature key (source `override`).
    pub fn with_forced_features(mut self, forced: &'a ForcedFeatures) -> Self {
        self.forced_features = Some(forced);
        self
    }

    /// Saved groups to use instead of the ones in the feature set.
    pub fn with_saved_groups(mut self, groups: &'a SavedGroups) -> Self {
        self.saved_groups = Some(groups);
        self
    }

    /// Contextual bandit definitions to use instead of the feature set's.
    pub fn with_contextual_bandits(mut self, bandits: &'a ContextualBandits) -> Self {
        self.bandits = Some(bandits);
        self
    }

    /// The current page URL (query-string forcing and `urlPatterns`).
    pub fn with_url(mut self, url: &'a str) -> Self {
        self.url = Some(url);
        self
    }

    /// `enabled: false` puts nobody in any experiment.
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// QA mode: nobody is bucketed unless a variation is forced.
    pub fn with_qa_mode(mut self, qa_mode: bool) -> Self {
        self.qa_mode = qa_mode;
        self
    }

    /// Enables sticky bucketing through the caller's storage.
    pub fn with_sticky(mut self, service: &'a mut dyn StickyBucketService) -> Self {
        self.sticky = Some(RefCell::new(service));
        self
    }

    /// The attributes being evaluated.
    pub fn attributes(&self) -> &'a Attributes {
        self.attributes
    }
}

/// Why a feature has its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The feature does not exist in the set.
    UnknownFeature,
    /// No rule applied.
    DefaultValue,
    /// A force (or rollout) rule applied.
    Force,
    /// An experiment rule put the user in a variation.
    Experiment,
    /// Forced by the caller ([`EvalContext::with_forced_features`]).
    Override,
    /// A gating prerequisite failed.
    Prerequisite,
    /// Prerequisites form a cycle (or are nested too deeply).
    CyclicPrerequisite,
}

impl Source {
    /// The spec's name for the source.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::UnknownFeature => "unknownFeature",
            Source::DefaultValue => "defaultValue",
            Source::Force => "force",
            Source::Experiment => "experiment",
            Source::Override => "override",
            Source::Prerequisite => "prerequisite",
            Source::CyclicPrerequisite => "cyclicPrerequisite",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Contextual bandit routing of a user: the leaf matched (`-1` when none
/// did) and the variation weights used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BanditAssignment<'a> {
    /// The matched leaf, or -1 for the marginal (fallback) weights.
    pub leaf_id: i64,
    /// Variation weights used for bucketing.
    pub variation_weights: &'a [f64],
    /// The bandit definition's version, when it has one.
    pub bandit_version: Option<i64>,
}

/// The outcome of running an experiment for a user.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentResult<'a> {
    /// The assigned variation's value (the first variation when not in the experiment).
    pub value: &'a Value,
    /// Index of the assigned variation.
    pub variation_id: usize,
    /// Whether the user is in the experiment.
    pub in_experiment: bool,
    /// Whether hashing decided the variation (false when forced).
    pub hash_used: bool,
    /// The attribute used for hashing.
    pub hash_attribute: &'a str,
    /// Its value (`""` when missing).
    pub hash_value: &'a Value,
    /// The feature whose rule ran the experiment.
    pub feature_id: Option<&'a str>,
    /// The variation key (`meta[i].key` or the index).
    pub key: &'a str,
    /// The user's hash bucket, when hashing ran.
    pub bucket: Option<f64>,
    /// The variation name, when the experiment has one.
    pub name: Option<&'a str>,
    /// Whether the variation is a passthrough (holdout) variation.
    pub passthrough: bool,
    /// Whether a sticky bucket decided the variation.
    pub sticky_bucket_used: bool,
    /// Contextual bandit routing, when a bandit bucketed the user.
    pub bandit: Option<BanditAssignment<'a>>,
}

impl ExperimentResult<'_> {
    /// The result in the spec's JSON shape.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("value".into(), self.value.clone());
        m.insert("variationId".into(), json!(self.variation_id));
        m.insert("inExperiment".into(), json!(self.in_experiment));
        m.insert("hashUsed".into(), json!(self.hash_used));
        m.insert("hashAttribute".into(), json!(self.hash_attribute));
        m.insert("hashValue".into(), self.hash_value.clone());
        m.insert("featureId".into(), json!(self.feature_id));
        m.insert("key".into(), json!(self.key));
        if let Some(b) = self.bucket {
            m.insert("bucket".into(), json!(b));
        }
        if let Some(n) = self.name {
            m.insert("name".into(), json!(n));
        }
        if self.passthrough {
            m.insert("passthrough".into(), json!(true));
        }
        m.insert("stickyBucketUsed".into(), json!(self.sticky_bucket_used));
        if let Some(b) = &self.bandit {
            m.insert("leafId".into(), json!(b.leaf_id));
            m.insert("variationWeights".into(), json!(b.variation_weights));
            if let Some(v) = b.bandit_version {
                m.insert("banditVersion".into(), json!(v));
            }
        }
        Value::Object(m)
    }
}

/// The value of a feature for a user and why it has it.
#[derive(Debug, Clone)]
pub struct FeatureResult<'a> {
    /// The value (`null` for unknown features).
    pub value: &'a Value,
    /// JavaScript truthiness of the value.
    pub on: bool,
    /// Why the feature has this value.
    pub source: Source,
    /// The id of the rule that applied (`""` when none or unnamed).
    pub rule_id: &'a str,
    /// The experiment, when an experiment rule applied.
    pub experiment: Option<&'a Experiment>,
    /// The experiment outcome, when an experiment rule applied.
    pub experiment_result: Option<ExperimentResult<'a>>,
    /// Contextual bandit routing of the applied rule (also set when the
    /// variation was forced, since routing chose the reported weights).
    pub bandit_routing: Option<BanditAssignment<'a>>,
}

impl PartialEq for FeatureResult<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
            && self.on == other.on
            && self.source == other.source
            && self.rule_id == other.rule_id
            && match (self.experiment, other.experiment) {
                (Some(a), Some(b)) => std::ptr::eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && self.experiment_result == other.experiment_result
            && self.bandit_routing == other.bandit_routing
    }
}

impl<'a> FeatureResult<'a> {
    #[inline]
    fn new(value: &'a Value, source: Source, rule_id: &'a str) -> Self {
        Self::with_on(value, js::truthy(value), source, rule_id)
    }

    /// A result whose value's truthiness is known (precomputed).
    #[inline(always)]
    fn with_on(value: &'a Value, on: bool, source: Source, rule_id: &'a str) -> Self {
        FeatureResult {
            value,
            on,
            source,
            rule_id,
            experiment: None,
            experiment_result: None,
            bandit_routing: None,
        }
    }

    /// `!on`
    pub fn off(&self) -> bool {
        !self.on
    }

    /// The value as a boolean (JavaScript truthiness), i.e. [`Self::on`].
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The result in the spec's JSON shape (`value`, `on`, `off`, `source`,
    /// `ruleId`, `experiment`, `experimentResult`).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("value".into(), self.value.clone());
        m.insert("on".into(), json!(self.on));
        m.insert("off".into(), json!(!self.on));
        m.insert("source".into(), json!(self.source.as_str()));
        m.insert("ruleId".into(), json!(self.rule_id));
        if let Some(exp) = self.experiment {
            let mut e = exp.to_json();
            if let Value::Object(em) = &mut e {
                if let Some(r) = &self.bandit_routing {
                    em.insert("weights".into(), json!(r.variation_weights));
                }
                if let Some(b) = self
                    .experiment_result
                    .as_ref()
                    .and_then(|r| r.bandit.as_ref())
                {
                    let mut cb = Map::new();
                    cb.insert("leafId".into(), json!(b.leaf_id));
                    cb.insert("variationWeights".into(), json!(b.variation_weights));
                    if let Some(v) = b.bandit_version {
                        cb.insert("banditVersion".into(), json!(v));
                    }
                    em.insert("contextualBandit".into(), Value::Object(cb));
                }
            }
            m.insert("experiment".into(), e);
        }
        if let Some(r) = &self.experiment_result {
            m.insert("experimentResult".into(), r.to_json());
        }
        Value::Object(m)
    }
}

/// A redirect decided by a URL-redirect experiment.
#[derive(Debug, Clone)]
pub struct UrlRedirect<'a> {
    /// The experiment that decided the redirect.
    pub experiment: &'a Experiment,
    /// The experiment result (always `in_experiment`).
    pub result: ExperimentResult<'a>,
    /// The variation's `urlRedirect`.
    pub url_redirect: &'a str,
    /// `url_redirect` with the current URL's query parameters merged in
    /// when the experiment has `persistQueryString`.
    pub url_with_params: String,
}

/// What a rule's prerequisites and filters decide.
enum Gate {
    /// Evaluate the rule.
    Pass,
    /// Skip to the next rule, for this reason.
    Skip(RuleOutcome),
    /// Stop: the feature evaluates to `null` with this source.
    Stop(Source),
}

/// What one rule did for a user ([`FeatureSet::explain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    /// The rule served the value.
    Applied,
    /// The user does not match the rule's condition.
    ConditionFalse,
    /// The user matches but is outside the rule's rollout percentage.
    OutsideRollout,
    /// A prerequisite of the rule is not met (the rule is skipped).
    PrerequisiteUnmet,
    /// The user's bucket is outside the rule's namespace or filters.
    FilteredOut,
    /// An experiment rule did not include the user (its condition, coverage, namespace or weights).
    NotInExperiment,
    /// The feature stopped here with this source (a gating prerequisite failed, or a cycle).
    Stopped(Source),
    /// The rule has nothing to serve.
    Empty,
}

impl RuleOutcome {
    /// A stable name (`applied`, `condition_false`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleOutcome::Applied => "applied",
            RuleOutcome::ConditionFalse => "condition_false",
            RuleOutcome::OutsideRollout => "outside_rollout",
            RuleOutcome::PrerequisiteUnmet => "prerequisite_unmet",
            RuleOutcome::FilteredOut => "filtered_out",
            RuleOutcome::NotInExperiment => "not_in_experiment",
            RuleOutcome::Stopped(_) => "stopped",
            RuleOutcome::Empty => "empty",
        }
    }
}

/// One rule's part in a feature's evaluation for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleTrace<'a> {
    /// The rule's position in the feature (0-based).
    pub index: usize,
    /// The rule's id (`""` when unnamed).
    pub rule_id: &'a str,
    pub outcome: RuleOutcome,
}

/// The chain of features being evaluated (for prerequisite cycle detection).
struct Chain<'p> {
    idx: usize,
    depth: usize,
    parent: Option<&'p Chain<'p>>,
}

impl Chain<'_> {
    fn contains(&self, idx: usize) -> bool {
        let mut c = Some(self);
        while let Some(node) = c {
            if node.idx == idx {
                return true;
            }
            c = node.parent;
        }
        false
    }
}

static ID_KEY: std::sync::LazyLock<AttrKey> = std::sync::LazyLock::new(|| AttrKey::new("id"));

impl FeatureSet {
    /// Evaluates one feature for the context's user.
    ///
    /// Allocation-free for force/rollout rules and for experiment rules
    /// without sticky bucketing or contextual bandits.
    pub fn evaluate<'a>(&'a self, key: &str, ctx: &EvalContext<'a>) -> FeatureResult<'a> {
        if let Some(v) = ctx.forced_features.and_then(|f| f.get(key)) {
            return FeatureResult::new(v, Source::Override, "");
        }
        match self.position(key) {
            Some(i) => self.eval_feature(i, ctx, None),
            None => FeatureResult::new(&NULL, Source::UnknownFeature, ""),
        }
    }

    /// Why a feature has its value for the context's user: each rule in order, with what it did, up to and
    /// including the one that applied or stopped the evaluation (none applied: the default value). The same
    /// steps as [`FeatureSet::evaluate`], recorded; kept apart so that evaluation itself records nothing.
    /// Empty for unknown and overridden features.
    pub fn explain<'a>(&'a self, key: &str, ctx: &EvalContext<'a>) -> Vec<RuleTrace<'a>> {
        let mut trace = Vec::new();
        if ctx.forced_features.is_some_and(|f| f.get(key).is_some()) {
            return trace;
        }
        let Some(idx) = self.position(key) else {
            return trace;
        };
        let feature = &self.features[idx];
        let chain = Chain {
            idx,
            depth: 0,
            parent: None,
        };
        let groups = self.groups(ctx);
        let scope = Scope::new(groups);
        for (index, rule) in feature.rules.iter().enumerate() {
            let step = |outcome| RuleTrace {
                index,
                rule_id: &rule.id,
                outcome,
            };
            if rule.gated {
                match self.rule_gate(rule, ctx, &chain, groups) {
                    Gate::Pass => {}
                    Gate::Skip(why) => {
                        trace.push(step(why));
                        continue;
                    }
                    Gate::Stop(source) => {
                        trace.push(step(RuleOutcome::Stopped(source)));
                        return trace;
                    }
                }
            }
            let outcome = match &rule.kind {
                RuleKind::Force {
                    condition, rollout, ..
                } => {
                    if !condition.eval_in(ctx.attributes, &scope) {
                        RuleOutcome::ConditionFalse
                    } else if rollout
                        .as_ref()
                        .is_some_and(|r| !self.is_included_in_rollout(r, ctx))
                    {
                        RuleOutcome::OutsideRollout
                    } else {
                        RuleOutcome::Applied
                    }
                }
                RuleKind::Experiment(exp) => {
                    match self.experiment_rule(feature, rule, exp, ctx, &chain) {
                        Some(_) => RuleOutcome::Applied,
                        None => RuleOutcome::NotInExperiment,
                    }
                }
                RuleKind::Empty => RuleOutcome::Empty,
            };
            trace.push(step(outcome));
            if outcome == RuleOutcome::Applied {
                break;
            }
        }
        trace
    }

    /// Evaluates every feature of the set, in key order. Each step
    /// evaluates one feature; nothing is allocated per feature beyond what
    /// [`FeatureSet::evaluate`] allocates.
    pub fn evaluate_all<'a, 'c>(
        &'a self,
        ctx: &'c EvalContext<'a>,
    ) -> impl Iterator<Item = (&'a str, FeatureResult<'a>)> + use<'a, 'c> {
        self.features.iter().enumerate().map(move |(i, f)| {
            let r = match ctx.forced_features.and_then(|m| m.get(&*f.key)) {
                Some(v) => FeatureResult::new(v, Source::Override, ""),
                None => self.eval_feature_outlined(i, ctx, None),
            };
            (&*f.key, r)
        })
    }

    /// Runs an inline experiment (the spec's `run`). Prerequisites of the
    /// experiment are evaluated against this set.
    pub fn run<'a>(
        &'a self,
        experiment: &'a Experiment,
        ctx: &EvalContext<'a>,
    ) -> ExperimentResult<'a> {
        self.run_experiment(experiment, None, ctx, None, None)
    }

    /// The redirect for the context's URL, if any: the first auto
    /// experiment (payload `experiments`) with `urlRedirect` variations that
    /// puts the user in a variation redirecting to a different URL.
    pub fn url_redirect<'a>(&'a self, ctx: &EvalContext<'a>) -> Option<UrlRedirect<'a>> {
        let current = ctx.url?;
        for exp in &self.experiments {
            let redirects = exp
                .variations
                .iter()
                .any(|v| v.get("urlRedirect").is_some_and(|u| u.is_string()));
            if !redirects {
                continue;
            }
            let result = self.run_experiment(exp, None, ctx, None, None);
            if !result.in_experiment {
                continue;
            }
            let Some(target) = result.value.get("urlRedirect").and_then(Value::as_str) else {
                continue;
            };
            if target.is_empty() || crate::url::same_page(current, target) {
                continue;
            }
            let url_with_params = if exp.persist_query_string {
                crate::url::merge_query_strings(current, target)
            } else {
                target.to_string()
            };
            return Some(UrlRedirect {
                experiment: exp,
                result,
                url_redirect: target,
                url_with_params,
            });
        }
        None
    }

    fn groups<'a>(&'a self, ctx: &EvalContext<'a>) -> &'a SavedGroups {
        ctx.saved_groups.unwrap_or(&self.saved_groups)
    }

    fn eval_by_id<'a>(
        &'a self,
        id: &str,
        target: Option<usize>,
        ctx: &EvalContext<'a>,
        chain: &Chain<'_>,
    ) -> FeatureResult<'a> {
        if let Some(t) = target {
            if chain.contains(t) {
                return FeatureResult::new(&NULL, Source::CyclicPrerequisite, "");
            }
        }
        if let Some(v) = ctx.forced_features.and_then(|f| f.get(id)) {
            return FeatureResult::new(v, Source::Override, "");
        }
        match target {
            Some(t) => self.eval_feature_outlined(t, ctx, Some(chain)),
            None => FeatureResult::new(&NULL, Source::UnknownFeature, ""),
        }
    }

    /// [`FeatureSet::eval_feature`] as one shared copy, for callers other
    /// than [`FeatureSet::evaluate`] (which gets its own inlined copy).
    #[inline(never)]
    fn eval_feature_outlined<'a>(
        &'a self,
        idx: usize,
        ctx: &EvalContext<'a>,
        parent: Option<&Chain<'_>>,
    ) -> FeatureResult<'a> {
        self.eval_feature(idx, ctx, parent)
    }

    #[inline(always)]
    fn eval_feature<'a>(
        &'a self,
        idx: usize,
        ctx: &EvalContext<'a>,
        parent: Option<&Chain<'_>>,
    ) -> FeatureResult<'a> {
        let feature = &self.features[idx];
        let depth = parent.map_or(0, |p| p.depth + 1);
        if depth > MAX_PREREQUISITE_DEPTH {
            return FeatureResult::new(&NULL, Source::CyclicPrerequisite, "");
        }
        let chain = Chain { idx, depth, parent };
        let groups = self.groups(ctx);
        let scope = Scope::new(groups);
        for rule in &feature.rules {
            if rule.gated {
                match self.rule_gate(rule, ctx, &chain, groups) {
                    Gate::Pass => {}
                    Gate::Skip(_) => continue,
                    Gate::Stop(source) => return FeatureResult::new(&NULL, source, ""),
                }
            }
            match &rule.kind {
                RuleKind::Force {
                    value,
                    on,
                    condition,
                    rollout,
                } => {
                    if !condition.eval_in(ctx.attributes, &scope) {
                        continue;
                    }
                    if let Some(rollout) = rollout {
                        if !self.is_included_in_rollout(rollout, ctx) {
                            continue;
                        }
                    }
                    return FeatureResult::with_on(value, *on, Source::Force, &rule.id);
                }
                RuleKind::Experiment(exp) => {
                    if let Some(r) = self.experiment_rule(feature, rule, exp, ctx, &chain) {
                        return r;
                    }
                }
                RuleKind::Empty => {}
            }
        }
        FeatureResult::with_on(
            &feature.default_value,
            feature.default_on,
            Source::DefaultValue,
            "",
        )
    }

    /// Prerequisites and filters of a rule (kept out of the rule loop).
    #[inline(never)]
    fn rule_gate<'a>(
        &'a self,
        rule: &'a Rule,
        ctx: &EvalContext<'a>,
        chain: &Chain<'_>,
        groups: &'a SavedGroups,
    ) -> Gate {
        for pc in &rule.parent_conditions {
            let parent = self.eval_by_id(&pc.id, pc.target, ctx, chain);
            if parent.source == Source::CyclicPrerequisite {
                return Gate::Stop(Source::CyclicPrerequisite);
            }
            if !pc.condition.eval_root(&ValueRoot(parent.value), groups) {
                if pc.gate {
                    return Gate::Stop(Source::Prerequisite);
                }
                return Gate::Skip(RuleOutcome::PrerequisiteUnmet);
            }
        }
        if let Some(filters) = &rule.filters {
            if self.is_filtered_out(filters, ctx) {
                return Gate::Skip(RuleOutcome::FilteredOut);
            }
        }
        Gate::Pass
    }

    /// An experiment rule: the result when it puts the user in a variation.
    #[inline(never)]
    fn experiment_rule<'a>(
        &'a self,
        feature: &'a Feature,
        rule: &'a Rule,
        exp: &'a Experiment,
        ctx: &EvalContext<'a>,
        chain: &Chain<'_>,
    ) -> Option<FeatureResult<'a>> {
        let routing = self.bandit_routing(exp, ctx);
        let mut res =
            self.run_experiment(exp, Some(&feature.key), ctx, Some(chain), routing.as_ref());
        if res.in_experiment && !res.passthrough {
            if res.hash_used {
                res.bandit = routing;
            }
            return Some(FeatureResult {
                value: res.value,
                on: js::truthy(res.value),
                source: Source::Experiment,
                rule_id: &rule.id,
                experiment: Some(exp),
                experiment_result: Some(res),
                bandit_routing: routing,
            });
        }
        None
    }

    /// `attributes[attr] || attributes[fallback] || ""`
    #[inline]
    fn hash_attribute<'a>(
        ctx: &EvalContext<'a>,
        attr: &'a AttrKey,
        fallback: Option<&'a AttrKey>,
    ) -> (&'a str, &'a Value) {
        if let Some(v) = ctx.attributes.get_key(attr) {
            if js::truthy(v) {
                return (&attr.name, v);
            }
        }
        if let Some(fb) = fallback {
            if let Some(v) = ctx.attributes.get_key(fb) {
                if js::truthy(v) {
                    return (&fb.name, v);
                }
            }
        }
        (&attr.name, &EMPTY_STRING)
    }

    #[inline(always)]
    fn is_included_in_rollout<'a>(&'a self, r: &'a Rollout, ctx: &EvalContext<'a>) -> bool {
        // Full coverage: a truthy hash attribute is all it takes (the
        // fallback attribute only matters when the attribute is falsy).
        if r.full
            && ctx
                .attributes
                .get_key(&r.hash_attribute)
                .is_some_and(js::truthy)
        {
            return true;
        }
        self.rollout_hash(r, ctx)
    }

    /// Rollouts that need hashing (or a fallback attribute).
    #[inline(never)]
    fn rollout_hash<'a>(&'a self, r: &'a Rollout, ctx: &EvalContext<'a>) -> bool {
        if r.range.is_none() {
            match r.coverage {
                None => return true,
                Some(0.0) => return false,
                _ => {}
            }
        }
        let fallback = if ctx.sticky.is_some() && !r.disable_sticky_bucketing {
            r.fallback_attribute.as_ref()
        } else {
            None
        };
        let (_, hv) = Self::hash_attribute(ctx, &r.hash_attribute, fallback);
        if !js::truthy(hv) {
            return false;
        }
        // Full coverage: every bucket (always < 1) passes `n <= coverage`, so
        // the hash itself is not needed when the hash version is valid.
        if r.range.is_none()
            && r.coverage.is_some_and(|c| c >= 1.0)
            && r.hash_version != BAD_HASH_VERSION
        {
            return true;
        }
        let Some(n) = hash_value(&r.seed, hv, r.hash_version) else {
            return false;
        };
        match (r.range, r.coverage) {
            (Some(range), _) => in_range(n, range),
            (None, Some(c)) => n <= c,
            (None, None) => true,
        }
    }

    fn is_filtered_out<'a>(&'a self, filters: &'a [Filter], ctx: &EvalContext<'a>) -> bool {
        filters.iter().any(|f| {
            let (_, hv) = Self::hash_attribute(ctx, &f.attribute, None);
            if !js::truthy(hv) {
                return true;
            }
            match hash_value(&f.seed, hv, f.hash_version) {
                None => true,
                Some(n) => !f.ranges.iter().any(|&r| in_range(n, r)),
            }
        })
    }

    fn bandit_routing<'a>(
        &'a self,
        exp: &'a Experiment,
        ctx: &EvalContext<'a>,
    ) -> Option<BanditAssignment<'a>> {
        let name = exp.bandit_ref.as_deref()?;
        let bandits = ctx.bandits.unwrap_or(&self.bandits);
        let def = bandits.defs.get(name)?;
        let groups = self.groups(ctx);
        for leaf in &def.contexts {
            if leaf.condition.eval_root(ctx.attributes, groups) {
                return Some(BanditAssignment {
                    leaf_id: leaf.leaf_id,
                    variation_weights: &leaf.weights,
                    bandit_version: def.version,
                });
            }
        }
        Some(BanditAssignment {
            leaf_id: -1,
            variation_weights: &exp.marginal_weights,
            bandit_version: def.version,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn make_result<'a>(
        exp: &'a Experiment,
        idx: i64,
        hash_used: bool,
        feature_id: Option<&'a str>,
        bucket: Option<f64>,
        sticky_used: bool,
        hash: (&'a str, &'a Value),
    ) -> ExperimentResult<'a> {
        let n = exp.variations.len() as i64;
        let (i, in_experiment) = if idx < 0 || idx >= n {
            (0usize, false)
        } else {
            (idx as usize, true)
        };
        ExperimentResult {
            value: exp.variations.get(i).unwrap_or(&NULL),
            variation_id: i,
            in_experiment,
            hash_used,
            hash_attribute: hash.0,
            hash_value: hash.1,
            feature_id,
            key: exp.variation_keys.get(i).map_or("0", |k| &**k),
            bucket,
            name: exp.variation_names.get(i).and_then(|n| n.as_deref()),
            passthrough: exp.passthrough.get(i).copied().unwrap_or(false),
            sticky_bucket_used: sticky_used,
            bandit: None,
        }
    }

    fn run_experiment<'a>(
        &'a self,
        exp: &'a Experiment,
        feature_id: Option<&'a str>,
        ctx: &EvalContext<'a>,
        chain: Option<&Chain<'_>>,
        routing: Option<&BanditAssignment<'a>>,
    ) -> ExperimentResult<'a> {
        let num_variations = exp.variations.len();
        let sticky_on = ctx.sticky.is_some() && !exp.disable_sticky_bucketing;
        let fallback = if sticky_on {
            exp.fallback_attribute.as_ref()
        } else {
            None
        };
        let hash = Self::hash_attribute(ctx, &exp.hash_attribute, fallback);
        let out = |idx: i64| Self::make_result(exp, idx, false, feature_id, None, false, hash);

        if num_variations < 2 || !ctx.enabled {
            return out(-1);
        }
        if let Some(patterns) = &exp.url_patterns {
            if !ctx.url.is_some_and(|u| is_url_targeted(u, patterns)) {
                return out(-1);
            }
        }
        if let Some(url) = ctx.url {
            if let Some(v) = get_query_string_override(&exp.key, url, num_variations) {
                return out(v as i64);
            }
        }
        if let Some(&v) = ctx.forced_variations.and_then(|m| m.get(&*exp.key)) {
            return out(v);
        }
        if !exp.active || exp.status.as_deref() == Some("draft") {
            return out(-1);
        }
        let hash_value_v = hash.1;
        if !js::truthy(hash_value_v) {
            return out(-1);
        }

        let mut assigned: i64 = -1;
        let mut found_sticky = false;
        let mut blocked = false;
        if sticky_on {
            let (v, b) = self.sticky_variation(exp, ctx);
            assigned = v;
            found_sticky = v >= 0;
            blocked = b;
        }

        if !found_sticky {
            if let Some(filters) = &exp.filters {
                if self.is_filtered_out(filters, ctx) {
                    return out(-1);
                }
            } else if let Some(ns) = &exp.namespace {
                let inside = match ns {
                    Some(ns) => js::with_js_string(hash_value_v, |hv| {
                        in_namespace(hv, &ns.id, ns.start, ns.end)
                    }),
                    None => false,
                };
                if !inside {
                    return out(-1);
                }
            }
            let groups = self.groups(ctx);
            if let Some(c) = &exp.condition {
                if !c.eval_root(ctx.attributes, groups) {
                    return out(-1);
                }
            }
            if !exp.parent_conditions.is_empty() {
                // Inline experiments start their own prerequisite chain.
                let root = Chain {
                    idx: usize::MAX,
                    depth: 0,
                    parent: None,
                };
                let chain = chain.unwrap_or(&root);
                for pc in &exp.parent_conditions {
                    let parent = self.eval_by_id(
                        &pc.id,
                        pc.target.or_else(|| self.position(&pc.id)),
                        ctx,
                        chain,
                    );
                    if parent.source == Source::CyclicPrerequisite
                        || !pc.condition.eval_root(&ValueRoot(parent.value), groups)
                    {
                        return out(-1);
                    }
                }
            }
        }

        let Some(n) = hash_value(&exp.seed, hash_value_v, exp.hash_version) else {
            return out(-1);
        };

        if !found_sticky {
            let choice = match routing {
                Some(r) if exp.ranges.is_none() => choose_variation(
                    n,
                    &get_bucket_ranges(
                        num_variations,
                        exp.coverage.unwrap_or(1.0),
                        Some(r.variation_weights),
                    ),
                ),
                _ => choose_variation(n, &exp.bucket_ranges),
            };
            assigned = choice.map_or(-1, |c| c as i64);
        }

        if blocked {
            return Self::make_result(exp, -1, false, feature_id, None, true, hash);
        }
        if assigned < 0 {
            return out(-1);
        }
        if let Some(f) = exp.force {
            return out(f);
        }
        if ctx.qa_mode || exp.status.as_deref() == Some("stopped") {
            return out(-1);
        }

        let result =
            Self::make_result(exp, assigned, true, feature_id, Some(n), found_sticky, hash);
        if sticky_on {
            Self::persist_sticky(ctx, exp, hash, result.key);
        }
        result
    }

    /// `_getStickyBucketVariation`: (variation or -1, version blocked).
    fn sticky_variation<'a>(&'a self, exp: &'a Experiment, ctx: &EvalContext<'a>) -> (i64, bool) {
        let Some(cell) = &ctx.sticky else {
            return (-1, false);
        };
        let svc = cell.borrow();
        let (ha, hv) = Self::hash_attribute(ctx, &exp.hash_attribute, None);
        let fb_key: &AttrKey = exp.fallback_attribute.as_ref().unwrap_or(&ID_KEY);
        let (fa, fv) = Self::hash_attribute(ctx, fb_key, None);
        let mut assignments: BTreeMap<String, String> = BTreeMap::new();
        if js::truthy(fv) {
            if let Some(doc) = svc.get_assignments(fa, &js::to_js_string(fv)) {
                assignments.extend(doc.assignments);
            }
        }
        if let Some(doc) = svc.get_assignments(ha, &js::to_js_string(hv)) {
            assignments.extend(doc.assignments);
        }
        for v in 0..exp.min_bucket_version.max(0) {
            if assignments.contains_key(&experiment_key(&exp.key, v)) {
                return (-1, true);
            }
        }
        let Some(variation_key) = assignments.get(&experiment_key(&exp.key, exp.bucket_version))
        else {
            return (-1, false);
        };
        let idx = exp
            .meta_keys
            .iter()
            .position(|k| k.as_deref() == Some(variation_key.as_str()));
        (idx.map_or(-1, |i| i as i64), false)
    }

    fn persist_sticky(
        ctx: &EvalContext<'_>,
        exp: &Experiment,
        hash: (&str, &Value),
        variation_key: &str,
    ) {
        let Some(cell) = &ctx.sticky else {
            return;
        };
        let mut svc = cell.borrow_mut();
        let value = js::to_js_string(hash.1);
        let key = experiment_key(&exp.key, exp.bucket_version);
        let mut doc = svc
            .get_assignments(hash.0, &value)
            .unwrap_or_else(|| StickyAssignmentsDoc {
                attribute_name: hash.0.to_string(),
                attribute_value: value.clone(),
                assignments: BTreeMap::new(),
            });
        if doc.assignments.get(&key).map(String::as_str) != Some(variation_key) {
            doc.assignments.insert(key, variation_key.to_string());
            svc.save_assignments(doc);
        }
    }
}
