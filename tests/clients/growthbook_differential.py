"""The GrowthBook Python SDK loads a project's features from Flywheel's SDK endpoint and evaluates them locally;
for 1,000 random users x every feature, its answers must equal Flywheel's server-side evaluation."""
import json
import random
import urllib.request

from growthbook import GrowthBook

from flywheel_api import Flywheel, check

fw = Flywheel()


def post(path, body):
    req = urllib.request.Request(
        f"{fw.url}/api/v1/projects/{fw.project_id}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {fw.personal_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def feature(key, value_type, default, prod_rules=None, enabled=True, prerequisites=None):
    body = {"key": key, "value_type": value_type, "default_value": default,
            "environments": {"production": {"enabled": enabled, "rules": prod_rules or []}}}
    if prerequisites:
        body["prerequisites"] = prerequisites
    status, created = post("/features", body)
    assert status == 201, created


feature("bool-force", "boolean", False, [
    {"type": "force", "condition": {"country": {"$in": ["US", "CA"]}, "plan": {"$ne": "free"}}, "value": True},
    {"type": "force", "condition": {"plan": "free"}, "value": False},
])
feature("string-rollout", "string", "control", [
    {"type": "rollout", "condition": {"age": {"$gte": 21}}, "value": "new", "coverage": 0.3},
])
feature("number-experiment", "number", 0, [
    {"type": "experiment", "variations": [0, 10, 20], "weights": [0.2, 0.3, 0.5], "coverage": 0.8},
])
feature("json-flag", "json", {"layout": "a"}, [
    {"type": "force", "condition": {"email": {"$regex": "@acme\\.io$"}}, "value": {"layout": "b", "beta": True}},
])
feature("version-gated", "boolean", False, [
    {"type": "force", "condition": {"appVersion": {"$vgte": "2.10.0"}}, "value": True},
])
feature("child", "boolean", False, [{"type": "force", "value": True}], prerequisites=[{"id": "bool-force"}])
feature("namespaced", "boolean", False, [
    {"type": "experiment", "tracking_key": "ns-test", "variations": [False, True], "namespace": ["checkout", 0, 0.5],
     "hash_attribute": "company"},
])
feature("disabled", "boolean", True, [], enabled=False)
# Saved groups: a list the SDK tests with $inGroup (from the payload's savedGroups) and a condition inlined by the server.
for group in [{"key": "vip-companies", "type": "list", "attribute": "company", "values": [f"co-{i}" for i in range(0, 200, 3)]},
              {"key": "adult-pros", "type": "condition", "condition": {"plan": "pro", "age": {"$gte": 18}}}]:
    status, created = post("/saved-groups", group)
    assert status == 201, created
feature("grouped", "string", "none", [
    {"type": "force", "value": "vip", "saved_groups": [{"match": "all", "ids": ["vip-companies"]}]},
    {"type": "force", "value": "adult-pro", "saved_groups": [{"match": "any", "ids": ["adult-pros"]}]},
    {"type": "force", "value": "neither", "saved_groups": [{"match": "none", "ids": ["vip-companies", "adult-pros"]}]},
])
status, conn = post("/sdk-connections", {"environment": "production", "name": "python"})
assert status == 201, conn
keys = ["bool-force", "string-rollout", "number-experiment", "json-flag", "version-gated", "child", "namespaced", "disabled",
        "grouped"]

gb = GrowthBook(api_host=fw.url, client_key=conn["client_key"])
gb.load_features()
check(sorted(gb.get_features().keys()) == sorted(k for k in keys if k != "disabled"), "the SDK loaded every enabled feature")

rng = random.Random(7)
mismatches = []
compared = 0
for i in range(1000):
    attrs = {
        "id": f"user-{rng.randrange(10**9)}",
        "country": rng.choice(["US", "CA", "FR", "DE", "BR"]),
        "plan": rng.choice(["free", "pro", "team"]),
        "age": rng.randrange(14, 80),
        "email": rng.choice(["a@acme.io", "b@example.com", "c@ACME.io"]),
        "appVersion": rng.choice(["2.9.9", "2.10.0", "2.10.1-beta", "10.0", "1.0.0"]),
    }
    if rng.random() < 0.8:
        attrs["company"] = f"co-{rng.randrange(200)}"
    gb.set_attributes(attrs)
    status, server = post("/evaluate", {"environment": "production", "attributes": attrs})
    assert status == 200, server
    for key in keys:
        local = gb.eval_feature(key)
        remote = server["results"].get(key)
        compared += 1
        remote_value = remote["value"] if remote else None
        remote_source = remote["source"] if remote else "unknownFeature"
        if local.value != remote_value or local.source != remote_source:
            mismatches.append((key, attrs, local.value, local.source, remote_value, remote_source))
gb.destroy()
check(compared == 9000, f"compared {compared} evaluations")
check(not mismatches, f"SDK and server agree on every evaluation ({len(mismatches)} differ, e.g. {mismatches[:3]})")

# An encrypted connection: the SDK decrypts the payload with the key handed out once, and evaluates the same.
status, secret_conn = post("/sdk-connections", {"environment": "production", "name": "encrypted", "encrypt": True})
assert status == 201, secret_conn
check(bool(secret_conn.get("decryption_key")), "an encrypted connection returns its decryption key")
with urllib.request.urlopen(f"{fw.url}/api/features/{secret_conn['client_key']}", timeout=30) as resp:
    raw = json.loads(resp.read())
check(raw["features"] == {} and "encryptedFeatures" in raw, "the encrypted payload shows no feature in the clear")
egb = GrowthBook(api_host=fw.url, client_key=secret_conn["client_key"], decryption_key=secret_conn["decryption_key"])
egb.load_features()
check(sorted(egb.get_features().keys()) == sorted(k for k in keys if k != "disabled"), "the SDK decrypted every enabled feature")
sample = {"id": "user-42", "country": "US", "plan": "pro", "age": 30, "company": "co-3", "email": "a@acme.io",
          "appVersion": "2.10.0"}
egb.set_attributes(sample)
status, server = post("/evaluate", {"environment": "production", "attributes": sample})
check(all(egb.eval_feature(k).value == server["results"][k]["value"] for k in keys if k != "disabled"),
      "decrypted features evaluate as the server does")
check(egb.eval_feature("grouped").value == "vip", "the saved list group matched through the decrypted savedGroups")
egb.destroy()
print("growthbook differential: all checks passed")
