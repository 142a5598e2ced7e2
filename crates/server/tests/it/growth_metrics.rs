//! K-factor and viral cycle time (`…/growth/k-factor`): a seeded random growth history made through the API, and
//! the numbers expected from it computed here, from what the test itself generated.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde_json::{json, Value};

use crate::growth::{capture, click};
use crate::TestServer;

const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;
const CHANNELS: [&str; 3] = ["referral", "invitation", "share"];

/// splitmix64: a seed's sequence never changes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

fn time_text(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn pageview(who: &str, url: &str, at: i64) -> Value {
    json!({"event": "$pageview", "distinct_id": who, "timestamp": time_text(at),
           "properties": {"$current_url": url}})
}

/// What the test made: every person's join time (by a distinct id of their surviving person), each invite sent and
/// each converted one (channel, sender, receiver), by those distinct ids.
#[derive(Default)]
struct History {
    joins: BTreeMap<String, i64>,
    sent: Vec<(&'static str, String)>,
    converted: Vec<(&'static str, String, String)>,
    /// Referral rows the consumer will write (converted or rejected), by referee distinct id.
    referrals: Vec<String>,
    /// Referrals to reject by hand once written: (referee, sender).
    to_reject: Vec<(String, String)>,
    visitors: usize,
}

/// The expected numbers of one cohort (or the totals) and channel.
#[derive(Debug, Default, Clone)]
struct Expected {
    sent: u64,
    converted: u64,
    hours: Vec<f64>,
}

fn median(hours: &[f64]) -> Option<f64> {
    let mut v = hours.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn close(got: &Value, want: Option<f64>, what: &str) {
    match want {
        None => assert!(got.is_null(), "{what}: {got} instead of null"),
        Some(w) => {
            let g = got
                .as_f64()
                .unwrap_or_else(|| panic!("{what}: {got} instead of {w}"));
            assert!(
                (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                "{what}: {g} instead of {w}"
            );
        }
    }
}

struct Gen<'a> {
    t: &'a TestServer,
    rng: Rng,
    h: History,
    now: i64,
    n: usize,
}

impl Gen<'_> {
    fn name(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}-{}", self.n)
    }

    /// A receiver's join: after the sender's by one of the histogram's spans, before now.
    fn receiver_join(&mut self, sender: &str) -> i64 {
        const SPANS: [i64; 7] = [
            HOUR / 2,
            5 * HOUR,
            30 * HOUR,
            4 * DAY,
            9 * DAY,
            20 * DAY,
            33 * DAY,
        ];
        let s = self.h.joins[sender];
        let span = SPANS[self.rng.below(SPANS.len() as u64) as usize];
        let jitter = self.rng.below(3_600) as i64 * 1_000_000;
        (s + span + jitter).min(self.now - 2 * HOUR - jitter)
    }

    /// The sender's referral link: clicks (some followed by a signup), signups with the bare code, a self-referral.
    async fn referrals(&mut self, sender: &str, self_referral: bool) -> Vec<Value> {
        let code = self
            .t
            .created(
                "/referral-programs/friends/codes",
                json!({"referrer": sender}),
            )
            .await["code"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut events = Vec::new();
        for _ in 0..self.rng.below(4) {
            let (s, h) = click(self.t, &code, "Mozilla/5.0").await;
            assert_eq!(s, StatusCode::FOUND);
            self.h.sent.push(("referral", sender.to_owned()));
            if self.rng.chance(0.6) {
                let who = self.name("ref");
                let at = self.receiver_join(sender);
                self.h.joins.insert(who.clone(), at);
                events.push(pageview(&who, h["location"].to_str().unwrap(), at));
                self.h.referrals.push(who.clone());
                if self.rng.chance(0.25) {
                    self.h.to_reject.push((who, sender.to_owned()));
                } else {
                    self.h.converted.push(("referral", sender.to_owned(), who));
                }
            }
        }
        let bare = format!("https://app.example.com/signup?ref={code}");
        for _ in 0..self.rng.below(2) {
            let who = self.name("code");
            let at = self.receiver_join(sender);
            self.h.joins.insert(who.clone(), at);
            events.push(pageview(&who, &bare, at));
            self.h.referrals.push(who.clone());
            self.h.sent.push(("referral", sender.to_owned()));
            self.h.converted.push(("referral", sender.to_owned(), who));
        }
        if self_referral {
            // Rejected (`self_referral`): sent without a click, never converted.
            events.push(json!({"event": "$pageview", "distinct_id": sender,
                               "properties": {"$current_url": bare}}));
            self.h.referrals.push(sender.to_owned());
            self.h.sent.push(("referral", sender.to_owned()));
        }
        events
    }

    /// Invitations by the sender (as `inviter`, one of the sender's distinct ids): accepted (some after a resend),
    /// revoked, left pending.
    async fn invitations(&mut self, sender: &str, inviter: &str, n: u64) {
        for _ in 0..n {
            let email = format!("{}@acme.io", self.name("mail"));
            let inv = self
                .t
                .created(
                    "/groups/company/acme/invitations",
                    json!({"email": email, "inviter": inviter}),
                )
                .await;
            self.h.sent.push(("invitation", sender.to_owned()));
            let id = inv["id"].as_i64().unwrap();
            let mut token = inv["token"].as_str().unwrap().to_owned();
            match self.rng.below(10) {
                0..=5 => {
                    if self.rng.chance(0.3) {
                        let (s, v) = self
                            .t
                            .api("POST", &format!("/invitations/{id}/resend"), None)
                            .await;
                        assert_eq!(s, StatusCode::OK, "{v}");
                        token = v["token"].as_str().unwrap().to_owned();
                    }
                    // The invitee's first event (their join), then the acceptance.
                    let who = self.name("inv");
                    let at = self.receiver_join(sender);
                    self.h.joins.insert(who.clone(), at);
                    capture(
                        self.t,
                        json!([pageview(&who, "https://app.example.com/", at)]),
                    )
                    .await;
                    let (s, v) = self
                        .t
                        .api(
                            "POST",
                            "/invitations/accept",
                            Some(json!({"token": token, "distinct_id": who})),
                        )
                        .await;
                    assert_eq!(s, StatusCode::OK, "{v}");
                    self.h
                        .converted
                        .push(("invitation", sender.to_owned(), who));
                }
                6..=7 => {
                    let (s, v) = self
                        .t
                        .api("POST", &format!("/invitations/{id}/revoke"), None)
                        .await;
                    assert_eq!(s, StatusCode::OK, "{v}");
                }
                _ => {}
            }
        }
    }

    /// The sender's share link: views, and visitors coming through it (one twice, the sender too: neither counts
    /// again).
    async fn shares(&mut self, sender: &str) -> Vec<Value> {
        let link = self
            .t
            .created(
                "/share-links",
                json!({"sharer": sender, "object_type": "doc", "object_id": sender,
                       "url": format!("https://app.example.com/docs/{sender}")}),
            )
            .await;
        let token = link["token"].as_str().unwrap().to_owned();
        for i in 0..self.rng.below(4) {
            let req = Request::get(format!("/s/{token}"))
                .header("user-agent", format!("agent-{i}"))
                .body(Body::empty())
                .unwrap();
            assert_eq!(self.t.send(req).await.0, StatusCode::FOUND);
            self.h.sent.push(("share", sender.to_owned()));
        }
        let url = format!("https://app.example.com/docs/{sender}?fw_share={token}");
        let mut events = vec![json!({"event": "$pageview", "distinct_id": sender,
                                     "properties": {"$current_url": url}})];
        for _ in 0..self.rng.below(3) {
            let who = self.name("visit");
            let at = self.receiver_join(sender);
            self.h.joins.insert(who.clone(), at);
            events.push(pageview(&who, &url, at));
            events.push(pageview(&who, &url, at + HOUR));
            self.h.visitors += 1;
            self.h.converted.push(("share", sender.to_owned(), who));
        }
        events
    }
}

/// The Monday (UTC) `k` weeks before the current week's, in µs.
fn week_start(now: DateTime<Utc>, k: i64) -> i64 {
    let today = now.date_naive();
    let monday = today - Duration::days(today.weekday().num_days_from_monday() as i64);
    monday
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
        - k * WEEK
}

#[tokio::test]
async fn k_factor_and_cycle_time_per_cohort_and_channel() {
    let t = TestServer::start().await;
    t.created(
        "/referral-programs",
        json!({"key": "friends", "name": "Friends", "landing_url": "https://app.example.com/signup",
               "qualify": {"event": "paid"}, "rewards": {"referrer": {"amount": 1, "unit": "USD"}},
               "attribution_window_days": 60}),
    )
    .await;
    let now = Utc::now();
    let mut g = Gen {
        t: &t,
        rng: Rng(0x5eed_2026),
        h: History::default(),
        // Whole seconds, as the events carry them.
        now: now.timestamp() * 1_000_000,
        n: 0,
    };
    // Senders join in three weeks (8, 7 and 5 weeks back); bystanders in those and in week 6, who send nothing.
    let mut first_events = Vec::new();
    let mut senders = Vec::new();
    for k in [8, 7, 5] {
        for i in 0..4 {
            let who = format!("s{k}-{i}");
            let at = week_start(now, k) + HOUR + g.rng.below(6 * 24 * 3_600) as i64 * 1_000_000;
            g.h.joins.insert(who.clone(), at);
            first_events.push(pageview(&who, "https://app.example.com/", at));
            senders.push(who);
        }
    }
    for k in [8, 7, 6, 5] {
        for i in 0..2 {
            let who = format!("b{k}-{i}");
            let at = week_start(now, k) + g.rng.below(7 * 24 * 3_600) as i64 * 1_000_000;
            g.h.joins.insert(who.clone(), at);
            first_events.push(pageview(&who, "https://app.example.com/", at));
        }
    }
    // A sender with two persons merged by an identify: the anonymous one joined 8 weeks back, the other 7; the
    // survivor keeps the earlier join. And `old`, who joined before the range.
    let anon_join = week_start(now, 8) + 3 * DAY;
    let user_join = week_start(now, 7) + 2 * DAY;
    first_events.push(pageview("m-anon", "https://app.example.com/", anon_join));
    first_events.push(pageview("merged", "https://app.example.com/", user_join));
    let old_join = week_start(now, 10);
    first_events.push(pageview("old", "https://app.example.com/", old_join));
    capture(&t, json!(first_events)).await;
    capture(
        &t,
        json!([{"event": "$identify", "distinct_id": "merged", "properties": {"$anon_distinct_id": "m-anon"}}]),
    )
    .await;
    g.h.joins.insert("merged".into(), anon_join.min(user_join));
    g.h.joins.insert("old".into(), old_join);
    senders.push("merged".into());

    let mut events = Vec::new();
    for (i, s) in senders.clone().iter().enumerate() {
        events.extend(g.referrals(s, i % 5 == 0).await);
        // The merged sender invites under its other (merged-away) id.
        let inviter = if s == "merged" { "m-anon" } else { s.as_str() };
        let n = g.rng.below(4);
        g.invitations(s, inviter, n).await;
        if g.rng.chance(0.7) {
            events.extend(g.shares(s).await);
        }
    }
    // Two receivers who turn out to be persons known before, merged once the consumer credited their anonymous
    // visit: a referee who is `old` (who joined before the sender: the cycle time is clamped to 0), and a share
    // visitor who is `friend` (who joined 3 hours after the sender, before the visit).
    let sender = "s5-0";
    let code = t
        .created(
            "/referral-programs/friends/codes",
            json!({"referrer": sender, "code": "oldtimer"}),
        )
        .await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    events.push(pageview(
        "old-anon",
        &format!("https://app.example.com/signup?ref={code}"),
        g.h.joins[sender] + 10 * HOUR,
    ));
    g.h.referrals.push("old-anon".into());
    g.h.sent.push(("referral", sender.into()));
    g.h.converted
        .push(("referral", sender.into(), "old".into()));
    let sharer = "s7-0";
    let link = t
        .created(
            "/share-links",
            json!({"sharer": sharer, "object_type": "doc", "object_id": "merged-visit",
                   "url": "https://app.example.com/docs/m"}),
        )
        .await;
    let friend_join = g.h.joins[sharer] + 3 * HOUR;
    events.push(pageview("friend", "https://app.example.com/", friend_join));
    events.push(pageview(
        "friend-anon",
        &format!(
            "https://app.example.com/docs/m?fw_share={}",
            link["token"].as_str().unwrap()
        ),
        friend_join + 47 * HOUR,
    ));
    g.h.joins.insert("friend".into(), friend_join);
    g.h.visitors += 1;
    g.h.converted
        .push(("share", sharer.into(), "friend".into()));
    capture(&t, json!(events)).await;
    // Chains: receivers who joined in later weeks invite in their turn (their cohort is their own join's week).
    let later = week_start(now, 4);
    let chain: Vec<String> =
        g.h.converted
            .iter()
            .map(|(_, _, r)| r)
            .filter(|r| (later..g.now - 3 * DAY).contains(&g.h.joins[*r]))
            .take(3)
            .cloned()
            .collect();
    assert!(!chain.is_empty(), "the seed makes some chains");
    for r in &chain {
        g.invitations(r, r, 2).await;
    }

    // Wait for the referral consumer: every referral row and share visitor written.
    let expected_referrals = g.h.referrals.len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let referrals = loop {
        let (s, v) = t
            .api(
                "GET",
                "/referral-programs/friends/referrals?limit=1000",
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let list = v["results"].as_array().unwrap().clone();
        let (_, links) = t.api("GET", "/share-links", None).await;
        let visitors: i64 = links["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["visitors"].as_i64().unwrap())
            .sum();
        if list.len() == expected_referrals && visitors == g.h.visitors as i64 {
            break list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {expected_referrals} referrals, {visitors} of {} visitors",
            list.len(),
            g.h.visitors
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // The anonymous visitors were credited as themselves; now they log in.
    let person_id = |who: &'static str| {
        let t = &t;
        async move {
            let (s, v) = t.person(who).await;
            assert_eq!(s, StatusCode::OK, "{who}: {v}");
            v["id"].as_str().unwrap().to_owned()
        }
    };
    let old_anon = person_id("old-anon").await;
    assert!(
        referrals
            .iter()
            .any(|r| r["referee"] == "old-anon" && r["referee_person"] == old_anon.as_str()),
        "{referrals:#?}"
    );
    capture(
        &t,
        json!([
            {"event": "$identify", "distinct_id": "old", "properties": {"$anon_distinct_id": "old-anon"}},
            {"event": "$identify", "distinct_id": "friend", "properties": {"$anon_distinct_id": "friend-anon"}},
        ]),
    )
    .await;
    assert_eq!(person_id("old-anon").await, person_id("old").await);
    assert_eq!(person_id("friend-anon").await, person_id("friend").await);
    let rejected: Vec<&str> = referrals
        .iter()
        .filter(|r| r["status"] == "rejected")
        .map(|r| r["referee"].as_str().unwrap())
        .collect();
    assert!(
        rejected.iter().all(|r| senders.iter().any(|s| s == r)),
        "only self-referrals are rejected so far: {rejected:?}"
    );
    // Some referrals rejected by hand: sent, not converted.
    assert!(!g.h.to_reject.is_empty(), "the seed rejects some");
    for (who, _) in &g.h.to_reject {
        let id = referrals
            .iter()
            .find(|r| r["referee"] == who.as_str())
            .unwrap_or_else(|| panic!("{who}"))["id"]
            .as_i64()
            .unwrap();
        let (s, v) = t
            .api(
                "POST",
                &format!("/referral-programs/friends/referrals/{id}/reject"),
                Some(json!({"reason": "test"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    // The expectation, from the history alone: 9 weekly cohorts, 8 weeks back to this week.
    let h = &g.h;
    let first = week_start(now, 8);
    let cohort_of = |us: i64| {
        let d = us - first;
        (0..9 * WEEK).contains(&d).then_some((d / WEEK) as usize)
    };
    let mut users = [0u64; 9];
    for &j in h.joins.values() {
        if let Some(c) = cohort_of(j) {
            users[c] += 1;
        }
    }
    let mut expected: Vec<BTreeMap<&str, Expected>> = vec![BTreeMap::new(); 9];
    let mut totals: BTreeMap<&str, Expected> = BTreeMap::new();
    for (channel, sender) in &h.sent {
        if let Some(c) = cohort_of(h.joins[sender]) {
            for key in [*channel, "all"] {
                expected[c].entry(key).or_default().sent += 1;
                totals.entry(key).or_default().sent += 1;
            }
        }
    }
    for (channel, sender, receiver) in &h.converted {
        if let Some(c) = cohort_of(h.joins[sender]) {
            let hours = (h.joins[receiver] - h.joins[sender]).max(0) as f64 / HOUR as f64;
            for key in [*channel, "all"] {
                for e in [
                    expected[c].entry(key).or_default(),
                    totals.entry(key).or_default(),
                ] {
                    e.converted += 1;
                    e.hours.push(hours);
                }
            }
        }
    }

    let date = |us: i64| {
        DateTime::<Utc>::from_timestamp_micros(us)
            .unwrap()
            .date_naive()
    };
    let (s, v) = t
        .api(
            "GET",
            &format!(
                "/growth/k-factor?interval=week&date_from={}&date_to={}",
                date(first),
                now.date_naive()
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["interval"].as_str(), v["time_zone"].as_str()),
        (Some("week"), Some("UTC"))
    );
    assert_eq!(v["date_from"], date(first).to_string());
    assert_eq!(
        v["date_to"],
        (date(week_start(now, 0)) + Duration::days(6)).to_string()
    );
    let cohorts = v["cohorts"].as_array().unwrap();
    assert_eq!(cohorts.len(), 9, "{v:#}");
    let check = |got: &Value, users: u64, want: &BTreeMap<&str, Expected>, at: &str| {
        assert_eq!(got["users"], users, "{at}: users");
        for key in ["referral", "invitation", "share", "all"] {
            let e = want.get(key).cloned().unwrap_or_default();
            let m = &got["channels"][key];
            let what = format!("{at} {key}");
            assert_eq!(
                (m["sent"].as_u64(), m["converted"].as_u64()),
                (Some(e.sent), Some(e.converted)),
                "{what}: {m}"
            );
            let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
            close(&m["invites_per_user"], ratio(e.sent, users), &what);
            close(&m["conversion"], ratio(e.converted, e.sent), &what);
            close(&m["k_factor"], ratio(e.converted, users), &what);
            let ct = &m["cycle_time"];
            assert_eq!(ct["count"], e.converted, "{what}");
            close(&ct["p50"], median(&e.hours), &format!("{what} p50"));
            let mean =
                (!e.hours.is_empty()).then(|| e.hours.iter().sum::<f64>() / e.hours.len() as f64);
            close(&ct["mean"], mean, &format!("{what} mean"));
            let mut bins = [0u64; 6];
            for h in &e.hours {
                let d = h / 24.0;
                let i = if d < 1.0 {
                    0
                } else if d < 3.0 {
                    1
                } else if d < 7.0 {
                    2
                } else if d < 14.0 {
                    3
                } else if d < 30.0 {
                    4
                } else {
                    5
                };
                bins[i] += 1;
            }
            let got_bins: Vec<u64> = ct["histogram"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["count"].as_u64().unwrap())
                .collect();
            assert_eq!(got_bins, bins, "{what} histogram");
        }
    };
    for (i, c) in cohorts.iter().enumerate() {
        let monday = date(first + i as i64 * WEEK);
        assert_eq!(c["cohort"], monday.to_string());
        check(c, users[i], &expected[i], &format!("cohort {monday}"));
    }
    check(&v["totals"], users.iter().sum(), &totals, "totals");

    // The data is rich enough for the comparison to mean something.
    let all = |i: usize| expected[i].get("all").map_or(0, |e| e.converted);
    assert!(
        [0, 1, 3].iter().all(|&i| all(i) > 0),
        "conversions in each sender week"
    );
    let sent_later: u64 = expected[4..]
        .iter()
        .filter_map(|e| e.get("all"))
        .map(|e| e.sent)
        .sum();
    assert!(sent_later >= 2, "the chains' invitations");
    assert!(
        CHANNELS
            .iter()
            .all(|c| totals.get(c).is_some_and(|e| e.converted > 0 && e.sent > 0)),
        "every channel sends and converts"
    );
    assert!(
        totals["all"].hours.contains(&0.0),
        "the merged referee's cycle time is clamped"
    );
    assert!(
        v["totals"]["channels"]["all"]["cycle_time"]["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["count"].as_u64().unwrap() > 0)
            .count()
            >= 4,
        "{:#}",
        v["totals"]["channels"]["all"]["cycle_time"]
    );

    // One channel alone: the same numbers, no other channel.
    let (s, one) = t
        .api(
            "GET",
            &format!(
                "/growth/k-factor?channel=invitation&date_from={}&date_to={}",
                date(first),
                now.date_naive()
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{one}");
    let keys: Vec<&String> = one["totals"]["channels"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, ["invitation"]);
    assert_eq!(
        one["totals"]["channels"]["invitation"],
        v["totals"]["channels"]["invitation"]
    );

    // Days: the seven days of the oldest week add up to its cohort.
    let (s, days) = t
        .api(
            "GET",
            &format!(
                "/growth/k-factor?interval=day&date_from={}&date_to={}",
                date(first),
                date(first) + Duration::days(6)
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{days}");
    let days = days["cohorts"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    let sum = |key: &str| -> u64 {
        days.iter()
            .map(|d| d["channels"]["all"][key].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        days.iter()
            .map(|d| d["users"].as_u64().unwrap())
            .sum::<u64>(),
        users[0]
    );
    let oldest = expected[0].get("all").cloned().unwrap_or_default();
    assert_eq!(
        (sum("sent"), sum("converted")),
        (oldest.sent, oldest.converted)
    );
}

#[tokio::test]
async fn k_factor_parameters_are_checked() {
    let t = TestServer::start().await;
    let field = |q: &'static str| {
        let t = &t;
        async move {
            let (s, v) = t.api("GET", &format!("/growth/k-factor?{q}"), None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
            assert_eq!(v["code"], "validation_error", "{q}: {v}");
            let fields: Vec<String> = v["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect();
            assert!(
                v["message"].as_str().unwrap().contains(&fields[0]),
                "the message names the parameter: {v}"
            );
            fields
        }
    };
    assert_eq!(field("interval=hour").await, ["interval"]);
    assert_eq!(field("interval=").await, ["interval"]);
    assert_eq!(field("channel=email").await, ["channel"]);
    assert_eq!(field("date_from=2026-02-30").await, ["date_from"]);
    assert_eq!(field("date_to=-7d").await, ["date_to"]);
    assert_eq!(
        field("date_from=2026-03-02&date_to=2026-03-01").await,
        ["date_from"]
    );
    assert_eq!(
        field("date_from=2999-01-01").await,
        ["date_from"],
        "after today"
    );
    assert_eq!(
        field("interval=day&date_from=1970-01-01").await,
        ["interval"],
        "too many cohorts"
    );
    assert_eq!(field("interval=day&interval=week").await, ["interval"]);
    assert_eq!(
        field("person=x&channel=all&interval=year").await,
        ["person", "channel", "interval"]
    );

    // Authorization as for every project endpoint.
    let req = Request::get(format!("/api/v1/projects/{}/growth/k-factor", t.project_id))
        .body(Body::empty())
        .unwrap();
    assert_eq!(t.send(req).await.0, StatusCode::UNAUTHORIZED);
    let (s, _) = t
        .get_api(
            &format!("/api/v1/projects/{}/growth/k-factor", t.project_id + 1),
            &t.personal_key,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The defaults on an empty project: 12 weeks ending with this one, every bucket present, ratios null.
    let before = Utc::now();
    let (s, v) = t.api("GET", "/growth/k-factor", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cohorts = v["cohorts"].as_array().unwrap();
    assert_eq!(cohorts.len(), 12);
    // (The week may have turned during the call.)
    let this_monday = [before, Utc::now()]
        .map(|t| date_of(week_start(t, 0)))
        .into_iter()
        .find(|m| cohorts[11]["cohort"] == m.to_string())
        .unwrap_or_else(|| panic!("{:#}", cohorts[11]));
    assert_eq!(
        cohorts[0]["cohort"],
        (this_monday - Duration::weeks(11)).to_string()
    );
    for c in cohorts {
        assert_eq!(c["users"], 0);
        let all = &c["channels"]["all"];
        assert_eq!(
            (all["sent"].as_u64(), all["converted"].as_u64()),
            (Some(0), Some(0))
        );
        assert!(all["k_factor"].is_null() && all["cycle_time"]["p50"].is_null());
        assert_eq!(all["cycle_time"]["histogram"].as_array().unwrap().len(), 6);
    }
}

fn date_of(us: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap()
        .date_naive()
}
