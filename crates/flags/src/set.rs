//! Loading a features payload into an immutable, shareable [`FeatureSet`].

use crate::attributes::{key_hash, NameIndex, NameKey};
use crate::condition::SavedGroups;
use crate::decrypt::{decrypt, DecryptError};
use crate::model::{
    compile_feature, saved_groups_of, ContextualBandits, Diagnostic, Experiment, Feature, RuleKind,
};
use serde_json::Value;
use std::fmt;

/// Why a payload could not be loaded at all. (Problems inside features are
/// not errors: they are reported by [`FeatureSet::diagnostics`].)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The payload is not valid JSON.
    Json(String),
    /// The payload is not a JSON object, or `features` is not an object.
    InvalidPayload(&'static str),
    /// The payload is encrypted but no key was given.
    MissingDecryptionKey,
    /// Decryption failed.
    Decrypt(DecryptError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Json(e) => write!(f, "invalid JSON: {e}"),
            Error::InvalidPayload(why) => write!(f, "invalid features payload: {why}"),
            Error::MissingDecryptionKey => {
                f.write_str("payload is encrypted and no decryption key was given")
            }
            Error::Decrypt(e) => write!(f, "cannot decrypt payload: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<DecryptError> for Error {
    fn from(e: DecryptError) -> Self {
        Error::Decrypt(e)
    }
}

/// A compiled set of features: immutable once loaded, `Send + Sync`, meant
/// to be shared behind an `Arc` and evaluated concurrently.
///
/// Loading compiles every condition (regular expressions included), resolves
/// prerequisites and precomputes bucket ranges; evaluation does no parsing.
#[derive(Debug, Default)]
pub struct FeatureSet {
    pub(crate) features: Vec<Feature>,
    pub(crate) index: NameIndex,
    pub(crate) saved_groups: SavedGroups,
    pub(crate) bandits: ContextualBandits,
    /// Auto experiments (`experiments` in the payload), e.g. URL redirects.
    pub(crate) experiments: Vec<Experiment>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl FeatureSet {
    /// Loads a GrowthBook features payload:
    /// `{"features": {...}, "savedGroups": {...}}` (also accepts
    /// `contextualBandits`). Encrypted payloads need
    /// [`FeatureSet::from_json_with_key`].
    pub fn from_json(payload: &str) -> Result<FeatureSet, Error> {
        let v: Value = serde_json::from_str(payload).map_err(|e| Error::Json(e.to_string()))?;
        Self::from_value(&v)
    }

    /// Like [`FeatureSet::from_json`], decrypting `encryptedFeatures` and
    /// `encryptedSavedGroups` with the base64 `key`.
    pub fn from_json_with_key(payload: &str, key: &str) -> Result<FeatureSet, Error> {
        let mut v: Value = serde_json::from_str(payload).map_err(|e| Error::Json(e.to_string()))?;
        if let Value::Object(m) = &mut v {
            for (enc, plain) in [
                ("encryptedFeatures", "features"),
                ("encryptedSavedGroups", "savedGroups"),
            ] {
                if let Some(Value::String(s)) = m.remove(enc) {
                    let text = decrypt(&s, key)?;
                    let parsed: Value =
                        serde_json::from_str(&text).map_err(|e| Error::Json(e.to_string()))?;
                    m.insert(plain.to_string(), parsed);
                }
            }
        }
        Self::from_value(&v)
    }

    /// Loads from an already parsed payload.
    pub fn from_value(payload: &Value) -> Result<FeatureSet, Error> {
        let Value::Object(m) = payload else {
            return Err(Error::InvalidPayload("expected a JSON object"));
        };
        if m.get("encryptedFeatures").is_some_and(Value::is_string) && !m.contains_key("features") {
            return Err(Error::MissingDecryptionKey);
        }
        let features = match m.get("features") {
            None | Some(Value::Null) => None,
            Some(Value::Object(f)) => Some(f),
            Some(_) => return Err(Error::InvalidPayload("`features` must be an object")),
        };
        let mut set = FeatureSet::default();
        let mut other = Vec::new();
        set.saved_groups = saved_groups_of(m.get("savedGroups"), &mut other);
        match m.get("experiments") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, e) in list.iter().enumerate() {
                    let exp = Experiment::from_json(e);
                    other.extend(
                        exp.diagnostics()
                            .iter()
                            .map(|d| format!("experiments[{i}].{d}")),
                    );
                    set.experiments.push(exp);
                }
            }
            Some(_) => other.push("experiments: expected an array".into()),
        }
        if let Some(cb) = m.get("contextualBandits") {
            let (b, mut d) = ContextualBandits::from_json(cb);
            set.bandits = b;
            other.append(&mut d);
        }
        set.diagnostics
            .extend(other.into_iter().map(|message| Diagnostic {
                feature: None,
                message,
            }));
        if let Some(features) = features {
            for (key, def) in features {
                let mut diags = Vec::new();
                let f = compile_feature(key, def, &mut diags);
                set.diagnostics
                    .extend(diags.into_iter().map(|message| Diagnostic {
                        feature: Some(key.clone()),
                        message,
                    }));
                let entry = set.features.len();
                set.index.insert(
                    key_hash(key),
                    key,
                    entry,
                    set.features.iter().map(|f| (key_hash(&f.key), &*f.key)),
                );
                set.features.push(f);
            }
        }
        set.resolve_prerequisites();
        Ok(set)
    }

    fn resolve_prerequisites(&mut self) {
        let positions: crate::attributes::FastMap<Box<str>, usize> = self
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.key.clone(), i))
            .collect();
        let index = &positions;
        let mut missing = Vec::new();
        for f in &mut self.features {
            for (ri, rule) in f.rules.iter_mut().enumerate() {
                let exp_parents = match &mut rule.kind {
                    RuleKind::Experiment(e) => &mut e.parent_conditions[..],
                    _ => &mut [][..],
                };
                for pc in rule
                    .parent_conditions
                    .iter_mut()
                    .chain(exp_parents.iter_mut())
                {
                    pc.target = index.get(&*pc.id).copied();
                    if pc.target.is_none() {
                        missing.push(Diagnostic {
                            feature: Some(f.key.to_string()),
                            message: format!(
                                "features.{}.rules[{ri}].parentConditions: prerequisite feature `{}` does not exist",
                                f.key, pc.id
                            ),
                        });
                    }
                }
            }
        }
        self.diagnostics.extend(missing);
    }

    /// An empty set (for running inline experiments without features).
    pub fn empty() -> &'static FeatureSet {
        static EMPTY: std::sync::OnceLock<FeatureSet> = std::sync::OnceLock::new();
        EMPTY.get_or_init(FeatureSet::default)
    }

    /// Problems found while loading (malformed conditions, unknown
    /// operators, invalid regular expressions, wrongly typed fields...).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether the set has no features.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Whether a feature exists.
    pub fn contains(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Position of a feature in [`FeatureSet::keys`] order.
    #[inline]
    pub(crate) fn position(&self, key: &str) -> Option<usize> {
        let k = NameKey::of(key);
        self.index
            .find(k.hash, k.words, key, |i| &self.features[i].key)
    }

    /// Feature keys, in evaluation order of [`FeatureSet::evaluate_all`].
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|f| &*f.key)
    }

    /// Attribute names experiment rules hash on (`hashAttribute`, default
    /// `id`, and `fallbackAttribute`): the attributes whose sticky bucket
    /// documents a caller may want to prefetch before evaluating.
    pub fn sticky_bucket_attributes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for f in &self.features {
            for r in &f.rules {
                if let RuleKind::Experiment(e) = &r.kind {
                    for a in std::iter::once(&e.hash_attribute).chain(e.fallback_attribute.as_ref())
                    {
                        if !out.contains(&&*a.name) {
                            out.push(&a.name);
                        }
                    }
                }
            }
        }
        out
    }

    /// Auto experiments loaded from the payload's `experiments` array.
    pub fn experiments(&self) -> &[Experiment] {
        &self.experiments
    }

    /// The saved groups loaded with the payload.
    pub fn saved_groups(&self) -> &SavedGroups {
        &self.saved_groups
    }
}
