//! Compiled flag snapshots: what every serving endpoint (GrowthBook, PostHog, OFREP, `/evaluate`) reads.
//!
//! A [`Snapshot`] is one project environment compiled once: the GrowthBook payload text and its ETag, the flag
//! engine's [`FeatureSet`](flywheel_flags::FeatureSet), and per feature what the PostHog and OFREP shapes need
//! (type, version, description, rule kinds). Writes rebuild the project's snapshots right after they commit and
//! swap them in whole ([`FlagRegistry::rebuild`]); readers clone an `Arc` under a read lock and never wait on
//! storage. Every swap is announced on a broadcast channel that streaming endpoints listen to.
//!
//! Client keys are resolved through a small cache (positive and negative answers), dropped whenever a key is
//! created or revoked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flywheel_store::{SdkBinding, Store};
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::error::ApiError;
use crate::features::{growthbook_feature, FeatureDefinition, Rule, SavedGroup, ValueType};
use crate::state::AppState;

/// Tells GrowthBook SDKs that this server streams changes (`/sub/{clientKey}`).
pub const SSE_SUPPORT: header::HeaderName = header::HeaderName::from_static("x-sse-support");

/// The environment a project API key (`fwpub_…`) serves flags from; SDK client keys name their own.
pub const DEFAULT_ENVIRONMENT: &str = "production";

/// How a rule decides, for the reasons reported to PostHog and OFREP clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Force,
    Rollout,
    Experiment,
}

/// What the serving endpoints need to know about one feature in one environment.
#[derive(Debug, Clone)]
pub struct FlagInfo {
    pub key: String,
    pub value_type: ValueType,
    pub version: i64,
    pub description: String,
    pub owner: String,
    pub tags: Vec<String>,
    /// Enabled in this environment (otherwise clients get "disabled").
    pub served: bool,
    /// The rules served in this environment, in order.
    pub rules: Rules,
    pub has_experiment: bool,
    /// The key as a JSON string literal.
    pub key_json: String,
    /// OFREP's static flag metadata members (`"version":…,"environment":…,…`), pre-rendered.
    pub ofrep_metadata: String,
    /// PostHog's static metadata members (`"version":…` and, when not empty/false, `"description"`,
    /// `"has_experiment"`).
    pub posthog_metadata: String,
}

/// The ids and kinds of a feature's rules in one environment, in order: found by id for every evaluation that a
/// rule decided (a feature has a handful of rules, so a scan beats hashing the id).
#[derive(Debug, Clone, Default)]
pub struct Rules(Vec<(String, RuleKind)>);

