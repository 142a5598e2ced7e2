#!/usr/bin/env python3
"""Insights benchmark: Flywheel's insights API against ClickHouse (chdb) and DuckDB on the same events.

scripts/bench-insights drives one run through the subcommands below; each phase writes a JSON file into a parts
directory and `report` merges them into the results file, prints the table and checks the targets.

  wait      first start of the server: seconds until /readyz answers and until an insight is complete
  stop      SIGTERM to the server; waits for it to exit, following its peak RSS (VmHWM) until then
  disk      on-disk bytes per event of the columnar segments and of the WAL
  flywheel  restarted server: funnel, retention and DAU-by-plan (cold + warm runs, peak RSS per query), then the
            ingest-to-queryable latency of probe events posted to /batch
  engine    load the exported Parquet into ClickHouse (chdb, MergeTree) or DuckDB and time the hand-written
            equivalents of the three queries
  report    compare the results, print the table and the targets, write the results file
  synth     write a synthetic Parquet file with the export's schema (person_id, timestamp, event, plan)
  selftest  synthetic data through both engines and a brute-force Python reference (checks the SQL)

The three questions (ranges from --end, the exclusive end of the generated history, a UTC midnight):

  funnel     signed_up → project_created → teammate_invited → trial_started, ordered, 14-day window (inclusive),
             entries in [end - 90 d, end); a person counts once, at the furthest step of their best attempt.
  retention  8 weekly first-time cohorts of $pageview ending with the week holding end - 1 d (weeks start Monday
             UTC): a person's cohort is the week of their first $pageview ever; cell [p][k] counts the members of
             cohort p with a $pageview exactly k weeks later (k = 0: the cohort size).
  dau        distinct persons with a $pageview per UTC day of [end - 90 d, end), by the person's current `plan`.
"""

import argparse
import bisect
import datetime as dt
import http.client
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid

DAY_US = 86_400_000_000
WEEK_US = 7 * DAY_US
WINDOW_DAYS = 14
WINDOW_US = WINDOW_DAYS * DAY_US
FUNNEL_STEPS = ["signed_up", "project_created", "teammate_invited", "trial_started"]
PLAN_NULL = "<null>"  # the key of persons without the property in normalised DAU results
# With --events-url the node answers from ClickHouse, which has no person properties yet: DAU is asked without the
# breakdown by `plan`, and the engines' DAU by plan is summed over plans per day (a person has one current plan, so
# the sum is the distinct persons of the day) under this key.
PLAN_ALL = "<all>"
TARGETS = {"query_s": 0.5, "speedup": 2.0, "ingest_s": 5.0, "bytes_per_event": 40.0, "rss_mb": 1024.0}
QUERIES = ["funnel", "retention", "dau"]
# Variants run once, to explain differences (not timed against Flywheel).
DIAGNOSTICS = ("funnel_strict_increase", "funnel_strict")


# ---------------------------------------------------------------------------------------------------------------
# Small helpers


def die(msg, code=1):
    print(f"compare.py: {msg}", file=sys.stderr)
    sys.exit(code)


def log(msg):
    print(f"   {msg}", file=sys.stderr, flush=True)


def write_json(path, value):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        return {"error": f"{path} is not valid JSON: {e}"}


def us_of_date(d):
    """Microseconds since the epoch of a date's UTC midnight."""
    return (d - dt.date(1970, 1, 1)).days * DAY_US


def date_of_us(us):
    return dt.date(1970, 1, 1) + dt.timedelta(days=us // DAY_US)


def iso_day(us):
    return date_of_us(us).isoformat()


def monday_us(us):
    days = us // DAY_US
    return (days - (days + 3) % 7) * DAY_US  # 1970-01-01 was a Thursday


def ch_time(us):
    return f"toDateTime64('{dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc):%Y-%m-%d %H:%M:%S}', 6, 'UTC')"


def duck_time(us):
    return f"TIMESTAMP '{dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc):%Y-%m-%d %H:%M:%S}'"


def median(xs):
    return statistics.median(xs) if xs else None


class Ranges:
    """The instants every engine uses, from the exclusive end of the history (a date: its UTC midnight)."""

    def __init__(self, end, days=90):
        self.end_date = dt.date.fromisoformat(end)
        end_us = us_of_date(self.end_date)
        self.from_us = end_us - days * DAY_US
        self.to_us = end_us
        # Retention: the 8 weeks ending with the week that holds the last day (date_to = end - 1 d).
        self.ret_to_us = monday_us(end_us - DAY_US) + WEEK_US
        self.ret_from_us = self.ret_to_us - 8 * WEEK_US
        self.date_from = iso_day(self.from_us)  # API: whole days, date_to inclusive
        self.date_to = iso_day(end_us - DAY_US)

    def days(self):
        return [iso_day(t) for t in range(self.from_us, self.to_us, DAY_US)]

    def cohorts(self):
        return [iso_day(self.ret_from_us + p * WEEK_US) for p in range(8)]

    def as_json(self):
        rfc = lambda us: dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"funnel_and_dau": [rfc(self.from_us), rfc(self.to_us)], "retention": [rfc(self.ret_from_us), rfc(self.ret_to_us)],
                "funnel_window_days": WINDOW_DAYS}


# ---------------------------------------------------------------------------------------------------------------
# Memory of a process


def proc_status(pid):
    """VmRSS / VmHWM in KiB (None for a process that is gone or a zombie)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
                elif line.startswith("State:"):
                    out["State"] = line.split()[1]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return out


def reset_hwm(pid):
    """Resets a process's VmHWM to its current RSS (Linux clear_refs 5); False when not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssProbe:
    """Peak RSS of a process during an operation: exact through a VmHWM reset when allowed, else by sampling
    VmRSS every 2 ms in a thread."""

    def __init__(self, pid):
        self.pid = pid

    def __enter__(self):
        st = proc_status(self.pid) or {}
        self.before_kb = st.get("VmRSS", 0)
        self.exact = reset_hwm(self.pid)
        self.sampled = self.before_kb
        self.stop = threading.Event()
        self.thread = None
        if not self.exact:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.002):
            st = proc_status(self.pid)
            if st and "VmRSS" in st:
                self.sampled = max(self.sampled, st["VmRSS"])

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread:
            self.thread.join()
        st = proc_status(self.pid) or {}
        if self.exact:
            self.peak_kb = st.get("VmHWM", self.before_kb)
        else:
            self.peak_kb = max(self.sampled, st.get("VmRSS", 0))
        return False

    def as_json(self):
        return {"rss_before_mb": self.before_kb / 1024, "peak_rss_mb": self.peak_kb / 1024,
                "rss_increase_mb": max(0, self.peak_kb - self.before_kb) / 1024,
                "rss_method": "VmHWM reset (exact)" if self.exact else "VmRSS sampled every 2 ms"}


# ---------------------------------------------------------------------------------------------------------------
# HTTP


