//! Insights against ground truth: `flywheel generate` writes a product's history, `flywheel serve` answers every
//! insight kind through the API, and each answer is compared with `flywheel-truth`'s brute-force computation over
//! the same events, read back from the intake log, with each distinct id's person taken from the metadata store
//! (the identity layer's own answer; the engine resolves persons separately, through its in-memory mapping).
//! Then the server restarts — its tail now sealed into Parquet segments — and must answer the same.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use flywheel_truth as truth;
use serde_json::{json, Value};

use crate::{http, Serve, BIN};

struct Owned {
    person: u64,
    ts_us: i64,
    event: String,
    props: serde_json::Map<String, Value>,
}

pub(crate) fn post(serve: &Serve, key: &str, path: &str, body: &Value) -> (u16, Value) {
    request(serve, key, "POST", path, body)
}

/// A JSON request with a personal key; the status and the JSON answer (`null` when there is none).
pub(crate) fn request(
    serve: &Serve,
    key: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let (status, out) = http(
        &serve.addr,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .unwrap();
    (status, serde_json::from_slice(&out).unwrap_or(Value::Null))
}

/// Runs an insight, waiting until the server has every generated event (identity replays on start).
pub(crate) fn insight(serve: &Serve, key: &str, project: i64, kind: &str, body: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, v) = post(
            serve,
            key,
            &format!("/api/v1/projects/{project}/insights/{kind}"),
            &body,
        );
        assert_eq!(status, 200, "{kind} {body}: {v}");
        if v["complete"] == true {
            return v;
        }
        assert!(Instant::now() < deadline, "the tables never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn micros(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_micros()
}

pub(crate) fn range_of(v: &Value) -> truth::Range {
    truth::Range {
        from_us: micros(&v["date_from"]),
        to_us: micros(&v["date_to"]),
    }
}

/// The persons reaching each step of a funnel result.
pub(crate) fn step_counts(result: &Value) -> Vec<u64> {
    result["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .collect()
}

pub(crate) fn counts(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let f = x.as_f64().unwrap();
            assert!(f >= 0.0 && f.fract() == 0.0, "{f}");
            f as u64
        })
        .collect()
}

/// Every generated event with its person, from the log and the metadata store (server stopped).
fn ground_rows(
    dir: &std::path::Path,
    project: i64,
) -> (Vec<Owned>, HashMap<u64, String>, HashMap<String, u64>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (persons, plans) = rt.block_on(async {
        let store = flywheel_store::Store::open(&dir.join("metadata.db"))
            .await
            .unwrap();
        let mut m = HashMap::new();
        store
            .for_each_distinct_id(|p, d, person| {
                if p == project {
                    m.insert(d.to_owned(), person);
                }
            })
            .await
            .unwrap();
        let mut plans: HashMap<u64, String> = HashMap::new();
        store
            .for_each_person_property(project, "plan", |person, v| {
                if let Some(s) = v.as_str() {
                    plans.insert(person as u64, s.to_owned());
                }
            })
            .await
            .unwrap();
        store.close().await;
        (m, plans)
    });
    let (intake, _) = flywheel_engine::Intake::open(flywheel_engine::IntakeConfig::new(
        dir.join("events").join("wal"),
    ))
    .unwrap();
    let mut reader = intake.reader(0);
    let mut rows = Vec::new();
    let mut personless: HashMap<String, u64> = HashMap::new();
    while let Some(item) = reader.next_payload() {
        let (_, payload) = item.unwrap();
        for e in flywheel_engine::BatchRef::new(payload).unwrap().iter() {
            let e = e.unwrap();
            if e.project_id != project {
                continue;
            }
            let person = match persons.get(e.distinct_id) {
                Some(&p) => p as u64,
                None => {
                    let n = personless.len() as u64;
                    *personless
                        .entry(e.distinct_id.to_owned())
                        .or_insert((1 << 40) + n)
                }
            };
            rows.push(Owned {
                person,
                ts_us: e.timestamp_us,
                event: e.event.to_owned(),
                props: serde_json::from_str(e.properties).unwrap(),
            });
        }
    }
    let did_person = persons
        .iter()
        .map(|(d, &p)| (d.clone(), p as u64))
        .collect();
    (rows, plans, did_person)
}

/// The queries checked, each with a function computing the truth's answer and the API's, as comparable values.
/// The ground truth's inputs: every event with its person, and each person's current `plan`.
pub(crate) struct Ctx<'a> {
    pub(crate) rows: Vec<truth::Row<'a>>,
    /// The events' properties, parallel to `rows`.
    pub(crate) props: Vec<&'a serde_json::Map<String, Value>>,
    pub(crate) plan_of: HashMap<u64, String>,
    /// Company (group key) → its `industry`.
    industry: HashMap<String, Value>,
}

impl<'a> Ctx<'a> {
    /// Account level: each event as its company's (`$groups.company`); events without one are left out.
    fn by_company(&self) -> Vec<truth::Row<'a>> {
        let mut ids: HashMap<String, u64> = HashMap::new();
        self.rows
            .iter()
            .zip(&self.props)
            .filter_map(|(r, p)| {
                let key = p.get("$groups")?.get("company")?.as_str()?;
                let next = ids.len() as u64;
                let person = *ids.entry(key.to_owned()).or_insert(next);
                Some(truth::Row { person, ..*r })
            })
            .collect()
    }

    /// Account-level rows (see [`Ctx::by_company`]) of the companies whose `industry` is `label` (`null`: none).
    fn companies_in(&self, label: &Value) -> Vec<truth::Row<'a>> {
        let companies = self
            .props
            .iter()
            .filter_map(|p| p.get("$groups")?.get("company")?.as_str());
        self.by_company()
            .into_iter()
            .zip(companies)
            .filter(|(_, company)| self.industry.get(*company).unwrap_or(&Value::Null) == label)
            .map(|(r, _)| r)
            .collect()
    }

    /// The rows whose event properties satisfy `keep`.
    fn where_props(
        &self,
        keep: impl Fn(&serde_json::Map<String, Value>) -> bool,
    ) -> Vec<truth::Row<'a>> {
        self.rows
            .iter()
            .zip(&self.props)
            .filter(|(_, p)| keep(p))
            .map(|(r, _)| *r)
            .collect()
    }

    /// The rows of the persons whose plan is `label` (`null`: no plan).
    fn with_plan(&self, label: &Value) -> Vec<truth::Row<'a>> {
        self.rows
            .iter()
            .filter(|r| self.plan_of.get(&r.person).map(String::as_str) == label.as_str())
            .copied()
            .collect()
    }
}