impl Rules {
    /// Position and kind of the rule with this id.
    pub fn get(&self, id: &str) -> Option<(usize, RuleKind)> {
        self.0
            .iter()
            .position(|(rule, _)| rule == id)
            .map(|i| (i, self.0[i].1))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Most strings (keys, variants, rule ids) need no escaping: copy them.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Appends `v` as JSON.
pub fn push_json(out: &mut Vec<u8>, v: &Value) {
    let _ = serde_json::to_writer(&mut *out, v);
}

fn json_text(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    push_json_str(&mut out, s);
    String::from_utf8(out).unwrap_or_default()
}

/// One project environment, compiled.
pub struct Snapshot {
    pub project_id: i64,
    pub environment: String,
    /// The GrowthBook payload (`{"status":200,"features":…,"savedGroups":…,"dateUpdated":…}`).
    pub body: String,
    /// Strong ETag of `body`, quoted.
    pub etag: String,
    pub date_updated: String,
    pub set: flywheel_flags::FeatureSet,
    /// Every live (not archived) feature, by key order, including those disabled in this environment.
    pub flags: Vec<FlagInfo>,
    index: HashMap<String, usize>,
    /// Encrypted forms of `body` per AES key: (payload text, ETag), made on first use.
    encrypted: Mutex<HashMap<String, Arc<(String, String)>>>,
}

impl Snapshot {
    pub fn flag(&self, key: &str) -> Option<&FlagInfo> {
        self.index.get(key).map(|&i| &self.flags[i])
    }

    /// The payload and ETag for a connection: the plain payload, or GrowthBook's `encryptedFeatures` form under
    /// the connection's key (one random IV per snapshot and key, so the ETag is stable until the flags change).
    pub fn payload_for(
        &self,
        encryption_key: Option<&str>,
    ) -> Result<Arc<(String, String)>, ApiError> {
        let Some(key) = encryption_key else {
            return Ok(Arc::new((self.body.clone(), self.etag.clone())));
        };
        let mut cache = self.encrypted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache.get(key) {
            return Ok(hit.clone());
        }
        let doc: Value = serde_json::from_str(&self.body).map_err(ApiError::internal)?;
        let iv = *uuid::Uuid::new_v4().as_bytes();
        let seal = |v: &Value| {
            flywheel_flags::encrypt(&v.to_string(), key, iv).map_err(ApiError::internal)
        };
        let mut out = json!({
            "status": 200,
            "features": {},
            "encryptedFeatures": seal(&doc["features"])?,
            "dateUpdated": doc["dateUpdated"],
        });
        if let Some(groups) = doc.get("savedGroups") {
            out["encryptedSavedGroups"] = json!(seal(groups)?);
        }
        let text = out.to_string();
        let etag = strong_etag(&[text.as_bytes()]);
        let entry = Arc::new((text, etag));
        cache.insert(key.to_owned(), entry.clone());
        Ok(entry)
    }
}

/// A quoted strong ETag over some byte strings.
pub fn strong_etag(parts: &[&[u8]]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether an `If-None-Match` header matches an ETag (`*`, lists, weak forms).
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)
            })
        })
}

const BINDING_CACHE_LIMIT: usize = 10_000;

/// Compiled snapshots of every project environment that has been served, and the client-key cache.
pub struct FlagRegistry {
    /// Project → environment → snapshot.
    snapshots: RwLock<HashMap<i64, HashMap<String, Arc<Snapshot>>>>,
    bindings: RwLock<HashMap<String, Option<Arc<SdkBinding>>>>,
    /// Answers dropped by `forget_bindings`, for when the store cannot be read.
    stale_bindings: RwLock<HashMap<String, Option<Arc<SdkBinding>>>>,
    /// Serializes rebuilds, so that the last one to run read the newest committed state.
    rebuilding: tokio::sync::Mutex<()>,
    changes: tokio::sync::broadcast::Sender<i64>,
    /// Per-credential request limit of the SDK endpoints.
    pub limiter: RateLimiter,
    /// Stored person and group properties of recently evaluated users.
    pub subjects: Arc<SubjectCache>,
}

impl FlagRegistry {
    /// `rate_limit`: requests per second per SDK credential (`0`: unlimited).
    pub fn new(rate_limit: u32) -> Self {
        Self {
            snapshots: RwLock::default(),
            bindings: RwLock::default(),
            stale_bindings: RwLock::default(),
            rebuilding: tokio::sync::Mutex::new(()),
            changes: tokio::sync::broadcast::channel(1024).0,
            limiter: RateLimiter::new(rate_limit),
            subjects: Arc::default(),
        }
    }

    /// The compiled snapshot of a project environment; compiles it from storage only the first time.
    pub async fn snapshot(
        &self,
        store: &Store,
        project_id: i64,
        environment: &str,
    ) -> Result<Arc<Snapshot>, ApiError> {
        if let Some(hit) = self.cached(project_id, environment) {
            return Ok(hit);
        }
        self.rebuild_quietly(store, project_id).await?;
        if let Some(hit) = self.cached(project_id, environment) {
            return Ok(hit);
        }
        // An environment without features still has an (empty) snapshot.
        let snapshot = Arc::new(compile(project_id, environment, &[], &HashMap::new()));
        self.snapshots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(project_id)
            .or_default()
            .insert(environment.to_owned(), snapshot.clone());
        Ok(snapshot)
    }

    fn cached(&self, project_id: i64, environment: &str) -> Option<Arc<Snapshot>> {
        let map = self.snapshots.read().unwrap_or_else(|e| e.into_inner());
        map.get(&project_id)?.get(environment).cloned()
    }

