//! Sticky bucketing: persisting experiment assignments per attribute value
//! so that users keep their variation when targeting or weights change.
//!
//! The engine does no I/O: the caller implements [`StickyBucketService`]
//! over whatever storage it has (the server uses its store; tests use
//! [`InMemoryStickyBucketService`]).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The assignments stored for one attribute value, e.g. all experiments a
/// given `deviceId` was bucketed into: `{"<experimentKey>__<bucketVersion>":
/// "<variationKey>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StickyAssignmentsDoc {
    /// Attribute name (`id`, `deviceId`, ...).
    pub attribute_name: String,
    /// Attribute value, stringified.
    pub attribute_value: String,
    /// Experiment key with bucket version → variation key.
    #[serde(default)]
    pub assignments: BTreeMap<String, String>,
}

impl StickyAssignmentsDoc {
    /// The storage key the spec uses: `"<attributeName>||<attributeValue>"`.
    pub fn key(&self) -> String {
        format!("{}||{}", self.attribute_name, self.attribute_value)
    }
}

/// Storage for sticky bucket assignments, implemented by the caller.
pub trait StickyBucketService {
    /// The stored document for `attribute_name` = `attribute_value`, if any.
    fn get_assignments(
        &self,
        attribute_name: &str,
        attribute_value: &str,
    ) -> Option<StickyAssignmentsDoc>;

    /// Stores (replaces) a document.
    fn save_assignments(&mut self, doc: StickyAssignmentsDoc);
}

/// A [`StickyBucketService`] keeping documents in a `HashMap`.
#[derive(Debug, Clone, Default)]
pub struct InMemoryStickyBucketService {
    docs: HashMap<String, StickyAssignmentsDoc>,
}

impl InMemoryStickyBucketService {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// All stored documents by key (`"name||value"`).
    pub fn docs(&self) -> &HashMap<String, StickyAssignmentsDoc> {
        &self.docs
    }
}

impl StickyBucketService for InMemoryStickyBucketService {
    fn get_assignments(&self, name: &str, value: &str) -> Option<StickyAssignmentsDoc> {
        self.docs.get(&format!("{name}||{value}")).cloned()
    }

    fn save_assignments(&mut self, doc: StickyAssignmentsDoc) {
        self.docs.insert(doc.key(), doc);
    }
}

/// `"<experimentKey>__<bucketVersion>"`
pub(crate) fn experiment_key(key: &str, bucket_version: i64) -> String {
    format!("{key}__{bucket_version}")
}