type Check = (
    &'static str,
    Value,
    fn(&Ctx<'_>, &Value, &Value) -> (Value, Value),
);

fn checks() -> Vec<Check> {
    let range = json!({"date_from": "2025-12-04", "date_to": "2025-12-31"});
    let with = |extra: Value| {
        let mut v = range.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    vec![
        (
            "trends",
            with(json!({"series": [
                {"event": "$pageview", "math": "total"},
                {"event": "$pageview", "math": "dau"},
                {"event": "task_completed", "math": "weekly_active"},
                {"event": "$pageview", "math": "monthly_active"},
                {"event": "$all", "math": "dau"},
            ]})),
            |c, _q, v| {
                let rows = &c.rows[..];
                let r = range_of(v);
                let res = &v["result"];
                let all: Vec<truth::Row<'_>> = rows
                    .iter()
                    .map(|x| truth::Row { event: "*", ..*x })
                    .collect();
                let want = json!([
                    truth::total(rows, "$pageview", r, truth::Interval::Day),
                    truth::unique_persons(rows, "$pageview", r, truth::Interval::Day),
                    truth::rolling_active(rows, "task_completed", r, 7),
                    truth::rolling_active(rows, "$pageview", r, 30),
                    truth::unique_persons(&all, "*", r, truth::Interval::Day),
                ]);
                let got: Vec<Vec<u64>> = (0..5).map(|i| counts(&res[i]["data"])).collect();
                (want, json!(got))
            },
        ),
        (
            "trends",
            with(
                json!({"interval": "week", "series": [{"event": "signed_up", "math": "dau"}, {"event": "$pageview"}]}),
            ),
            |c, _q, v| {
                let rows = &c.rows[..];
                let r = range_of(v);
                let want = json!([
                    truth::unique_persons(rows, "signed_up", r, truth::Interval::Week),
                    truth::total(rows, "$pageview", r, truth::Interval::Week),
                ]);
                let res = &v["result"];
                (
                    want,
                    json!([counts(&res[0]["data"]), counts(&res[1]["data"])]),
                )
            },
        ),
        (
            "funnel",
            with(
                json!({"steps": [{"event": "signed_up"}, {"event": "project_created"}, {"event": "teammate_invited"}, {"event": "trial_started"}]}),
            ),
            funnel_check::<0>,
        ),
        (
            "funnel",
            with(
                json!({"order": "strict", "steps": [{"event": "$pageview"}, {"event": "signed_up"}, {"event": "project_created"}]}),
            ),
            funnel_check::<1>,
        ),
        (
            "funnel",
            with(
                json!({"order": "unordered", "conversion_window": {"value": 2, "unit": "day"}, "steps": [{"event": "task_created"}, {"event": "task_completed"}, {"event": "$pageview"}]}),
            ),
            funnel_check::<2>,
        ),
        (
            "retention",
            json!({"start_event": {"event": "signed_up"}, "return_event": {"event": "task_completed"}, "period": "week", "periods": 4, "date_to": "2025-12-31"}),
            retention_check,
        ),
        (
            "retention",
            json!({"start_event": {"event": "$pageview"}, "return_event": {"event": "$pageview"}, "cohort": "recurring", "mode": "on_or_after", "period": "day", "periods": 10, "date_to": "2025-12-31"}),
            retention_check,
        ),
        (
            "stickiness",
            with(json!({"event": {"event": "task_completed"}})),
            |c, _q, v| {
                let rows = &c.rows[..];
                let r = range_of(v);
                let want = json!(truth::stickiness(
                    rows,
                    "task_completed",
                    r,
                    truth::Interval::Day
                ));
                (want, json!(counts(&v["result"]["data"])))
            },
        ),
        (
            "lifecycle",
            with(json!({"event": {"event": "$pageview"}})),
            |c, _q, v| lifecycle_truth(&c.rows, "$pageview", v, &v["result"]),
        ),
        (
            "trends",
            with(
                json!({"series": [{"event": "$pageview", "math": "dau"}], "breakdown": {"type": "person", "property": "plan"}}),
            ),
            |c, _q, v| {
                let r = range_of(v);
                let mut want = serde_json::Map::new();
                let mut got = serde_json::Map::new();
                for item in v["result"].as_array().unwrap() {
                    let label = &item["breakdown_value"];
                    let key = label.to_string();
                    got.insert(key.clone(), json!(counts(&item["data"])));
                    want.insert(
                        key,
                        json!(truth::unique_persons(
                            &c.with_plan(label),
                            "$pageview",
                            r,
                            truth::Interval::Day
                        )),
                    );
                }
                // Every plan with a pageview in the range has its row.
                let total: Vec<u64> =
                    truth::unique_persons(&c.rows, "$pageview", r, truth::Interval::Day);
                let summed: Vec<u64> = (0..total.len())
                    .map(|i| got.values().map(|d| d[i].as_u64().unwrap()).sum())
                    .collect();
                assert_eq!(
                    summed, total,
                    "breakdown rows add up to the total (one plan per person)"
                );
                assert!(got.len() >= 2, "several plans: {got:?}");
                (json!(want), json!(got))
            },
        ),
        (
            "funnel",
            with(
                json!({"steps": [{"event": "signed_up"}, {"event": "project_created"}, {"event": "trial_started"}], "breakdown": {"type": "person", "property": "plan"}}),
            ),
            |c, q, v| {
                let steps: Vec<&str> = q["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["event"].as_str().unwrap())
                    .collect();
                let mut want = serde_json::Map::new();
                let mut got = serde_json::Map::new();
                for item in v["result"].as_array().unwrap() {
                    let label = &item["breakdown_value"];
                    got.insert(label.to_string(), json!(step_counts(item)));
                    want.insert(
                        label.to_string(),
                        json!(truth::funnel(
                            &c.with_plan(label),
                            &steps,
                            14 * truth::DAY_US,
                            truth::Order::Ordered,
                            range_of(v)
                        )),
                    );
                }
                assert!(got.len() >= 2, "several plans: {got:?}");
                (json!(want), json!(got))
            },
        ),
        (
            "retention",
            json!({"start_event": {"event": "$pageview"}, "return_event": {"event": "task_completed"}, "period": "week", "periods": 4, "date_to": "2025-12-31", "breakdown": {"type": "person", "property": "plan"}}),
            |c, q, v| {
                let mut want = serde_json::Map::new();
                let mut got = serde_json::Map::new();
                for item in v["result"].as_array().unwrap() {
                    let label = &item["breakdown_value"];
                    let periods = 4;
                    let table = truth::retention(
                        &c.with_plan(label),
                        truth::Retention {
                            start_event: q["start_event"]["event"].as_str().unwrap(),
                            return_event: q["return_event"]["event"].as_str().unwrap(),
                            cohorting: truth::Cohorting::FirstTime,
                            interval: truth::Interval::Week,
                            from_us: micros(&v["date_from"]),
                            periods,
                            on_or_after: false,
                        },
                    );
                    let w: Vec<Vec<u64>> = table
                        .iter()
                        .enumerate()
                        .map(|(p, row)| row[..periods - p].to_vec())
                        .collect();
                    let g: Vec<Vec<u64>> = item["cohorts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .enumerate()
                        .map(|(p, c)| counts(&c["values"])[..periods - p].to_vec())
                        .collect();
                    want.insert(label.to_string(), json!(w));
                    got.insert(label.to_string(), json!(g));
                }
                assert!(got.len() >= 2, "several plans: {got:?}");
                (json!(want), json!(got))
            },
        ),
        (
            "trends",
            with(json!({"series": [
                {"event": "$pageview", "properties": [{"key": "$browser", "value": ["Chrome", "Safari"]}]},
                {"event": "$pageview", "math": "dau", "properties": [{"key": "load_ms", "operator": "gt", "value": 1500}]},
                {"event": "$pageview", "math": "dau", "properties": [{"key": "$current_url", "operator": "contains", "value": "PRICING"}]},
            ]})),
            |c, _q, v| {
                let r = range_of(v);
                let browser = c.where_props(|p| {
                    matches!(
                        p.get("$browser").and_then(Value::as_str),
                        Some("Chrome" | "Safari")
                    )
                });
                let slow = c.where_props(|p| {
                    p.get("load_ms")
                        .and_then(Value::as_f64)
                        .is_some_and(|x| x > 1500.0)
                });
                let pricing = c.where_props(|p| {
                    p.get("$current_url")
                        .and_then(Value::as_str)
                        .is_some_and(|u| u.to_lowercase().contains("pricing"))
                });
                assert!(!slow.is_empty() && !pricing.is_empty() && !browser.is_empty());
                let want = json!([
                    truth::total(&browser, "$pageview", r, truth::Interval::Day),
                    truth::unique_persons(&slow, "$pageview", r, truth::Interval::Day),
                    truth::unique_persons(&pricing, "$pageview", r, truth::Interval::Day),
                ]);
                let res = &v["result"];
                (
                    want,
                    json!([
                        counts(&res[0]["data"]),
                        counts(&res[1]["data"]),
                        counts(&res[2]["data"])
                    ]),
                )
            },
        ),
        (
            "funnel",
            with(json!({
                "steps": [{"event": "signed_up"}, {"event": "project_created"}, {"event": "trial_started"}],
                "properties": [{"key": "plan", "type": "person", "operator": "is_not", "value": "free"}],
            })),
            |c, _q, v| {
                let rows: Vec<truth::Row<'_>> = c
                    .rows
                    .iter()
                    .filter(|r| c.plan_of.get(&r.person).map(String::as_str) != Some("free"))
                    .copied()
                    .collect();
                let want = truth::funnel(
                    &rows,
                    &["signed_up", "project_created", "trial_started"],
                    14 * truth::DAY_US,
                    truth::Order::Ordered,
                    range_of(v),
                );
                let got = step_counts(&v["result"]);
                (json!(want), json!(got))
            },
        ),
        (
            "trends",
            with(
                json!({"series": [{"event": "$pageview"}], "breakdown": {"type": "event", "property": "$browser", "limit": 3}}),
            ),
            |c, _q, v| {
                let r = range_of(v);
                let mut got = serde_json::Map::new();
                let mut want = serde_json::Map::new();
                let items = v["result"].as_array().unwrap();
                let named: Vec<String> = items
                    .iter()
                    .filter_map(|i| i["breakdown_value"].as_str().map(str::to_owned))
                    .filter(|l| l != "$$_posthog_breakdown_other_$$")
                    .collect();
                assert_eq!(named.len(), 3, "limit 3: {named:?}");
                for item in items {
                    let label = &item["breakdown_value"];
                    got.insert(label.to_string(), json!(counts(&item["data"])));
                    let rows = c.where_props(|p| {
                        let b = p.get("$browser").and_then(Value::as_str);
                        match label.as_str() {
                            Some("$$_posthog_breakdown_other_$$") => {
                                b.is_some_and(|b| !named.iter().any(|n| n == b))
                            }
                            Some(l) => b == Some(l),
                            None => b.is_none(),
                        }
                    });
                    want.insert(
                        label.to_string(),
                        json!(truth::total(&rows, "$pageview", r, truth::Interval::Day)),
                    );
                }
                assert!(
                    got.contains_key("\"$$_posthog_breakdown_other_$$\""),
                    "more than 3 browsers: {got:?}"
                );
                (json!(want), json!(got))
            },
        ),
        (
            "trends",
            with(json!({"series": [
                {"event": "$pageview", "math": "sum", "math_property": "load_ms"},
                {"event": "$pageview", "math": "avg", "math_property": "load_ms"},
                {"event": "$pageview", "math": "p90", "math_property": "load_ms"},
                {"event": "$pageview", "math": "max", "math_property": "load_ms"},
            ]})),
            |c, _q, v| {
                let r = range_of(v);
                let days = truth::buckets(r, truth::Interval::Day);
                let mut per_day: Vec<Vec<f64>> = vec![Vec::new(); days.len()];
                for (row, p) in c.rows.iter().zip(&c.props) {
                    if row.event != "$pageview" || !r.contains(row.ts_us) {
                        continue;
                    }
                    if let Some(x) = p.get("load_ms").and_then(Value::as_f64) {
                        let d = days
                            .binary_search(&truth::bucket_start(row.ts_us, truth::Interval::Day))
                            .unwrap();
                        per_day[d].push(x);
                    }
                }
                // numpy's default percentile: linear interpolation between closest ranks.
                let p90 = |xs: &[f64]| {
                    if xs.is_empty() {
                        return 0.0;
                    }
                    let mut xs = xs.to_vec();
                    xs.sort_by(f64::total_cmp);
                    let h = 0.9 * (xs.len() - 1) as f64;
                    let lo = h.floor() as usize;
                    let hi = (lo + 1).min(xs.len() - 1);
                    xs[lo] + (xs[hi] - xs[lo]) * (h - lo as f64)
                };
                let round = |x: f64| (x * 1000.0).round() / 1000.0;
                let want = json!([
                    per_day
                        .iter()
                        .map(|xs| round(xs.iter().sum()))
                        .collect::<Vec<_>>(),
                    per_day
                        .iter()
                        .map(|xs| round(if xs.is_empty() {
                            0.0
                        } else {
                            xs.iter().sum::<f64>() / xs.len() as f64
                        }))
                        .collect::<Vec<_>>(),
                    per_day.iter().map(|xs| round(p90(xs))).collect::<Vec<_>>(),
                    per_day
                        .iter()
                        .map(|xs| round(xs.iter().copied().fold(0.0, f64::max)))
                        .collect::<Vec<_>>(),
                ]);
                let got: Vec<Vec<f64>> = (0..4)
                    .map(|i| {
                        v["result"][i]["data"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| round(x.as_f64().unwrap()))
                            .collect()
                    })
                    .collect();
                (want, json!(got))
            },
        ),
        (
            "funnel",
            with(
                json!({"steps": [{"event": "$pageview"}, {"event": "signed_up"}, {"event": "project_created"}], "breakdown": {"type": "event", "property": "$browser"}, "breakdown_attribution": "first_touch"}),
            ),
            |c, q, v| {
                // Every entered person is attributed to exactly one browser: the rows add up to the whole funnel.
                let steps: Vec<&str> = q["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["event"].as_str().unwrap())
                    .collect();
                let want = truth::funnel(
                    &c.rows,
                    &steps,
                    14 * truth::DAY_US,
                    truth::Order::Ordered,
                    range_of(v),
                );
                let items = v["result"].as_array().unwrap();
                assert!(items.len() >= 3, "several browsers: {v}");
                let mut summed = vec![0u64; steps.len()];
                for item in items {
                    for (i, s) in item["steps"].as_array().unwrap().iter().enumerate() {
                        summed[i] += s["count"].as_u64().unwrap();
                    }
                }
                (json!(want), json!(summed))
            },
        ),
        (
            "funnel",
            with(
                json!({"aggregation": "group:0", "steps": [{"event": "project_created"}, {"event": "teammate_invited"}, {"event": "trial_started"}]}),
            ),
            |c, q, v| {
                // Account-level: each event counts for its company (`$groups.company`), events without one are out.
                let rows = c.by_company();
                let steps: Vec<&str> = q["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["event"].as_str().unwrap())
                    .collect();
                let want = truth::funnel(
                    &rows,
                    &steps,
                    14 * truth::DAY_US,
                    truth::Order::Ordered,
                    range_of(v),
                );
                let got = step_counts(&v["result"]);
                (json!(want), json!(got))
            },
        ),
        (
            "retention",
            json!({"start_event": {"event": "$pageview"}, "return_event": {"event": "$pageview"}, "period": "week",
                "periods": 4, "date_to": "2025-12-31", "cohort": "recurring",
                "breakdown": {"type": "event", "property": "$browser"}}),
            |c, _q, v| {
                // Each cohort membership counts under the browser of the page view that entered it (the first
                // of its week for recurring cohorts).
                let items = v["result"].as_array().unwrap();
                assert!(items.len() >= 3, "several browsers: {v}");
                let labels: Vec<&Value> = items.iter().map(|i| &i["breakdown_value"]).collect();
                let code_of = |p: &serde_json::Map<String, Value>| -> u32 {
                    let b = p.get("$browser").cloned().unwrap_or(Value::Null);
                    labels.iter().position(|l| **l == b).unwrap_or(labels.len()) as u32
                };
                let codes: Vec<u32> = c.props.iter().map(|p| code_of(p)).collect();
                let periods = 4;
                let tables = truth::retention_by_row(
                    &c.rows,
                    &codes,
                    labels.len(),
                    truth::Retention {
                        start_event: "$pageview",
                        return_event: "$pageview",
                        cohorting: truth::Cohorting::Recurring,
                        interval: truth::Interval::Week,
                        from_us: micros(&v["date_from"]),
                        periods,
                        on_or_after: false,
                    },
                );
                let cut = |t: &[Vec<u64>]| -> Vec<Vec<u64>> {
                    t.iter()
                        .enumerate()
                        .map(|(p, row)| row[..periods - p].to_vec())
                        .collect()
                };
                let want: Vec<Vec<Vec<u64>>> = tables.iter().map(|t| cut(t)).collect();
                let got: Vec<Vec<Vec<u64>>> = items
                    .iter()
                    .map(|i| {
                        let t: Vec<Vec<u64>> = i["cohorts"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|c| counts(&c["values"]))
                            .collect();
                        cut(&t)
                    })
                    .collect();
                (json!(want), json!(got))
            },
        ),
        (
            "retention",
            json!({"aggregation": "group:0", "start_event": {"event": "project_created"}, "return_event": {"event": "task_completed"},
                "period": "week", "periods": 4, "date_to": "2025-12-31",
                "breakdown": {"type": "group", "group_type_index": 0, "property": "industry"}}),
            |c, q, v| {
                // Account-level, by the company's industry: each table is that industry's companies' retention.
                let items = v["result"].as_array().unwrap();
                assert!(items.len() >= 2, "several industries: {v}");
                let mut want = serde_json::Map::new();
                let mut got = serde_json::Map::new();
                for item in items {
                    let label = &item["breakdown_value"];
                    let rows = c.companies_in(label);
                    let (w, g) = retention_truth(&rows, q, v, &item["cohorts"]);
                    want.insert(label.to_string(), w);
                    got.insert(label.to_string(), g);
                }
                (json!(want), json!(got))
            },
        ),
        (
            "trends",
            json!({"date_from": "2025-12-18", "date_to": "2025-12-31", "compare": true,
                "series": [{"event": "$pageview"}, {"event": "task_completed", "math": "weekly_active"}]}),
            |c, _q, v| {
                // The previous period: as many days, just before the range (the truth's own day arithmetic).
                let items = v["result"].as_array().unwrap();
                assert_eq!(items.len(), 4, "two series, current and previous: {v}");
                let current = range_of(v);
                let days = (current.to_us - current.from_us) / truth::DAY_US;
                let previous = truth::Range {
                    from_us: current.from_us - days * truth::DAY_US,
                    to_us: current.from_us,
                };
                let mut want = Vec::new();
                let mut got = Vec::new();
                for item in items {
                    let r = if item["compare"] == "previous" {
                        previous
                    } else {
                        current
                    };
                    want.push(match item["series"].as_u64() {
                        Some(0) => truth::total(&c.rows, "$pageview", r, truth::Interval::Day),
                        _ => truth::rolling_active(&c.rows, "task_completed", r, 7),
                    });
                    got.push(counts(&item["data"]));
                }
                assert_eq!(
                    items
                        .iter()
                        .map(|i| i["compare"].as_str().unwrap())
                        .collect::<Vec<_>>(),
                    ["current", "current", "previous", "previous"]
                );
                (json!(want), json!(got))
            },
        ),
        (
            "funnel",
            with(
                json!({"aggregation": "group:0", "steps": [{"event": "project_created"}, {"event": "teammate_invited"}, {"event": "task_completed"}],
                    "breakdown": {"type": "group", "group_type_index": 0, "property": "industry"}}),
            ),
            |c, q, v| {
                // Account-level, by the company's industry: every event of a company has its industry, so each
                // row is the funnel of that industry's companies.
                let items = v["result"].as_array().unwrap();
                assert!(items.len() >= 2, "several industries: {v}");
                let mut want = serde_json::Map::new();
                let mut got = serde_json::Map::new();
                for item in items {
                    let label = &item["breakdown_value"];
                    let rows = c.companies_in(label);
                    let (w, g) = funnel_truth::<0>(&rows, q, v, item);
                    want.insert(label.to_string(), w);
                    got.insert(label.to_string(), g);
                }
                (json!(want), json!(got))
            },
        ),
        (
            "retention",
            json!({"aggregation": "group:0", "start_event": {"event": "$pageview"}, "return_event": {"event": "task_completed"}, "period": "week", "periods": 4, "date_to": "2025-12-31"}),
            |c, q, v| {
                let rows = c.by_company();
                let ctx = Ctx {
                    rows,
                    props: Vec::new(),
                    plan_of: HashMap::new(),
                    industry: HashMap::new(),
                };
                retention_check(&ctx, q, v)
            },
        ),
        (
            "trends",
            with(
                json!({"series": [{"event": "$pageview"}], "breakdown": {"type": "group", "group_type_index": 0, "property": "industry"}}),
            ),
            |c, _q, v| {
                let r = range_of(v);
                let industry_of = |p: &serde_json::Map<String, Value>| -> Option<String> {
                    let company = p.get("$groups")?.get("company")?.as_str()?;
                    c.industry.get(company)?.as_str().map(str::to_owned)
                };
                let mut got = serde_json::Map::new();
                let mut want = serde_json::Map::new();
                for item in v["result"].as_array().unwrap() {
                    let label = &item["breakdown_value"];
                    got.insert(label.to_string(), json!(counts(&item["data"])));
                    let rows = c.where_props(|p| industry_of(p).as_deref() == label.as_str());
                    want.insert(
                        label.to_string(),
                        json!(truth::total(&rows, "$pageview", r, truth::Interval::Day)),
                    );
                }
                assert!(
                    got.len() >= 3,
                    "several industries and the null row: {got:?}"
                );
                (json!(want), json!(got))
            },
        ),
    ]
}

fn funnel_check<const ORDER: u8>(c: &Ctx<'_>, q: &Value, v: &Value) -> (Value, Value) {
    funnel_truth::<ORDER>(&c.rows, q, v, &v["result"])
}

/// The truth's funnel over `rows` for definition `q` (range from the answer `v`), and the answer's steps in
/// `result`.
pub(crate) fn funnel_truth<const ORDER: u8>(
    rows: &[truth::Row<'_>],
    q: &Value,
    v: &Value,
    result: &Value,
) -> (Value, Value) {
    let steps: Vec<&str> = q["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["event"].as_str().unwrap())
        .collect();
    let window = match q.get("conversion_window") {
        Some(w) => w["value"].as_i64().unwrap() * truth::DAY_US,
        None => 14 * truth::DAY_US,
    };
    let order = [
        truth::Order::Ordered,
        truth::Order::Strict,
        truth::Order::Unordered,
    ][ORDER as usize];
    let want = truth::funnel(rows, &steps, window, order, range_of(v));
    let got = step_counts(result);
    (json!(want), json!(got))
}

/// For a trends answer `v` of daily `$pageview` totals and daily unique persons of `task_completed`: the truth's
/// over `rows`, and the answer's.
pub(crate) fn pageviews_and_task_dau(rows: &[truth::Row<'_>], v: &Value) -> (Value, Value) {
    let r = range_of(v);
    let want = json!([
        truth::total(rows, "$pageview", r, truth::Interval::Day),
        truth::unique_persons(rows, "task_completed", r, truth::Interval::Day),
    ]);
    let got = json!([
        counts(&v["result"][0]["data"]),
        counts(&v["result"][1]["data"])
    ]);
    (want, got)
}

/// The truth's daily lifecycle of `event` over `rows` (range from the answer `v`), and the answer's in `res`.
pub(crate) fn lifecycle_truth(
    rows: &[truth::Row<'_>],
    event: &str,
    v: &Value,
    res: &Value,
) -> (Value, Value) {
    let t = truth::lifecycle(rows, event, range_of(v), truth::Interval::Day);
    let dormant: Vec<u64> = res["dormant"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (-d.as_i64().unwrap()) as u64)
        .collect();
    (
        json!([t.new, t.returning, t.resurrecting, t.dormant]),
        json!([
            counts(&res["new"]),
            counts(&res["returning"]),
            counts(&res["resurrecting"]),
            dormant
        ]),
    )
}

fn retention_check(c: &Ctx<'_>, q: &Value, v: &Value) -> (Value, Value) {
    retention_truth(&c.rows, q, v, &v["result"])
}

/// The truth's retention table over `rows` for definition `q` (start from the answer `v`), and the answer's
/// table in `result`.
pub(crate) fn retention_truth(
    rows: &[truth::Row<'_>],
    q: &Value,
    v: &Value,
    result: &Value,
) -> (Value, Value) {
    let interval = match q["period"].as_str() {
        Some("day") => truth::Interval::Day,
        _ => truth::Interval::Week,
    };
    let periods = q["periods"].as_u64().unwrap() as usize;
    let table = truth::retention(
        rows,
        truth::Retention {
            start_event: q["start_event"]["event"].as_str().unwrap(),
            return_event: q["return_event"]["event"].as_str().unwrap(),
            cohorting: if q["cohort"] == "recurring" {
                truth::Cohorting::Recurring
            } else {
                truth::Cohorting::FirstTime
            },
            interval,
            from_us: micros(&v["date_from"]),
            periods,
            on_or_after: q["mode"] == "on_or_after",
        },
    );
    let want: Vec<Vec<u64>> = table
        .iter()
        .enumerate()
        .map(|(p, row)| row[..periods - p].to_vec())
        .collect();
    let got: Vec<Vec<u64>> = result
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(p, c)| counts(&c["values"])[..periods - p].to_vec())
        .collect();
    (json!(want), json!(got))
}

fn generate(dir: &std::path::Path, seed: &str) -> (i64, String) {
    generate_until(dir, seed, "2026-01-01")
}

/// 30,000 events of 3,000 persons over the 30 days before `end`.
fn generate_until(dir: &std::path::Path, seed: &str, end: &str) -> (i64, String) {
    let out = Command::new(BIN)
        .args(["generate", "--data-dir"])
        .arg(dir)
        .args(["--events", "30000", "--persons", "3000", "--seed", seed])
        .args(["--days", "30", "--end", end, "--json", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        summary["project_id"].as_i64().unwrap(),
        summary["personal_api_key"].as_str().unwrap().to_owned(),
    )
}

/// Every check of a seed's history, on a server started with `serve` (its extra arguments).
fn check_seed(seed: &str, serve: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (project, key) = generate(dir.path(), seed);
    let extra = serve;
    let serve = Serve::start(dir.path(), extra);
    let answers: Vec<Value> = checks()
        .iter()
        .map(|(kind, q, _)| insight(&serve, &key, project, kind, q.clone()))
        .collect();
    let group_filter = json!({"date_from": "2025-12-04", "date_to": "2025-12-31",
        "series": [{"event": "$pageview"}, {"event": "task_completed", "math": "dau"}],
        "properties": [{"key": "industry", "type": "group", "group_type_index": 0, "value": "software"}]});
    let by_industry = insight(&serve, &key, project, "trends", group_filter);
    let persons_of_steps: Vec<(i32, Value)> = [2, 3, -2, -3]
        .into_iter()
        .map(|step| {
            let body = json!({"date_from": "2025-12-04", "date_to": "2025-12-31", "steps": [{"event": "signed_up"}, {"event": "project_created"}, {"event": "teammate_invited"}]});
            let (status, v) = post(
                &serve,
                &key,
                &format!("/api/v1/projects/{project}/insights/funnel?funnel_step={step}&limit=25"),
                &body,
            );
            assert_eq!(status, 200, "{v}");
            (step, v)
        })
        .collect();
    // Account-level funnel: the companies that reached step 2.
    let group_funnel = json!({"date_from": "2025-12-04", "date_to": "2025-12-31", "aggregation": "group:0",
        "steps": [{"event": "project_created"}, {"event": "teammate_invited"}]});
    let (status, companies_at_2) = post(
        &serve,
        &key,
        &format!("/api/v1/projects/{project}/insights/funnel?funnel_step=2&limit=10000"),
        &group_funnel,
    );
    assert_eq!(status, 200, "{companies_at_2}");
    // Cohorts: an uploaded list made of the persons listed at a funnel step, and dynamic ones.
    let known: Vec<String> = persons_of_steps[0].1["persons"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["distinct_ids"][0].as_str().unwrap().to_owned())
        .collect();
    let cohort_answers = crate::cohorts::ask(&serve, &key, project, &known);
    let (status, v) = post(
        &serve,
        &key,
        &format!("/api/v1/projects/{project}/insights/funnel?funnel_step=9"),
        &json!({"steps": [{"event": "a"}, {"event": "b"}]}),
    );
    assert_eq!(
        (status, v["errors"][0]["field"].as_str()),
        (400, Some("funnel_step")),
        "{v}"
    );
    let (status, v) = post(
        &serve,
        &key,
        &format!("/api/v1/projects/{project}/insights/trends?funnel_step=1"),
        &json!({"series": [{"event": "a"}]}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(serve.terminate().success());

    let (owned, plan_of, did_person) = ground_rows(dir.path(), project);
    assert_eq!(owned.len(), 30_000);
    let rows: Vec<truth::Row<'_>> = owned
        .iter()
        .map(|o| truth::Row {
            person: o.person,
            ts_us: o.ts_us,
            event: &o.event,
        })
        .collect();
    let props = owned.iter().map(|o| &o.props).collect();
    // Company → industry, for the group checks (read from the metadata store, as identity left it).
    let industry: HashMap<String, Value> =
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let store = flywheel_store::Store::open(&dir.path().join("metadata.db"))
                .await
                .unwrap();
            let v = store
                .group_property_values(project, 0, "industry")
                .await
                .unwrap();
            store.close().await;
            v.into_iter().collect()
        });
    let ctx = Ctx {
        rows,
        props,
        plan_of,
        industry,
    };
    for ((kind, q, check), answer) in checks().iter().zip(&answers) {
        let (want, got) = check(&ctx, q, answer);
        assert_eq!(got, want, "seed {seed}, {kind} {q}");
        // Not vacuous: something was counted.
        assert!(
            want.to_string().bytes().any(|b| (b'1'..=b'9').contains(&b)),
            "{kind} {q}: {want}"
        );
    }

    crate::cohorts::check(&ctx, &did_person, &cohort_answers);

    // The companies listed at step 2 are exactly those whose own funnel reaches it.
    let mut company_rows: HashMap<&str, Vec<truth::Row<'_>>> = HashMap::new();
    for (r, p) in ctx.rows.iter().zip(&ctx.props) {
        if let Some(company) = p
            .get("$groups")
            .and_then(|g| g.get("company"))
            .and_then(Value::as_str)
        {
            company_rows
                .entry(company)
                .or_default()
                .push(truth::Row { person: 0, ..*r });
        }
    }
    let range = range_of(&companies_at_2);
    let reached: Vec<&str> = company_rows
        .iter()
        .filter(|(_, rows)| {
            truth::funnel(
                rows,
                &["project_created", "teammate_invited"],
                14 * truth::DAY_US,
                truth::Order::Ordered,
                range,
            )[1] > 0
        })
        .map(|(c, _)| *c)
        .collect();
    let mut listed: Vec<&str> = companies_at_2["persons"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group_key"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut want = reached.clone();
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(listed, want, "companies at step 2");
    assert_eq!(
        companies_at_2["persons"]["count"].as_u64(),
        Some(want.len() as u64)
    );

    // Group-property filter: events whose company (`$groups.company`) has industry `software`.
    let industry = &ctx.industry;
    let software = ctx.where_props(|p| {
        p.get("$groups")
            .and_then(|g| g.get("company"))
            .and_then(Value::as_str)
            .and_then(|c| industry.get(c))
            .is_some_and(|i| i == "software")
    });
    let (want, got) = pageviews_and_task_dau(&software, &by_industry);
    assert_eq!(got, want, "group-property filter");
    assert!(want.to_string().bytes().any(|b| (b'1'..=b'9').contains(&b)));

    // The persons of a funnel step are exactly the truth's, and their distinct ids are theirs.
    let steps = ["signed_up", "project_created", "teammate_invited"];
    let range = range_of(&answers[2]);
    let reach_of = |person: u64| -> usize {
        let mine: Vec<truth::Row<'_>> = ctx
            .rows
            .iter()
            .filter(|r| r.person == person)
            .copied()
            .collect();
        truth::funnel(
            &mine,
            &steps,
            14 * truth::DAY_US,
            truth::Order::Ordered,
            range,
        )
        .iter()
        .filter(|&&n| n > 0)
        .count()
    };
    for (step, listed) in persons_of_steps {
        let v = &listed["persons"];
        let results = v["results"].as_array().unwrap();
        assert!(!results.is_empty(), "step {step}: {listed}");
        for p in results {
            let did = p["distinct_ids"][0].as_str().unwrap();
            let person = *did_person.get(did).unwrap();
            let reach = reach_of(person);
            if step > 0 {
                assert!(reach >= step as usize, "step {step}: {did} reached {reach}");
            } else {
                assert_eq!(
                    reach,
                    step.unsigned_abs() as usize - 1,
                    "drop-off {step}: {did}"
                );
            }
            assert_eq!(p["person_id"].as_u64(), Some(person), "{p}");
        }
        let counts = step_counts(&listed["result"]);
        let expected = if step > 0 {
            counts[step as usize - 1]
        } else {
            counts[step.unsigned_abs() as usize - 2] - counts[step.unsigned_abs() as usize - 1]
        };
        assert_eq!(v["count"].as_u64(), Some(expected), "step {step}");
    }

    // Restarted, the server reads its sealed segments and answers the same.
    let columnar = dir.path().join("events").join("columnar");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(columnar.join("manifest.json")).unwrap()).unwrap();
    let sealed: u64 = manifest["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows"].as_u64().unwrap())
        .sum();
    assert!(sealed >= 30_000, "shutdown sealed the tail: {manifest}");
    let serve = Serve::start(dir.path(), extra);
    for ((kind, q, _), answer) in checks().iter().zip(&answers) {
        let again = insight(&serve, &key, project, kind, q.clone());
        assert_eq!(
            again["result"], answer["result"],
            "after restart: {kind} {q}"
        );
    }
    for (kind, q, answer) in cohort_answers.insights() {
        let again = insight(&serve, &key, project, kind, q.clone());
        assert_eq!(
            again["result"], answer["result"],
            "after restart: {kind} {q}"
        );
    }
    assert!(serve.terminate().success());
}

#[test]
fn insights_match_ground_truth_seed_1() {
    check_seed("1", &[]);
}

#[test]
fn insights_match_ground_truth_seed_77() {
    check_seed("77", &[]);
}

/// The same checks with the events in ClickHouse (Debian's 18.16): the node ships the generated log there and
/// every insight, cohort count and funnel step's list is answered by ClickHouse's SQL.
#[test]
fn insights_match_ground_truth_on_clickhouse() {
    let ch = flywheel_clickhouse::test_support::start();
    check_seed(
        "1",
        &["--events-url", &ch.url, "--events-database", "fw_truth"],
    );
}

#[test]
fn bad_definitions_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let path = |kind: &str| format!("/api/v1/projects/{}/insights/{kind}", keys.project_id);
    let (status, v) = post(
        &serve,
        &keys.personal_key,
        &path("funnel"),
        &json!({"steps": [{"event": "a"}]}),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["code"], "validation_error");
    assert_eq!(v["errors"][0]["field"], "steps");
    let (status, v) = post(&serve, &keys.personal_key, &path("pie"), &json!({}));
    assert_eq!(status, 400);
    assert_eq!(v["errors"][0]["field"], "kind");
    // A project without events answers zeros, not an error.
    let (status, v) = post(
        &serve,
        &keys.personal_key,
        &path("trends"),
        &json!({"series": [{"event": "x"}], "date_from": "-3d"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"][0]["data"], json!([0.0, 0.0, 0.0, 0.0]));
    // No key: 401.
    let (status, _) = http(&serve.addr, "POST", &path("trends"), &[], b"{}").unwrap();
    assert_eq!(status, 401);
    assert!(serve.terminate().success());
}

/// Answers are cached until the data changes: a second identical query is served from the cache, a new event
/// makes a fresh answer, and `Cache-Control: no-cache` always computes.
#[test]
fn answers_are_cached_until_the_data_changes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let capture = |n: usize| {
        let batch: Vec<Value> = (0..n)
            .map(|i| json!({"event": "opened", "distinct_id": format!("u{i}")}))
            .collect();
        let body = json!({"api_key": keys.project_key, "batch": batch}).to_string();
        let (status, _) = http(
            &serve.addr,
            "POST",
            "/batch",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200);
    };
    let path = format!("/api/v1/projects/{}/insights/trends", keys.project_id);
    let body = json!({"series": [{"event": "opened", "math": "dau"}], "date_from": "-1d"});
    let ask = |headers: &[(&str, &str)]| -> Value {
        let auth = format!("Bearer {}", keys.personal_key);
        let mut all = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        all.extend_from_slice(headers);
        let (status, out) = http(
            &serve.addr,
            "POST",
            &path,
            &all,
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200);
        serde_json::from_slice(&out).unwrap()
    };
    let today = |v: &Value| {
        v["result"][0]["data"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_f64()
            .unwrap()
    };
    capture(3);
    let first = ask(&[]);
    assert_eq!(first["cached"], false);
    assert_eq!(today(&first), 3.0);
    let second = ask(&[]);
    assert_eq!(second["cached"], true);
    assert_eq!(second["result"], first["result"]);
    assert_eq!(ask(&[("Cache-Control", "no-cache")])["cached"], false);
    capture(4); // u0..u3: one new person
    let third = ask(&[]);
    assert_eq!(third["cached"], false, "new data, new answer");
    assert_eq!(today(&third), 4.0);
    assert!(serve.terminate().success());
}

/// A project's time zone moves every bucket to local midnight; its test-account filters apply when a query asks.
#[test]
fn project_time_zone_and_test_account_filters() {
    let dir = tempfile::tempdir().unwrap();
    let (project, key) = generate(dir.path(), "5");
    let serve = Serve::start(dir.path(), &[]);
    let patch = |body: Value| {
        request(
            &serve,
            &key,
            "PATCH",
            &format!("/api/v1/projects/{project}"),
            &body,
        )
    };
    let (status, v) = patch(
        json!({"time_zone": "Mars/Olympus", "test_account_filters": [{"key": "plan", "operator": "often"}]}),
    );
    assert_eq!(status, 400, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"time_zone")
            && fields.iter().any(|f| f.starts_with("test_account_filters")),
        "{v}"
    );
    let test_filter =
        json!([{"key": "plan", "type": "person", "operator": "is_not", "value": "free"}]);
    let (status, v) =
        patch(json!({"time_zone": "America/New_York", "test_account_filters": test_filter}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["time_zone"], "America/New_York");
    let (status, got) = crate::get_json(&serve.addr, &format!("/api/v1/projects/{project}"), &key);
    assert_eq!((status, &got["test_account_filters"]), (200, &test_filter));

    let range = json!({"date_from": "2025-12-04", "date_to": "2025-12-31"});
    let with = |extra: Value| {
        let mut v = range.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let local = insight(
        &serve,
        &key,
        project,
        "trends",
        with(json!({"series": [{"event": "$pageview", "math": "dau"}]})),
    );
    assert_eq!(
        local["date_from"], "2025-12-04T05:00:00.000000Z",
        "local midnight in New York (EST)"
    );
    let filtered = insight(
        &serve,
        &key,
        project,
        "trends",
        with(json!({"series": [{"event": "$pageview"}], "filter_test_accounts": true})),
    );
    let explicit = insight(
        &serve,
        &key,
        project,
        "trends",
        with(json!({"series": [{"event": "$pageview"}], "properties": test_filter})),
    );
    let all = insight(
        &serve,
        &key,
        project,
        "trends",
        with(json!({"series": [{"event": "$pageview"}]})),
    );
    assert_eq!(filtered["result"], explicit["result"]);
    assert_ne!(
        filtered["result"], all["result"],
        "the filter leaves someone out"
    );
    let (_, audit) = crate::get_json(
        &serve.addr,
        &format!("/api/v1/projects/{project}/audit?entity_type=project"),
        &key,
    );
    assert!(audit.to_string().contains("project.updated"), "{audit}");
    assert!(serve.terminate().success());

    // Truth: New York days are UTC days of times shifted by -5 h (no DST change in December).
    let (owned, _, _) = ground_rows(dir.path(), project);
    let shift = 5 * 3_600_000_000i64;
    let rows: Vec<truth::Row<'_>> = owned
        .iter()
        .map(|o| truth::Row {
            person: o.person,
            ts_us: o.ts_us - shift,
            event: &o.event,
        })
        .collect();
    let r = range_of(&local);
    let shifted = truth::Range {
        from_us: r.from_us - shift,
        to_us: r.to_us - shift,
    };
    let want = truth::unique_persons(&rows, "$pageview", shifted, truth::Interval::Day);
    assert_eq!(counts(&local["result"][0]["data"]), want);
}

/// Days, weeks and hours in a time zone across a DST change: New York leaves daylight time on 2025-11-02 (01:00 EST
/// follows 01:59 EDT, a 25-hour day). The truth shifts each event by its own offset (−4 h before 06:00 UTC that
/// day, −5 h after) and counts local days as UTC days of the shifted times.
#[test]
fn local_days_across_a_dst_change() {
    let dir = tempfile::tempdir().unwrap();
    let (project, key) = generate_until(dir.path(), "9", "2025-11-12");
    let serve = Serve::start(dir.path(), &[]);
    let (status, out) = request(
        &serve,
        &key,
        "PATCH",
        &format!("/api/v1/projects/{project}"),
        &json!({"time_zone": "America/New_York"}),
    );
    assert_eq!(status, 200, "{out}");
    let range = json!({"date_from": "2025-10-20", "date_to": "2025-11-10"});
    let ask = |extra: Value| {
        let mut q = range.clone();
        q.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        insight(&serve, &key, project, "trends", q)
    };
    let daily =
        ask(json!({"series": [{"event": "$pageview"}, {"event": "$pageview", "math": "dau"}]}));
    let weekly =
        ask(json!({"interval": "week", "series": [{"event": "$pageview", "math": "dau"}]}));
    let hourly = ask(
        json!({"interval": "hour", "date_from": "2025-11-02", "date_to": "2025-11-02",
        "series": [{"event": "$pageview"}]}),
    );
    assert!(serve.terminate().success());
    assert_eq!(
        daily["date_from"], "2025-10-20T04:00:00.000000Z",
        "EDT midnight"
    );
    assert_eq!(
        daily["date_to"], "2025-11-11T05:00:00.000000Z",
        "EST midnight"
    );
    assert_eq!(
        hourly["result"][0]["data"].as_array().unwrap().len(),
        25,
        "the local day of the change has 25 hours"
    );

    let (owned, _, _) = ground_rows(dir.path(), project);
    let change = 1_762_063_200_000_000i64; // 2025-11-02T06:00:00Z
    let hour = 3_600_000_000i64;
    let local = |ts: i64| ts - if ts < change { 4 * hour } else { 5 * hour };
    let rows: Vec<truth::Row<'_>> = owned
        .iter()
        .map(|o| truth::Row {
            person: o.person,
            ts_us: local(o.ts_us),
            event: &o.event,
        })
        .collect();
    let shifted = |v: &Value| {
        let r = range_of(v);
        truth::Range {
            from_us: local(r.from_us),
            to_us: local(r.to_us),
        }
    };
    let r = shifted(&daily);
    assert_eq!(
        json!([
            counts(&daily["result"][0]["data"]),
            counts(&daily["result"][1]["data"])
        ]),
        json!([
            truth::total(&rows, "$pageview", r, truth::Interval::Day),
            truth::unique_persons(&rows, "$pageview", r, truth::Interval::Day),
        ]),
        "daily, across the change"
    );
    assert_eq!(
        counts(&weekly["result"][0]["data"]),
        truth::unique_persons(&rows, "$pageview", shifted(&weekly), truth::Interval::Week),
        "weekly"
    );
    // Hours: local hours map to UTC hours one to one, so the truth counts UTC hours of the real times.
    let r = range_of(&hourly);
    let mut want = vec![0u64; 25];
    for o in owned
        .iter()
        .filter(|o| o.event == "$pageview" && r.contains(o.ts_us))
    {
        want[((o.ts_us - r.from_us) / hour) as usize] += 1;
    }
    assert_eq!(counts(&hourly["result"][0]["data"]), want, "hourly");
    assert!(want.iter().sum::<u64>() > 0);
}