class Api:
    def __init__(self, url, timeout=600):
        host_port = url.split("://", 1)[-1].rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.timeout = timeout

    def request(self, method, path, body=None, headers=None):
        """(status, parsed JSON or text, seconds)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        started = time.perf_counter()
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            elapsed = time.perf_counter() - started
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            parsed = raw.decode(errors="replace")
        return resp.status, parsed, elapsed

    def ready(self):
        try:
            status, _, _ = self.request("GET", "/readyz")
            return status == 200
        except OSError:
            return False


def alive(pid):
    st = proc_status(pid)
    return st is not None and st.get("State") != "Z"


def fail_if_dead(pid, log_file):
    if pid and not alive(pid):
        tail = ""
        if log_file and os.path.exists(log_file):
            with open(log_file, errors="replace") as f:
                tail = "".join(f.readlines()[-30:])
        die(f"the server (pid {pid}) exited; last lines of its log:\n{tail}")


def wait_ready(api, pid, log_file, timeout):
    deadline = time.monotonic() + timeout
    while not api.ready():
        fail_if_dead(pid, log_file)
        if time.monotonic() > deadline:
            die(f"the server did not answer /readyz within {timeout} s")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------------------
# Flywheel queries


def flywheel_queries(r, events_url=None):
    if events_url:  # served from ClickHouse: no person-property breakdown there yet (see PLAN_ALL)
        dau = ("trends", {"series": [{"event": "$pageview", "math": "dau"}], "date_from": r.date_from, "date_to": r.date_to})
        return {**flywheel_queries(r), "dau": dau}
    return {
        "funnel": ("funnel", {"steps": [{"event": e} for e in FUNNEL_STEPS], "date_from": r.date_from, "date_to": r.date_to}),
        "retention": ("retention", {"start_event": {"event": "$pageview"}, "return_event": {"event": "$pageview"},
                                    "period": "week", "periods": 8, "date_to": r.date_to}),
        "dau": ("trends", {"series": [{"event": "$pageview", "math": "dau"}], "breakdown": {"type": "person", "property": "plan"},
                           "date_from": r.date_from, "date_to": r.date_to}),
    }


def norm_plan(v):
    if v is None or v == "$$_posthog_breakdown_null_$$" or v == "":
        return PLAN_NULL
    return str(v)


def normalize_flywheel(name, resp):
    res = resp["result"]
    if name == "funnel":
        return [int(s["count"]) for s in res["steps"]]
    if name == "retention":
        return {"cohorts": [row["label"][:10] for row in res], "cells": [[int(v) for v in row["values"]] for row in res]}
    out = {}
    for item in res:
        labels = item.get("labels") or []
        plan = norm_plan(item.get("breakdown_value")) if "breakdown_value" in item else PLAN_ALL
        for label, v in zip(labels, item["data"]):
            if v:
                key = f"{label[:10]}|{plan}"
                out[key] = out.get(key, 0) + int(v)
    return out


def dau_notes(resp):
    notes = []
    values = [item.get("breakdown_value") for item in resp.get("result", [])]
    if any(isinstance(v, str) and "other" in v.lower() and v.startswith("$$") for v in values):
        notes.append("the breakdown has an 'other' bucket (breakdown limit)")
    if len(set(map(str, values))) != len(values):
        notes.append("several series share a breakdown value (summed)")
    if any(v == "" or v == "$$_posthog_breakdown_null_$$" for v in values):
        notes.append("persons without plan are reported as %r, not null" % [v for v in values if v in ("", "$$_posthog_breakdown_null_$$")][0])
    return notes


def run_flywheel(args):
    r = Ranges(args.end, args.days)
    gen = read_json(args.gen) or die(f"no generate output at {args.gen}")
    project, key = gen["project_id"], gen.get("personal_api_key")
    public = gen.get("project_api_key")
    api = Api(args.url)
    out = {"url": args.url, "pid": args.pid, "ranges": r.as_json(), "queries": {}, "ingest": None}
    t0 = time.monotonic()
    wait_ready(api, args.pid, args.log, args.timeout)
    out["restart_ready_s"] = time.time() - args.started_at
    st = proc_status(args.pid) or {}
    out["rss_at_ready_mb"] = st.get("VmRSS", 0) / 1024
    out["hwm_at_ready_mb"] = st.get("VmHWM", 0) / 1024
    # no-cache: every timed run computes its answer (the server caches complete answers by data version).
    auth = {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}

    for name, (kind, body) in flywheel_queries(r, args.events_url).items():
        q = {"kind": kind, "body": body, "runs": []}
        out["queries"][name] = q
        path = f"/api/v1/projects/{project}/insights/{kind}"
        log(f"flywheel {name}: POST {path}")
        try:
            incomplete = 0
            deadline = time.monotonic() + args.timeout
            while True:  # the cold run: the first complete answer
                fail_if_dead(args.pid, args.log)
                with RssProbe(args.pid) as probe:
                    status, resp, wall = api.request("POST", path, body, auth)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {json.dumps(resp)[:800] if not isinstance(resp, str) else resp[:800]}")
                if resp.get("complete") is True:
                    break
                incomplete += 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"still complete=false after {args.timeout} s")
                time.sleep(0.1)
            q["incomplete_before_cold"] = incomplete
            q["cold"] = {"wall_s": wall, "server_ms": resp.get("query_ms"), **probe.as_json()}
            q["date_from"], q["date_to"] = resp.get("date_from"), resp.get("date_to")
            first = normalize_flywheel(name, resp)
            q["result"] = first
            if name == "dau":
                q["notes"] = dau_notes(resp)
            for i in range(args.runs):
                with RssProbe(args.pid) as probe:
                    status, resp, wall = api.request("POST", path, body, auth)
                if status != 200:
                    raise RuntimeError(f"warm run {i + 1}: HTTP {status}: {str(resp)[:800]}")
                q["runs"].append({"wall_s": wall, "server_ms": resp.get("query_ms"), "complete": resp.get("complete"), **probe.as_json()})
                if normalize_flywheel(name, resp) != first:
                    q.setdefault("notes", []).append(f"warm run {i + 1} answered differently from the cold run")
            walls = [x["wall_s"] for x in q["runs"]]
            q["median_wall_s"] = median(walls)
            q["median_server_ms"] = median([x["server_ms"] for x in q["runs"] if x["server_ms"] is not None])
            q["peak_rss_mb"] = max([q["cold"]["peak_rss_mb"]] + [x["peak_rss_mb"] for x in q["runs"]])
            q["max_rss_increase_mb"] = max([q["cold"]["rss_increase_mb"]] + [x["rss_increase_mb"] for x in q["runs"]])
            log(f"   cold {q['cold']['wall_s']:.3f} s, warm median {q['median_wall_s']:.3f} s "
                f"(server {fmt(q['median_server_ms'], '.1f')} ms), peak RSS {q['peak_rss_mb']:.0f} MB")
        except Exception as e:  # one failing query must not hide the others
            q["error"] = f"{type(e).__name__}: {e}"
            log(f"   FAILED: {q['error']}")
        write_json(args.out, out)

    out["ingest"] = ingest_latency(api, args, project, public, auth)
    st = proc_status(args.pid) or {}
    out["rss_after_mb"] = st.get("VmRSS", 0) / 1024
    out["elapsed_s"] = time.monotonic() - t0
    write_json(args.out, out)


def ingest_latency(api, args, project, public, auth):
    res = {"probes": []}
    if not public:
        res["error"] = "the generate output has no project_api_key (the data directory was not created by this run)"
        return res
    log(f"ingest-to-queryable: {args.probes} probe events")
    for i in range(args.probes):
        name = f"bench_probe_{uuid.uuid4().hex[:12]}"
        now = dt.datetime.now(dt.timezone.utc)
        batch = {"api_key": public, "batch": [{"event": name, "distinct_id": f"bench-probe-{uuid.uuid4().hex[:8]}",
                                               "timestamp": now.isoformat(), "properties": {"bench": True}}]}
        query = {"series": [{"event": name}], "date_from": "-1d"}
        probe = {"event": name}
        try:
            started = time.perf_counter()
            status, resp, post_s = api.request("POST", "/batch", batch)
            if status != 200:
                raise RuntimeError(f"/batch answered HTTP {status}: {resp}")
            probe["accepted_s"] = post_s
            polls = 0
            while True:
                polls += 1
                status, resp, _ = api.request("POST", f"/api/v1/projects/{project}/insights/trends", query, auth)
                if status != 200:
                    raise RuntimeError(f"trends answered HTTP {status}: {str(resp)[:500]}")
                count = sum(x.get("count", 0) for x in resp.get("result", []))
                if count >= 1:
                    probe["latency_s"] = time.perf_counter() - started
                    probe["polls"] = polls
                    probe["count"] = count
                    break
                if time.perf_counter() - started > 60:
                    raise RuntimeError("the event did not show within 60 s")
                time.sleep(0.02)
            log(f"   {name}: {probe['latency_s'] * 1e3:.1f} ms ({polls} queries)")
        except Exception as e:
            probe["error"] = f"{type(e).__name__}: {e}"
            log(f"   FAILED: {probe['error']}")
        res["probes"].append(probe)
        time.sleep(0.2)
    lat = [p["latency_s"] for p in res["probes"] if "latency_s" in p]
    res["median_s"] = median(lat)
    res["max_s"] = max(lat) if lat else None
    if len(lat) < len(res["probes"]):
        res["error"] = f"{len(res['probes']) - len(lat)} of {len(res['probes'])} probes failed"
    return res


def run_wait(args):
    """First start: /readyz, then an insight answered with complete=true (the tables hold every event)."""
    r = Ranges(args.end, args.days)
    gen = read_json(args.gen) or die(f"no generate output at {args.gen}")
    api = Api(args.url)
    wait_ready(api, args.pid, args.log, args.timeout)
    out = {"ready_s": time.time() - args.started_at}
    log(f"listening after {out['ready_s']:.2f} s; waiting for complete insights")
    body = {"series": [{"event": "$pageview"}], "date_from": r.date_from, "date_to": r.date_to}
    path = f"/api/v1/projects/{gen['project_id']}/insights/trends"
    auth = {"Authorization": f"Bearer {gen.get('personal_api_key')}"}
    deadline = time.monotonic() + args.timeout
    attempts = 0
    hwm = 0
    while True:
        fail_if_dead(args.pid, args.log)
        attempts += 1
        try:
            status, resp, _ = api.request("POST", path, body, auth)
        except OSError as e:  # a connection dropped while the server is busy starting: ask again
            if time.monotonic() > deadline:
                out["error"] = f"{type(e).__name__}: {e}"
                break
            log(f"   {type(e).__name__}: {e}; retrying")
            time.sleep(0.5)
            continue
        hwm = max(hwm, (proc_status(args.pid) or {}).get("VmHWM", 0))
        if status != 200:
            out["error"] = f"POST {path} answered HTTP {status}: {str(resp)[:800]}" + (" (does this binary have the insights API?)" if status == 404 else "")
            break
        if resp.get("complete") is True:
            out["complete_s"] = time.time() - args.started_at
            out["pageviews"] = sum(x.get("count", 0) for x in resp.get("result", []))
            break
        if time.monotonic() > deadline:
            out["error"] = f"insights still incomplete after {args.timeout} s"
            break
        time.sleep(0.1)
    out["attempts"] = attempts
    out["hwm_mb"] = hwm / 1024
    write_json(args.out, out)
    if "error" in out:
        die(out["error"])
    log(f"complete after {out['complete_s']:.2f} s ({attempts} queries)")


def run_stop(args):
    """SIGTERM, then follow VmHWM until the process is gone (or a zombie waiting for its parent)."""
    st = proc_status(args.pid)
    if st is None:
        write_json(args.out, {"error": "the server was not running"})
        die(f"no process {args.pid}")
    hwm = st.get("VmHWM", 0)
    started = time.monotonic()
    os.kill(args.pid, signal.SIGTERM)
    while True:
        st = proc_status(args.pid)
        if st is None or st.get("State") == "Z":
            break
        hwm = max(hwm, st.get("VmHWM", 0))
        if time.monotonic() - started > args.timeout:
            write_json(args.out, {"error": f"did not exit within {args.timeout} s of SIGTERM", "hwm_mb": hwm / 1024})
            die(f"the server did not stop within {args.timeout} s")
        time.sleep(0.05)
    out = {"stop_s": time.monotonic() - started, "hwm_mb": hwm / 1024}
    write_json(args.out, out)
    log(f"stopped in {out['stop_s']:.2f} s (peak RSS {out['hwm_mb']:.0f} MB)")


def run_disk(args):
    gen = read_json(args.gen) or {}
    events = gen.get("events") or 0

    def total(root, suffix=None):
        n, files = 0, 0
        for dirpath, _, names in os.walk(root):
            for name in names:
                if suffix is None or name.endswith(suffix):
                    n += os.path.getsize(os.path.join(dirpath, name))
                    files += 1
        return n, files

    col, col_files = total(os.path.join(args.data_dir, "events", "columnar"), ".parquet")
    col_all, _ = total(os.path.join(args.data_dir, "events", "columnar"))
    wal, wal_files = total(os.path.join(args.data_dir, "events", "wal"))
    per = lambda b: b / events if events else None
    out = {"events": events, "columnar_parquet_bytes": col, "columnar_files": col_files, "columnar_all_bytes": col_all,
           "wal_bytes": wal, "wal_files": wal_files, "bytes_per_event": per(col), "wal_bytes_per_event": per(wal)}
    if col_files == 0:
        out["error"] = f"no *.parquet under {args.data_dir}/events/columnar (were the tables sealed at shutdown?)"
    write_json(args.out, out)
    if events:
        log(f"columnar {col:,} B in {col_files} files = {per(col):.1f} B/event; WAL {wal:,} B = {per(wal):.1f} B/event")


# ---------------------------------------------------------------------------------------------------------------
# Reference engines


def ch_queries(r):
    steps = ", ".join(f"'{e}'" for e in FUNNEL_STEPS)
    conds = ", ".join([f"event = '{FUNNEL_STEPS[0]}' AND timestamp < {ch_time(r.to_us)}"] + [f"event = '{e}'" for e in FUNNEL_STEPS[1:]])
    funnel = lambda mode: f"""
        SELECT level, count() FROM (
            SELECT person_id, windowFunnel({WINDOW_US}{mode})(toUInt64(toUnixTimestamp64Micro(timestamp)), {conds}) AS level
            FROM events
            WHERE event IN ({steps}) AND timestamp >= {ch_time(r.from_us)} AND timestamp <= {ch_time(r.to_us + WINDOW_US)}
            GROUP BY person_id)
        WHERE level > 0 GROUP BY level ORDER BY level"""
    ret_from = f"toDate('{iso_day(r.ret_from_us)}')"
    return {
        # windowFunnel: the window's unit is the timestamp's (µs here); ties of timestamps are ordered by step.
        "funnel": funnel(""),
        # Cohorts and return weeks in one GROUP BY person_id (arrays).
        "retention": f"""
            SELECT c, k, count() FROM (
                SELECT person_id, min(w) AS c, groupUniqArray(w) AS ws
                FROM (SELECT person_id, toMonday(timestamp) AS w FROM events
                      WHERE event = '$pageview' AND timestamp < {ch_time(r.ret_to_us)})
                GROUP BY person_id
                HAVING c >= {ret_from})
            ARRAY JOIN arrayMap(x -> intDiv(dateDiff('day', c, x), 7), ws) AS k
            GROUP BY c, k ORDER BY c, k""",
        "dau": f"""
            SELECT toDate(timestamp) AS d, plan, uniqExact(person_id) FROM events
            WHERE event = '$pageview' AND timestamp >= {ch_time(r.from_us)} AND timestamp < {ch_time(r.to_us)}
            GROUP BY d, plan ORDER BY d, plan""",
        # The same retention table with ClickHouse's retention() function (first week per person joined back).
        "retention_fn": f"""
            SELECT c, sumForEach(r) FROM (
                SELECT person_id, c, retention({", ".join(f"w = c + {7 * k}" for k in range(8))}) AS r
                FROM (SELECT person_id, toMonday(timestamp) AS w FROM events
                      WHERE event = '$pageview' AND timestamp < {ch_time(r.ret_to_us)}) AS e
                INNER JOIN (SELECT person_id, toMonday(min(timestamp)) AS c FROM events
                            WHERE event = '$pageview' AND timestamp < {ch_time(r.ret_to_us)}
                            GROUP BY person_id HAVING c >= {ret_from}) AS f USING person_id
                GROUP BY person_id, c)
            GROUP BY c ORDER BY c""",
        # Diagnostic: identical timestamps never advance a funnel (Flywheel lies between this and `funnel`).
        "funnel_strict_increase": funnel(", 'strict_increase'"),
    }


def duck_queries(r):
    steps = ", ".join(f"'{e}'" for e in FUNNEL_STEPS)
    case = " ".join(f"WHEN '{e}' THEN {i + 1}" for i, e in enumerate(FUNNEL_STEPS))
    W = f"INTERVAL {WINDOW_DAYS} DAY"

    # Per row of step i: e_{i-1} = the latest entry of a chain that reached step i-1 at or before this row (the
    # latest is the best: it leaves the most of the window). A step-i row continues it when within the window.
    # Ties: the frame holds the row's peers (same timestamp), so a step may share its predecessor's timestamp, as
    # in windowFunnel; with `strict`, peers are excluded (timestamps strictly increase along an attempt).
    def funnel(strict):
        win = ("WINDOW w AS (PARTITION BY person_id ORDER BY ts RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
               + (" EXCLUDE GROUP)" if strict else ")"))
        return f"""
            WITH f AS (
                SELECT person_id, ts, CASE event {case} END AS s FROM events
                WHERE event IN ({steps}) AND ts >= {duck_time(r.from_us)} AND ts <= {duck_time(r.to_us + WINDOW_US)}),
            l1 AS (SELECT *, max(CASE WHEN s = 1 AND ts < {duck_time(r.to_us)} THEN ts END) OVER w AS e1 FROM f {win}),
            l2 AS (SELECT *, max(CASE WHEN s = 2 AND ts <= e1 + {W} THEN e1 END) OVER w AS e2 FROM l1 {win}),
            l3 AS (SELECT *, max(CASE WHEN s = 3 AND ts <= e2 + {W} THEN e2 END) OVER w AS e3 FROM l2 {win})
            SELECT count(DISTINCT person_id) FILTER (WHERE s = 1 AND ts < {duck_time(r.to_us)}),
                   count(DISTINCT person_id) FILTER (WHERE s = 2 AND ts <= e1 + {W}),
                   count(DISTINCT person_id) FILTER (WHERE s = 3 AND ts <= e2 + {W}),
                   count(DISTINCT person_id) FILTER (WHERE s = 4 AND ts <= e3 + {W})
            FROM l3"""

    return {
        "funnel": funnel(False),
        "retention": f"""
            WITH pv AS (
                SELECT DISTINCT person_id, CAST(date_trunc('week', ts) AS DATE) AS w FROM events
                WHERE event = '$pageview' AND ts < {duck_time(r.ret_to_us)}),
            c AS (SELECT person_id, w, min(w) OVER (PARTITION BY person_id) AS c FROM pv)
            SELECT CAST(c AS VARCHAR), (w - c) // 7 AS k, count(*) FROM c
            WHERE c >= DATE '{iso_day(r.ret_from_us)}'
            GROUP BY ALL ORDER BY ALL""",
        "dau": f"""
            SELECT CAST(CAST(ts AS DATE) AS VARCHAR) AS d, plan, count(DISTINCT person_id) FROM events
            WHERE event = '$pageview' AND ts >= {duck_time(r.from_us)} AND ts < {duck_time(r.to_us)}
            GROUP BY ALL ORDER BY ALL""",
        # Diagnostic: identical timestamps never advance a funnel (Flywheel lies between this and `funnel`).
        "funnel_strict": funnel(True),
    }


def normalize_rows(name, rows, r):
    """Rows of an engine's answer → the normalised form shared with Flywheel's."""
    if name.startswith("funnel"):
        if rows and len(rows[0]) == 4:  # DuckDB: the four counts
            return [int(x) for x in rows[0]]
        by_level = {int(level): int(n) for level, n in rows}
        return [sum(n for level, n in by_level.items() if level >= i + 1) for i in range(len(FUNNEL_STEPS))]
    if name == "retention_fn":
        cohorts = r.cohorts()
        cells = [[0] * 8 for _ in range(8)]
        for c, arr in rows:
            p = cohorts.index(str(c)[:10])
            for k, v in enumerate(arr[: 8 - p]):
                cells[p][k] = int(v)
        return {"cohorts": cohorts, "cells": cells}
    if name == "retention":
        cohorts = r.cohorts()
        cells = [[0] * 8 for _ in range(8)]
        for c, k, n in rows:
            cells[cohorts.index(str(c)[:10])][int(k)] = int(n)
        return {"cohorts": cohorts, "cells": cells}
    out = {}
    for d, plan, n in rows:
        if int(n):
            out[f"{str(d)[:10]}|{norm_plan(plan)}"] = int(n)
    return out


class ClickHouse:
    name = "clickhouse"

    def __init__(self, work):
        from chdb import session

        self.dir = tempfile.mkdtemp(prefix="chdb.", dir=work)
        self.sess = session.Session(self.dir)
        self.version = "ClickHouse " + self.rows("SELECT version()")[0][0]
        try:
            import chdb
            self.version += f" (chdb {chdb.__version__})"
        except Exception:
            pass

    def rows(self, sql):
        res = self.sess.query(sql, "JSONCompact")
        text = str(res)
        if hasattr(res, "error_message") and res.error_message():
            raise RuntimeError(res.error_message())
        return json.loads(text)["data"] if text.strip() else []

    def load(self, parquet):
        self.rows("""CREATE TABLE events (person_id Int64, timestamp DateTime64(6, 'UTC'), event LowCardinality(String),
                     plan LowCardinality(Nullable(String))) ENGINE = MergeTree ORDER BY (person_id, timestamp)""")
        self.rows(f"INSERT INTO events SELECT person_id, timestamp, event, plan FROM file('{parquet}', Parquet)")
        self.rows("OPTIMIZE TABLE events FINAL")  # a settled table, as a server's background merges would leave it
        return int(self.rows("SELECT count() FROM events")[0][0])

    def storage(self):
        rows = self.rows("SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND table = 'events'")
        return int(rows[0][0]) if rows else None

    def queries(self, r):
        return ch_queries(r)

    def close(self):
        try:
            self.sess.close()
        except Exception:
            pass


class DuckDB:
    name = "duckdb"

    def __init__(self, work):
        import duckdb

        self.path = os.path.join(tempfile.mkdtemp(prefix="duckdb.", dir=work), "bench.duckdb")
        self.con = duckdb.connect(self.path)
        try:
            self.con.execute("SET TimeZone = 'UTC'")
        except Exception:
            pass
        self.version = f"DuckDB {duckdb.__version__}"

    def rows(self, sql):
        return self.con.execute(sql).fetchall()

    def load(self, parquet):
        # Timestamps as plain UTC TIMESTAMPs (no time-zone arithmetic at query time).
        self.rows(f"""CREATE TABLE events AS
                      SELECT person_id, make_timestamp(epoch_us("timestamp")) AS ts, event, plan
                      FROM read_parquet('{parquet}')""")
        self.rows("CHECKPOINT")
        return int(self.rows("SELECT count(*) FROM events")[0][0])

    def storage(self):
        return os.path.getsize(self.path)

    def queries(self, r):
        return duck_queries(r)

    def close(self):
        self.con.close()


ENGINES = {"clickhouse": ClickHouse, "duckdb": DuckDB}


def time_engine(engine, r, parquet, runs, out_path=None, out=None):
    out = out if out is not None else {}
    out.update({"engine": engine.name, "version": engine.version, "queries": {}})
    pid = os.getpid()
    with RssProbe(pid) as probe:
        started = time.perf_counter()
        out["rows"] = engine.load(parquet)
        out["load_s"] = time.perf_counter() - started
    out["load_peak_rss_mb"] = probe.peak_kb / 1024
    out["storage_bytes"] = engine.storage()
    log(f"{engine.name}: loaded {out['rows']:,} rows in {out['load_s']:.2f} s ({engine.version})")
    for name, sql in engine.queries(r).items():
        q = {"sql": " ".join(sql.split())}
        out["queries"][name] = q
        diagnostic = name in DIAGNOSTICS
        try:
            times, peaks, result = [], [], None
            for i in range(1 if diagnostic else runs + 1):
                with RssProbe(pid) as probe:
                    started = time.perf_counter()
                    rows = engine.rows(sql)
                    times.append(time.perf_counter() - started)
                peaks.append(probe.peak_kb / 1024)
                norm = normalize_rows(name, rows, r)
                if result is None:
                    result = norm
                elif norm != result:
                    q.setdefault("notes", []).append(f"run {i + 1} answered differently from the first")
            q.update({"first_s": times[0], "runs_s": times[1:], "median_s": median(times[1:]) if len(times) > 1 else times[0],
                      "peak_rss_mb": max(peaks), "result": result, "diagnostic": diagnostic})
            log(f"   {name}: first {times[0]:.3f} s, median {q['median_s']:.3f} s")
        except Exception as e:
            q["error"] = f"{type(e).__name__}: {e}"
            log(f"   {name} FAILED: {q['error'][:500]}")
        if out_path:
            write_json(out_path, out)
    return out


def run_engine(args):
    r = Ranges(args.end, args.days)
    out = {"engine": args.engine, "parquet": args.parquet, "ranges": r.as_json()}
    try:
        if not os.path.exists(args.parquet):
            raise FileNotFoundError(f"no Parquet file at {args.parquet}")
        engine = ENGINES[args.engine](args.work)
        try:
            time_engine(engine, r, os.path.abspath(args.parquet), args.runs, args.out, out)
        finally:
            engine.close()
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
        log(f"{args.engine} FAILED: {out['error']}")
    import resource

    out["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(args.out, out)
    if "error" in out:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data and the brute-force reference


def synth_rows(events, persons, end, days, seed):
    """Rows (person_id, ts_us, event, plan) in time order: page views, and funnel attempts with ties, gaps beyond the
    window, repeated entries, steps out of order and persons first seen before the range."""
    rng = random.Random(seed)
    end_us = us_of_date(dt.date.fromisoformat(end))
    start_us = end_us - days * DAY_US
    plans = ["free", "free", "pro", "team", "enterprise", None]
    rows = []
    per_person = max(1, events // max(1, persons))
    for p in range(persons):
        pid = 1000 + p * 7
        plan = rng.choice(plans)
        first = rng.randrange(start_us, end_us)
        n = max(1, int(rng.expovariate(1 / per_person)))
        t = first
        for _ in range(n):
            rows.append((pid, t, "$pageview", plan))
            t += int(rng.expovariate(1 / (4 * DAY_US))) if rng.random() < 0.7 else rng.randrange(0, 3 * 3_600_000_000)
            if t >= end_us:
                break
        if rng.random() < 0.5:
            t = rng.randrange(first, end_us)
            for _attempt in range(rng.choice([1, 1, 2])):
                for i, e in enumerate(FUNNEL_STEPS):
                    if t >= end_us + WINDOW_US:
                        break
                    rows.append((pid, t, e, plan))
                    if rng.random() < 0.35:
                        break
                    roll = rng.random()
                    if roll < 0.08:
                        gap = 0  # identical timestamps
                    elif roll < 0.12:
                        gap = WINDOW_US + rng.randrange(-DAY_US, DAY_US)  # around the window's edge
                    elif roll < 0.14:
                        gap = -rng.randrange(0, DAY_US)  # out of order
                    else:
                        gap = int(rng.expovariate(1 / (3 * DAY_US)))
                    t = t + gap
                t = rng.randrange(t, t + 10 * DAY_US) if t < end_us else t
    rows = [x for x in rows if start_us <= x[1] < end_us + WINDOW_US]
    rng.shuffle(rows)
    rows.sort(key=lambda x: x[1])  # time order, ties in random order (as a log would have them)
    return rows[:events]


def write_parquet(rows, path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "person_id": pa.array([x[0] for x in rows], pa.int64()),
        "timestamp": pa.array([x[1] for x in rows], pa.timestamp("us", tz="UTC")),
        "event": pa.array([x[2] for x in rows], pa.string()),
        "plan": pa.array([x[3] for x in rows], pa.string()),
    })
    pq.write_table(table, path)


def read_parquet_rows(path):
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["person_id", "timestamp", "event", "plan"])
    ts = t.column("timestamp").cast("int64").to_pylist()
    return list(zip(t.column("person_id").to_pylist(), ts, t.column("event").to_pylist(), t.column("plan").to_pylist()))


def reference(rows, r, strict=False):
    """The three answers by brute force over (person, ts_us, event, plan) rows."""
    by_person = {}
    for p, t, e, plan in rows:
        by_person.setdefault(p, []).append((t, e, plan))
    step_of = {e: i for i, e in enumerate(FUNNEL_STEPS)}
    funnel = [0] * len(FUNNEL_STEPS)
    cells = [[0] * 8 for _ in range(8)]
    dau = {}
    for p, evs in by_person.items():
        times = [[] for _ in FUNNEL_STEPS]
        for t, e, _ in evs:
            if e in step_of and r.from_us <= t <= r.to_us + WINDOW_US:
                times[step_of[e]].append(t)
        for x in times:
            x.sort()
        best = 0
        for entry in times[0]:
            if not (r.from_us <= entry < r.to_us):
                continue
            cur, level = entry, 1
            for i in range(1, len(FUNNEL_STEPS)):
                xs = times[i]
                j = (bisect.bisect_right if strict else bisect.bisect_left)(xs, cur)
                if j < len(xs) and xs[j] <= entry + WINDOW_US:
                    cur, level = xs[j], level + 1
                else:
                    break
            best = max(best, level)
        for i in range(best):
            funnel[i] += 1
        weeks = {monday_us(t) for t, e, _ in evs if e == "$pageview" and t < r.ret_to_us}
        if weeks and min(weeks) >= r.ret_from_us:
            c = min(weeks)
            for w in weeks:
                cells[(c - r.ret_from_us) // WEEK_US][(w - c) // WEEK_US] += 1
        for t, e, plan in evs:
            if e == "$pageview" and r.from_us <= t < r.to_us:
                dau.setdefault(f"{iso_day(t)}|{norm_plan(plan)}", set()).add(p)
    return {"funnel": funnel, "retention": {"cohorts": r.cohorts(), "cells": cells},
            "dau": {k: len(v) for k, v in dau.items()}}


def run_synth(args):
    rows = synth_rows(args.events, args.persons, args.end, args.days, args.seed)
    write_parquet(rows, args.out)
    log(f"wrote {len(rows):,} synthetic rows to {args.out}")


def run_selftest(args):
    work = tempfile.mkdtemp(prefix="bench-insights-selftest.", dir=os.environ.get("TMPDIR", "/tmp"))
    path = os.path.join(work, "events.parquet")
    rows = synth_rows(args.events, args.persons, args.end, args.days, args.seed)
    write_parquet(rows, path)
    rows = read_parquet_rows(path)
    r = Ranges(args.end, args.days)
    ref = reference(rows, r)
    ref_strict = reference(rows, r, strict=True)
    log(f"{len(rows):,} rows; reference funnel {ref['funnel']} (strict ties {ref_strict['funnel']}), "
        f"retention cohort sizes {[row[0] for row in ref['retention']['cells']]}, {len(ref['dau'])} DAU cells")
    failures = 0
    for name, cls in ENGINES.items():
        engine = cls(work)
        try:
            out = time_engine(engine, r, path, 1)
        finally:
            engine.close()
        for q, res in out["queries"].items():
            want = ref_strict["funnel"] if q.startswith("funnel_strict") else ref[q.replace("_fn", "")]
            got = res.get("result")
            if q == "funnel_strict_increase":
                # windowFunnel keeps one attempt per step (the latest entry): with strict_increase, a later entry at
                # the timestamp of the next step hides an earlier one that would continue. A lower bound only.
                ok = got is not None and all(g <= w for g, w in zip(got, want))
            else:
                ok = got == want
            failures += not ok
            print(f"{name:<11} {q:<23} {'ok' if ok else 'MISMATCH'}"
                  + ("" if ok else f"\n   got  {diff_summary(q, want, got) if got is not None else res.get('error')}"))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(f"selftest: {failures} mismatches")
    sys.exit(1 if failures else 0)


# ---------------------------------------------------------------------------------------------------------------
# Comparison and report


def compare(name, want, got, limit=8):
    """Differences between Flywheel's answer (want) and an engine's (got): (equal, [descriptions], count)."""
    if want is None or got is None:
        return None, [], 0
    diffs = []
    if name == "funnel":
        for i, (a, b) in enumerate(zip(want, got)):
            if a != b:
                diffs.append(f"step {i} ({FUNNEL_STEPS[i]}): flywheel {a}, engine {b}")
        if len(want) != len(got):
            diffs.append(f"{len(want)} steps vs {len(got)}")
    elif name == "retention":
        if want["cohorts"] != got["cohorts"]:
            diffs.append(f"cohort weeks differ: flywheel {want['cohorts']}, engine {got['cohorts']}")
        for p, (ra, rb) in enumerate(zip(want["cells"], got["cells"])):
            for k in range(max(len(ra), len(rb))):
                a = ra[k] if k < len(ra) else 0
                b = rb[k] if k < len(rb) else 0
                if a != b:
                    diffs.append(f"cohort {got['cohorts'][p]} week +{k}: flywheel {a}, engine {b}")
    else:
        for key in sorted(set(want) | set(got)):
            a, b = want.get(key, 0), got.get(key, 0)
            if a != b:
                day, plan = key.split("|", 1)
                diffs.append(f"{day} plan={plan}: flywheel {a}, engine {b}")
    return not diffs, diffs[:limit], len(diffs)


def fold_plans(result):
    """An engine's DAU by plan as DAU per day (see PLAN_ALL)."""
    if not isinstance(result, dict):
        return result
    out = {}
    for key, v in result.items():
        day = key.split("|", 1)[0]
        out[f"{day}|{PLAN_ALL}"] = out.get(f"{day}|{PLAN_ALL}", 0) + v
    return out


