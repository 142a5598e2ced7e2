//! The identity consumer of the intake log: turns events into identity operations and applies them in log order.
//!
//! It runs as one task. On start it replays the log from its checkpoint (so a crash between acknowledging a batch
//! and applying it loses nothing), then follows the committed LSN.

use std::collections::{HashMap, HashSet};

use flywheel_engine::{BatchRef, EventRef, Intake};
use flywheel_store::{IdentityChange, IdentityOp, IdentityWriter, MergeMode, Store};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::metrics_names as m;

/// Name of this consumer's checkpoint in the metadata store.
pub const CONSUMER: &str = "identity";

/// Most batches read from the log per transaction.
const CHUNK_BATCHES: usize = 512;
/// A chunk stops after the batch that reaches this many events: bounded memory and transaction size whatever the
/// batch sizes (SDK batches are small; `flywheel generate` writes 10,000-event batches, and 512 of those made one
/// 5M-event transaction holding gigabytes of operations).
const CHUNK_EVENTS: usize = 20_000;

/// Distinct ids already touched in the current chunk, per project: a repeated plain event of the same distinct id
/// adds no operation (a person, once ensured, stays).
pub type Touched = HashMap<i64, HashSet<String>>;

/// Identity operations for one event, in the order PostHog applies them.
pub fn ops_for(event: &EventRef<'_>, out: &mut Vec<IdentityOp>, touched: &mut Touched) {
    let project_id = event.project_id;
    let at = event.timestamp_us;
    let special = matches!(
        event.event,
        "$identify" | "$create_alias" | "$merge_dangerously" | "$groupidentify"
    );
    // Most events touch only their person; skip parsing the properties unless they may matter.
    let props_may_matter = special || mentions_person_keys(event.properties);
    if !props_may_matter {
        let seen = touched.entry(project_id).or_default();
        if !seen.contains(event.distinct_id) {
            seen.insert(event.distinct_id.to_owned());
            out.push(IdentityOp::Touch {
                project_id,
                distinct_id: event.distinct_id.to_owned(),
                at,
            });
        }
        return;
    }
    let props: Map<String, Value> = {
        match serde_json::from_str(event.properties) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    };
    if props.get("$process_person_profile") == Some(&Value::Bool(false)) {
        return;
    }
    let distinct_id = event.distinct_id.to_owned();
    let str_prop = |key: &str| -> Option<String> {
        match props.get(key)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let merge = |other: Option<String>, mode| match other {
        Some(other) => IdentityOp::Merge {
            project_id,
            target: distinct_id.clone(),
            other,
            mode,
            at,
        },
        None => IdentityOp::Touch {
            project_id,
            distinct_id: distinct_id.clone(),
            at,
        },
    };
    out.push(match event.event {
        "$identify" => merge(str_prop("$anon_distinct_id"), MergeMode::Identify),
        "$create_alias" => merge(str_prop("alias"), MergeMode::Alias),
        "$merge_dangerously" => merge(str_prop("alias"), MergeMode::Dangerous),
        _ => IdentityOp::Touch {
            project_id,
            distinct_id: distinct_id.clone(),
            at,
        },
    });
    if event.event == "$groupidentify" {
        if let (Some(group_type), Some(group_key)) =
            (str_prop("$group_type"), str_prop("$group_key"))
        {
            let set = object(props.get("$group_set"));
            out.push(IdentityOp::GroupIdentify {
                project_id,
                group_type,
                group_key,
                set,
                at,
            });
        }
    }
    let set = object(props.get("$set"));
    let set_once = object(props.get("$set_once"));
    let unset: Vec<String> = match props.get("$unset") {
        Some(Value::Array(keys)) => keys
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        Some(Value::String(k)) => vec![k.clone()],
        _ => Vec::new(),
    };
    if !set.is_empty() || !set_once.is_empty() || !unset.is_empty() {
        out.push(IdentityOp::SetProperties {
            project_id,
            distinct_id: distinct_id.clone(),
            set,
            set_once,
            unset,
            at,
        });
    }
    if let Some(Value::Object(groups)) = props.get("$groups") {
        let groups: Vec<(String, String)> = groups
            .iter()
            .filter_map(|(t, k)| match k {
                Value::String(s) if !s.is_empty() => Some((t.clone(), s.clone())),
                Value::Number(n) => Some((t.clone(), n.to_string())),
                _ => None,
            })
            .collect();
        if !groups.is_empty() {
            out.push(IdentityOp::LinkGroups {
                project_id,
                distinct_id,
                groups,
            });
        }
    }
}

/// Whether a properties text may hold a key that changes identity (`$set*`, `$unset`, `$groups`,
/// `$process_person_profile`): one scan for `"$`, then a prefix check.
fn mentions_person_keys(properties: &str) -> bool {
    const KEYS: [&[u8]; 4] = [b"set", b"unset", b"groups", b"process_person_profile"];
    let bytes = properties.as_bytes();
    memchr::memmem::find_iter(bytes, b"\"$").any(|at| {
        let rest = &bytes[at + 2..];
        KEYS.iter().any(|k| rest.starts_with(k))
    })
}

fn object(value: Option<&Value>) -> Map<String, Value> {
    match value {
        Some(Value::Object(map)) => map.clone(),
        _ => Map::new(),
    }
}

/// Runs the identity consumer until `stop` turns true and everything committed before it has been applied.
pub async fn run(
    store: Store,
    intake: Intake,
    progress: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
    subjects: std::sync::Arc<crate::serving::SubjectCache>,
    tables: std::sync::Arc<flywheel_engine::table::EventTables>,
) {
    let Some(mut writer) = open_writer(&store, &mut stop).await else {
        return;
    };
    writer.record_changes();
    let mut lsn = match store.checkpoint(CONSUMER).await {
        Ok(lsn) => lsn,
        Err(err) => {
            tracing::error!(error = %err, "identity: cannot read checkpoint; starting from the beginning of the log");
            0
        }
    };
    let _ = progress.send(lsn);
    let mut committed = intake.subscribe();
    // Consecutive failures of the chunk at `lsn`.
    let mut failures = 0u32;
    loop {
        let target = *committed.borrow_and_update();
        if lsn < target {
            let from = lsn;
            let reader_intake = intake.clone();
            let chunk = tokio::task::spawn_blocking(move || read_chunk(&reader_intake, from)).await;
            let (end, ops) = match chunk {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => {
                    // Nothing readable up to the target yet (should not happen); wait for the next commit.
                    if committed.changed().await.is_err() {
                        break;
                    }
                    continue;
                }
                Ok(Err(err)) => {
                    tracing::error!(error = %err, lsn = from, "identity: cannot read the intake log");
                    metrics::counter!(m::IDENTITY_ERRORS).increment(1);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
                Err(err) => {
                    tracing::error!(error = %err, "identity: reader task failed");
                    continue;
                }
            };
            // The writer blocks on its own SQLite connection: on the blocking pool, handed there and back. After
            // repeated failures the chunk is applied op by op, so that one op that cannot apply does not stop
            // identity (and the insights behind it) for everyone.
            let isolate = failures >= ISOLATE_AFTER;
            let (returned, ops, applied) = match tokio::task::spawn_blocking(move || {
                let applied = if isolate {
                    apply_one_by_one(&mut writer, &ops, from, end)
                } else {
                    writer.apply(&ops, end)
                };
                (writer, ops, applied)
            })
            .await
            {
                Ok(done) => done,
                Err(err) => return blocking_task_failed(err),
            };
            writer = returned;
            match applied {
                Ok(stats) => {
                    failures = 0;
                    // New persons, and changed properties or merges, for the flag endpoints' caches.
                    subjects.applied(&ops);
                    // The insights tables resolve events' persons through the same mapping.
                    for change in writer.take_changes() {
                        match change {
                            IdentityChange::Assigned {
                                project_id,
                                distinct_id,
                                person_id,
                            } => tables.assign(project_id, &distinct_id, person_id),
                            IdentityChange::Merged {
                                project_id,
                                from,
                                into,
                            } => tables.merge(project_id, from, into),
                        }
                    }
                    if let Some(seq) = writer.mapping_seq() {
                        tables.note_identity_seq(seq);
                    }
                    metrics::counter!(m::IDENTITY_MERGES).increment(stats.merges);
                    metrics::counter!(m::IDENTITY_MERGES_REFUSED).increment(stats.merges_refused);
                    lsn = end;
                    let _ = progress.send(lsn);
                    metrics::gauge!(m::IDENTITY_LAG)
                        .set(intake.committed_lsn().saturating_sub(lsn) as f64);
                }
                Err(err) => {
                    failures += 1;
                    tracing::error!(error = %err, lsn = from, failures, "identity: applying a batch failed; will retry");
                    metrics::counter!(m::IDENTITY_ERRORS).increment(1);
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
            continue;
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { break },
            _ = stop.changed() => {}
        }
    }
    let flushed = tokio::task::spawn_blocking(move || writer.flush_checkpoint(lsn)).await;
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "identity: final checkpoint failed; the next start replays a little more");
        }
        Err(err) => blocking_task_failed(err),
    }
}

/// Failures of one chunk before it is applied op by op.
const ISOLATE_AFTER: u32 = 3;

/// Applies `ops` one at a time (checkpoint unchanged at `from`), skipping an op that fails twice while others
/// apply — logged with its distinct id and counted in `flywheel_identity_ops_skipped_total` — then moves the
/// checkpoint to `end`. When no op applies at all the failure is not the ops' (the database is unavailable, the
/// disk full): nothing is skipped and the error is returned, to be retried.
fn apply_one_by_one(
    writer: &mut IdentityWriter,
    ops: &[IdentityOp],
    from: u64,
    end: u64,
) -> flywheel_store::Result<flywheel_store::ApplyStats> {
    let mut stats = flywheel_store::ApplyStats::default();
    let mut skipped: Vec<(usize, flywheel_store::StoreError)> = Vec::new();
    let mut applied = 0usize;
    for (i, op) in ops.iter().enumerate() {
        let one = std::slice::from_ref(op);
        match writer.apply(one, from).or_else(|_| writer.apply(one, from)) {
            Ok(s) => {
                applied += 1;
                stats.merges += s.merges;
                stats.merges_refused += s.merges_refused;
                stats.persons_created += s.persons_created;
            }
            Err(err) => skipped.push((i, err)),
        }
    }
    if applied == 0 && !ops.is_empty() {
        let (_, err) = skipped.pop().expect("every op failed");
        return Err(err);
    }
    for (i, err) in &skipped {
        // The op itself is not logged: it carries distinct ids and person properties.
        tracing::error!(error = %err, lsn = from, op_index = i, "identity: an identity change cannot be applied; skipped (its events stay in the log and the tables)");
        metrics::counter!(m::IDENTITY_OPS_SKIPPED).increment(1);
    }
    writer.apply(&[], end)?;
    Ok(stats)
}

/// The identity writer (it opens its own connection to the metadata database), retried every second until it
/// opens or `stop` turns true.
async fn open_writer(store: &Store, stop: &mut watch::Receiver<bool>) -> Option<IdentityWriter> {
    loop {
        let opening = store.clone();
        match tokio::task::spawn_blocking(move || opening.identity_writer(CONSUMER)).await {
            Ok(Ok(writer)) => return Some(writer),
            Ok(Err(err)) => {
                tracing::error!(error = %err, "identity: cannot open the metadata database; will retry");
                metrics::counter!(m::IDENTITY_ERRORS).increment(1);
            }
            Err(err) => {
                blocking_task_failed(err);
                return None;
            }
        }
        if *stop.borrow() {
            return None;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            changed = stop.changed() => if changed.is_err() { return None },
        }
    }
}

/// A blocking task holding the writer did not finish: re-raise its panic here (as when the writer ran on this
/// task), or log a cancellation (the runtime is shutting down).
fn blocking_task_failed(err: tokio::task::JoinError) {
    match err.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(err) => tracing::error!(error = %err, "identity: writer task cancelled"),
    }
}

