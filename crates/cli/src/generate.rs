//! `flywheel generate`: a deterministic synthetic history of a SaaS product (a project-management tool), written
//! straight into a data directory's intake log.
//!
//! The [`Generator`] is pure: from a [`Config`] (seed, event count, person budget, time range, project) it yields
//! exactly `events` [`Event`]s in timestamp order, the same ones for the same config on every machine (its random
//! numbers come from a small xoshiro256++ implemented here, so the output never changes with a dependency upgrade;
//! ground-truth tests and benchmarks are tied to seeds).
//!
//! # What it models
//!
//! Time is cut into UTC days (the first and last may be partial). Each day gets a share of the events and of the new
//! persons, weighted by a gentle growth trend and quieter weekends. A day is filled with *sessions*:
//!
//! * first sessions of the day's new persons: anonymous marketing-site page views (`$pageview` with `$current_url`,
//!   `$set_once` of initial properties on the first one), sometimes a sign-up;
//! * then returning sessions until the day's event share is reached. Who returns is drawn by first-seen day with a
//!   weight decaying with age (`(1 + days)^-0.9`), then accepted with a probability that grows with the person's
//!   stage and engagement: paying customers come back often, anonymous visitors and churned customers rarely (but
//!   sometimes: resurrections).
//!
//! A person moves through the funnel `signed_up` → `project_created` (activation) → `teammate_invited` →
//! `trial_started` → `subscription_upgraded` (paid, with `plan` and `amount`) → maybe `subscription_cancelled`
//! (churn), at most one step per session, with a per-person propensity. Sign-up is an `$identify` from the
//! anonymous id (`$anon_distinct_id`) to `user_<n>`, with `$set`/`$set_once` person properties (email, plan, role,
//! country, referrer); a quarter of sign-ups send `signed_up` from the anonymous id just *before* the identify, and
//! one session in ten of an identified user starts on a new device (a fresh anonymous id, page views, then an
//! `$identify` merge): persons merged mid-funnel. Signed-up users belong to a company (`$groups: {"company": …}` on
//! their events); creating one sends `$groupidentify` with name, industry, size and plan, and an upgrade updates
//! the company's plan. Product usage: `task_created`, `task_completed`, `comment_added`, `dashboard_viewed`,
//! `file_uploaded` and app page views. Edge cases on purpose: identical timestamps (about 5% of consecutive events
//! in a session, some sign-ups' `$identify` and `signed_up`), sessions starting exactly at UTC midnight or at
//! 23:59:59.999999, sessions crossing midnight.
//!
//! Memory: one 16-byte state per person plus the events of one UTC day (sorted before they are emitted).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flywheel_engine::Event;

pub const DAY_US: i64 = 86_400_000_000;
const MINUTE_US: i64 = 60_000_000;

// ---------------------------------------------------------------------------------------------------------------
// Random numbers

/// xoshiro256++ seeded through splitmix64: fast, and its sequence is fixed by this code alone.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut s = [0u64; 4];
        for slot in &mut s {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            *slot = splitmix(x);
        }
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n > 0`; multiply-shift, bias below 2^-32 for the ranges used here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..hi` (`lo < hi`).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64) as i64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Vocabulary

const BROWSERS: [&str; 6] = [
    "Chrome",
    "Chrome",
    "Chrome",
    "Safari",
    "Firefox",
    "Microsoft Edge",
];
const OSES: [&str; 6] = ["Mac OS X", "Windows", "Windows", "Linux", "iOS", "Android"];
const COUNTRIES: [&str; 14] = [
    "US", "US", "US", "US", "GB", "DE", "FR", "IN", "BR", "CA", "NL", "ES", "AU", "JP",
];
const REFERRERS: [&str; 6] = [
    "$direct",
    "$direct",
    "https://www.google.com/",
    "https://www.google.com/",
    "https://news.ycombinator.com/",
    "https://www.linkedin.com/",
];
const MARKETING: [&str; 8] = [
    "https://www.example.com/",
    "https://www.example.com/",
    "https://www.example.com/pricing",
    "https://www.example.com/features",
    "https://www.example.com/blog/roadmaps-that-ship",
    "https://www.example.com/blog/kanban-vs-scrum",
    "https://www.example.com/customers",
    "https://www.example.com/docs/getting-started",
];
const APP_PAGES: [&str; 6] = [
    "https://app.example.com/projects",
    "https://app.example.com/projects",
    "https://app.example.com/board",
    "https://app.example.com/inbox",
    "https://app.example.com/reports",
    "https://app.example.com/settings",
];
const USAGE: [&str; 9] = [
    "task_created",
    "task_created",
    "task_completed",
    "task_completed",
    "comment_added",
    "dashboard_viewed",
    "file_uploaded",
    "$pageview",
    "$pageview",
];
const INDUSTRIES: [&str; 6] = [
    "software",
    "agency",
    "education",
    "finance",
    "healthcare",
    "retail",
];
const COMPANY_WORDS: [&str; 8] = [
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne",
];
const ROLES: [&str; 4] = ["engineer", "designer", "manager", "founder"];
/// Relative session-start likelihood by UTC hour (max 1).
const HOURS: [f64; 24] = [
    0.3, 0.25, 0.2, 0.2, 0.2, 0.25, 0.35, 0.5, 0.7, 0.85, 0.95, 1.0, 1.0, 1.0, 1.0, 0.95, 0.9,
    0.85, 0.75, 0.65, 0.55, 0.5, 0.45, 0.35,
];

/// The funnel steps, in order.
#[cfg(test)]
const FUNNEL: [&str; 5] = [
    "signed_up",
    "project_created",
    "teammate_invited",
    "trial_started",
    "subscription_upgraded",
];

// ---------------------------------------------------------------------------------------------------------------
// The generator

/// What to generate.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub events: u64,
    /// Upper bound on persons (one person = one human, possibly with several distinct ids).
    pub persons: u64,
    /// Inclusive start of the time range, µs since the Unix epoch.
    pub start_us: i64,
    /// Exclusive end of the time range.
    pub end_us: i64,
    pub project_id: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Stage {
    Visitor,
    /// Identified, `signed_up` not sent yet (the session ended in between).
    Identified,
    SignedUp,
    Activated,
    Invited,
    Trial,
    Paid,
    Churned,
}