def diff_summary(name, want, got):
    eq, diffs, n = compare(name.replace("_fn", "").replace("_strict_increase", ""), want, got, 5)
    return f"{n} differences: " + "; ".join(diffs)


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def fmt(x, spec=".3f", none="-"):
    return none if x is None else format(x, spec)


def run_report(args):
    parts = args.parts
    P = lambda name: read_json(os.path.join(parts, name))
    cfg = P("config.json") or {}
    gen = P("generate.json") or {}
    serve1, stop1, disk, fw, stop2, export = P("serve1.json"), P("stop1.json"), P("disk.json"), P("flywheel.json"), P("stop2.json"), P("export.json")
    engines = {n: P(f"engine-{n}.json") for n in ENGINES}
    fwq = (fw or {}).get("queries", {})
    served_by = cfg.get("events_url")  # Flywheel's answers came from ClickHouse (--events-url)
    results = {"config": cfg, "generate": gen, "first_start": serve1, "first_stop": stop1, "disk": disk,
               "flywheel": fw, "second_stop": stop2, "export": export, "engines": engines, "comparisons": {}, "targets": []}
    lines = []
    say = lines.append
    say("")
    say(f"== Flywheel insights benchmark: {gen.get('events', cfg.get('events', '?')):,} events, "
        f"{gen.get('persons', '?'):,} persons over {cfg.get('days')} days (seed {cfg.get('seed')}, end {cfg.get('end')}), "
        f"{os.cpu_count()} CPUs, {cfg.get('started')}" if isinstance(gen.get("events"), int) else
        f"== Flywheel insights benchmark ({cfg})")
    if cfg.get("loadavg"):
        say(f"load average at the start: {cfg['loadavg']}, at the end: {' '.join(open('/proc/loadavg').read().split()[:3])} "
            f"(the numbers are noisy on a shared machine)")
    if served_by:
        say(f"Flywheel answers from ClickHouse: `flywheel serve --events-url {served_by} --events-database {cfg.get('events_database')}` "
            f"({cfg.get('events_server', 'ClickHouse')}); DAU without the `plan` breakdown (the engines' DAU by plan summed per day)")
    if cfg.get("reused"):
        say("   (data directory reused: generation and first-start numbers are from the run that created it / a start from sealed segments)")
    if gen.get("seconds") is not None:
        say(f"generate                {gen.get('wall_s', gen['seconds']):8.2f} s   ({gen.get('events_per_second', 0):,.0f} events/s; "
            f"{gen.get('distinct_ids', '?'):,} distinct ids, {gen.get('merges', '?'):,} merges)")
    if serve1:
        if "error" in serve1:
            say(f"first start             ERROR {serve1['error']}")
        else:
            say(f"first start → complete  {serve1['complete_s']:8.2f} s   (listening after {serve1['ready_s']:.2f} s; "
                f"{serve1.get('pageviews', 0):,.0f} $pageview in range)")
    if stop1:
        say(f"first stop (SIGTERM)    {fmt(stop1.get('stop_s'), '8.2f')} s   (server peak RSS while building: {fmt(stop1.get('hwm_mb'), '.0f')} MB)"
            + (f"  ERROR {stop1['error']}" if "error" in stop1 else ""))
    if disk:
        say(f"on disk                 {fmt(disk.get('bytes_per_event'), '8.1f')} B/event columnar ({disk['columnar_parquet_bytes']:,} B in "
            f"{disk['columnar_files']} Parquet files); WAL {fmt(disk.get('wal_bytes_per_event'), '.1f')} B/event ({disk['wal_bytes']:,} B)"
            + (f"  ERROR {disk['error']}" if "error" in disk else ""))
    if fw:
        say(f"restart → listening     {fmt(fw.get('restart_ready_s'), '8.2f')} s   (RSS {fmt(fw.get('rss_at_ready_mb'), '.0f')} MB, "
            f"startup peak {fmt(fw.get('hwm_at_ready_mb'), '.0f')} MB)")
    if fwq:
        peaks = [fwq[n]["peak_rss_mb"] for n in QUERIES if "peak_rss_mb" in fwq.get(n, {})]
        if peaks:
            say(f"server RSS in queries   peak {max(peaks):.0f} MB (VmHWM reset before each query; "
                f"RSS {fmt((fw or {}).get('rss_at_ready_mb'), '.0f')} MB before the first, {fmt((fw or {}).get('rss_after_mb'), '.0f')} MB after the probes)")
    if export:
        if "error" in export:
            say(f"export-events           ERROR {export['error'].strip().splitlines()[0] if export['error'].strip() else ''}")
        else:
            if export.get("given"):
                say(f"reference data          {export['path']} (given with --parquet, not exported by this run)")
            else:
                say(f"export-events           {export['seconds']:8.2f} s   ({export.get('bytes', 0):,} B Parquet)")
    for n, e in engines.items():
        if e and "load_s" in e:
            say(f"load into {n:<13} {e['load_s']:8.2f} s   ({e['rows']:,} rows, {fmt((e.get('storage_bytes') or 0) / max(1, e['rows']), '.1f')} B/row stored; {e['version']})")
        elif e:
            say(f"load into {n:<13} ERROR {e.get('error')}")

    say("")
    E = 26  # width of the engine column
    say(f"{'query':<10} {'engine':<{E}} {'cold s':>8} {'median s':>9} {'server ms c/m':>13} {'peak RSS':>9} {'+RSS':>7}  result")
    for name in QUERIES:
        f = fwq.get(name, {})
        if "error" in f or not f:
            say(f"{name:<10} {'flywheel':<{E}} {'ERROR: ' + f.get('error', 'not run')}")
        else:
            server_ms = f"{fmt(f['cold'].get('server_ms'), '.1f')}/{fmt(f.get('median_server_ms'), '.1f')}"
            say(f"{name:<10} {'flywheel':<{E}} {f['cold']['wall_s']:8.3f} {f['median_wall_s']:9.3f} "
                f"{server_ms:>13} {f['peak_rss_mb']:7.0f}MB {f['max_rss_increase_mb']:5.0f}MB  "
                + ("; ".join(f.get("notes", [])) or ""))
        variants = [name] + (["retention_fn"] if name == "retention" else []) + (list(DIAGNOSTICS) if name == "funnel" else [])
        for n, e in engines.items():
            for v in variants:
                q = ((e or {}).get("queries") or {}).get(v)
                if q is None:
                    if v == name:
                        say(f"{'':<10} {n:<{E}} {'not run' if not e else 'ERROR: ' + str(e.get('error'))}")
                    continue
                label = n if v == name else f"{n}:{v.split('_', 1)[1]}"
                if "error" in q:
                    say(f"{'':<10} {label:<{E}} ERROR: {q['error'][:300]}")
                    continue
                key = f"{name}:{n}:{v}"
                theirs = fold_plans(q.get("result")) if served_by and name == "dau" else q.get("result")
                equal, diffs, count = compare(name, f.get("result"), theirs)
                diagnostic = v in DIAGNOSTICS
                results["comparisons"][key] = {"equal": equal, "differences": count, "first": diffs, "diagnostic": diagnostic}
                verdict = "-" if equal is None else ("= flywheel" if equal else f"≠ flywheel ({plural(count, 'difference')})")
                if diagnostic:
                    verdict = f"(ties never advance: {q['result']}) {verdict}"
                say(f"{'':<10} {label:<{E}} {q['first_s']:8.3f} {q['median_s']:9.3f} {'':>13} {q['peak_rss_mb']:7.0f}MB {'':>7}  {verdict}")
                for d in ([] if diagnostic else diffs):
                    say(f"{'':<14}   {d}")
                if name == "funnel" and v == "funnel" and equal is False:
                    lower = [(((x or {}).get("queries") or {}).get(d) or {}).get("result")
                             for x, d in ((engines.get("duckdb"), "funnel_strict"), (engines.get("clickhouse"), "funnel_strict_increase"))]
                    lower = next((x for x in lower if x), None)
                    if lower and all(s <= a <= b for s, a, b in zip(lower, f["result"], q["result"])):
                        say(f"{'':<14}   every step lies between the counts with strictly increasing timestamps and {n}'s: "
                            f"consistent with identical timestamps (Flywheel orders ties by log order, {n} by step)")
                        results["comparisons"][key]["explained_by_ties"] = True
        # ClickHouse against DuckDB (both hand-written): a check of the reference queries themselves.
        ch, dk = ((engines.get("clickhouse") or {}).get("queries") or {}).get(name), ((engines.get("duckdb") or {}).get("queries") or {}).get(name)
        if ch and dk and "result" in ch and "result" in dk and not (served_by and name == "dau"):
            equal, diffs, count = compare(name, ch["result"], dk["result"])
            results["comparisons"][f"{name}:clickhouse-vs-duckdb"] = {"equal": equal, "differences": count, "first": diffs}
            if not equal:
                say(f"{'':<14}   ClickHouse and DuckDB disagree ({count}): " + "; ".join(diffs[:3]))

    say("   Flywheel: client wall time over HTTP (JSON included) and the server's query_ms (cold/median); cold = the first")
    say("   complete answer after the restart, in the order funnel, retention, dau (later ones find views sorted by earlier")
    say("   ones). ClickHouse/DuckDB: in-process wall time, first run after the load and median of the next ones. Peak RSS:")
    say("   the server's for Flywheel (+RSS: over its RSS before the query), the benchmark process's for the in-process engines.")

    # The engines use ranges computed here: Flywheel's resolved ranges must be the same instants.
    r = Ranges(cfg.get("end", "2026-01-05"), cfg.get("days", 90))
    for name in QUERIES:
        f = fwq.get(name, {})
        if not f.get("date_from") or not f.get("date_to"):
            continue
        want = (r.ret_from_us, r.ret_to_us) if name == "retention" else (r.from_us, r.to_us)
        got = tuple(int(dt.datetime.fromisoformat(f[k].replace("Z", "+00:00")).timestamp() * 1e6) for k in ("date_from", "date_to"))
        if got != want:
            say(f"NOTE: Flywheel resolved {name} to {f['date_from']} .. {f['date_to']}, the engines used "
                f"{iso_day(want[0])} .. {iso_day(want[1])}: the answers cannot be compared")
            results["comparisons"][f"{name}:range"] = {"flywheel": [f["date_from"], f["date_to"]], "engines": [iso_day(want[0]), iso_day(want[1])]}

    ingest = (fw or {}).get("ingest") or {}
    if ingest:
        lat = [p["latency_s"] for p in ingest.get("probes", []) if "latency_s" in p]
        say("")
        say(f"ingest → queryable      median {fmt(ingest.get('median_s'))} s, max {fmt(ingest.get('max_s'))} s over {len(lat)} probes "
            f"({', '.join(f'{x * 1e3:.0f} ms' for x in lat)})" + (f"  ERROR {ingest['error']}" if ingest.get("error") else ""))

    # Targets
    say("")
    say("targets")

    def target(what, value, limit, ok, unit="", spec=".3f", note=None):
        state = "n/a" if ok is None else (("met*" if note else "met") if ok else "MISSED")
        results["targets"].append({"target": what, "value": value, "limit": limit, "met": ok, **({"note": note} if note else {})})
        say(f"  {state:<7} {what:<66} {value if isinstance(value, str) else fmt(value, spec)}{unit}" + (f"   * {note}" if note else ""))

    ch_q = ((engines.get("clickhouse") or {}).get("queries") or {})
    for name in QUERIES:
        f = fwq.get(name, {})
        med = f.get("median_wall_s")
        info = "(info) " if served_by else ""
        target(f"{info}{name}: Flywheel warm median ≤ {TARGETS['query_s']} s", med, TARGETS["query_s"], None if med is None else med <= TARGETS["query_s"], " s")
        cold = (f.get("cold") or {}).get("wall_s")
        target(f"{info}{name}: Flywheel cold ≤ {TARGETS['query_s']} s", cold, TARGETS["query_s"], None if cold is None else cold <= TARGETS["query_s"], " s")
        variants = [ch_q.get(v) for v in ([name, "retention_fn"] if name == "retention" else [name])]
        ch_times = [q["median_s"] for q in variants if q and "median_s" in q]
        best = min(ch_times) if ch_times else None
        speed = best / med if best and med else None
        # The speed targets are the embedded engine's; served from ClickHouse 18.16 they are information.
        info = "(info) " if served_by else ""
        target(f"{info}{name}: ≥ {TARGETS['speedup']:.0f}× faster than ClickHouse (its best median / ours)", None if speed is None else f"{speed:.2f}×",
               TARGETS["speedup"], None if speed is None else speed >= TARGETS["speedup"])
        cmp = results["comparisons"].get(f"{name}:clickhouse:{name}", {})
        eq = cmp.get("equal")
        if eq is False and cmp.get("explained_by_ties"):
            target(f"{name}: results equal to ClickHouse's where the semantics coincide", plural(cmp['differences'], 'difference'), None, True,
                   note="only where identical timestamps are ordered differently (see above)")
        else:
            target(f"{name}: results equal to ClickHouse's where the semantics coincide",
                   "equal" if eq else (plural(cmp.get('differences'), 'difference') if eq is False else None), None, eq)
    target(f"ingest → queryable ≤ {TARGETS['ingest_s']} s (max of probes)", ingest.get("max_s"), TARGETS["ingest_s"],
           None if ingest.get("max_s") is None else ingest["max_s"] <= TARGETS["ingest_s"] and not ingest.get("error"), " s")
    bpe = (disk or {}).get("bytes_per_event")
    target(f"bytes per event on disk (columnar) ≤ {TARGETS['bytes_per_event']:.0f}", bpe, TARGETS["bytes_per_event"],
           None if not bpe else bpe <= TARGETS["bytes_per_event"], " B", ".1f")
    peaks = [fwq[n]["peak_rss_mb"] for n in QUERIES if "peak_rss_mb" in fwq.get(n, {})]
    peak = max(peaks) if peaks else None
    target(f"server peak RSS during each query ≤ {TARGETS['rss_mb']:.0f} MB", peak, TARGETS["rss_mb"],
           None if peak is None else peak <= TARGETS["rss_mb"], " MB", ".0f")
    startup = max([x for x in [(fw or {}).get("hwm_at_ready_mb"), (stop1 or {}).get("hwm_mb"), (stop2 or {}).get("hwm_mb")] if x] or [0]) or None
    target(f"(info) server peak RSS overall, incl. startup and sealing ≤ {TARGETS['rss_mb']:.0f} MB", startup, TARGETS["rss_mb"],
           None if startup is None else startup <= TARGETS["rss_mb"], " MB", ".0f")

    text = "\n".join(lines)
    print(text)
    results["report"] = text
    write_json(args.out, results)
    print(f"\nresults: {args.out}")
    missed = [t for t in results["targets"] if t["met"] is False and not t["target"].startswith("(info)")]
    unknown = [t for t in results["targets"] if t["met"] is None]
    print(f"{len(results['targets']) - len(missed) - len(unknown)} targets met, {len(missed)} missed, {len(unknown)} not measured")


