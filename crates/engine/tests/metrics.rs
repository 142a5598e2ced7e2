//! The intake emits its metrics under the documented names (own process: installs a
//! global recorder).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use flywheel_engine::metrics_names as names;
use flywheel_engine::Intake;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

#[derive(Default)]
struct Store {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, f64>,
    histograms: HashMap<String, Vec<f64>>,
}

struct Handle(String, Arc<Mutex<Store>>);

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        *self
            .1
            .lock()
            .unwrap()
            .counters
            .entry(self.0.clone())
            .or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.1
            .lock()
            .unwrap()
            .counters
            .insert(self.0.clone(), value);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        *self
            .1
            .lock()
            .unwrap()
            .gauges
            .entry(self.0.clone())
            .or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self
            .1
            .lock()
            .unwrap()
            .gauges
            .entry(self.0.clone())
            .or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.1.lock().unwrap().gauges.insert(self.0.clone(), value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.1
            .lock()
            .unwrap()
            .histograms
            .entry(self.0.clone())
            .or_default()
            .push(value);
    }
}

struct TestRecorder(Arc<Mutex<Store>>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Handle(key.name().to_owned(), self.0.clone())))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Handle(key.name().to_owned(), self.0.clone())))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Handle(key.name().to_owned(), self.0.clone())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_emits_documented_metrics() {
    let store = Arc::new(Mutex::new(Store::default()));
    metrics::set_global_recorder(TestRecorder(store.clone())).unwrap();
    names::describe();

    let dir = tempfile::tempdir().unwrap();
    let (intake, _) = Intake::open(cfg(dir.path())).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let intake = intake.clone();
            tokio::spawn(async move {
                for seq in 0..25 {
                    intake.append(&batch(t, seq, 4, 20)).await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let end = intake.committed_lsn();
    intake.shutdown().await.unwrap();

    let s = store.lock().unwrap();
    assert_eq!(s.counters[names::INTAKE_EVENTS_TOTAL], 8 * 25 * 4);
    assert_eq!(s.counters[names::INTAKE_BYTES_TOTAL], end);
    let groups = &s.histograms[names::INTAKE_GROUP_BATCHES];
    assert_eq!(
        groups.iter().sum::<f64>() as u64,
        200,
        "every batch in one group"
    );
    let commits = &s.histograms[names::INTAKE_COMMIT_SECONDS];
    assert_eq!(commits.len(), groups.len());
    assert!(commits.iter().all(|&x| x >= 0.0));
    assert_eq!(s.gauges[names::INTAKE_QUEUE_DEPTH], 0.0, "queue drained");
    eprintln!(
        "200 batches in {} group commits (max {} batches/group)",
        groups.len(),
        groups.iter().copied().fold(0.0, f64::max)
    );
}
