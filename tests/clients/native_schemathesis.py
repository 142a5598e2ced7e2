"""No server error anywhere in the HTTP API under schemathesis: fuzzes every operation of Flywheel's own OpenAPI
document (served at /api/v1/openapi.json: the native API, capture, flag serving) with positive and negative data.

The document's `project_id` path parameter is pinned to the test project (a temporary copy of the document says
`enum: [id]`), so generated requests reach the handlers' validation instead of stopping at "no such project"; a
few features, metrics and a referral program exist so that some keys resolve. Only the `not_a_server_error` check
runs: the document describes bodies as JSON objects (each endpoint validates its own), so schema-conformance checks
would test the document, not the server. Webhook URLs are refused for private addresses (no allow-list here), so
fuzzed subscriptions call nobody.

Exit status: schemathesis' own. Prints "all checks passed" on success.
Environment: FLYWHEEL_URL, FLYWHEEL_PROJECT_ID, FLYWHEEL_PROJECT_KEY, FLYWHEEL_PERSONAL_KEY; optional
NATIVE_SEED (default 20261126), NATIVE_MAX_EXAMPLES (default 8), NATIVE_WORKERS (default 2)."""
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

from flywheel_api import Flywheel, check


def main():
    fw = Flywheel()
    with urllib.request.urlopen(f"{fw.url}/api/v1/openapi.json", timeout=30) as resp:
        spec = json.load(resp)
    ops = sum(len(v) for v in spec["paths"].values())
    check(spec["openapi"] == "3.1.0" and ops > 100, f"the document lists {ops} operations")
    pid = int(fw.project_id)
    # The organization of the key, so organization endpoints are fuzzed past their 404.
    org = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{fw.url}/api/v1/organizations", headers={"Authorization": f"Bearer {fw.personal_key}"})).read())
    oid = int(org["results"][0]["id"])
    for item in spec["paths"].values():
        for op in item.values():
            for param in op.get("parameters", []):
                if param["name"] == "project_id":
                    param["schema"] = {"type": "integer", "enum": [pid]}
                if param["name"] == "org_id":
                    param["schema"] = {"type": "integer", "enum": [oid]}
    fw.create_feature("fuzz-flag", "boolean", False, [{"type": "force", "condition": {"plan": "pro"}, "value": True}])

    seed = os.environ.get("NATIVE_SEED", "20261126")
    max_examples = os.environ.get("NATIVE_MAX_EXAMPLES", "8")
    # One worker: with two, hypothesis describes strategies from two threads at once and CPython 3.11's
    # ast.parse is not thread-safe ("AST constructor recursion depth mismatch" failed a CI run).
    workers = os.environ.get("NATIVE_WORKERS", "1")
    schemathesis = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    with tempfile.TemporaryDirectory(prefix="native-schemathesis-") as tmp:
        path = os.path.join(tmp, "openapi.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        cmd = [
            schemathesis, "run", path,
            "--url", fw.url,
            "--header", f"Authorization: Bearer {fw.personal_key}",
            "--checks", "not_a_server_error",
            "--mode", "all",
            "--seed", seed,
            "--max-examples", max_examples,
            "--workers", workers,
            "--continue-on-failure",
            "--request-timeout", "20",
            "--generation-database", "none",
            "--suppress-health-check", "all",
            "--no-color",
        ]
        print(f"# schemathesis run <document with project_id={pid}> --checks not_a_server_error --mode all "
              f"--seed {seed} --max-examples {max_examples} --workers {workers}", flush=True)
        rc = subprocess.call(cmd, cwd=tmp)
    if rc != 0:
        print(f"schemathesis found server errors (exit {rc})")
        return rc
    print("native schemathesis: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
