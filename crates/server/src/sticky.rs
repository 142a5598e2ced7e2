//! Sticky bucketing for server-side evaluations (PostHog `/flags` and `/decide`, OFREP, `…/evaluate`).
//!
//! GrowthBook's sticky bucketing, with the server as the storage: the first time an experiment rule assigns a
//! hash-attribute value (a user, an account) a variation, the assignment is kept, and later evaluations give that
//! variation even after the rule's weights or coverage changed. So changing an experiment's split mid-run never
//! moves anyone who was already assigned; only new users follow the new weights. Rules with
//! `sticky: false` (guarded rollouts, whose treatment must grow) are bucketed afresh on every evaluation.
//!
//! Only running experiments' assignments are kept, and a project without a running experiment evaluates without
//! the service at all (so flag evaluation costs nothing more there). Documents live in memory (read on every
//! evaluation of an experiment rule of a project that runs experiments) and in SQLite (migration 0010,
//! loaded at start). A save updates memory at once and queues the row for a writer task that upserts batches; a
//! full queue keeps the assignment in memory only and counts it (`flywheel_sticky_assignments_dropped_total`).
//! GrowthBook SDKs that evaluate locally keep users with their own sticky bucket service (the payload's
//! experiment keys and bucket versions do not change with weights).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flywheel_flags::{StickyAssignmentsDoc, StickyBucketService};
use flywheel_store::Store;
use tokio::sync::{mpsc, oneshot};

const QUEUE: usize = 65_536;
const BATCH: usize = 2_048;

enum Msg {
    Save(i64, String, String),
    Flush(oneshot::Sender<()>),
}

/// The assignments of every project, by (project, `"<attribute>||<value>"`), and per project the experiment keys
/// (tracking keys) of its running experiments: only their assignments are kept.
pub struct StickyStore {
    docs: RwLock<HashMap<(i64, String), StickyAssignmentsDoc>>,
    running: RwLock<HashMap<i64, Arc<HashSet<String>>>>,
    tx: mpsc::Sender<Msg>,
}

impl StickyStore {
    /// Loads the stored assignments and starts the writer task (it ends when the store is dropped).
    pub async fn open(store: Store) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let mut docs = HashMap::new();
        for (project_id, key, assignments) in store.sticky_assignments().await? {
            let Some((name, value)) = key.split_once("||") else {
                continue;
            };
            let Ok(assignments) = serde_json::from_str(&assignments) else {
                tracing::warn!(project_id, key, "unreadable sticky assignments skipped");
                continue;
            };
            let doc = StickyAssignmentsDoc {
                attribute_name: name.to_owned(),
                attribute_value: value.to_owned(),
                assignments,
            };
            docs.insert((project_id, key), doc);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(writer(store, rx));
        Ok((
            Self {
                docs: RwLock::new(docs),
                running: RwLock::new(HashMap::new()),
                tx,
            },
            task,
        ))
    }

    /// Sets the experiment keys of `project_id`'s running experiments (their assignments are kept).
    pub fn set_running(&self, project_id: i64, keys: HashSet<String>) {
        let mut running = self.running.write().unwrap_or_else(|p| p.into_inner());
        if keys.is_empty() {
            running.remove(&project_id);
        } else {
            running.insert(project_id, Arc::new(keys));
        }
    }

    /// Whether `experiment` is a running experiment's key in `project_id`.
    pub fn is_running(&self, project_id: i64, experiment: &str) -> bool {
        let running = self.running.read().unwrap_or_else(|p| p.into_inner());
        running
            .get(&project_id)
            .is_some_and(|keys| keys.contains(experiment))
    }

