//! The referral consumer: follows the intake log (after the identity consumer applied each batch, so distinct ids
//! have persons) and turns product events into referrals and rewards.
//!
//! - **Attribution**: an event carrying a referral code — the `$referral_code` property, or `ref` in the query of
//!   `$current_url` (where the landing page of a `/r/{code}` link puts it; `fw_click` names the click) — credits the
//!   event's person to the code's referrer in the code's program, if the program is active, the click (when named)
//!   lies within the attribution window, and the person has no referral in that program yet (`first_touch`) or an
//!   unqualified one (`last_touch` moves it). A person who is the referrer (same distinct id or same person) is
//!   recorded as `rejected` with the signal `self_referral`.
//! - **Qualification**: the program's `qualify` event (with its event-property filters) by an attributed person
//!   within `within_days` of the attribution qualifies the referral and writes the rewards to the ledger (referrer,
//!   and referee for double-sided programs; idempotency keys `referral:{id}:referrer|referee`, so replaying the log
//!   writes nothing twice), pending for the program's `hold_days`. Past `cap_per_referrer` the referral is `capped`
//!   and earns nothing.
//!   Before paying, the referral is scored for fraud ([`crate::fraud`]): at the program's `reject_at` it is
//!   rejected, at `hold_at` held for review (`POST …/referrals/{id}/approve` writes the rewards then).
//! - **Reversal**: one of the program's `reversal_events` by a qualified referee reverses the referral's rewards
//!   that are still pending or approved.
//!
//! Every step is idempotent, so the checkpoint (consumer `referrals`) is written after each chunk and a crash
//! replays at most a chunk. Events of projects without referral programs cost a map lookup.

use std::collections::HashMap;
use std::time::Duration;

use flywheel_engine::{BatchRef, Intake};
use flywheel_query::growth::{Attribution, Program};
use flywheel_query::{Filter, PropertyType};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::insight_filters::Compiled;
use crate::state::AppState;

/// Name of this consumer's checkpoint in the metadata store.
pub const CONSUMER: &str = "referrals";
/// Batches per step.
const CHUNK_BATCHES: usize = 256;
/// How long the project → programs map is kept.
const PROGRAMS_TTL: Duration = Duration::from_secs(2);

/// An event the consumer acts on, copied out of the log.
struct Ev {
    project_id: i64,
    timestamp_us: i64,
    event: String,
    distinct_id: String,
    properties: Value,
}

/// The referral code and click token an event carries, if any.
fn carried_code(props: &Value) -> Option<(String, Option<String>)> {
    if let Some(code) = props.get("$referral_code").and_then(Value::as_str) {
        let click = props
            .get("$referral_click")
            .and_then(Value::as_str)
            .map(str::to_owned);
        return Some((code.to_owned(), click));
    }
    let url = props.get("$current_url").and_then(Value::as_str)?;
    let query = url.split_once('?')?.1.split('#').next()?;
    let mut code = None;
    let mut click = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("ref", v)) if !v.is_empty() => code = Some(v.to_owned()),
            Some(("fw_click", v)) if !v.is_empty() => click = Some(v.to_owned()),
            _ => {}
        }
    }
    code.map(|c| (c, click))
}

/// Whether an event passes a program's qualifying filters (event properties only; the program was checked).
fn passes(filters: &[Filter], props: &Value) -> bool {
    filters.iter().all(|f| match f {
        Filter::Property(p) if p.property_type == PropertyType::Event => {
            Compiled::new(p).matches(props.get(&p.key))
        }
        _ => false,
    })
}

