//! Exposure tracking: server-side evaluations that put a user in an experiment (or that the caller asks to track)
//! become `$feature_flag_called` events in the intake log, like events an SDK sends.
//!
//! One event per project, user, flag, variant and UTC day: an in-memory set drops repeats within the day, and the
//! event's uuid is derived from the same key, so a repeat after a restart is recognisably the same exposure.
//! Recording never waits for disk: events go through a bounded queue to a writer task that appends them in
//! batches; a full queue drops the exposure and counts it (`flywheel_exposures_dropped_total`).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use flywheel_engine::{Event, Intake};
use serde_json::{json, Value};
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};

use crate::metrics_names as m;

const QUEUE: usize = 65_536;
const BATCH: usize = 2_048;
/// Beyond this many exposures in one day the set restarts (bounded memory; a few repeats are written).
const SEEN_LIMIT: usize = 2_000_000;

/// One exposure to record.
pub struct Exposure<'a> {
    pub project_id: i64,
    pub distinct_id: &'a str,
    pub flag: &'a str,
    /// The value the user got (the variant for multivariate flags).
    pub response: &'a Value,
    /// The variant key, when an experiment assigned one.
    pub variant: Option<&'a str>,
    /// The experiment's tracking key, when an experiment assigned the user.
    pub experiment: Option<&'a str>,
    /// Which endpoint evaluated (`posthog`, `ofrep`, `evaluate`).
    pub endpoint: &'static str,
}

enum Msg {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

pub struct Exposures {
    seen: Mutex<(i64, HashSet<[u8; 16]>)>,
    tx: mpsc::Sender<Msg>,
}

impl Exposures {
    /// The recorder and its writer task (which ends when the recorder is dropped or after [`Self::flush`]).
    pub fn start(intake: Intake) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(writer(intake, rx));
        (
            Self {
                seen: Mutex::new((0, HashSet::new())),
                tx,
            },
            task,
        )
    }

    /// Records an exposure unless this user already had it today. `now_us`: microseconds since the epoch.
    pub fn record(&self, e: &Exposure<'_>, now_us: i64) {
        let day = now_us.div_euclid(86_400_000_000);
        let variant = e
            .variant
            .map(str::to_owned)
            .unwrap_or_else(|| e.response.to_string());
        let mut h = sha2::Sha256::new();
        for part in [
            &e.project_id.to_le_bytes()[..],
            e.distinct_id.as_bytes(),
            e.flag.as_bytes(),
            variant.as_bytes(),
            &day.to_le_bytes()[..],
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let mut id: [u8; 16] = h.finalize()[..16].try_into().expect("16 of 32 bytes");
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.0 != day || seen.1.len() >= SEEN_LIMIT {
                *seen = (day, HashSet::new());
            }
            if !seen.1.insert(id) {
                return;
            }
        }
        // A version-8 (custom) RFC 9562 uuid.
        id[6] = (id[6] & 0x0f) | 0x80;
        id[8] = (id[8] & 0x3f) | 0x80;
        let mut properties = json!({
            "$feature_flag": e.flag,
            "$feature_flag_response": e.response,
            "$feature_flag_source": "server",
            "$feature_flag_endpoint": e.endpoint,
            "$lib": "flywheel-server",
        });
        properties[format!("$feature/{}", e.flag)] = e.response.clone();
        if let Some(v) = e.variant {
            properties["$feature_flag_variant"] = json!(v);
        }
        if let Some(x) = e.experiment {
            properties["$experiment_key"] = json!(x);
        }
        let event = Event {
            uuid: u128::from_be_bytes(id),
            project_id: e.project_id,
            timestamp_us: now_us,
            received_us: now_us,
            event: "$feature_flag_called".to_owned(),
            distinct_id: e.distinct_id.to_owned(),
            properties: properties.to_string(),
        };
        match self.tx.try_send(Msg::Event(event)) {
            Ok(()) => metrics::counter!(m::EXPOSURES_RECORDED).increment(1),
            Err(_) => metrics::counter!(m::EXPOSURES_DROPPED).increment(1),
        }
    }

    /// Waits until everything recorded so far is in the intake log.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn writer(intake: Intake, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiting = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => batch.push(e),
                Msg::Flush(done) => waiting.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if let Err(e) = intake.append(&batch).await {
                tracing::error!(error = %e, dropped = batch.len(), "writing exposures failed");
                metrics::counter!(m::EXPOSURES_DROPPED).increment(batch.len() as u64);
            }
            batch.clear();
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        // Let a burst accumulate into one batch rather than one commit per exposure.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