#[derive(Clone, Copy, Debug)]
struct Person {
    last_ts: i64,
    /// Company index + 1 (0: none yet).
    company: u32,
    stage: Stage,
    /// Anonymous ids used so far (devices); the current one is `devices - 1`.
    devices: u8,
}

/// Fixed traits of a person, from a hash of the seed and its index.
struct Traits {
    browser: &'static str,
    os: &'static str,
    mobile: bool,
    country: &'static str,
    referrer: &'static str,
    /// 0.25..1: how often the person comes back.
    engagement: f64,
    /// 0.4..1.6: how readily the person moves down the funnel.
    propensity: f64,
}

#[derive(Clone, Copy)]
enum Did {
    Anon(u8),
    User,
}

/// Totals of what was generated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub events: u64,
    pub persons: u64,
    pub distinct_ids: u64,
    pub merges: u64,
    pub companies: u64,
    /// Events per name, sorted by name.
    pub by_event: Vec<(&'static str, u64)>,
}

pub struct Generator {
    cfg: Config,
    rng: Rng,
    /// UTC-day windows `[start, end)` clipped to the range.
    windows: Vec<(i64, i64)>,
    /// Cumulative event and new-person targets at the end of each window.
    event_targets: Vec<u64>,
    person_targets: Vec<u64>,
    /// First person index of each window's cohort (persons are numbered in order of first visit).
    cohort_start: Vec<u32>,
    window: usize,
    persons: Vec<Person>,
    companies: u32,
    /// Events generated so far (emitted or waiting in `ready`/`carry`).
    generated: u64,
    /// Current window's target.
    target: u64,
    /// Current window's events: fixed fields, with their strings in `text`.
    recs: Vec<Rec>,
    text: String,
    /// Emission order of `recs`: (timestamp, index), sorted; `pos` is the next to emit.
    order: Vec<(i64, u32)>,
    pos: usize,
    /// Events generated for later windows (sessions crossing midnight).
    carry: Vec<CarriedEvent>,
    /// Current session's person and clock.
    ts: i64,
    emitted: u64,
    distinct_ids: u64,
    merges: u64,
    counts: Vec<(&'static str, u64)>,
}

fn traits(seed: u64, person: u32) -> Traits {
    let h = splitmix(seed ^ splitmix(person as u64 + 1));
    let h2 = splitmix(h);
    let os = OSES[(h >> 8) as usize % OSES.len()];
    Traits {
        browser: if os == "iOS" {
            "Mobile Safari"
        } else {
            BROWSERS[h as usize % BROWSERS.len()]
        },
        os,
        mobile: os == "iOS" || os == "Android",
        country: COUNTRIES[(h >> 16) as usize % COUNTRIES.len()],
        referrer: REFERRERS[(h >> 24) as usize % REFERRERS.len()],
        engagement: 0.25 + 0.75 * ((h2 & 0xffff) as f64 / 65535.0).sqrt(),
        propensity: 0.4 + 1.2 * ((h2 >> 16) & 0xffff) as f64 / 65535.0,
    }
}

/// An anonymous id that looks like a browser SDK's (uuid-shaped), fixed by seed, person and device.
pub fn anon_id(seed: u64, person: u32, device: u8) -> String {
    let mut s = String::new();
    push_anon_id(&mut s, seed, person, device);
    s
}

fn push_anon_id(out: &mut String, seed: u64, person: u32, device: u8) {
    let a = splitmix(seed ^ splitmix(((person as u64) << 8 | device as u64) ^ 0xA11CE));
    let b = splitmix(a);
    push_hex(out, a >> 32, 8);
    out.push('-');
    push_hex(out, a >> 16, 4);
    out.push('-');
    push_hex(out, a, 4);
    out.push('-');
    push_hex(out, b >> 48, 4);
    out.push('-');
    push_hex(out, b, 12);
}

fn company_key(company: u32) -> String {
    format!("company_{company}")
}

fn weekday(ts_us: i64) -> i64 {
    // 1970-01-01 was a Thursday; 0 = Sunday.
    (ts_us.div_euclid(DAY_US) + 4).rem_euclid(7)
}

/// Cumulative targets proportional to `weights`, ending exactly at `total`.
fn cumulative(weights: &[f64], total: u64) -> Vec<u64> {
    let sum: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let mut out: Vec<u64> = weights
        .iter()
        .map(|w| {
            acc += w;
            ((acc / sum) * total as f64).round() as u64
        })
        .collect();
    if let Some(last) = out.last_mut() {
        *last = total;
    }
    out
}

impl Generator {
    pub fn new(cfg: Config) -> anyhow::Result<Generator> {
        if cfg.persons == 0 {
            bail!("--persons must be at least 1");
        }
        if cfg.persons > u32::MAX as u64 - 1 {
            bail!("--persons must be below {}", u32::MAX);
        }
        if cfg.end_us <= cfg.start_us {
            bail!("the time range is empty");
        }
        let mut windows = Vec::new();
        let mut t = cfg.start_us;
        while t < cfg.end_us {
            let next = ((t.div_euclid(DAY_US) + 1) * DAY_US).min(cfg.end_us);
            windows.push((t, next));
            t = next;
        }
        let span = (cfg.end_us - cfg.start_us) as f64;
        let weights: Vec<f64> = windows
            .iter()
            .map(|&(a, b)| {
                let len = (b - a) as f64 / DAY_US as f64;
                let progress = ((a + b) / 2 - cfg.start_us) as f64 / span;
                let weekend = matches!(weekday(a), 0 | 6);
                len * (0.7 + 0.6 * progress) * if weekend { 0.65 } else { 1.0 }
            })
            .collect();
        let event_targets = cumulative(&weights, cfg.events);
        let person_targets = cumulative(&weights, cfg.persons);
        Ok(Generator {
            rng: Rng::new(cfg.seed),
            windows,
            event_targets,
            person_targets,
            cohort_start: Vec::new(),
            window: 0,
            persons: Vec::new(),
            companies: 0,
            generated: 0,
            target: 0,
            recs: Vec::new(),
            text: String::new(),
            order: Vec::new(),
            pos: 0,
            carry: Vec::new(),
            ts: 0,
            emitted: 0,
            distinct_ids: 0,
            merges: 0,
            counts: Vec::new(),
            cfg,
        })
    }