# ---------------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, data=True):
        p.add_argument("--end", default="2026-01-05", help="exclusive end of the history (a date, UTC midnight)")
        p.add_argument("--days", type=int, default=90)
        if data:
            p.add_argument("--events", type=int, default=200_000)
            p.add_argument("--persons", type=int, default=20_000)
            p.add_argument("--seed", type=int, default=42)

    def server(p):
        p.add_argument("--url", required=True)
        p.add_argument("--pid", type=int, required=True)
        p.add_argument("--gen", required=True, help="generate's JSON output (project id and keys)")
        p.add_argument("--started-at", type=float, required=True, help="epoch seconds when the server was started")
        p.add_argument("--log", help="the server's log (shown when it dies)")
        p.add_argument("--timeout", type=float, default=3600)
        p.add_argument("--out", required=True)

    p = sub.add_parser("wait")
    common(p, False)
    server(p)
    p = sub.add_parser("flywheel")
    p.add_argument("--events-url", help="the server answers from this ClickHouse (flywheel serve --events-url)")
    common(p, False)
    server(p)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--probes", type=int, default=5)
    p = sub.add_parser("stop")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", required=True)
    p = sub.add_parser("disk")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--gen", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("engine")
    common(p, False)
    p.add_argument("--engine", choices=sorted(ENGINES), required=True)
    p.add_argument("--parquet", required=True)
    p.add_argument("--work", required=True, help="directory for the engine's database files")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("--parts", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("synth")
    common(p)
    p.add_argument("--out", required=True)
    p = sub.add_parser("selftest")
    common(p)
    p.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    {"wait": run_wait, "flywheel": run_flywheel, "stop": run_stop, "disk": run_disk, "engine": run_engine,
     "report": run_report, "synth": run_synth, "selftest": run_selftest}[args.cmd](args)


if __name__ == "__main__":
    main()