fn text_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn micros(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// Programs per project (and projects with share links), reloaded when the growth epoch moves (a program or link
/// changed) and every [`PROGRAMS_TTL`] (other nodes' changes).
struct Programs {
    /// The growth epoch they were loaded at.
    epoch: u64,
    by_project: HashMap<i64, Vec<Program>>,
    /// Projects with share links.
    sharing: Vec<i64>,
    loaded: Option<std::time::Instant>,
}

impl Programs {
    async fn refresh(&mut self, state: &AppState) {
        let epoch = state
            .growth_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        if epoch == self.epoch && self.loaded.is_some_and(|t| t.elapsed() < PROGRAMS_TTL) {
            return;
        }
        self.epoch = epoch;
        match state.store.all_documents(crate::growth::PROGRAM).await {
            Ok(docs) => {
                self.by_project.clear();
                for (project_id, doc) in docs {
                    if let Ok(p) = flywheel_query::growth::parse_program(&doc.body) {
                        if p.active {
                            self.by_project.entry(project_id).or_default().push(p);
                        }
                    }
                }
                self.loaded = Some(std::time::Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "referrals: cannot read the programs"),
        }
        match state.store.share_link_projects().await {
            Ok(p) => self.sharing = p,
            Err(e) => tracing::warn!(error = %e, "referrals: cannot read the share links"),
        }
    }
}

/// What a chunk's events need from the store, read up front in a few statements instead of two per event: the
/// persons of their distinct ids and those persons' referrals. Kept up to date as the chunk changes them.
#[derive(Default)]
struct Lookups {
    persons: HashMap<(i64, String), String>,
    /// (project, program, referee person) → referral.
    referrals: HashMap<(i64, String, String), flywheel_store::Referral>,
}

impl Lookups {
    async fn load(
        state: &AppState,
        events: &[Ev],
        programs: &HashMap<i64, Vec<Program>>,
    ) -> Result<Self, crate::error::ApiError> {
        let mut wanted: HashMap<i64, std::collections::HashSet<&str>> = HashMap::new();
        for ev in events {
            let relevant = carried_code(&ev.properties).is_some()
                || carried_share(&ev.properties).is_some()
                || programs
                    .get(&ev.project_id)
                    .is_some_and(|list| list.iter().any(|p| watches(p, &ev.event)));
            if relevant {
                wanted
                    .entry(ev.project_id)
                    .or_default()
                    .insert(&ev.distinct_id);
            }
        }
        let mut out = Lookups::default();
        for (project_id, ids) in wanted {
            let ids: Vec<&str> = ids.into_iter().collect();
            let persons = state.store.person_ids_for(project_id, &ids).await?;
            let uuids: Vec<&str> = persons.values().map(String::as_str).collect();
            for r in state.store.referrals_of_persons(project_id, &uuids).await? {
                out.referrals
                    .insert((project_id, r.program.clone(), r.referee_person.clone()), r);
            }
            for (did, uuid) in persons {
                out.persons.insert((project_id, did), uuid);
            }
        }
        Ok(out)
    }

    fn person(&self, project_id: i64, distinct_id: &str) -> Option<String> {
        self.persons
            .get(&(project_id, distinct_id.to_owned()))
            .cloned()
    }

    fn referral(
        &self,
        project_id: i64,
        program: &str,
        person: &str,
    ) -> Option<flywheel_store::Referral> {
        self.referrals
            .get(&(project_id, program.to_owned(), person.to_owned()))
            .cloned()
    }

    fn remember(&mut self, project_id: i64, r: flywheel_store::Referral) {
        self.referrals
            .insert((project_id, r.program.clone(), r.referee_person.clone()), r);
    }
}

/// Whether events named `event` can qualify or reverse referrals of `p`.
fn watches(p: &Program, event: &str) -> bool {
    matches!(&p.qualify.event, flywheel_query::EventRef::Named(n) if n == event)
        || p.qualify.event == flywheel_query::EventRef::All
        || p.reversal_events.iter().any(|r| r == event)
}

/// Follows the log until shutdown.
pub async fn run(state: AppState, intake: Intake, mut identity: watch::Receiver<u64>) {
    let mut lsn = match state.store.checkpoint(CONSUMER).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "referrals: cannot read the checkpoint; not running");
            return;
        }
    };
    let mut programs = Programs {
        epoch: 0,
        by_project: HashMap::new(),
        sharing: Vec::new(),
        loaded: None,
    };
    let mut shutdown = state.shutdown.clone();
    loop {
        let target = *identity.borrow_and_update();
        metrics::gauge!(crate::metrics_names::REFERRALS_LAG).set(target.saturating_sub(lsn) as f64);
        if lsn < target {
            programs.refresh(&state).await;
            let (from, log) = (lsn, intake.clone());
            let interest = Interest::of(&programs);
            let read =
                tokio::task::spawn_blocking(move || read_chunk(&log, from, target, &interest))
                    .await;
            match read {
                Ok(Ok((end, events))) if end > from => {
                    let mut lookups = match Lookups::load(&state, &events, &programs.by_project)
                        .await
                    {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(error = %e.message, "referrals: lookups failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    for ev in &events {
                        if let Err(e) = shared_visit(&state, &lookups, ev).await {
                            tracing::warn!(project_id = ev.project_id, error = %e.message,
                                "referrals: a share-link visit could not be recorded");
                        }
                        if let Some(list) = programs.by_project.get(&ev.project_id) {
                            if let Err(e) = handle(&state, &mut lookups, list, ev).await {
                                tracing::warn!(project_id = ev.project_id, error = %e.message,
                                    "referrals: an event could not be processed");
                            }
                        }
                    }
                    lsn = end;
                    if let Err(e) = state.store.set_checkpoint(CONSUMER, lsn).await {
                        tracing::warn!(error = %e, "referrals: checkpoint not saved");
                    }
                    continue;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "referrals: reading the log failed"),
                Err(e) => tracing::error!(error = %e, "referrals: reader task failed"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        tokio::select! {
            changed = identity.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Reads batches after `from` up to `target`, keeping the events of `projects` (the ones with programs).
/// What makes an event worth a look: its project, its name, or a link marker in its properties' text.
#[derive(Clone, Default)]
struct Interest {
    projects: Vec<i64>,
    /// Names that qualify or reverse in some program.
    events: std::collections::HashSet<String>,
    /// Some program qualifies on every event.
    all_events: bool,
}

impl Interest {
    fn of(programs: &Programs) -> Self {
        let mut out = Interest {
            projects: programs.by_project.keys().copied().collect(),
            ..Default::default()
        };
        out.projects.extend(&programs.sharing);
        for p in programs.by_project.values().flatten() {
            match &p.qualify.event {
                flywheel_query::EventRef::Named(n) => {
                    out.events.insert(n.clone());
                }
                flywheel_query::EventRef::All => out.all_events = true,
            }
            out.events.extend(p.reversal_events.iter().cloned());
        }
        out
    }

    /// Whether the event may matter; its properties are parsed only then (most events are not).
    fn wants(&self, project_id: i64, event: &str, properties: &str) -> bool {
        self.projects.contains(&project_id)
            && (self.all_events
                || self.events.contains(event)
                || ["ref=", "$referral_code", "fw_share=", "$share_token"]
                    .iter()
                    .any(|m| properties.contains(m)))
    }
}

fn read_chunk(
    intake: &Intake,
    from: u64,
    target: u64,
    interest: &Interest,
) -> Result<(u64, Vec<Ev>), flywheel_engine::EngineError> {
    let mut reader = intake.reader(from);
    let mut reached = from;
    let mut out = Vec::new();
    for _ in 0..CHUNK_BATCHES {
        let Some(item) = reader.next_payload() else {
            break;
        };
        let (end, payload) = item?;
        if end > target {
            break;
        }
        let batch = BatchRef::new(payload)?;
        for e in batch.iter() {
            let e = e?;
            if !interest.wants(e.project_id, e.event, e.properties) {
                continue;
            }
            out.push(Ev {
                project_id: e.project_id,
                timestamp_us: e.timestamp_us,
                event: e.event.to_owned(),
                distinct_id: e.distinct_id.to_owned(),
                properties: serde_json::from_str(e.properties).unwrap_or(Value::Null),
            });
        }
        reached = end;
    }
    Ok((reached, out))
}

/// The share token an event carries (`$share_token`, or `fw_share` in the query of `$current_url`).
fn carried_share(props: &Value) -> Option<String> {
    if let Some(t) = props.get("$share_token").and_then(Value::as_str) {
        return Some(t.to_owned());
    }
    let url = props.get("$current_url").and_then(Value::as_str)?;
    let query = url.split_once('?')?.1.split('#').next()?;
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some(("fw_share", v)) if !v.is_empty() => Some(v.to_owned()),
            _ => None,
        })
}

/// Credits a person who came through a share link to its sharer (once per link; the sharer's own visits aside).
async fn shared_visit(
    state: &AppState,
    lookups: &Lookups,
    ev: &Ev,
) -> Result<(), crate::error::ApiError> {
    let Some(token) = carried_share(&ev.properties) else {
        return Ok(());
    };
    let Some(link) = state
        .store
        .share_link(&token)
        .await?
        .filter(|l| l.project_id == ev.project_id)
    else {
        return Ok(());
    };
    let Some(person) = lookups.person(ev.project_id, &ev.distinct_id) else {
        return Ok(());
    };
    let own = ev.distinct_id == link.sharer
        || person_of(state, ev.project_id, &link.sharer)
            .await?
            .as_deref()
            == Some(&person);
    if !own {
        state
            .store
            .record_share_visitor(link.id, &person, &ev.distinct_id)
            .await?;
    }
    Ok(())
}

async fn person_of(
    state: &AppState,
    project_id: i64,
    distinct_id: &str,
) -> Result<Option<String>, crate::error::ApiError> {
    Ok(state
        .store
        .person_ids_for(project_id, &[distinct_id])
        .await?
        .remove(distinct_id))
}

async fn handle(
    state: &AppState,
    lookups: &mut Lookups,
    programs: &[Program],
    ev: &Ev,
) -> Result<(), crate::error::ApiError> {
    if let Some((code, click)) = carried_code(&ev.properties) {
        if let Some(r) = attribute(state, lookups, programs, ev, &code, click.as_deref()).await? {
            lookups.remember(ev.project_id, r);
        }
    }
    for p in programs {
        if !watches(p, &ev.event) {
            continue;
        }
        let qualifies = matches!(&p.qualify.event, flywheel_query::EventRef::Named(n) if *n == ev.event)
            || p.qualify.event == flywheel_query::EventRef::All;
        let reverses = p.reversal_events.contains(&ev.event);
        let Some(person) = lookups.person(ev.project_id, &ev.distinct_id) else {
            continue;
        };
        let Some(referral) = lookups.referral(ev.project_id, &p.key, &person) else {
            continue;
        };
        if qualifies
            && referral.status == "attributed"
            && passes(&p.qualify.properties, &ev.properties)
        {
            let within = micros(&referral.attributed_at).is_some_and(|at| {
                ev.timestamp_us >= at
                    && ev.timestamp_us - at <= p.qualify.within_days as i64 * 86_400_000_000
            });
            if within {
                if let Some(status) = qualify(state, p, ev, &referral).await? {
                    let mut r = referral.clone();
                    r.status = status.to_owned();
                    lookups.remember(ev.project_id, r);
                }
            }
        }
        if reverses && referral.status == "qualified" {
            reverse(state, ev, &referral).await?;
        }
    }
    Ok(())
}

async fn attribute(
    state: &AppState,
    lookups: &Lookups,
    programs: &[Program],
    ev: &Ev,
    code: &str,
    click: Option<&str>,
) -> Result<Option<flywheel_store::Referral>, crate::error::ApiError> {
    let Some(found) = state.store.referral_code(code).await? else {
        return Ok(None);
    };
    let Some(program) = programs
        .iter()
        .find(|p| p.key == found.program)
        .filter(|_| found.project_id == ev.project_id)
    else {
        return Ok(None);
    };
    // A named click must be this code's, and recent enough.
    let mut click_token = None;
    if let Some(token) = click {
        if let Some((code_id, at)) = state.store.referral_click(token).await? {
            let window = program.attribution_window_days as i64 * 86_400_000_000;
            if code_id != found.id || micros(&at).is_none_or(|t| ev.timestamp_us - t > window) {
                return Ok(None);
            }
            click_token = Some(token.to_owned());
        }
    }
    let Some(person) = lookups.person(ev.project_id, &ev.distinct_id) else {
        return Ok(None);
    };
    let referrer_person = person_of(state, ev.project_id, &found.referrer).await?;
    let own = ev.distinct_id == found.referrer || referrer_person.as_deref() == Some(&person);
    let signals = if own {
        json!(["self_referral"])
    } else {
        json!([])
    };
    let new = flywheel_store::NewReferral {
        program: &program.key,
        code: &found,
        referee: &ev.distinct_id,
        referee_person: &person,
        click_token: click_token.as_deref(),
        status: if own { "rejected" } else { "attributed" },
        signals: &signals,
        at: &text_time(ev.timestamp_us),
    };
    // First touch keeps the first: a person already referred in this program needs no write.
    if program.attribution == Attribution::FirstTouch
        && lookups
            .referral(ev.project_id, &program.key, &person)
            .is_some()
    {
        return Ok(None);
    }
    let r = state
        .store
        .attribute_referral(
            ev.project_id,
            &new,
            program.attribution == Attribution::LastTouch && !own,
        )
        .await?;
    Ok(Some(r))
}

fn system() -> flywheel_store::Actor {
    flywheel_store::Actor {
        label: "system:referrals".into(),
        source_ip: None,
    }
}

/// The referee's (or referrer's) email from their person properties.
async fn email_of(
    state: &AppState,
    project_id: i64,
    distinct_id: &str,
) -> Result<Option<String>, crate::error::ApiError> {
    Ok(state
        .store
        .person_by_distinct_id(project_id, distinct_id)
        .await?
        .and_then(|p| p.properties["email"].as_str().map(str::to_owned)))
}

/// How far back, and how many of a person's newest events, [`device_prints`] looks at.
const DEVICE_DAYS: i64 = 30;
const DEVICE_EVENTS: usize = 200;

/// The fingerprints (salted address and user agent, as clicks keep them) of a distinct id's recent events that
/// carry both `$ip` and a user agent (`$raw_user_agent`, as browsers send, or `$user_agent`).
async fn device_prints(
    state: &AppState,
    project_id: i64,
    distinct_id: &str,
    until_us: i64,
) -> Result<std::collections::HashSet<String>, crate::error::ApiError> {
    let filter = flywheel_engine::table::RecentFilter {
        event: None,
        distinct_ids: Some(vec![distinct_id.to_owned()]),
        after_us: Some(until_us - DEVICE_DAYS * 86_400_000_000),
        before_us: Some(until_us + 1),
    };
    let tables = state.tables.clone();
    let events =
        tokio::task::spawn_blocking(move || tables.recent(project_id, &filter, DEVICE_EVENTS))
            .await
            .map_err(crate::error::ApiError::internal)?
            .map_err(crate::error::ApiError::internal)?;
    let mut pairs = std::collections::HashSet::new();
    for e in &events {
        // Most events carry neither: skip the parse.
        if !e.properties.contains("\"$ip\"") || !e.properties.contains("user_agent\"") {
            continue;
        }
        let Ok(props) = serde_json::from_str::<Value>(&e.properties) else {
            continue;
        };
        let ip = props.get("$ip").and_then(Value::as_str);
        let agent = props
            .get("$raw_user_agent")
            .or_else(|| props.get("$user_agent"))
            .and_then(Value::as_str);
        if let (Some(ip), Some(agent)) = (ip, agent) {
            pairs.insert((ip.to_owned(), agent.to_owned()));
        }
    }
    let mut out = std::collections::HashSet::new();
    for (ip, agent) in pairs {
        out.insert(crate::growth::fingerprint(state, &ip, &agent).await?);
    }
    Ok(out)
}

/// Whether the referee's click or recent events share a device (address and user agent) with the referrer's.
async fn same_device(
    state: &AppState,
    project_id: i64,
    referral: &flywheel_store::Referral,
    at_us: i64,
) -> Result<bool, crate::error::ApiError> {
    let referrer = device_prints(state, project_id, &referral.referrer, at_us).await?;
    if referrer.is_empty() {
        return Ok(false);
    }
    let mut referee = device_prints(state, project_id, &referral.referee, at_us).await?;
    if let Some(token) = &referral.click_token {
        if let Some(fp) = state.store.click_fingerprint(token).await? {
            referee.insert(fp);
        }
    }
    Ok(!referrer.is_disjoint(&referee))
}

/// Whether the referee brought the referrer, up the chain of referrals (at most 20 steps).
async fn cycle(
    state: &AppState,
    project_id: i64,
    referee_person: &str,
    referrer: &str,
) -> Result<bool, crate::error::ApiError> {
    let mut who = referrer.to_owned();
    for _ in 0..20 {
        let Some(person) = person_of(state, project_id, &who).await? else {
            return Ok(false);
        };
        let Some(up) = state.store.referrer_of(project_id, &person).await? else {
            return Ok(false);
        };
        if person_of(state, project_id, &up).await?.as_deref() == Some(referee_person) {
            return Ok(true);
        }
        who = up;
    }
    Ok(false)
}

/// Scores and decides a referral whose qualifying event arrived; its new status when it changed.
async fn qualify(
    state: &AppState,
    p: &Program,
    ev: &Ev,
    referral: &flywheel_store::Referral,
) -> Result<Option<&'static str>, crate::error::ApiError> {
    let capped = match p.cap_per_referrer {
        Some(cap) => {
            state
                .store
                .qualified_referrals(ev.project_id, &p.key, &referral.referrer)
                .await?
                >= cap as i64
        }
        None => false,
    };
    let hour_before =
        micros(&referral.attributed_at).map_or(String::new(), |t| text_time(t - 3_600_000_000));
    let referee_email = email_of(state, ev.project_id, &ev.distinct_id).await?;
    let referrer_email = email_of(state, ev.project_id, &referral.referrer).await?;
    let facts = crate::fraud::Facts {
        referee_email: referee_email.as_deref(),
        referrer_email: referrer_email.as_deref(),
        cycle: cycle(
            state,
            ev.project_id,
            &referral.referee_person,
            &referral.referrer,
        )
        .await?,
        same_device: same_device(state, ev.project_id, referral, ev.timestamp_us).await?,
        // The referrer's referrals attributed in the hour before this one.
        recent_referrals: state
            .store
            .referrals_since(
                ev.project_id,
                &p.key,
                &referral.referrer,
                &hour_before,
                referral.id,
            )
            .await?
            .max(0) as u64,
        velocity_per_hour: p.fraud.velocity_per_hour,
    };
    let (signals, score) = crate::fraud::score(&facts);
    let at = text_time(ev.timestamp_us);
    let status = if score >= p.fraud.reject_at {
        "rejected"
    } else if score >= p.fraud.hold_at {
        "held"
    } else if capped {
        "capped"
    } else {
        "qualified"
    };
    // A qualified referral's rewards are written with its status, in one transaction.
    let rewards = if status == "qualified" {
        referral_rewards(p, referral, ev.timestamp_us)
    } else {
        Vec::new()
    };
    let signals = json!(signals);
    let q = flywheel_store::Qualification {
        status,
        at: &at,
        signals: &signals,
        risk_score: score as i64,
    };
    let news: Vec<flywheel_store::NewReward<'_>> =
        rewards.iter().map(PlannedReward::new_reward).collect();
    if !state
        .store
        .qualify_referral(ev.project_id, referral.id, &q, &news, &system())
        .await
        .map_err(|e| crate::features::write_error(e, "reward"))?
    {
        return Ok(None);
    }
    if status == "qualified" {
        write_milestones(state, ev.project_id, p, referral, ev.timestamp_us).await?;
    }
    Ok(Some(status))
}

/// One ledger entry a qualified referral earns.
struct PlannedReward {
    beneficiary: String,
    amount: f64,
    unit: String,
    reason: String,
    program: String,
    idempotency_key: String,
    hold_until: String,
}

impl PlannedReward {
    fn new_reward(&self) -> flywheel_store::NewReward<'_> {
        flywheel_store::NewReward {
            beneficiary: &self.beneficiary,
            amount: self.amount,
            unit: &self.unit,
            reason: &self.reason,
            program: Some(&self.program),
            idempotency_key: &self.idempotency_key,
            hold_until: &self.hold_until,
        }
    }
}

/// The referrer's (and the referee's, when the program has one) rewards of a qualified referral, pending for the
/// program's hold from `from_us`; keyed by referral and side, so writing them again changes nothing.
fn referral_rewards(
    p: &Program,
    referral: &flywheel_store::Referral,
    from_us: i64,
) -> Vec<PlannedReward> {
    let hold_until = text_time(from_us + p.hold_days as i64 * 86_400_000_000);
    let reason = format!(
        "referral {} in `{}`: {} qualified",
        referral.id, p.key, referral.referee
    );
    let mut sides = vec![("referrer", &referral.referrer, &p.referrer_reward)];
    if let Some(r) = &p.referee_reward {
        sides.push(("referee", &referral.referee, r));
    }
    sides
        .into_iter()
        .map(|(side, who, reward)| PlannedReward {
            beneficiary: who.clone(),
            amount: reward.amount,
            unit: reward.unit.clone(),
            reason: reason.clone(),
            program: p.key.clone(),
            idempotency_key: format!("referral:{}:{side}", referral.id),
            hold_until: hold_until.clone(),
        })
        .collect()
}

/// The ledger entries of a qualified referral, pending for the program's hold from `from_us` (idempotent), and
/// the referrer's milestone bonus it reaches.
pub(crate) async fn write_rewards(
    state: &AppState,
    project_id: i64,
    p: &Program,
    referral: &flywheel_store::Referral,
    from_us: i64,
) -> Result<(), crate::error::ApiError> {
    for reward in referral_rewards(p, referral, from_us) {
        state
            .store
            .create_reward(project_id, &reward.new_reward(), &system())
            .await
            .map_err(|e| crate::features::write_error(e, "reward"))?;
    }
    write_milestones(state, project_id, p, referral, from_us).await
}

/// The referrer's bonus for the milestone tier a qualified referral reaches (once per tier: keyed by it).
async fn write_milestones(
    state: &AppState,
    project_id: i64,
    p: &Program,
    referral: &flywheel_store::Referral,
    from_us: i64,
) -> Result<(), crate::error::ApiError> {
    let hold_until = text_time(from_us + p.hold_days as i64 * 86_400_000_000);
    // Milestones: the referrer's bonus for the tier this referral reaches (once: keyed by tier).
    if !p.tiers.is_empty() {
        let qualified = state
            .store
            .qualified_referrals(project_id, &p.key, &referral.referrer)
            .await?;
        for tier in p.tiers.iter().filter(|t| t.qualified as i64 <= qualified) {
            let key = format!("tier:{}:{}:{}", p.key, referral.referrer, tier.qualified);
            let reason = format!(
                "milestone of `{}`: {} qualified referrals",
                p.key, tier.qualified
            );
            let new = flywheel_store::NewReward {
                beneficiary: &referral.referrer,
                amount: tier.reward.amount,
                unit: &tier.reward.unit,
                reason: &reason,
                program: Some(&p.key),
                idempotency_key: &key,
                hold_until: &hold_until,
            };
            state
                .store
                .create_reward(project_id, &new, &system())
                .await
                .map_err(|e| crate::features::write_error(e, "reward"))?;
        }
    }
    Ok(())
}

async fn reverse(
    state: &AppState,
    ev: &Ev,
    referral: &flywheel_store::Referral,
) -> Result<(), crate::error::ApiError> {
    for side in ["referrer", "referee"] {
        let key = format!("referral:{}:{side}", referral.id);
        let Some(entry) = state.store.reward_by_key(ev.project_id, &key).await? else {
            continue;
        };
        if flywheel_store::transition_allowed(&entry.status, "reversed") {
            let reason = format!("`{}` by {} within the hold", ev.event, ev.distinct_id);
            // A concurrent approval or fulfilment wins: then there is nothing to reverse.
            let _ = state
                .store
                .transition_reward(ev.project_id, entry.id, "reversed", &reason, &system())
                .await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_come_from_the_property_or_the_landing_url() {
        assert_eq!(
            carried_code(
                &json!({"$current_url": "https://x.io/join?src=a&ref=Anna-1&fw_click=t9#top"})
            ),
            Some(("Anna-1".into(), Some("t9".into())))
        );
        assert_eq!(
            carried_code(
                &json!({"$referral_code": "abc", "$current_url": "https://x.io/?ref=zzz"})
            ),
            Some(("abc".into(), None))
        );
        assert_eq!(
            carried_code(&json!({"$current_url": "https://x.io/?reference=1"})),
            None
        );
        assert_eq!(carried_code(&json!({})), None);
    }
}