    /// Totals so far (complete once the generator is exhausted).
    pub fn stats(&self) -> Stats {
        let mut by_event = self.counts.clone();
        by_event.sort();
        Stats {
            events: self.emitted,
            persons: self.persons.len() as u64,
            distinct_ids: self.distinct_ids,
            merges: self.merges,
            companies: self.companies as u64,
            by_event,
        }
    }

    /// Puts up to `max` next events into `out`, reusing the events already there (their string buffers), and
    /// truncates it to what was written; returns how many (0 once all were produced).
    pub fn fill(&mut self, out: &mut Vec<Event>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            if self.pos == self.order.len() {
                if !self.advance_window() {
                    break;
                }
                continue;
            }
            let (_, idx) = self.order[self.pos];
            self.pos += 1;
            let rec = &self.recs[idx as usize];
            match out.get_mut(n) {
                Some(e) => rec.write_into(&self.text, self.cfg.project_id, e),
                None => out.push(rec.to_event(&self.text, self.cfg.project_id)),
            }
            n += 1;
        }
        self.emitted += n as u64;
        out.truncate(n);
        n
    }

    /// Generates the next window with events (or returns false when there is none left).
    fn advance_window(&mut self) -> bool {
        while self.window < self.windows.len() {
            let i = self.window;
            self.window += 1;
            let (_, wend) = self.windows[i];
            self.cohort_start.push(self.persons.len() as u32);
            // Events carried over from sessions that crossed into this window.
            self.recs.clear();
            self.text.clear();
            for e in std::mem::take(&mut self.carry) {
                if e.timestamp_us < wend {
                    let d0 = self.text.len();
                    self.text.push_str(&e.distinct_id);
                    let d1 = self.text.len();
                    self.text.push_str(&e.properties);
                    self.recs.push(Rec {
                        uuid: e.uuid,
                        ts: e.timestamp_us,
                        received: e.received_us,
                        event: e.event_name,
                        did: (d0 as u32, d1 as u32),
                        props_end: self.text.len() as u32,
                    });
                } else {
                    self.carry.push(e);
                }
            }
            self.target = self.event_targets[i];
            // First sessions of the window's new persons.
            while self.generated < self.target
                && (self.persons.len() as u64) < self.person_targets[i]
            {
                let p = self.new_person();
                self.session(p, i, true);
            }
            // Returning sessions fill the window's share.
            let cumulative = self.cohort_weights(i);
            while self.generated < self.target {
                let p = match self.returning(&cumulative) {
                    Some(p) => p,
                    None => {
                        if (self.persons.len() as u64) < self.cfg.persons {
                            let p = self.new_person();
                            self.session(p, i, true);
                            continue;
                        }
                        // Budget spent and no earlier cohort (first window): same-window returns.
                        self.rng.below(self.persons.len() as u64) as u32
                    }
                };
                self.session(p, i, false);
            }
            // By time; equal timestamps keep their generation order (a person's order).
            self.order.clear();
            self.order
                .extend(self.recs.iter().enumerate().map(|(i, r)| (r.ts, i as u32)));
            self.order.sort_unstable();
            self.pos = 0;
            if !self.order.is_empty() {
                return true;
            }
        }
        false
    }

    fn new_person(&mut self) -> u32 {
        let p = self.persons.len() as u32;
        self.persons.push(Person {
            last_ts: i64::MIN,
            company: 0,
            stage: Stage::Visitor,
            devices: 1,
        });
        self.distinct_ids += 1;
        p
    }

    /// Cumulative weights of the cohorts of windows before `i` (by first-seen window, decaying with age).
    fn cohort_weights(&self, i: usize) -> Vec<f64> {
        let mut acc = 0.0;
        (0..i)
            .map(|f| {
                let size = self.cohort_start[f + 1] - self.cohort_start[f];
                let age = (self.windows[i].0 - self.windows[f].0) as f64 / DAY_US as f64;
                acc += size as f64 * (1.0 + age).powf(-0.9);
                acc
            })
            .collect()
    }

    /// A returning person: a cohort by weight, a member uniformly, accepted by stage and engagement.
    fn returning(&mut self, cumulative: &[f64]) -> Option<u32> {
        let total = *cumulative.last()?;
        if total <= 0.0 {
            return None;
        }
        let mut candidate = 0;
        for _ in 0..16 {
            let x = self.rng.unit() * total;
            let f = cumulative
                .partition_point(|&c| c <= x)
                .min(cumulative.len() - 1);
            let (a, b) = (self.cohort_start[f], self.cohort_start[f + 1]);
            if a == b {
                continue;
            }
            candidate = a + self.rng.below((b - a) as u64) as u32;
            let base = match self.persons[candidate as usize].stage {
                Stage::Visitor => 0.12,
                Stage::Identified | Stage::SignedUp => 0.45,
                Stage::Activated => 0.7,
                Stage::Invited => 0.8,
                Stage::Trial => 0.85,
                Stage::Paid => 0.95,
                Stage::Churned => 0.04,
            };
            let t = traits(self.cfg.seed, candidate);
            if self.rng.chance(base * t.engagement) {
                return Some(candidate);
            }
        }
        Some(candidate)
    }

    fn session_start(&mut self, window: usize, person: u32) -> i64 {
        let (a, b) = self.windows[window];
        let midnight = a % DAY_US == 0;
        let mut start = if midnight && self.rng.chance(0.004) {
            a // exactly 00:00:00.000000 UTC
        } else if b % DAY_US == 0 && self.rng.chance(0.002) {
            b - 1 // 23:59:59.999999
        } else {
            let mut t = self.rng.range(a, b);
            for _ in 0..4 {
                let hour = (t.rem_euclid(DAY_US) / (DAY_US / 24)) as usize;
                if self.rng.chance(HOURS[hour]) {
                    break;
                }
                t = self.rng.range(a, b);
            }
            t
        };
        let last = self.persons[person as usize].last_ts;
        if start <= last {
            start = last + self.rng.range(0, 30 * MINUTE_US);
        }
        if start >= self.cfg.end_us {
            start = last; // still inside the range: last_ts < end
        }
        start
    }

    /// Moves the session clock: usually seconds to minutes, sometimes not at all (identical timestamps).
    fn tick(&mut self) {
        self.ts += if self.rng.chance(0.05) {
            0
        } else {
            self.rng.range(1_000_000, 120_000_000)
        };
    }

