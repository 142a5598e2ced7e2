//! `flywheel bench ingest`: a load generator that posts PostHog batches over loopback HTTP and reports
//! acknowledged-durable events/s, request latency percentiles and the server's memory.
//!
//! Without `--url` it starts its own `flywheel serve` child on a temporary data directory, so one command measures
//! everything: idle RSS, RSS under load, throughput, latency, and start-up time on the populated data directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Post PostHog `/batch` requests with concurrency and report events/s, p50/p99 latency and server RSS.
    Ingest(IngestArgs),
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Server to load; when absent, a `flywheel serve` child is started on a temporary data directory.
    #[arg(long)]
    url: Option<String>,
    /// Project API key for `--url` (the spawned server's key is used otherwise).
    #[arg(long)]
    token: Option<String>,
    /// Total events to send.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Distinct users the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Durability mode of the spawned server (group or os).
    #[arg(long, default_value = "group")]
    fsync: String,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Number the requests from this one on: event uuids derive from the request number, so generators loading
    /// several nodes of one deployment at once need disjoint ranges (e.g. 0 and 1000000000).
    #[arg(long, default_value_t = 0)]
    first_request: u64,
    /// Run twice on fresh servers, without and then with an active referral program (1 % of the events carry a
    /// referral code, `subscription_started` qualifies) and a PQL model (scored every 2 s during the load):
    /// compares throughput, times how long the referral consumer takes to catch up after the load and how long
    /// a scoring pass over all the events takes.
    #[arg(long)]
    compare_referrals: bool,
    /// With `--compare-referrals`: alternating runs of each configuration; the medians are compared.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ingest(args) => ingest(args),
    }
}

