"""Property-based conformance of Flywheel's OFREP endpoints with the OFREP 0.3.0 OpenAPI document, by schemathesis.

Creates a few features and an SDK client key through the management API, then runs `schemathesis run` (from the
same venv) on ../shared/conformance/ofrep/openapi.yaml (relative to the repository root; OFREP_SPEC overrides) with
every check enabled, positive and negative data, a fixed seed and a bounded number of examples per operation.

The spec is read, never copied into the repository. Two errata are applied to a temporary copy, because as published
the document rejects every response that carries a value (see ERRATA below); `--strict-spec` runs the document
unchanged. The temporary copy also lists the created feature keys as examples of the `key` path parameter, so that
schemathesis evaluates real flags and not only unknown keys (which all answer 404).

schemathesis 4.32.5 enables every built-in check by default; `--checks all` states it: not_a_server_error,
status_code_conformance, content_type_conformance, response_headers_conformance, response_schema_conformance,
negative_data_rejection, positive_data_acceptance, missing_required_header, unsupported_method,
allow_header_conformance, ignored_auth, and the stateful ones, which do not apply to these two operations
(max_response_time only runs with --max-response-time). Because the spec's `context` requires `targetingKey`,
negative_data_rejection needs a context without one to get a 4xx on both endpoints. So does any other
schema-violating input, including query parameters such as `flagConfigLastModified=-1`.

Exit status: schemathesis' own (non-zero on any failure). Prints "all checks passed" on success.
Environment: FLYWHEEL_URL, FLYWHEEL_PROJECT_ID, FLYWHEEL_PROJECT_KEY, FLYWHEEL_PERSONAL_KEY;
optional OFREP_SEED (default 20260301), OFREP_MAX_EXAMPLES (default 100), OFREP_WORKERS (default 1),
OFREP_REPORT_DIR (write VCR and JUnit reports there)."""
import copy
import os
import subprocess
import sys
import tempfile
import uuid

import yaml

from flywheel_api import Flywheel, check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = os.environ.get("OFREP_SPEC") or os.path.normpath(os.path.join(ROOT, "..", "shared", "conformance", "ofrep", "openapi.yaml"))

# evaluationSuccess is `allOf: [common fields, oneOf: [booleanFlag, stringFlag, integerFlag, floatFlag, objectFlag,
# codeDefaultFlag]]`. codeDefaultFlag is `{type: object, properties: {}}`, which every object satisfies, and an
# integer satisfies both integerFlag and floatFlag (`type: number`): so a response with `"value": true` matches two
# branches and fails `oneOf` ("valid under more than one of the schemas"). Only value-less responses could conform.
# The evident intent: a value of one of the five types, or no value at all (the code default).
ERRATA = [
    ("components.schemas.evaluationSuccess.allOf[1]: oneOf -> anyOf (integer values are also numbers)",
     lambda s: s["components"]["schemas"]["evaluationSuccess"]["allOf"][1].update(
         anyOf=s["components"]["schemas"]["evaluationSuccess"]["allOf"][1].pop("oneOf"))),
    ("components.schemas.codeDefaultFlag: add `not: {required: [value]}` (the code default has no value)",
     lambda s: s["components"]["schemas"]["codeDefaultFlag"].update({"not": {"required": ["value"]}})),
]


def main():
    strict = "--strict-spec" in sys.argv[1:]
    if not os.path.isfile(SPEC):
        print(f"the OFREP spec is not at {SPEC} (set OFREP_SPEC)", file=sys.stderr)
        return 2
    fw = Flywheel()
    run = uuid.uuid4().hex[:6]
    keys = [f"st-bool-{run}", f"st-string-{run}", f"st-int-{run}", f"st-float-{run}", f"st-object-{run}",
            f"st-rollout-{run}", f"st-off-{run}"]
    fw.create_feature(keys[0], "boolean", False, [{"type": "force", "condition": {"plan": "pro"}, "value": True}])
    fw.create_feature(keys[1], "string", "control", [
        {"type": "experiment", "variations": ["control", "treatment"], "weights": [0.5, 0.5]},
    ])
    fw.create_feature(keys[2], "number", 3, [{"type": "force", "condition": {"country": "CA"}, "value": 42}])
    fw.create_feature(keys[3], "number", 0.25, [{"type": "force", "condition": {"email": {"$exists": True}}, "value": 2.5}])
    fw.create_feature(keys[4], "json", {"layout": "a"}, [{"type": "force", "condition": {"plan": "premium"}, "value": {"layout": "b", "n": [1, 2]}}])
    fw.create_feature(keys[5], "boolean", False, [{"type": "rollout", "value": True, "coverage": 0.5}])
    fw.create_feature(keys[6], "boolean", True, [], enabled=False)
    client_key = fw.sdk_key("production", name=f"schemathesis-{run}")
    check(client_key.startswith("sdk-"), f"created {len(keys)} features and an SDK client key")

    with open(SPEC) as f:
        spec = yaml.safe_load(f)
    check(spec.get("info", {}).get("version") == "0.3.0", f"OFREP spec {spec.get('info', {}).get('version')} from {os.path.relpath(SPEC, ROOT)}")
    patched = copy.deepcopy(spec)
    if not strict:
        for text, apply in ERRATA:
            apply(patched)
            print(f"# erratum applied to the temporary copy: {text}")
    for param in patched["paths"]["/ofrep/v1/evaluate/flags/{key}"]["post"]["parameters"]:
        if param.get("name") == "key" and param.get("in") == "path":
            param["examples"] = {k: {"value": k} for k in keys + ["no-such-flag"]}
            param.pop("example", None)

    seed = os.environ.get("OFREP_SEED", "20260301")
    max_examples = os.environ.get("OFREP_MAX_EXAMPLES", "100")
    workers = os.environ.get("OFREP_WORKERS", "1")
    schemathesis = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    with tempfile.TemporaryDirectory(prefix="ofrep-schemathesis-") as tmp:
        path = os.path.join(tmp, "openapi.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(patched, f, sort_keys=False)
        cmd = [
            schemathesis, "run", path,
            "--url", fw.url,
            "--header", f"X-API-Key: {client_key}",
            "--checks", "all",
            "--mode", "all",
            "--phases", "examples,coverage,fuzzing",
            "--seed", seed,
            "--max-examples", max_examples,
            "--workers", workers,
            "--continue-on-failure",
            "--request-timeout", "10",
            "--generation-database", "none",
            "--suppress-health-check", "too_slow",
            *(["--report", "vcr,junit", "--report-dir", os.environ["OFREP_REPORT_DIR"]] if os.environ.get("OFREP_REPORT_DIR") else []),
            "--no-color",
        ]
        print(f"# schemathesis run <spec copy> --url {fw.url} --header 'X-API-Key: <client key>' --checks all "
              f"--mode all --seed {seed} --max-examples {max_examples} --workers {workers}", flush=True)
        rc = subprocess.call(cmd, cwd=tmp)
    if rc != 0:
        print(f"schemathesis reported failures (exit {rc})")
        return rc
    print("ofrep schemathesis: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