    /// [`tick`](Self::tick), but never past the last microsecond of the range.
    fn tick_capped(&mut self) {
        self.tick();
        self.ts = self.ts.min(self.cfg.end_us - 1);
    }

    fn session(&mut self, p: u32, window: usize, first: bool) {
        self.ts = self.session_start(window, p);
        let t = traits(self.cfg.seed, p);
        let person = self.persons[p as usize];
        if person.stage == Stage::Visitor {
            self.visitor_session(p, &t, first);
        } else {
            self.user_session(p, &t);
        }
    }

    fn visitor_session(&mut self, p: u32, t: &Traits, first: bool) {
        let device = Did::Anon(self.persons[p as usize].devices - 1);
        let views = 1 + self.rng.below(4);
        for k in 0..views {
            if k > 0 {
                self.tick();
            }
            let url = *self.rng.pick(&MARKETING);
            let extra = if first && k == 0 {
                format!(
                    "\"$set_once\":{{\"initial_referrer\":\"{}\",\"initial_url\":\"{url}\"}},",
                    t.referrer
                )
            } else {
                String::new()
            };
            if !self.pageview(p, t, device, url, &extra) {
                return;
            }
        }
        if self.rng.chance(0.08) {
            self.tick();
            if !self.emit(p, t, device, "cta_clicked", "\"cta\":\"start_free\",") {
                return;
            }
        }
        let p_signup = if first { 0.2 } else { 0.12 } * t.propensity;
        if self.rng.chance(p_signup) {
            self.signup(p, t, device);
        }
    }

    fn signup(&mut self, p: u32, t: &Traits, device: Did) {
        self.tick();
        if !self.pageview(p, t, device, "https://app.example.com/signup", "") {
            return;
        }
        let method = if self.rng.chance(0.4) {
            "google"
        } else {
            "email"
        };
        let signed_up = format!("\"method\":\"{method}\",");
        // A quarter of the sign-ups are sent before the identify, from the anonymous id.
        let anon_first = self.rng.chance(0.25);
        self.tick();
        if anon_first && !self.emit(p, t, device, "signed_up", &signed_up) {
            return;
        }
        let joins = self.companies > 0 && self.rng.chance(0.35);
        let company = if joins {
            // Invited by a teammate: an existing company, recent ones more likely.
            let back = self.rng.below(self.companies.min(200) as u64) as u32;
            self.companies - back
        } else {
            self.companies + 1
        };
        let Did::Anon(d) = device else { return };
        let role = *self.rng.pick(&ROLES);
        let extra = format!(
            "\"$anon_distinct_id\":\"{}\",\"$set\":{{\"email\":\"user{p}@example.com\",\"plan\":\"free\",\"role\":\"{role}\"}},\"$set_once\":{{\"country\":\"{}\",\"signup_source\":\"{}\"}},",
            anon_id(self.cfg.seed, p, d),
            t.country,
            if joins { "invite" } else { "organic" }
        );
        if anon_first {
            self.tick();
        }
        // The identify and what follows carry the company.
        self.persons[p as usize].company = company;
        if !self.emit(p, t, Did::User, "$identify", &extra) {
            self.persons[p as usize].company = 0;
            return;
        }
        self.persons[p as usize].stage = if anon_first {
            Stage::SignedUp
        } else {
            Stage::Identified
        };
        self.distinct_ids += 1;
        self.merges += 1;
        if !joins {
            self.companies += 1;
            self.tick();
            let h = splitmix(self.cfg.seed ^ company as u64);
            let extra = format!(
                "\"$group_type\":\"company\",\"$group_key\":\"{}\",\"$group_set\":{{\"name\":\"{} {}\",\"industry\":\"{}\",\"employees\":{},\"plan\":\"free\"}},",
                company_key(company),
                COMPANY_WORDS[h as usize % COMPANY_WORDS.len()],
                company,
                INDUSTRIES[(h >> 8) as usize % INDUSTRIES.len()],
                [5, 12, 40, 150, 800][(h >> 16) as usize % 5]
            );
            if !self.emit(p, t, Did::User, "$groupidentify", &extra) {
                return;
            }
        }
        if !anon_first {
            if self.rng.chance(0.7) {
                self.tick();
            }
            if !self.emit(p, t, Did::User, "signed_up", &signed_up) {
                return;
            }
            self.persons[p as usize].stage = Stage::SignedUp;
        }
        if self.rng.chance(0.5) {
            self.user_actions(p, t);
        }
    }

    fn user_session(&mut self, p: u32, t: &Traits) {
        let person = self.persons[p as usize];
        // A new device: anonymous page views, then logging in merges the new anonymous id. Only when the window's
        // share leaves room for all three events, and with the clock capped at the end of the range: an
        // anonymous id left unmerged would be an extra person.
        if person.stage != Stage::Churned
            && person.devices < 255
            && self.target - self.generated >= 3
            && self.rng.chance(0.1)
        {
            let d = person.devices;
            self.persons[p as usize].devices += 1;
            let url = *self.rng.pick(&MARKETING);
            if !self.pageview(p, t, Did::Anon(d), url, "") {
                return;
            }
            self.distinct_ids += 1;
            self.tick_capped();
            if !self.pageview(p, t, Did::Anon(d), "https://app.example.com/login", "") {
                return;
            }
            self.tick_capped();
            let extra = format!(
                "\"$anon_distinct_id\":\"{}\",",
                anon_id(self.cfg.seed, p, d)
            );
            if !self.emit(p, t, Did::User, "$identify", &extra) {
                return;
            }
            self.merges += 1;
            self.tick();
        }
        self.user_actions(p, t);
    }

    /// Product usage around at most one funnel step.
    fn user_actions(&mut self, p: u32, t: &Traits) {
        let stage = self.persons[p as usize].stage;
        let n = if stage == Stage::Churned {
            1 + self.rng.below(2)
        } else {
            2 + self.rng.below(8)
        };
        let step_at = self.rng.below(n);
        for k in 0..n {
            if k > 0 {
                self.tick();
            }
            if k == step_at && !self.funnel_step(p, t) {
                return;
            }
            let stage = self.persons[p as usize].stage;
            let name = if stage >= Stage::Activated {
                *self.rng.pick(&USAGE)
            } else {
                "$pageview"
            };
            let ok = match name {
                "$pageview" => {
                    let url = *self.rng.pick(&APP_PAGES);
                    self.pageview(p, t, Did::User, url, "")
                }
                "task_completed" => {
                    let extra = format!("\"duration_hours\":{},", 1 + self.rng.below(72));
                    self.emit(p, t, Did::User, name, &extra)
                }
                _ => self.emit(p, t, Did::User, name, ""),
            };
            if !ok {
                return;
            }
        }
    }