    /// Recompiles every environment of a project from storage, swaps the snapshots in and announces the change.
    pub async fn rebuild(&self, store: &Store, project_id: i64) -> Result<(), ApiError> {
        self.rebuild_quietly(store, project_id).await?;
        // No receiver (no open stream) is not an error.
        let _ = self.changes.send(project_id);
        Ok(())
    }

    /// [`Self::rebuild`] after a write has committed: a failure must not turn the (successful) write into an
    /// error, so it is logged and the project's snapshots are dropped, to be compiled again on the next read.
    pub async fn refresh(&self, store: &Store, project_id: i64) {
        // Other nodes recompile too (shared metadata; see `flag_sync`).
        if let Err(e) = store.announce_flags(project_id).await {
            tracing::warn!(project_id, error = %e, "announcing a flag change failed; other nodes poll for it");
        }
        if let Err(e) = self.rebuild(store, project_id).await {
            tracing::error!(project_id, error = ?e, "recompiling flags failed; they will be compiled on next use");
            self.snapshots
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&project_id);
            let _ = self.changes.send(project_id);
        }
    }

    async fn rebuild_quietly(&self, store: &Store, project_id: i64) -> Result<(), ApiError> {
        let _serial = self.rebuilding.lock().await;
        let records = store.features(project_id, false).await?;
        let environments = store.environments(project_id).await?;
        let groups: HashMap<String, SavedGroup> = store
            .saved_groups(project_id)
            .await?
            .into_iter()
            .filter_map(|g| {
                serde_json::from_value(g.definition)
                    .ok()
                    .map(|d| (g.key, d))
            })
            .collect();
        let features: Vec<(String, i64, String, FeatureDefinition)> = records
            .into_iter()
            .filter_map(|r| {
                let def = serde_json::from_value(r.definition).ok()?;
                Some((r.key, r.version, r.updated_at, def))
            })
            .collect();
        let compiled: HashMap<String, Arc<Snapshot>> = environments
            .iter()
            .map(|e| {
                let s = compile(project_id, &e.key, &features, &groups);
                (e.key.clone(), Arc::new(s))
            })
            .collect();
        self.snapshots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(project_id, compiled);
        Ok(())
    }

    /// Compiles the snapshots of every project that has features (at start-up, so that the first requests do
    /// not wait on storage).
    pub async fn warm(&self, store: &Store) -> Result<usize, ApiError> {
        let projects = store.projects_with_features().await?;
        for &p in &projects {
            self.rebuild_quietly(store, p).await?;
        }
        Ok(projects.len())
    }

    /// Whether this node has compiled snapshots of the project.
    pub fn serves(&self, project_id: i64) -> bool {
        self.snapshots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&project_id)
    }

    /// The projects this node has compiled snapshots of.
    pub fn projects(&self) -> Vec<i64> {
        self.snapshots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<i64> {
        self.changes.subscribe()
    }

    /// What an SDK client key serves (`None`: unknown or revoked).
    pub async fn binding(
        &self,
        store: &Store,
        key: &str,
    ) -> Result<Option<Arc<SdkBinding>>, ApiError> {
        if let Some(hit) = self
            .bindings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            return Ok(hit.clone());
        }
        let found = match store.sdk_binding(key).await {
            Ok(found) => found.map(Arc::new),
            Err(e) => {
                // The metadata database is away: a key known before the caches were last dropped keeps serving
                // (flags keep working on the last snapshot while PostgreSQL is down).
                let stale = self
                    .stale_bindings
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                match stale.get(key) {
                    Some(hit) => return Ok(hit.clone()),
                    None => return Err(e.into()),
                }
            }
        };
        let mut map = self.bindings.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= BINDING_CACHE_LIMIT {
            map.clear();
        }
        map.insert(key.to_owned(), found.clone());
        Ok(found)
    }

    /// After SDK keys changed here: forgets them, and tells the other nodes to (shared metadata).
    pub async fn keys_changed(&self, store: &Store) {
        self.forget_bindings();
        if let Err(e) = store.announce_keys().await {
            tracing::warn!(error = %e, "announcing an SDK key change failed; other nodes poll for it");
        }
    }

    /// Drops cached client-key answers (a key was created or revoked). They are kept aside, used only when the
    /// metadata database cannot be read.
    pub fn forget_bindings(&self) {
        let forgotten =
            std::mem::take(&mut *self.bindings.write().unwrap_or_else(|e| e.into_inner()));
        let mut stale = self
            .stale_bindings
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if stale.len() + forgotten.len() > BINDING_CACHE_LIMIT {
            stale.clear();
        }
        stale.extend(forgotten);
    }
}