/// Reads up to [`CHUNK_BATCHES`] batches (and about [`CHUNK_EVENTS`] events) from `from` and turns their events into identity operations without
/// copying the events. Returns the LSN after the last batch read, or `None` when there was nothing to read.
#[allow(clippy::type_complexity)]
fn read_chunk(
    intake: &Intake,
    from: u64,
) -> Result<Option<(u64, Vec<IdentityOp>)>, flywheel_engine::EngineError> {
    let mut reader = intake.reader(from);
    let mut ops = Vec::new();
    let mut touched = Touched::new();
    let mut end = None;
    let mut events = 0;
    for _ in 0..CHUNK_BATCHES {
        let Some(item) = reader.next_payload() else {
            break;
        };
        let (lsn, payload) = item?;
        let batch = BatchRef::new(payload)?;
        for event in batch.iter() {
            ops_for(&event?, &mut ops, &mut touched);
        }
        events += batch.len();
        end = Some(lsn);
        if events >= CHUNK_EVENTS {
            break;
        }
    }
    Ok(end.map(|end| (end, ops)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(name: &str, distinct_id: &str, props: Value) -> flywheel_engine::Event {
        flywheel_engine::Event {
            uuid: 1,
            project_id: 7,
            timestamp_us: 0,
            received_us: 0,
            event: name.into(),
            distinct_id: distinct_id.into(),
            properties: props.to_string(),
        }
    }

    fn ops_of(e: &flywheel_engine::Event) -> Vec<IdentityOp> {
        let mut out = Vec::new();
        ops_for(&e.as_event_ref(), &mut out, &mut Touched::new());
        out
    }

    #[test]
    fn repeated_plain_events_touch_once_per_chunk() {
        let mut out = Vec::new();
        let mut touched = Touched::new();
        for _ in 0..3 {
            ops_for(
                &event("click", "u", json!({})).as_event_ref(),
                &mut out,
                &mut touched,
            );
        }
        ops_for(
            &event("click", "v", json!({})).as_event_ref(),
            &mut out,
            &mut touched,
        );
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn identify_with_anon_id_is_a_merge_followed_by_set() {
        let ops = ops_of(&event(
            "$identify",
            "user",
            json!({"$anon_distinct_id": "anon", "$set": {"a": 1}}),
        ));
        assert!(
            matches!(&ops[0], IdentityOp::Merge { target, other, mode: MergeMode::Identify, .. }
            if target == "user" && other == "anon")
        );
        assert!(matches!(&ops[1], IdentityOp::SetProperties { set, .. } if set["a"] == 1));
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn plain_events_only_touch_and_opted_out_events_do_nothing() {
        let ops = ops_of(&event("click", "u", json!({"x": 1})));
        assert!(matches!(&ops[..], [IdentityOp::Touch { distinct_id, .. }] if distinct_id == "u"));
        let ops = ops_of(&event(
            "click",
            "u",
            json!({"$process_person_profile": false, "$set": {"a": 1}}),
        ));
        assert!(ops.is_empty());
    }

    #[test]
    fn groups_and_group_identify() {
        let ops = ops_of(&event(
            "$groupidentify",
            "u",
            json!({"$group_type": "company", "$group_key": 42, "$group_set": {"name": "Acme"}, "$groups": {"company": "42"}}),
        ));
        assert!(
            matches!(&ops[1], IdentityOp::GroupIdentify { group_type, group_key, .. }
            if group_type == "company" && group_key == "42")
        );
        assert!(matches!(&ops[2], IdentityOp::LinkGroups { groups, .. }
            if groups == &vec![("company".to_string(), "42".to_string())]));
    }

    #[test]
    fn alias_and_dangerous_merge_use_the_alias_property() {
        let mut ops = ops_of(&event("$create_alias", "user", json!({"alias": "other"})));
        ops.extend(ops_of(&event(
            "$merge_dangerously",
            "user",
            json!({"alias": "x"}),
        )));
        assert!(
            matches!(&ops[0], IdentityOp::Merge { mode: MergeMode::Alias, other, .. } if other == "other")
        );
        assert!(
            matches!(&ops[1], IdentityOp::Merge { mode: MergeMode::Dangerous, other, .. } if other == "x")
        );
    }
}