    /// Maybe moves the person one funnel step; false when the session must stop.
    fn funnel_step(&mut self, p: u32, t: &Traits) -> bool {
        let stage = self.persons[p as usize].stage;
        let pf = t.propensity;
        let (next, event, extra): (Stage, &str, String) = match stage {
            Stage::Identified => (
                Stage::SignedUp,
                "signed_up",
                "\"method\":\"email\",".to_owned(),
            ),
            Stage::SignedUp if self.rng.chance(0.45 * pf) => {
                let template = *self.rng.pick(&["blank", "kanban", "roadmap", "sprint"]);
                (
                    Stage::Activated,
                    "project_created",
                    format!("\"template\":\"{template}\","),
                )
            }
            Stage::Activated if self.rng.chance(0.3 * pf) => (
                Stage::Invited,
                "teammate_invited",
                format!("\"invitee_role\":\"{}\",", self.rng.pick(&ROLES)),
            ),
            Stage::Invited if self.rng.chance(0.3 * pf) => (
                Stage::Trial,
                "trial_started",
                "\"$set\":{\"plan\":\"trial\"},".to_owned(),
            ),
            Stage::Trial if self.rng.chance(0.3 * pf) => {
                let (plan, price) = if self.rng.chance(0.25) {
                    ("business", 24)
                } else {
                    ("pro", 10)
                };
                let seats = 1 + self.rng.below(20);
                (
                    Stage::Paid,
                    "subscription_upgraded",
                    format!(
                        "\"plan\":\"{plan}\",\"seats\":{seats},\"amount\":{},\"$set\":{{\"plan\":\"{plan}\"}},",
                        seats * price
                    ),
                )
            }
            Stage::Paid if self.rng.chance(0.03) => (
                Stage::Churned,
                "subscription_cancelled",
                "\"reason\":\"too_expensive\",\"$set\":{\"plan\":\"free\"},".to_owned(),
            ),
            Stage::Invited | Stage::Trial | Stage::Paid if self.rng.chance(0.08) => {
                // More invitations, no stage change.
                return self.emit(
                    p,
                    t,
                    Did::User,
                    "teammate_invited",
                    "\"invitee_role\":\"engineer\",",
                );
            }
            _ => return true,
        };
        if !self.emit(p, t, Did::User, event, &extra) {
            return false;
        }
        self.persons[p as usize].stage = next;
        if next == Stage::Paid {
            let company = self.persons[p as usize].company;
            let plan = if extra.contains("business") {
                "business"
            } else {
                "pro"
            };
            self.tick();
            let extra = format!(
                "\"$group_type\":\"company\",\"$group_key\":\"{}\",\"$group_set\":{{\"plan\":\"{plan}\"}},",
                company_key(company)
            );
            if !self.emit(p, t, Did::User, "$groupidentify", &extra) {
                return false;
            }
        }
        self.tick();
        true
    }

    fn pageview(&mut self, p: u32, t: &Traits, did: Did, url: &str, extra: &str) -> bool {
        let load = 80 + self.rng.below(900) + self.rng.below(4) * self.rng.below(1500);
        let mut props = String::with_capacity(extra.len() + url.len() + 24);
        props.push_str(extra);
        props.push_str("\"$current_url\":\"");
        props.push_str(url);
        props.push_str("\",\"load_ms\":");
        props.push_str(&load.to_string());
        props.push(',');
        self.emit(p, t, did, "$pageview", &props)
    }

    /// Records one event at the session clock. `extra` holds JSON members, each followed by a comma. False (and
    /// nothing recorded) when the window's share is reached or the clock passed the end of the range.
    fn emit(&mut self, p: u32, t: &Traits, did: Did, event: &'static str, extra: &str) -> bool {
        if self.generated >= self.target || self.ts >= self.cfg.end_us {
            return false;
        }
        let person = self.persons[p as usize];
        let text = &mut self.text;
        let d0 = text.len();
        match did {
            Did::Anon(d) => push_anon_id(text, self.cfg.seed, p, d),
            Did::User => {
                text.push_str("user_");
                push_u64(text, p as u64);
            }
        }
        let d1 = text.len();
        text.push('{');
        text.push_str(extra);
        text.push_str("\"$browser\":\"");
        text.push_str(t.browser);
        text.push_str("\",\"$os\":\"");
        text.push_str(t.os);
        text.push_str("\",\"$device_type\":\"");
        text.push_str(if t.mobile { "Mobile" } else { "Desktop" });
        text.push_str("\",\"$geoip_country_code\":\"");
        text.push_str(t.country);
        text.push_str("\",\"$lib\":\"web\"");
        if let (Did::User, c @ 1..) = (did, person.company) {
            text.push_str(",\"$groups\":{\"company\":\"company_");
            push_u64(text, c as u64);
            text.push_str("\"}");
        }
        text.push('}');
        let r = self.rng.next_u64();
        let ts = self.ts;
        let rec = Rec {
            uuid: uuid_v7(ts, r, self.rng.next_u64()),
            ts,
            received: ts + (r & 0x1f_ffff) as i64,
            event,
            did: (d0 as u32, d1 as u32),
            props_end: text.len() as u32,
        };
        let (_, wend) = self.windows[self.window - 1];
        if ts < wend {
            self.recs.push(rec);
        } else {
            let e = rec.to_event(&self.text, self.cfg.project_id);
            self.text.truncate(d0);
            self.carry.push(CarriedEvent {
                uuid: e.uuid,
                timestamp_us: e.timestamp_us,
                received_us: e.received_us,
                event_name: event,
                distinct_id: e.distinct_id,
                properties: e.properties,
            });
        }
        self.persons[p as usize].last_ts = ts;
        self.generated += 1;
        match self
            .counts
            .iter_mut()
            .find(|(n, _)| std::ptr::eq(*n, event) || *n == event)
        {
            Some((_, c)) => *c += 1,
            None => self.counts.push((event, 1)),
        }
        true
    }
}

