"""Runs the ClickHouse backend's statements on current ClickHouse (chdb) and compares the answers.

Input: the JSON file written by crates/clickhouse/tests/ground_truth.rs: the schema's DDL, the rows inserted (JSONEachRow
text per table) and every statement with the rows ClickHouse 18.16 answered. Each statement must run here and give
the same rows (numbers compared as numbers: the two versions may print floats differently). Exits 1 on the first
disagreements, listing them.
"""

import json
import math
import sys
import tempfile

import chdb
from chdb import session


def same(a, b):
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(x) and math.isnan(y):
        return True
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)


def rows_of(text):
    return [line.split("\t") for line in text.splitlines()]


def main(path):
    with open(path) as f:
        dump = json.load(f)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        s = session.Session(tmp)
        # As the backend's client sends it: insights over thousands of buckets exceed the default 256 KiB.
        s.query("SET max_query_size = 16777216")
        for ddl in dump["ddl"]:
            s.query(ddl)
        for ins in dump["inserts"]:
            s.query(f"INSERT INTO {ins['table']} FORMAT JSONEachRow\n{ins['rows']}")
        version = str(s.query("SELECT version()", "TabSeparated")).strip()
        for i, st in enumerate(dump["statements"]):
            try:
                got = rows_of(str(s.query(st["sql"], "TabSeparated")))
            except Exception as e:  # chdb raises a plain exception carrying ClickHouse's message
                failures.append(f"statement {i} fails: {e}\n{st['sql']}")
                continue
            want = st["rows"]
            if len(got) != len(want) or not all(
                len(g) == len(w) and all(same(x, y) for x, y in zip(g, w)) for g, w in zip(got, want)
            ):
                failures.append(
                    f"statement {i} ({st['tz']}, {json.dumps(st['definition'])}) answers differently:\n"
                    f"  18.16: {want}\n  {version}: {got}\n{st['sql']}"
                )
        s.close()
    if failures:
        print(f"{len(failures)} of {len(dump['statements'])} statements differ on ClickHouse {version}:")
        for f in failures[:3]:
            print(f)
        sys.exit(1)
    print(f"all {len(dump['statements'])} statements give the same answers on ClickHouse {version} (chdb {chdb.__version__})")


if __name__ == "__main__":
    main(sys.argv[1])