    /// The service an evaluation of `project_id` uses; `None` when the project runs no experiment (evaluations
    /// then pay nothing for stickiness).
    pub fn view(&self, project_id: i64) -> Option<StickyView<'_>> {
        self.make_view(project_id, true)
    }

    /// A service that reads the assignments but keeps none (trying a user out must not pin them).
    pub fn read_only(&self, project_id: i64) -> Option<StickyView<'_>> {
        self.make_view(project_id, false)
    }

    fn make_view(&self, project_id: i64, save: bool) -> Option<StickyView<'_>> {
        let running = self.running.read().unwrap_or_else(|p| p.into_inner());
        let keys = running.get(&project_id)?.clone();
        Some(StickyView {
            store: self,
            project_id,
            save,
            running: keys,
        })
    }

    /// Forgets every assignment of experiment `experiment` in `project_id` (it was decided or archived): documents
    /// left without assignments are deleted. Returns how many documents changed. Walks the project's documents
    /// under the write lock: call it off the async workers.
    pub fn purge(&self, project_id: i64, experiment: &str) -> usize {
        let prefix = format!("{experiment}__");
        let mut changed = Vec::new();
        {
            let mut docs = self.docs.write().unwrap_or_else(|p| p.into_inner());
            docs.retain(|(p, key), doc| {
                if *p != project_id || !doc.assignments.keys().any(|k| k.starts_with(&prefix)) {
                    return true;
                }
                doc.assignments.retain(|k, _| !k.starts_with(&prefix));
                let text = serde_json::to_string(&doc.assignments).unwrap_or_else(|_| "{}".into());
                changed.push((key.clone(), text));
                !doc.assignments.is_empty()
            });
        }
        let n = changed.len();
        for (key, text) in changed {
            // A full queue keeps the old row: it is dropped from memory at once and filtered again at the next load.
            if self.tx.try_send(Msg::Save(project_id, key, text)).is_err() {
                metrics::counter!(crate::metrics_names::STICKY_DROPPED).increment(1);
            }
        }
        n
    }

    /// Forgets the documents of `project_id` whose hash-attribute value is one of `values` (a GDPR erasure; the
    /// store deletes their rows). Returns how many were dropped from memory.
    pub fn forget_values(&self, project_id: i64, values: &[String]) -> usize {
        let mut docs = self.docs.write().unwrap_or_else(|p| p.into_inner());
        let before = docs.len();
        docs.retain(|(p, _), doc| *p != project_id || !values.contains(&doc.attribute_value));
        before - docs.len()
    }

    /// Waits until every save so far is in SQLite.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Number of documents in memory.
    pub fn len(&self) -> usize {
        self.docs.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no document is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One project's assignments, as the flag engine's [`StickyBucketService`].
pub struct StickyView<'s> {
    store: &'s StickyStore,
    project_id: i64,
    save: bool,
    /// Experiment keys whose assignments are kept.
    running: Arc<HashSet<String>>,
}

impl StickyBucketService for StickyView<'_> {
    fn get_assignments(&self, name: &str, value: &str) -> Option<StickyAssignmentsDoc> {
        let docs = self.store.docs.read().unwrap_or_else(|p| p.into_inner());
        docs.get(&(self.project_id, format!("{name}||{value}")))
            .cloned()
    }

    fn save_assignments(&mut self, mut doc: StickyAssignmentsDoc) {
        if !self.save {
            return;
        }
        // Only running experiments' assignments ("<experiment key>__<bucket version>") are kept.
        doc.assignments.retain(|k, _| {
            k.rsplit_once("__")
                .is_some_and(|(experiment, _)| self.running.contains(experiment))
        });
        if doc.assignments.is_empty() {
            return;
        }
        let key = doc.key();
        let text = serde_json::to_string(&doc.assignments).unwrap_or_else(|_| "{}".into());
        self.store
            .docs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((self.project_id, key.clone()), doc);
        if self
            .store
            .tx
            .try_send(Msg::Save(self.project_id, key, text))
            .is_err()
        {
            metrics::counter!(crate::metrics_names::STICKY_DROPPED).increment(1);
        }
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: HashMap<(i64, String), String> = HashMap::new();
    let mut waiting = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Save(p, k, v) => {
                    batch.insert((p, k), v);
                }
                Msg::Flush(done) => waiting.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let rows: Vec<flywheel_store::StickyRow> =
                batch.drain().map(|((p, k), v)| (p, k, v)).collect();
            if let Err(e) = store.save_sticky_assignments(&rows).await {
                tracing::error!(error = %e, lost = rows.len(), "saving sticky assignments failed");
                metrics::counter!(crate::metrics_names::STICKY_DROPPED)
                    .increment(rows.len() as u64);
            }
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        // Let a burst accumulate into one transaction.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