/// A version-7 uuid (millisecond timestamp first) with the given random bits.
fn uuid_v7(ts_us: i64, a: u64, b: u64) -> u128 {
    let ms = (ts_us.max(0) / 1000) as u128 & ((1 << 48) - 1);
    let rand_a = (a >> 52) as u128; // 12 bits
    let rand_b = (b >> 2) as u128; // 62 bits
    (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        while self.pos == self.order.len() {
            if !self.advance_window() {
                return None;
            }
        }
        let (_, idx) = self.order[self.pos];
        self.pos += 1;
        self.emitted += 1;
        Some(self.recs[idx as usize].to_event(&self.text, self.cfg.project_id))
    }
}

/// A generated event inside a window: fixed fields, strings as ranges of the window's text.
struct Rec {
    uuid: u128,
    ts: i64,
    received: i64,
    event: &'static str,
    /// Distinct id: `text[did.0..did.1]`; properties: `text[did.1..props_end]`.
    did: (u32, u32),
    props_end: u32,
}

impl Rec {
    fn to_event(&self, text: &str, project_id: i64) -> Event {
        Event {
            uuid: self.uuid,
            project_id,
            timestamp_us: self.ts,
            received_us: self.received,
            event: self.event.to_owned(),
            distinct_id: text[self.did.0 as usize..self.did.1 as usize].to_owned(),
            properties: text[self.did.1 as usize..self.props_end as usize].to_owned(),
        }
    }

    /// Overwrites `e` in place, reusing its strings' buffers.
    fn write_into(&self, text: &str, project_id: i64, e: &mut Event) {
        e.uuid = self.uuid;
        e.project_id = project_id;
        e.timestamp_us = self.ts;
        e.received_us = self.received;
        e.event.clear();
        e.event.push_str(self.event);
        e.distinct_id.clear();
        e.distinct_id
            .push_str(&text[self.did.0 as usize..self.did.1 as usize]);
        e.properties.clear();
        e.properties
            .push_str(&text[self.did.1 as usize..self.props_end as usize]);
    }
}

/// An event of a later window, kept whole until its window is generated.
struct CarriedEvent {
    uuid: u128,
    timestamp_us: i64,
    received_us: i64,
    event_name: &'static str,
    distinct_id: String,
    properties: String,
}

fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

fn push_hex(out: &mut String, n: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for k in (0..digits).rev() {
        out.push(HEX[((n >> (4 * k)) & 0xf) as usize] as char);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The command

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Data directory to write into; an empty one is initialised like `flywheel init` (keys printed once). No
    /// server may be running on it: the intake log has a single writer.
    #[arg(long, env = "FLYWHEEL_DATA_DIR", default_value = "./flywheel-data")]
    data_dir: PathBuf,
    /// Number of events to write (exactly this many).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Most persons (people, each with one or more distinct ids) the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    persons: u64,
    /// Random seed: the same seed, counts, days and end give the same events, byte for byte.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of the history in days, ending at --end.
    #[arg(long, default_value_t = 90)]
    days: u32,
    /// End of the history, exclusive: RFC 3339 (2026-01-31T12:00:00Z) or a date (midnight UTC). Default: now
    /// (pass it for reproducible timestamps).
    #[arg(long)]
    end: Option<String>,
    /// Project to write into. Default: the data directory's first project.
    #[arg(long)]
    project_id: Option<i64>,
    /// Events per append to the intake log.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_end(raw: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp_micros());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_micros());
        }
    }
    bail!(
        "--end must be an RFC 3339 time (2026-01-31T12:00:00Z) or a date (2026-01-31), got `{raw}`"
    )
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise.
struct Progress {
    total: u64,
    started: Instant,
    tty: bool,
    quiet: bool,
    last_draw: Instant,
    last_tenth: u64,
}

impl Progress {
    fn new(total: u64, quiet: bool) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            started: now,
            tty: std::io::stderr().is_terminal(),
            quiet,
            last_draw: now,
            last_tenth: 0,
        }
    }

    fn line(&self, done: u64) -> String {
        const WIDTH: u64 = 30;
        let total = self.total.max(1);
        let filled = (done * WIDTH / total) as usize;
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 {
            (total - done.min(total)) as f64 / rate
        } else {
            0.0
        };
        format!(
            "[{}{}] {:>3}% {done}/{} events  {:.0} events/s  ETA {:.0} s",
            "#".repeat(filled),
            "-".repeat(WIDTH as usize - filled),
            done * 100 / total,
            self.total,
            rate,
            eta
        )
    }

    fn update(&mut self, done: u64) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            if self.last_draw.elapsed() >= Duration::from_millis(100) || done == self.total {
                self.last_draw = Instant::now();
                let _ = write!(err, "\r{}", self.line(done));
                if done == self.total {
                    let _ = writeln!(err);
                }
            }
        } else {
            let tenth = done * 10 / self.total.max(1);
            if tenth > self.last_tenth {
                self.last_tenth = tenth;
                let _ = writeln!(err, "{}", self.line(done));
            }
        }
    }
}