/// Compiles one environment of a project.
fn compile(
    project_id: i64,
    environment: &str,
    features: &[(String, i64, String, FeatureDefinition)],
    groups: &HashMap<String, SavedGroup>,
) -> Snapshot {
    let mut served = Map::new();
    let mut flags = Vec::with_capacity(features.len());
    let mut date_updated = String::new();
    for (key, version, updated_at, def) in features {
        date_updated = date_updated.max(updated_at.clone());
        let settings = def.environments.get(environment).filter(|s| s.enabled);
        if let Some(f) = growthbook_feature(key, def, environment, groups) {
            served.insert(key.clone(), f);
        }
        let mut rules = Vec::new();
        let mut has_experiment = false;
        for rule in settings.map(|s| s.rules.as_slice()).unwrap_or_default() {
            let (id, kind) = match rule {
                Rule::Force { id, .. } => (id, RuleKind::Force),
                Rule::Rollout { id, .. } => (id, RuleKind::Rollout),
                Rule::Experiment { id, .. } => {
                    has_experiment = true;
                    (id, RuleKind::Experiment)
                }
            };
            rules.push((id.clone(), kind));
        }
        let rules = Rules(rules);
        let mut ofrep_metadata = format!(
            "\"version\":{version},\"environment\":{}",
            json_text(environment)
        );
        for (name, value) in [
            ("description", def.description.clone()),
            ("owner", def.owner.clone()),
            ("tags", def.tags.join(",")),
        ] {
            if !value.is_empty() {
                ofrep_metadata.push_str(&format!(",\"{name}\":{}", json_text(&value)));
            }
        }
        // Optional members are left out when they have their default (PostHog SDKs read them as optional).
        let mut posthog_metadata = format!("\"version\":{version}");
        if !def.description.is_empty() {
            posthog_metadata.push_str(&format!(",\"description\":{}", json_text(&def.description)));
        }
        if has_experiment {
            posthog_metadata.push_str(",\"has_experiment\":true");
        }
        flags.push(FlagInfo {
            key_json: json_text(key),
            ofrep_metadata,
            posthog_metadata,
            key: key.clone(),
            value_type: def.value_type,
            version: *version,
            description: def.description.clone(),
            owner: def.owner.clone(),
            tags: def.tags.clone(),
            served: settings.is_some(),
            rules,
            has_experiment,
        });
    }
    if date_updated.is_empty() {
        date_updated = "1970-01-01T00:00:00.000000Z".to_owned();
    }
    let list_groups: Map<String, Value> = groups
        .iter()
        .filter_map(|(k, g)| g.list_values().map(|v| (k.clone(), json!(v))))
        .collect();
    let mut payload = json!({"status": 200, "features": served, "dateUpdated": date_updated});
    if !list_groups.is_empty() {
        payload["savedGroups"] = Value::Object(list_groups);
    }
    let body = payload.to_string();
    let etag = strong_etag(&[body.as_bytes()]);
    let set = flywheel_flags::FeatureSet::from_value(&payload).unwrap_or_else(|e| {
        // Definitions are validated on write; a payload the engine refuses would be a bug. Serve nothing rather
        // than fail every request, and say so.
        tracing::error!(project_id, environment, error = %e, "compiled flag payload was refused by the engine");
        flywheel_flags::FeatureSet::from_json(r#"{"features":{}}"#).expect("an empty payload compiles")
    });
    let index = flags
        .iter()
        .enumerate()
        .map(|(i, f)| (f.key.clone(), i))
        .collect();
    Snapshot {
        project_id,
        environment: environment.to_owned(),
        body,
        etag,
        date_updated,
        set,
        flags,
        index,
        encrypted: Mutex::default(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Credentials of the SDK-facing endpoints

/// What an SDK credential gives access to.
pub struct Access {
    pub project_id: i64,
    pub environment: String,
    pub encryption_key: Option<String>,
}

/// Resolves an SDK client key (`sdk-…`, its environment) or a project API key (the default environment).
pub async fn resolve_key(state: &AppState, key: &str) -> Result<Option<Access>, ApiError> {
    let key = key.trim();
    if key.is_empty() {
        return Ok(None);
    }
    if key.starts_with(flywheel_store::SDK_KEY_PREFIX) {
        return Ok(state
            .flags
            .binding(&state.store, key)
            .await?
            .map(|b| Access {
                project_id: b.project_id,
                environment: b.environment.clone(),
                encryption_key: b.encryption_key.clone(),
            }));
    }
    Ok(state
        .tokens
        .project_for(&state.store, key)
        .await?
        .map(|project_id| Access {
            project_id,
            environment: DEFAULT_ENVIRONMENT.to_owned(),
            encryption_key: None,
        }))
}

// ---------------------------------------------------------------------------------------------------------------
// GrowthBook SDK endpoints

fn invalid_client_key() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_client_key",
        "unknown or revoked SDK client key",
    )
}

/// `GET /api/features/{client_key}`: the environment's payload (encrypted when the connection says so), with an
/// ETag; `If-None-Match` gets 304.
pub async fn growthbook_payload(
    State(state): State<AppState>,
    Path(client_key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = resolve_key(&state, &client_key)
        .await?
        .ok_or_else(invalid_client_key)?;
    let snapshot = state
        .flags
        .snapshot(&state.store, access.project_id, &access.environment)
        .await?;
    let payload = snapshot.payload_for(access.encryption_key.as_deref())?;
    let (body, etag) = (&payload.0, &payload.1);
    // GrowthBook's SDKs (JavaScript, Java, C#…) open the `/sub/{clientKey}` stream only when the payload they
    // fetched says it is there, as the GrowthBook proxy does.
    let common = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, "no-cache".to_owned()),
        (SSE_SUPPORT, "enabled".to_owned()),
    ];
    if if_none_match(&headers, etag) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    Ok((
        StatusCode::OK,
        common,
        [(header::CONTENT_TYPE, "application/json".to_owned())],
        body.clone(),
    )
        .into_response())
}

/// Server-sent events for streaming GrowthBook SDKs (`{streamingHost}/sub/{clientKey}`): an `event: features`
/// with the whole payload whenever the environment's payload changes; a comment every 20 s keeps proxies open.
pub async fn growthbook_stream(
    State(state): State<AppState>,
    Path(client_key): Path<String>,
) -> Result<Response, ApiError> {
    let access = resolve_key(&state, &client_key)
        .await?
        .ok_or_else(invalid_client_key)?;
    change_stream(state, access, |snapshot, access| {
        let payload = snapshot
            .payload_for(access.encryption_key.as_deref())
            .ok()?;
        let event = axum::response::sse::Event::default()
            .event("features")
            .data(payload.0.clone());
        Some((payload.1.clone(), event))
    })
    .await
}

/// A server-sent-events response that emits `render(snapshot)` each time the environment's snapshot changes to one
/// whose tag (the first part of `render`'s answer) differs from the last one sent (or seen at connection), and ends
/// on shutdown. `render` answering `None` ends the stream.
pub async fn change_stream(
    state: AppState,
    access: Access,
    render: fn(&Snapshot, &Access) -> Option<(String, axum::response::sse::Event)>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;

    let changes = state.flags.subscribe();
    let current = state
        .flags
        .snapshot(&state.store, access.project_id, &access.environment)
        .await?;
    let (tag, _) =
        render(&current, &access).ok_or_else(|| ApiError::internal("stream rendering failed"))?;
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (state, access, changes, shutdown, tag),
        move |(state, access, mut changes, mut shutdown, mut tag)| async move {
            loop {
                let changed = tokio::select! {
                    r = changes.recv() => r,
                    _ = shutdown.wait_for(|s| *s) => return None,
                };
                match changed {
                    Ok(p) if p != access.project_id => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
                let snapshot = state
                    .flags
                    .snapshot(&state.store, access.project_id, &access.environment)
                    .await
                    .ok()?;
                let (new_tag, event) = render(&snapshot, &access)?;
                if new_tag != tag {
                    tag = new_tag;
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (state, access, changes, shutdown, tag),
                    ));
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(20)))
        .into_response())
}

