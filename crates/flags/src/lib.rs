//! Flywheel's feature-flag and experiment evaluation engine, implementing
//! the [GrowthBook SDK specification](https://docs.growthbook.io/lib/build-your-own)
//! (spec 0.8.0). Pure: no I/O, no async runtime, no global state.
//!
//! ```
//! use flywheel_flags::{Attributes, EvalContext, FeatureSet, Source};
//!
//! let set = FeatureSet::from_json(r#"{
//!   "features": {
//!     "new-checkout": {
//!       "defaultValue": false,
//!       "rules": [
//!         {"id": "fr_1", "condition": {"country": {"$in": ["US", "CA"]}}, "force": true, "coverage": 1.0}
//!       ]
//!     }
//!   }
//! }"#).unwrap();
//! assert!(set.diagnostics().is_empty());
//!
//! let attrs = Attributes::from_json(&serde_json::json!({"id": "u1", "country": "US"}));
//! let ctx = EvalContext::new(&attrs);
//! let r = set.evaluate("new-checkout", &ctx);
//! assert!(r.on);
//! assert_eq!(r.source, Source::Force);
//! assert_eq!(r.rule_id, "fr_1");
//! ```
//!
//! # Design
//!
//! * [`FeatureSet::from_json`] compiles a payload once: conditions become a
//!   [`Condition`] tree (regular expressions compiled — plain literals such
//!   as `@example\.com$` become string tests —, `$in` lists turned into sets
//!   when long, version strings padded, cheap checks ordered first and
//!   plain attribute tests flattened into a list the rule loop runs
//!   inline), prerequisites are resolved to indices, bucket ranges and the
//!   truthiness of forced values precomputed.
//!   Problems are collected in [`FeatureSet::diagnostics`]; malformed
//!   conditions evaluate to `false`, nothing panics, nesting is bounded by
//!   [`MAX_DEPTH`].
//! * A [`FeatureSet`] is immutable and `Send + Sync`; share it with `Arc`.
//! * [`Attributes`] are built once per user (names hashed once into a
//!   table tuned so that a lookup is usually one probe) and an
//!   [`EvalContext`] borrows them plus optional forced variations/features,
//!   saved groups, contextual bandits, the page URL and a
//!   [`StickyBucketService`] the caller implements over its storage.
//! * [`FeatureSet::evaluate`] evaluates one feature,
//!   [`FeatureSet::evaluate_all`] every feature, [`FeatureSet::run`] an
//!   inline experiment and [`FeatureSet::url_redirect`] the payload's
//!   redirect experiments. Results ([`FeatureResult`], [`ExperimentResult`])
//!   borrow from the set and the context and say why (source, rule id,
//!   experiment details); `to_json` gives the spec's JSON shape.
//! * Evaluating a feature does not allocate, except for sticky bucketing,
//!   contextual bandit routing and the rare coercions of arrays/objects to
//!   strings (a test with a counting allocator checks this).
//!
//! The crate passes all 517 cases of the GrowthBook spec 0.8.0 test suite
//! (`tests/conformance.rs`). JavaScript semantics are reproduced where the
//! spec pins them: loose comparisons between strings and numbers, `String(x)`
//! coercions, strict equality for `$eq`/`$in`, truthiness for `on`/`off` and
//! hash attributes, FNV-1a over UTF-16 code units. Known differences: regular
//! expressions use Rust's `regex` syntax (no look-around or
//! back-references; such patterns are reported as diagnostics and evaluate to
//! `false`, and `\d`/`\w` are Unicode-aware), and object equality ignores
//! key order (JavaScript's `JSON.stringify` comparison does not).

mod attributes;
mod condition;
mod decrypt;
mod eval;
pub mod hash;
mod js;
mod model;
mod set;
mod sticky;
mod url;

pub use attributes::Attributes;
pub use condition::{padded_version_string, Condition, SavedGroups, MAX_DEPTH};
pub use decrypt::{decrypt, encrypt, DecryptError};
pub use eval::{
    BanditAssignment, EvalContext, ExperimentResult, FeatureResult, ForcedFeatures,
    ForcedVariations, RuleOutcome, RuleTrace, Source, UrlRedirect, MAX_PREREQUISITE_DEPTH,
};
pub use model::{ContextualBandits, Diagnostic, Experiment};
pub use set::{Error, FeatureSet};
pub use sticky::{InMemoryStickyBucketService, StickyAssignmentsDoc, StickyBucketService};
pub use url::get_query_string_override;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_set_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FeatureSet>();
        assert_send_sync::<std::sync::Arc<FeatureSet>>();
        assert_send_sync::<Condition>();
        assert_send_sync::<Attributes>();
    }
}