/// The first project of the data directory.
async fn first_project(store: &flywheel_store::Store) -> anyhow::Result<Option<i64>> {
    Ok(store.first_project().await?)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.days == 0 {
        bail!("--days must be at least 1");
    }
    let end_us = match &args.end {
        Some(raw) => parse_end(raw)?,
        None => chrono::Utc::now().timestamp_micros(),
    };
    let start_us = end_us - args.days as i64 * DAY_US;
    crate::runtime()?.block_on(async move {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
        let config = flywheel_server::Config::for_tests(args.data_dir.clone());
        // The intake first: its lock tells whether a server is using the directory.
        let intake_config = flywheel_engine::IntakeConfig {
            // Generated data can be generated again: write without an fsync per group; segments are synced when
            // sealed and on shutdown.
            sync: flywheel_engine::SyncMode::Os,
            ..flywheel_engine::IntakeConfig::new(config.wal_dir())
        };
        let opened = tokio::task::spawn_blocking(move || flywheel_engine::Intake::open(intake_config)).await?;
        let (intake, _) = match opened {
            Ok(opened) => opened,
            Err(flywheel_engine::EngineError::AlreadyOpen(_)) => bail!(
                "{} is in use by a running flywheel server (or another generate): stop it, run generate, then start \
                 the server again",
                args.data_dir.display()
            ),
            Err(err) => return Err(anyhow::Error::new(err).context("cannot open the event intake log")),
        };
        let store = flywheel_server::open_store(&config).await?;
        let boot = flywheel_server::bootstrap_if_empty(&store).await?;
        let project_id = match (args.project_id, &boot) {
            (Some(id), _) => {
                if store.project_organization(id).await?.is_none() {
                    bail!("project {id} does not exist in {}", args.data_dir.display());
                }
                id
            }
            (None, Some(boot)) => boot.project_id,
            (None, None) => first_project(&store).await?.with_context(|| {
                format!("{} has no project; pass --project-id", args.data_dir.display())
            })?,
        };
        store.close().await;
        if let Some(boot) = &boot {
            eprintln!("{}", crate::banner(boot, None));
        }

        let mut generator = Generator::new(Config {
            seed: args.seed,
            events: args.events,
            persons: args.persons,
            start_us,
            end_us,
            project_id,
        })?;
        let lsn_before = intake.committed_lsn();
        let started = Instant::now();
        let mut progress = Progress::new(args.events, args.quiet);
        // One batch in flight: generating the next batch overlaps with encoding and writing the previous one, and
        // each append starts only after the previous one finished, so the log holds the batches in generation
        // order (several concurrent appends could reach the log in any order, and identity applies `$set` in log
        // order: the same seed gave different person properties). Written batches come back and are refilled in
        // place, so steady state allocates nothing per event.
        let mut in_flight = std::collections::VecDeque::new();
        let mut spare: Vec<Vec<Event>> = Vec::new();
        let mut written = 0u64;
        loop {
            let mut batch = spare.pop().unwrap_or_default();
            if generator.fill(&mut batch, args.batch) == 0 {
                break;
            }
            if let Some(task) = in_flight.pop_front() {
                let (result, done): (Result<u64, _>, Vec<Event>) = task.await?;
                result.context("writing to the intake log")?;
                written += done.len() as u64;
                progress.update(written);
                spare.push(done);
            }
            let writer = intake.clone();
            in_flight.push_back(tokio::spawn(async move {
                let result = writer.append(&batch).await;
                (result, batch)
            }));
        }
        while let Some(task) = in_flight.pop_front() {
            let (result, batch) = task.await?;
            result.context("writing to the intake log")?;
            written += batch.len() as u64;
            progress.update(written);
        }
        let bytes = intake.committed_lsn() - lsn_before;
        intake.shutdown().await.context("closing the intake log")?;
        let elapsed = started.elapsed().as_secs_f64();
        let stats = generator.stats();
        let rate = written as f64 / elapsed.max(1e-9);
        let mut out = std::io::stdout().lock();
        if args.json {
            let by_event: serde_json::Map<String, serde_json::Value> = stats
                .by_event
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).into()))
                .collect();
            let mut value = serde_json::json!({
                "data_dir": args.data_dir,
                "project_id": project_id,
                "seed": args.seed,
                "events": written,
                "persons": stats.persons,
                "distinct_ids": stats.distinct_ids,
                "merges": stats.merges,
                "companies": stats.companies,
                "start": rfc3339(start_us),
                "end": rfc3339(end_us),
                "bytes": bytes,
                "seconds": elapsed,
                "events_per_second": rate,
                "by_event": by_event,
            });
            if let Some(boot) = &boot {
                // A fresh directory: its keys, shown once (also printed to stderr).
                value["project_api_key"] = boot.project_api_key.clone().into();
                value["personal_api_key"] = boot.personal_api_key.clone().into();
            }
            writeln!(out, "{value}")?;
        } else {
            writeln!(
                out,
                "wrote {written} events ({} bytes) to project {project_id} in {elapsed:.2} s: {rate:.0} events/s\n  \
                 {} persons, {} distinct ids, {} merges, {} companies\n  from {} to {} (seed {})\n\
                 Persons, merges and groups are applied by the identity consumer when `flywheel serve` next starts \
                 on {}.",
                bytes,
                stats.persons,
                stats.distinct_ids,
                stats.merges,
                stats.companies,
                rfc3339(start_us),
                rfc3339(end_us),
                args.seed,
                args.data_dir.display()
            )?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    const END: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

    fn config(seed: u64, events: u64, persons: u64, days: i64) -> Config {
        Config {
            seed,
            events,
            persons,
            start_us: END - days * DAY_US,
            end_us: END,
            project_id: 7,
        }
    }

    fn all(cfg: Config) -> Vec<Event> {
        Generator::new(cfg).unwrap().collect()
    }

    fn props(e: &Event) -> serde_json::Value {
        serde_json::from_str(&e.properties).unwrap()
    }

    /// Union-find over distinct ids, joined by `$identify` merges: the persons as the server would resolve them.
    struct Persons {
        parent: HashMap<String, String>,
    }

    impl Persons {
        fn new(events: &[Event]) -> Persons {
            let mut p = Persons {
                parent: HashMap::new(),
            };
            for e in events {
                p.find(&e.distinct_id);
                if e.event == "$identify" {
                    if let Some(anon) = props(e)["$anon_distinct_id"].as_str() {
                        let (a, b) = (p.find(anon), p.find(&e.distinct_id));
                        p.parent.insert(a, b);
                    }
                }
            }
            p
        }

        fn find(&mut self, id: &str) -> String {
            let mut cur = id.to_owned();
            loop {
                let next = self
                    .parent
                    .entry(cur.clone())
                    .or_insert(cur.clone())
                    .clone();
                if next == cur {
                    return cur;
                }
                cur = next;
            }
        }
    }

    #[test]
    fn same_seed_same_events_and_different_seed_different_events() {
        let a = all(config(42, 20_000, 2_000, 30));
        let b = all(config(42, 20_000, 2_000, 30));
        let c = all(config(43, 20_000, 2_000, 30));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Not merely shifted: the first events already differ in timestamp and uuid.
        assert_ne!(a[0].uuid, c[0].uuid);
        let uuids: HashSet<u128> = a.iter().map(|e| e.uuid).collect();
        assert_eq!(uuids.len(), a.len(), "uuids are unique");
    }

    #[test]
    fn exactly_n_events_at_most_m_persons_within_range_in_order() {
        for (events, persons, days) in [
            (1, 1, 1),
            (10, 1_000, 90),
            (5_000, 1, 3),
            (3_000, 5, 90),
            (20_000, 2_000, 90),
            (20_000, 20_000, 7),
        ] {
            let cfg = config(7, events, persons, days);
            let mut g = Generator::new(cfg.clone()).unwrap();
            let evs: Vec<Event> = g.by_ref().collect();
            assert_eq!(evs.len() as u64, events, "{events}/{persons}/{days}");
            let stats = g.stats();
            assert_eq!(stats.events, events);
            assert!(stats.persons <= persons);
            assert_eq!(stats.by_event.iter().map(|(_, n)| n).sum::<u64>(), events);
            let mut resolved = Persons::new(&evs);
            let ids: HashSet<String> = evs.iter().map(|e| e.distinct_id.clone()).collect();
            let people: HashSet<String> = ids.iter().map(|d| resolved.find(d)).collect();
            assert!(
                people.len() as u64 <= persons,
                "{} persons > {persons}",
                people.len()
            );
            assert_eq!(people.len() as u64, stats.persons);
            assert_eq!(ids.len() as u64, stats.distinct_ids);
            for w in evs.windows(2) {
                assert!(w[0].timestamp_us <= w[1].timestamp_us, "sorted by time");
            }
            for e in &evs {
                assert!(e.timestamp_us >= cfg.start_us && e.timestamp_us < cfg.end_us);
                assert!(e.received_us >= e.timestamp_us);
                assert_eq!(e.project_id, 7);
                assert!(props(e).is_object());
            }
        }
    }

    #[test]
    fn every_merge_follows_a_use_of_its_anonymous_id() {
        let evs = all(config(3, 50_000, 5_000, 60));
        let mut seen = HashSet::new();
        let mut merges = 0;
        for e in &evs {
            if e.event == "$identify" {
                let p = props(e);
                let anon = p["$anon_distinct_id"].as_str().unwrap();
                assert!(seen.contains(anon), "{anon} merged before it was used");
                assert_ne!(anon, e.distinct_id);
                merges += 1;
            }
            seen.insert(e.distinct_id.clone());
        }
        assert!(merges > 100, "only {merges} merges");
    }

    #[test]
    fn funnel_steps_occur_in_order_per_person_and_persons_return() {
        let evs = all(config(11, 200_000, 10_000, 90));
        let mut resolved = Persons::new(&evs);
        // First time of each funnel step, per resolved person.
        let mut firsts: HashMap<String, [Option<i64>; 5]> = HashMap::new();
        let mut days: HashMap<String, HashSet<i64>> = HashMap::new();
        let mut anon_signups = 0;
        for e in &evs {
            let person = resolved.find(&e.distinct_id);
            days.entry(person.clone())
                .or_default()
                .insert(e.timestamp_us.div_euclid(DAY_US));
            if let Some(step) = FUNNEL.iter().position(|s| *s == e.event) {
                let f = firsts.entry(person).or_default();
                f[step].get_or_insert(e.timestamp_us);
                if step == 0 && !e.distinct_id.starts_with("user_") {
                    anon_signups += 1;
                }
            }
        }
        let mut reached = [0usize; 5];
        for (person, f) in &firsts {
            for step in 0..5 {
                if let Some(t) = f[step] {
                    reached[step] += 1;
                    if step > 0 {
                        let prev = f[step - 1].unwrap_or_else(|| {
                            panic!("{person}: step {step} without step {}", step - 1)
                        });
                        assert!(prev <= t, "{person}: step {step} before step {}", step - 1);
                    }
                }
            }
        }
        // Every step is reached by someone, and fewer persons reach each later step.
        for step in 1..5 {
            assert!(reached[step] > 0, "nobody reached {}", FUNNEL[step]);
            assert!(reached[step] < reached[step - 1], "{reached:?}");
        }
        assert!(anon_signups > 0, "no sign-up sent before its identify");
        let cancelled = evs
            .iter()
            .filter(|e| e.event == "subscription_cancelled")
            .count();
        assert!(cancelled > 0, "nobody churned");
        // Retention: many persons come back on another day, some more than two weeks later.
        let returning = days.values().filter(|d| d.len() >= 2).count();
        let late = days
            .values()
            .filter(|d| d.iter().max().unwrap() - d.iter().min().unwrap() >= 14)
            .count();
        assert!(
            returning * 5 > days.len(),
            "{returning} of {} return",
            days.len()
        );
        assert!(late > 100, "{late} persons return after two weeks");
    }

    #[test]
    fn edge_cases_and_groups_are_present() {
        let evs = all(config(5, 100_000, 10_000, 90));
        let identical = evs
            .windows(2)
            .filter(|w| {
                w[0].timestamp_us == w[1].timestamp_us && w[0].distinct_id == w[1].distinct_id
            })
            .count();
        assert!(identical > 0, "no identical timestamps within a person");
        assert!(
            evs.iter().any(|e| e.timestamp_us % DAY_US == 0),
            "no event at exactly midnight UTC"
        );
        assert!(evs.iter().any(|e| e.timestamp_us % DAY_US == DAY_US - 1));
        let group_identifies: Vec<_> = evs.iter().filter(|e| e.event == "$groupidentify").collect();
        assert!(group_identifies.len() > 10);
        let p = props(group_identifies[0]);
        assert_eq!(p["$group_type"], "company");
        assert!(p["$group_set"]["name"].is_string());
        let companies: HashSet<String> = evs
            .iter()
            .filter_map(|e| props(e)["$groups"]["company"].as_str().map(str::to_owned))
            .collect();
        assert!(companies.len() > 10);
        // Several users share a company (invited teammates).
        let signups_by_invite = evs
            .iter()
            .filter(|e| {
                e.event == "$identify" && e.properties.contains("\"signup_source\":\"invite\"")
            })
            .count();
        assert!(signups_by_invite > 0);
        // Person properties on identify, numeric event properties on upgrades.
        let identify = evs.iter().find(|e| e.event == "$identify").unwrap();
        assert_eq!(props(identify)["$set"]["plan"], "free");
        let upgrade = evs
            .iter()
            .find(|e| e.event == "subscription_upgraded")
            .unwrap();
        assert!(props(upgrade)["amount"].as_u64().unwrap() > 0);
        // A merge of a second device after sign-up: an identify without $set from an already identified user.
        let device_merges = evs
            .iter()
            .filter(|e| e.event == "$identify" && !e.properties.contains("\"$set\""))
            .count();
        assert!(device_merges > 0);
    }
}