pub use crate::limits::RateLimiter;

// ---------------------------------------------------------------------------------------------------------------
// Stored properties of the users being evaluated

type Properties = Map<String, Value>;

const SUBJECT_CACHE_LIMIT: usize = 200_000;

/// A cache of stored properties whose entries are valid for one identity epoch.
struct EpochCache<K> {
    entries: RwLock<HashMap<K, (u64, Arc<Properties>)>>,
}

impl<K: std::hash::Hash + Eq> EpochCache<K> {
    fn new() -> Self {
        Self {
            entries: RwLock::default(),
        }
    }

    fn get(&self, key: &K, epoch: u64) -> Option<Arc<Properties>> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(at, _)| *at == epoch)
            .map(|(_, p)| p.clone())
    }

    fn clear(&self) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn put(&self, key: K, epoch: u64, value: Arc<Properties>) {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SUBJECT_CACHE_LIMIT {
            map.clear();
        }
        map.insert(key, (epoch, value));
    }
}

/// A Bloom filter of the (project, distinct id) pairs that have a person: a flag request for a user Flywheel has
/// never seen (most requests of a fresh anonymous visitor) skips storage entirely. Filled from storage in the
/// background at start (until then every id counts as known) and by the identity consumer as it creates persons.
/// False positives only cost a lookup.
struct KnownIds {
    bits: Box<[std::sync::atomic::AtomicU64]>,
    ready: std::sync::atomic::AtomicBool,
}