struct Spawned {
    child: Child,
    url: String,
    token: String,
    /// The personal API key and project of `flywheel init`.
    personal_key: String,
    project_id: i64,
    dir: tempfile::TempDir,
}

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the flywheel executable")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_server(dir: &Path, port: u16, fsync: &str) -> anyhow::Result<(Child, Duration)> {
    let start = Instant::now();
    let child = Command::new(exe()?)
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--fsync",
            fsync,
            "--log-level",
            "warn",
        ])
        // The PQL scorer passes often, so that with models it works during the load.
        .env("FLYWHEEL_PQL_CHECK_SECS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start flywheel serve")?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = start + Duration::from_secs(30);
    loop {
        if ready(&addr) {
            return Ok((child, start.elapsed()));
        }
        if Instant::now() > deadline {
            bail!("the server did not become ready within 30 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A blocking `GET /readyz` that answers whether the server said 200.
fn ready(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn stop(mut child: Child) -> anyhow::Result<()> {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    bail!("server did not stop within 60 s of SIGTERM")
}

fn spawn(fsync: &str) -> anyhow::Result<(Spawned, Duration)> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(exe()?)
        .args(["init", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .context("flywheel init")?;
    if !out.status.success() {
        bail!(
            "flywheel init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let init: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let token = init["project_api_key"]
        .as_str()
        .context("init printed no project_api_key")?
        .to_owned();
    let personal_key = init["personal_api_key"]
        .as_str()
        .context("init printed no personal_api_key")?
        .to_owned();
    let project_id = init["project_id"]
        .as_i64()
        .context("init printed no project_id")?;
    let port = free_port()?;
    let (child, startup) = start_server(dir.path(), port, fsync)?;
    Ok((
        Spawned {
            child,
            url: format!("http://127.0.0.1:{port}"),
            token,
            personal_key,
            project_id,
            dir,
        },
        startup,
    ))
}

/// A request body template: `batch` events whose uuids are patched per request.
struct Template {
    body: Vec<u8>,
    uuid_offsets: Vec<usize>,
}

/// A blocking HTTP/1.1 request with a JSON body (bench set-up): the status and the body as JSON.
fn http_json(
    addr: &str,
    method: &str,
    path: &str,
    key: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let payload = body.to_string();
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// Sets up a referral program with 50 referrers' codes; returns the codes.
fn referral_program(s: &Spawned) -> anyhow::Result<Vec<String>> {
    let addr = s.url.trim_start_matches("http://");
    let base = format!("/api/v1/projects/{}/referral-programs", s.project_id);
    let (status, v) = http_json(
        addr,
        "POST",
        &base,
        &s.personal_key,
        &serde_json::json!({"key": "bench", "name": "Bench", "landing_url": "https://app.example.com/signup",
            "qualify": {"event": "subscription_started", "properties": [{"key": "plan", "value": "pro"}]},
            "rewards": {"referrer": {"amount": 10, "unit": "USD"}, "referee": {"amount": 1, "unit": "months"}}}),
    )?;
    anyhow::ensure!(status == 201, "creating the referral program: {status} {v}");
    (0..50)
        .map(|i| {
            let (status, v) = http_json(
                addr,
                "POST",
                &format!("{base}/bench/codes"),
                &s.personal_key,
                &serde_json::json!({"referrer": format!("referrer-{i}")}),
            )?;
            anyhow::ensure!(status == 201, "creating a referral code: {status} {v}");
            Ok(v["code"].as_str().context("no code")?.to_owned())
        })
        .collect()
}

/// A PQL model over the bench's events (scored during the load by the server's scorer).
fn pql_model(s: &Spawned) -> anyhow::Result<()> {
    let (status, v) = http_json(
        s.url.trim_start_matches("http://"),
        "POST",
        &format!("/api/v1/projects/{}/pql-models", s.project_id),
        &s.personal_key,
        &serde_json::json!({"key": "bench", "name": "Bench", "threshold": 25, "half_life_days": 7,
        "rules": [
            {"id": "active", "event": "$pageview", "min_count": 5, "window_days": 14, "points": 20},
            {"id": "clicks", "event": "button_clicked", "per_event": true, "points": 2, "max_points": 30},
            {"id": "signed_up", "event": "signed_up", "points": 10},
            {"id": "paid", "event": "subscription_started", "properties": [{"key": "plan", "value": "pro"}],
             "points": 25},
        ]}),
    )?;
    anyhow::ensure!(status == 201, "creating the PQL model: {status} {v}");
    Ok(())
}

/// Times one scoring pass of the bench's PQL model: (time, entities scored, qualified).
fn pql_pass(s: &Spawned) -> anyhow::Result<(Duration, u64, u64)> {
    let start = Instant::now();
    let (status, v) = http_json(
        s.url.trim_start_matches("http://"),
        "POST",
        &format!("/api/v1/projects/{}/pql-models/bench/score", s.project_id),
        &s.personal_key,
        &serde_json::Value::Null,
    )?;
    anyhow::ensure!(status == 200, "scoring: {status} {v}");
    Ok((
        start.elapsed(),
        v["scored"].as_u64().unwrap_or(0),
        v["qualified"].as_u64().unwrap_or(0),
    ))
}

/// Waits until the server's identity and referral consumers have read everything (from `/metrics`); the wait.
fn consumers_caught_up(url: &str, limit: Duration) -> anyhow::Result<Duration> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let start = Instant::now();
    loop {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let lag = |name: &str| -> Option<f64> {
            out.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse().ok())
        };
        if lag("flywheel_identity_lag_bytes") == Some(0.0)
            && lag("flywheel_referrals_lag_bytes") == Some(0.0)
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("the consumers did not catch up within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn template(token: &str, batch: usize, users: u64, seed: u64) -> Template {
    template_with(token, batch, users, seed, &[])
}

/// [`template`]; with `codes`, one event in 100 is a landing page view carrying one of them.
fn template_with(token: &str, batch: usize, users: u64, seed: u64, codes: &[String]) -> Template {
    let mut body = format!("{{\"api_key\":\"{token}\",\"batch\":[");
    let mut uuid_offsets = Vec::with_capacity(batch);
    let events = [
        "$pageview",
        "signed_up",
        "button_clicked",
        "subscription_started",
        "$autocapture",
    ];
    for i in 0..batch {
        if i > 0 {
            body.push(',');
        }
        let n = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(i as u64 * 1442695040888963407);
        let user = n % users.max(1);
        let landing = (!codes.is_empty() && i % 100 == 7)
            .then(|| codes[(n % codes.len() as u64) as usize].as_str());
        let event = match landing {
            Some(_) => "$pageview",
            None => events[(n >> 33) as usize % events.len()],
        };
        let url = match landing {
            Some(code) => format!("https://app.example.com/signup?ref={code}"),
            None => format!("https://app.example.com/projects/{}/settings", n % 997),
        };
        body.push_str("{\"uuid\":\"");
        uuid_offsets.push(body.len());
        body.push_str("00000000-0000-4000-8000-000000000000");
        body.push_str(&format!(
            "\",\"event\":\"{event}\",\"distinct_id\":\"user-{user}\",\"timestamp\":\"2026-11-25T10:00:00.000Z\",\
             \"properties\":{{\"$lib\":\"flywheel-bench\",\"$lib_version\":\"1.0\",\"$current_url\":\"{url}\",\
             \"$browser\":\"Chrome\",\"$os\":\"Linux\",\"plan\":\"pro\",\"price\":{}.5,\"$session_id\":\"s-{}\"}}}}",
            n % 100,
            user
        ));
    }
    body.push_str("],\"sent_at\":\"2026-11-25T10:00:01.000Z\"}");
    Template {
        body: body.into_bytes(),
        uuid_offsets,
    }
}

fn patch(t: &Template, counter: u64) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut body = t.body.clone();
    for (i, &off) in t.uuid_offsets.iter().enumerate() {
        let v = (counter << 16) | i as u64;
        // Last 12 hex digits and 8 before them carry the request counter and the index.
        let tail = &mut body[off + 24..off + 36];
        for (j, b) in tail.iter_mut().enumerate() {
            *b = HEX[((v >> (44 - 4 * j)) & 0xf) as usize];
        }
        let head = &mut body[off..off + 8];
        for (j, b) in head.iter_mut().enumerate() {
            *b = HEX[((counter >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    body
}

/// `--compare-referrals`: the same load on two fresh servers, without and with an active referral program.
fn compare_referrals(args: &IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.url.is_none(),
        "--compare-referrals starts its own servers (no --url)"
    );
    let requests = args.events.div_ceil(args.batch as u64);
    let mut runs = Vec::new();
    let mut pql_stats = (Duration::ZERO, 0, 0);
    // Alternating runs: the host's noise hits both configurations alike.
    let plan: Vec<bool> = (0..args.rounds.max(1))
        .flat_map(|_| [false, true])
        .collect();
    for with_program in plan {
        let (spawned, _) = spawn(&args.fsync)?;
        let codes = if with_program {
            pql_model(&spawned)?;
            referral_program(&spawned)?
        } else {
            Vec::new()
        };
        let templates: Vec<Template> = (0..16)
            .map(|s| template_with(&spawned.token, args.batch, args.users, s + 1, &codes))
            .collect();
        let (elapsed, _, failures, _) = run_load(
            &spawned.url,
            templates,
            0..requests,
            args.concurrency,
            Some(spawned.child.id()),
        )?;
        anyhow::ensure!(failures == 0, "{failures} requests failed");
        let caught_up = consumers_caught_up(&spawned.url, Duration::from_secs(600))?;
        let pql = if with_program {
            Some(pql_pass(&spawned)?)
        } else {
            None
        };
        let referrals = if with_program {
            let (status, v) = http_json(
                spawned.url.trim_start_matches("http://"),
                "GET",
                &format!(
                    "/api/v1/projects/{}/referral-programs/bench/referrals?limit=1000",
                    spawned.project_id
                ),
                &spawned.personal_key,
                &serde_json::Value::Null,
            )?;
            anyhow::ensure!(status == 200, "listing referrals: {status} {v}");
            v["results"].as_array().map_or(0, Vec::len)
        } else {
            0
        };
        stop(spawned.child)?;
        let eps = (requests * args.batch as u64) as f64 / elapsed.as_secs_f64();
        runs.push((with_program, eps, caught_up, referrals));
        if let Some(p) = pql {
            pql_stats = p;
        }
    }
    // The run of median throughput of each configuration.
    let median = |with: bool| {
        let mut of: Vec<_> = runs.iter().filter(|r| r.0 == with).cloned().collect();
        of.sort_by(|a, b| a.1.total_cmp(&b.1));
        of[of.len() / 2]
    };
    let rows = [median(false), median(true)];
    let ratio = rows[1].1 / rows[0].1;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "events": requests * args.batch as u64,
                "without_program": {"events_per_second": rows[0].1.round(), "catch_up_ms": rows[0].2.as_millis() as u64},
                "with_program": {"events_per_second": rows[1].1.round(), "catch_up_ms": rows[1].2.as_millis() as u64,
                                 "referrals": rows[1].3},
                "pql_pass": {"ms": pql_stats.0.as_millis() as u64, "scored": pql_stats.1, "qualified": pql_stats.2},
                "ratio": ratio,
            })
        );
    } else {
        println!(
            "flywheel bench ingest --compare-referrals: {} events per run, {} per request, {} in flight, median of {} runs each",
            requests * args.batch as u64,
            args.batch,
            args.concurrency,
            args.rounds.max(1)
        );
        for (with, eps, caught, referrals) in &rows {
            println!(
                "  {:<22} {:>10.0} events/s   consumers caught up {:>6} ms after the load{}",
                if *with {
                    "with referrals + PQL"
                } else {
                    "without"
                },
                eps,
                caught.as_millis(),
                if *with {
                    format!("   {referrals} referrals (at most 1,000 listed)")
                } else {
                    String::new()
                }
            );
        }
        println!(
            "  PQL scoring pass       {:>10} ms for {} entities ({} qualified)",
            pql_stats.0.as_millis(),
            pql_stats.1,
            pql_stats.2
        );
        println!("  ratio              {ratio:.3} (target ≥ 0.90)");
    }
    Ok(())
}

fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch >= 1 && args.concurrency >= 1,
        "--batch and --concurrency must be at least 1"
    );
    if args.compare_referrals {
        return compare_referrals(&args);
    }
    let (spawned, first_start) = match &args.url {
        Some(_) => (None, None),
        None => {
            let (s, startup) = spawn(&args.fsync)?;
            (Some(s), Some(startup))
        }
    };
    let (url, token) = match (&spawned, &args.url, &args.token) {
        (Some(s), _, _) => (s.url.clone(), s.token.clone()),
        (None, Some(url), Some(token)) => (url.clone(), token.clone()),
        (None, Some(_), None) => bail!("--url needs --token (the project API key)"),
        (None, None, _) => unreachable!(),
    };
    let pid = spawned.as_ref().map(|s| s.child.id());
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = pid.and_then(|p| rss_kib(p, "VmRSS:"));

    let templates: Vec<Template> = (0..16)
        .map(|s| template(&token, args.batch, args.users, s + 1))
        .collect();
    let requests = args.events.div_ceil(args.batch as u64);
    let (elapsed, mut latencies, failures, peak_during) = run_load(
        &url,
        templates,
        args.first_request..args.first_request + requests,
        args.concurrency,
        pid,
    )?;
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let sent = requests * args.batch as u64;
    let eps = sent as f64 / elapsed.as_secs_f64();

    // Restart on the populated data directory to time start-up to ready.
    let mut restart = None;
    if let Some(s) = spawned {
        let port: u16 = s
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("port")?;
        stop(s.child)?;
        let (child, startup) = start_server(s.dir.path(), port, &args.fsync)?;
        stop(child)?;
        restart = Some(startup);
        drop(s.dir);
    }
    let result = serde_json::json!({
        "events": sent,
        "requests": requests,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "failed_requests": failures,
        "seconds": elapsed.as_secs_f64(),
        "events_per_second": eps.round(),
        "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
        "server_rss_mib": {
            "idle": idle_rss.map(|k| k as f64 / 1024.0),
            "peak_under_load": peak_during.map(|k| k as f64 / 1024.0),
        },
        "startup_ms": {
            "fresh": first_start.map(|d| d.as_secs_f64() * 1000.0),
            "existing_data_dir": restart.map(|d| d.as_secs_f64() * 1000.0),
        },
        "fsync": args.fsync,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "flywheel bench ingest: {} events in {} requests of {} ({} in flight), fsync={}",
            sent, requests, args.batch, args.concurrency, args.fsync
        );
        println!(
            "  throughput        {:>12.0} events/s acknowledged durable ({:.2} s)",
            eps,
            elapsed.as_secs_f64()
        );
        println!(
            "  latency           p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
        println!("  failed requests   {failures}");
        if let Some(idle) = idle_rss {
            println!(
                "  server RSS        idle {:.1} MiB   peak under load {:.1} MiB",
                idle as f64 / 1024.0,
                peak_during.unwrap_or(0) as f64 / 1024.0
            );
        }
        if let (Some(fresh), Some(again)) = (first_start, restart) {
            println!(
                "  start-up to ready fresh dir {:.0} ms   populated dir {:.0} ms",
                fresh.as_secs_f64() * 1000.0,
                again.as_secs_f64() * 1000.0
            );
        }
    }
    if failures > 0 {
        bail!("{failures} requests failed");
    }
    Ok(())
}

/// Posts `requests` batches (cycling through `templates`) with `concurrency` in flight: the elapsed time, each
/// request's latency in µs, the failed requests and the server's peak RSS (KiB) when `pid` is known.
fn run_load(
    url: &str,
    templates: Vec<Template>,
    requests: std::ops::Range<u64>,
    concurrency: usize,
    pid: Option<u32>,
) -> anyhow::Result<(Duration, Vec<u32>, u64, Option<u64>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(concurrency)
            .build_http();
        let next = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let templates = Arc::new(templates);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let client = client.clone();
            let next = next.clone();
            let failures = failures.clone();
            let templates = templates.clone();
            let uri: hyper::Uri = format!("{url}/batch").parse().expect("valid url");
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let n = requests.start + next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests.end {
                        break;
                    }
                    let body = patch(&templates[(n % 16) as usize], n + 1);
                    let req = hyper::Request::post(uri.clone())
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .expect("request");
                    let t = Instant::now();
                    match client.request(req).await {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            let _ = resp.into_body().collect().await;
                            if !ok {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    lat.push(t.elapsed().as_micros() as u32);
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        let elapsed = start.elapsed();
        let peak = pid.and_then(|p| rss_kib(p, "VmHWM:"));
        (elapsed, all, failures.load(Ordering::Relaxed), peak)
    }))
}