/// 2^26 bits (8 MiB, touched lazily): about 5 % false positives at 10 million distinct ids.
const KNOWN_BITS_LOG2: u32 = 26;
const KNOWN_HASHES: u64 = 3;

impl KnownIds {
    fn new() -> Self {
        Self {
            bits: (0..1usize << (KNOWN_BITS_LOG2 - 6))
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn positions(project_id: i64, distinct_id: &str) -> impl Iterator<Item = usize> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        project_id.hash(&mut h);
        distinct_id.hash(&mut h);
        let h1 = h.finish();
        let h2 = h1.rotate_left(32).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mask = (1u64 << KNOWN_BITS_LOG2) - 1;
        (0..KNOWN_HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) & mask) as usize)
    }

    fn insert(&self, project_id: i64, distinct_id: &str) {
        for bit in Self::positions(project_id, distinct_id) {
            self.bits[bit >> 6].fetch_or(1 << (bit & 63), std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn maybe_contains(&self, project_id: i64, distinct_id: &str) -> bool {
        use std::sync::atomic::Ordering;
        !self.ready.load(Ordering::Acquire)
            || Self::positions(project_id, distinct_id)
                .all(|bit| self.bits[bit >> 6].load(Ordering::Relaxed) & (1 << (bit & 63)) != 0)
    }
}

/// Stored person and group properties of the users being evaluated, so that SDKs polling for the same users do
/// not query storage on every request. Entries carry the identity epoch they were read at; the identity consumer
/// bumps the epoch whenever it applies a property change, a merge or a group change, which makes every older entry
/// stale: never a stale answer, at the cost of re-reading after changes.
pub struct SubjectCache {
    epoch: std::sync::atomic::AtomicU64,
    known: KnownIds,
    persons: EpochCache<(i64, String)>,
    groups: EpochCache<(i64, String, String)>,
}

impl Default for SubjectCache {
    fn default() -> Self {
        Self {
            epoch: std::sync::atomic::AtomicU64::new(0),
            known: KnownIds::new(),
            persons: EpochCache::new(),
            groups: EpochCache::new(),
        }
    }
}

impl SubjectCache {
    /// The identity epoch: changes whenever identity applies a property change, a merge or a group change.
    pub fn epoch(&self) -> u64 {
        // Read before storage, so that a change applied meanwhile makes the entry stale rather than hiding it.
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stored properties of the person behind `distinct_id` (empty when there is none).
    pub async fn person(
        &self,
        store: &Store,
        project_id: i64,
        distinct_id: &str,
    ) -> Result<Arc<Properties>, ApiError> {
        if !self.known.maybe_contains(project_id, distinct_id) {
            return Ok(Arc::default());
        }
        let epoch = self.epoch();
        let key = (project_id, distinct_id.to_owned());
        if let Some(hit) = self.persons.get(&key, epoch) {
            return Ok(hit);
        }
        let props = Arc::new(
            store
                .person_properties(project_id, distinct_id)
                .await?
                .unwrap_or_default(),
        );
        self.persons.put(key, epoch, props.clone());
        Ok(props)
    }

    /// Stored properties of a group (empty when it was never identified).
    pub async fn group(
        &self,
        store: &Store,
        project_id: i64,
        group_type: &str,
        group_key: &str,
    ) -> Result<Arc<Properties>, ApiError> {
        let epoch = self.epoch();
        let key = (project_id, group_type.to_owned(), group_key.to_owned());
        if let Some(hit) = self.groups.get(&key, epoch) {
            return Ok(hit);
        }
        let props = Arc::new(
            store
                .group_properties(project_id, group_type, group_key)
                .await?
                .unwrap_or_default(),
        );
        self.groups.put(key, epoch, props.clone());
        Ok(props)
    }

    /// Called by the identity consumer after a batch of operations is stored.
    pub fn applied(&self, ops: &[flywheel_store::IdentityOp]) {
        use flywheel_store::IdentityOp as Op;
        let mut changed = false;
        for op in ops {
            match op {
                Op::Touch {
                    project_id,
                    distinct_id,
                    ..
                } => self.known.insert(*project_id, distinct_id),
                Op::Merge {
                    project_id,
                    target,
                    other,
                    ..
                } => {
                    self.known.insert(*project_id, target);
                    self.known.insert(*project_id, other);
                    changed = true;
                }
                Op::SetProperties {
                    project_id,
                    distinct_id,
                    ..
                }
                | Op::LinkGroups {
                    project_id,
                    distinct_id,
                    ..
                } => {
                    self.known.insert(*project_id, distinct_id);
                    changed = true;
                }
                Op::GroupIdentify { .. } => changed = true,
            }
        }
        if changed {
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Forgets every cached person and group property set and moves the epoch (a GDPR erasure deleted a person
    /// behind the identity consumer's back: no copy of their properties may stay in memory or be served).
    pub fn forget_all(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.persons.clear();
        self.groups.clear();
    }

    /// Records a distinct id as known (the start-up fill from the insights tables, see `events_table::run`).
    pub fn note_known(&self, project_id: i64, distinct_id: &str) {
        self.known.insert(project_id, distinct_id);
    }

    /// Every stored distinct id has been noted: the filter may now answer "unknown".
    pub fn known_loaded(&self) {
        self.known
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped_only_when_needed() {
        for s in [
            "plain-key_1",
            "",
            "ünïcødé",
            "quote\"",
            "back\\slash",
            "line\nbreak",
            "tab\t\u{1}",
        ] {
            let mut out = Vec::new();
            push_json_str(&mut out, s);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        }
    }

    #[test]
    fn known_ids_have_no_false_negatives() {
        let known = KnownIds::new();
        assert!(
            known.maybe_contains(1, "x"),
            "not loaded yet: everyone may be known"
        );
        known
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
        for i in 0..10_000 {
            known.insert(1, &format!("user-{i}"));
        }
        assert!((0..10_000).all(|i| known.maybe_contains(1, &format!("user-{i}"))));
        let false_positives = (0..10_000)
            .filter(|i| known.maybe_contains(2, &format!("user-{i}")))
            .count();
        assert!(false_positives < 10, "{false_positives}");
    }
}
