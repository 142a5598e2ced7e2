"""posthog-python evaluates feature flags remotely (POST /flags/?v=4; no personal API key, so no local evaluation)
against Flywheel: values, variants, payloads, caller-supplied person and group properties, person properties stored
by earlier events, and a feature update seen by the next call. The raw /flags and /decide shapes are checked too."""
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
import warnings

from posthog import Posthog

from flywheel_api import Flywheel, check

logging.basicConfig(level=logging.WARNING)
# feature_enabled / get_feature_flag / get_feature_flag_payload are deprecated in favour of evaluate_flags, but they
# are what most integrations call: both are exercised here.
warnings.filterwarnings("ignore", category=DeprecationWarning)

fw = Flywheel()
run = uuid.uuid4().hex[:6]
PRO = f"ph-pro-only-{run}"
BIG = f"ph-big-company-{run}"
EXP = f"ph-checkout-{run}"
BANNER = f"ph-banner-{run}"
LIMIT = f"ph-max-items-{run}"
OFF = f"ph-disabled-{run}"
FRENCH = f"ph-french-{run}"
LIST = f"ph-list-{run}"
MINE = [PRO, BIG, EXP, BANNER, LIMIT, OFF, FRENCH, LIST]

fw.create_feature(PRO, "boolean", False, [{"type": "force", "condition": {"plan": "pro"}, "value": True}])
fw.create_feature(BIG, "boolean", False, [
    {"type": "force", "condition": {"$group_properties.company.seats": {"$gte": 100}}, "value": True},
])
fw.create_feature(EXP, "string", "control", [
    {"type": "experiment", "variations": ["control", "one-page", "two-page"], "weights": [0.34, 0.33, 0.33],
     "coverage": 1, "tracking_key": f"checkout-{run}"},
])
fw.create_feature(BANNER, "json", {"color": "grey"}, [
    {"type": "force", "condition": {"plan": "pro"}, "value": {"color": "gold", "size": 2}},
])
fw.create_feature(LIMIT, "number", 10, [{"type": "force", "condition": {"plan": "pro"}, "value": 100}])
fw.create_feature(OFF, "boolean", True, [{"type": "force", "value": True}], enabled=False)
fw.create_feature(FRENCH, "boolean", False, [{"type": "force", "condition": {"country": "FR"}, "value": True}])
fw.create_feature(LIST, "json", ["search", "export"])

errors = []
client = Posthog(fw.project_key, host=fw.url, flush_at=10, flush_interval=0.2,
                 feature_flags_request_timeout_seconds=10, on_error=lambda e, batch: errors.append(e))

# --- person properties passed by the caller -------------------------------------------------------------------
check(client.feature_enabled(PRO, f"a-{run}", person_properties={"plan": "pro"}) is True,
      "feature_enabled: a person-property condition matches the caller's person_properties")
check(client.feature_enabled(PRO, f"a-{run}", person_properties={"plan": "free"}) is False,
      "feature_enabled: the condition does not match another plan")
check(client.feature_enabled(PRO, f"fresh-{run}") is False, "feature_enabled: no properties, no match")
check(client.get_feature_flag(PRO, f"a-{run}", person_properties={"plan": "pro"}) is True,
      "get_feature_flag returns True for a matched boolean")
check(client.feature_enabled(f"no-such-flag-{run}", f"a-{run}") is None, "an unknown flag reads as None")
check(client.feature_flags is None, "no flag definitions were loaded: every answer came from remote evaluation")

# --- groups and group properties passed by the caller ------------------------------------------------------------
check(client.feature_enabled(BIG, f"b-{run}", groups={"company": f"acme-{run}"},
                             group_properties={"company": {"seats": 500}}) is True,
      "a group-property condition matches the caller's group_properties")
check(client.feature_enabled(BIG, f"b-{run}", groups={"company": f"tiny-{run}"},
                             group_properties={"company": {"seats": 5}}) is False,
      "the group-property condition does not match a small company")
check(client.feature_enabled(BIG, f"b-{run}") is False, "no groups, no group match")

# --- multivariate string experiment -----------------------------------------------------------------------------
variants = {}
mismatched = []
for i in range(60):
    distinct_id = f"exp-user-{run}-{i}"
    variant = client.get_feature_flag(EXP, distinct_id, send_feature_flag_events=False)
    variants[distinct_id] = variant
    expected = fw.evaluate({"id": distinct_id, "distinct_id": distinct_id})[EXP]["value"]
    if variant != expected:
        mismatched.append((distinct_id, variant, expected))
check(set(variants.values()) == {"control", "one-page", "two-page"},
      f"get_feature_flag returns the experiment's variants: {sorted(set(map(str, variants.values())))}")
check(not mismatched, f"every variant equals Flywheel's own evaluation of the same user ({mismatched[:3]})")
again = {d: client.get_feature_flag(EXP, d, send_feature_flag_events=False) for d in list(variants)[:10]}
check(all(variants[d] == v for d, v in again.items()), "a user keeps the same variant")
check(client.feature_enabled(EXP, f"exp-user-{run}-0") is True, "a multivariate flag with a variant is enabled")

# --- JSON and number features: the value is the payload ---------------------------------------------------------
check(client.get_feature_flag_payload(BANNER, f"c-{run}", person_properties={"plan": "pro"}) == {"color": "gold", "size": 2},
      "get_feature_flag_payload returns the matched JSON value")
check(client.get_feature_flag_payload(BANNER, f"c-{run}") == {"color": "grey"},
      "get_feature_flag_payload returns the default JSON value")
check(client.feature_enabled(BANNER, f"c-{run}") is True, "a json flag is enabled")
check(client.get_feature_flag_payload(LIMIT, f"c-{run}", person_properties={"plan": "pro"}) == 100,
      "get_feature_flag_payload returns the matched number")
check(client.get_feature_flag_payload(LIMIT, f"c-{run}") == 10, "get_feature_flag_payload returns the default number")
check(client.get_feature_flag_payload(LIST, f"c-{run}") == ["search", "export"] and client.feature_enabled(LIST, f"c-{run}") is True,
      "a JSON array value is an enabled flag with the array as payload")
check(client.get_feature_flag_payload(PRO, f"c-{run}", person_properties={"plan": "pro"}) is None,
      "a boolean flag has no payload")

# --- a feature disabled in production -------------------------------------------------------------------------
check(client.feature_enabled(OFF, f"d-{run}") is False, "a feature disabled in production is not enabled")
check(client.get_feature_flag(OFF, f"d-{run}") is False, "get_feature_flag of a disabled feature is False")
check(client.get_feature_flag_payload(OFF, f"d-{run}") is None, "a disabled feature has no payload")

# --- all flags at once ------------------------------------------------------------------------------------------
pro_user = f"e-{run}"
all_flags = client.get_all_flags(pro_user, person_properties={"plan": "pro", "country": "FR"},
                                 groups={"company": f"acme-{run}"}, group_properties={"company": {"seats": 250}})
mine = {k: v for k, v in (all_flags or {}).items() if k in MINE}
expected_variant = fw.evaluate({"id": pro_user, "distinct_id": pro_user})[EXP]["value"]
check(mine == {PRO: True, BIG: True, EXP: expected_variant, BANNER: True, LIMIT: True, OFF: False, FRENCH: True, LIST: True},
      f"get_all_flags returns every flag of the project: {mine}")
both = client.get_all_flags_and_payloads(pro_user, person_properties={"plan": "pro"})
payloads = {k: v for k, v in both["featureFlagPayloads"].items() if k in MINE}
check(sorted(payloads) == sorted([BANNER, LIMIT, LIST]), f"payloads for the json and number flags only: {sorted(payloads)}")
check(json.loads(payloads[BANNER]) == {"color": "gold", "size": 2} and json.loads(payloads[LIMIT]) == 100,
      f"get_all_flags_and_payloads keeps payloads as JSON text: {payloads}")
check(both["featureFlags"][PRO] is True and both["featureFlags"][FRENCH] is False,
      "get_all_flags_and_payloads evaluates with the caller's properties")
some = client.get_all_flags(pro_user, person_properties={"plan": "pro"}, flag_keys_to_evaluate=[PRO, LIMIT])
check(some == {PRO: True, LIMIT: True}, f"flag_keys_to_evaluate limits the answer to those flags: {some}")

# evaluate_flags: the SDK's recommended single-request API.
snapshot = client.evaluate_flags(pro_user, person_properties={"plan": "pro"})
check(snapshot.is_enabled(PRO) and snapshot.get_flag(EXP) == expected_variant
      and snapshot.get_flag_payload(BANNER) == {"color": "gold", "size": 2},
      "evaluate_flags snapshot: is_enabled, get_flag and get_flag_payload")

# --- person properties stored by earlier events are used when the caller passes none ---------------------------
anon, user, setter = f"anon-{run}", f"user-{run}", f"setter-{run}"
client.capture("$pageview", distinct_id=anon, properties={"$current_url": "https://example.com/pricing"})
client.capture("$identify", distinct_id=user, properties={"$anon_distinct_id": anon, "$set": {"plan": "pro"}})
client.capture("purchase", distinct_id=setter, properties={"$set": {"country": "FR"}, "amount": 12})
client.flush()


def eventually(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


check(eventually(lambda: client.feature_enabled(PRO, user, send_feature_flag_events=False) is True),
      "the plan stored by $identify's $set is used without person_properties")
check(client.feature_enabled(PRO, anon, send_feature_flag_events=False) is True,
      "the merged anonymous id evaluates with the identified person's properties")
check(client.feature_enabled(PRO, user, person_properties={"plan": "free"}, send_feature_flag_events=False) is False,
      "person_properties passed by the caller override the stored ones")
check(eventually(lambda: client.feature_enabled(FRENCH, setter, send_feature_flag_events=False) is True),
      "a $set on an ordinary event is used without person_properties")
stored = client.get_all_flags(user)
check(stored[PRO] is True and stored[BANNER] is True and stored[FRENCH] is False,
      "get_all_flags uses the stored properties too")
check(client.get_feature_flag_payload(LIMIT, user) == 100, "payloads follow the stored properties")

# --- a feature update is seen by the next call ------------------------------------------------------------------
status, doc = fw.send("GET", f"/features/{PRO}")
check(status == 200 and isinstance(doc.get("version"), int), f"the feature document has a version: {doc.get('version')}")
team = f"team-{run}"
check(client.feature_enabled(PRO, team, person_properties={"plan": "team"}) is False, "before the update: team is off")
update = {k: doc[k] for k in ("value_type", "default_value", "description", "owner", "tags", "prerequisites", "environments") if k in doc}
update["environments"]["production"]["rules"] = [{"type": "force", "condition": {"plan": {"$in": ["pro", "team"]}}, "value": True}]
status, updated = fw.send("PUT", f"/features/{PRO}", {"version": doc["version"], **update})
check(status == 200 and updated["version"] > doc["version"], f"the update is accepted: {status}")
check(client.feature_enabled(PRO, team, person_properties={"plan": "team"}) is True,
      "after the update the very next call sees the new rule")
status, stale = fw.send("PUT", f"/features/{PRO}", {"version": doc["version"], **update})
check(status == 409, f"an update with a stale version is refused: {status}")
update["environments"]["production"]["enabled"] = False
status, _ = fw.send("PUT", f"/features/{PRO}", {"version": updated["version"], **update})
check(status == 200 and client.feature_enabled(PRO, team, person_properties={"plan": "team"}) is False,
      "disabling the feature in production turns it off on the next call")

client.flush()
client.shutdown()
check(not errors, f"the SDK reported no errors: {errors}")

# --- the raw endpoints: every shape and version -----------------------------------------------------------------


def raw(path, body, content_type="application/json"):
    req = urllib.request.Request(f"{fw.url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text


who = {"api_key": fw.project_key, "distinct_id": f"raw-{run}", "person_properties": {"plan": "pro"},
       "flag_keys_to_evaluate": [BANNER, LIMIT, EXP, OFF, FRENCH, LIST]}
status, v4 = raw("/flags/?v=4", who)
rec = v4.get("flags", {})
check(status == 200 and sorted(rec) == sorted(who["flag_keys_to_evaluate"]), f"/flags/?v=4 answers the requested flags: {status} {sorted(rec)}")
check(rec[BANNER]["value"] == {"color": "gold", "size": 2} and rec[LIMIT]["value"] == 100 and rec[OFF]["value"] is None,
      "v=4 records carry the typed value (null when disabled)")
check(rec[LIST]["value"] is True and json.loads(rec[LIST]["metadata"]["payload"]) == ["search", "export"],
      "v=4: an array (no typed value in posthog-python) travels as the payload of an enabled flag")
check(rec[BANNER]["enabled"] is True and rec[BANNER]["variant"] is None, "a json flag: enabled, no variant")
check(rec[OFF]["enabled"] is False and rec[FRENCH]["enabled"] is False and rec[EXP]["enabled"] is True
      and isinstance(rec[EXP]["variant"], str), "enabled/variant rendering of disabled, unmatched and experiment flags")
check(all(r["key"] == k and r.get("failed", False) is False and isinstance(r.get("reason"), dict) and isinstance(r.get("metadata"), dict)
          for k, r in rec.items()), "every record has key, failed=false, reason and metadata")
check(all(isinstance(r["metadata"].get("version"), int) and (r["metadata"].get("id") is None or isinstance(r["metadata"]["id"], int))
          for r in rec.values()), "metadata.version is an integer and metadata.id an integer (posthog-python rejects anything else)")
check(v4.get("errorsWhileComputingFlags") is False and isinstance(v4.get("requestId"), str), "errorsWhileComputingFlags and requestId")
status, v2 = raw("/flags?v=2", who)
check(status == 200 and all("value" not in r for r in v2["flags"].values()) and v2["flags"][LIMIT]["enabled"] is True,
      "/flags?v=2 records have no typed value")
check(json.loads(v2["flags"][BANNER]["metadata"]["payload"]) == {"color": "gold", "size": 2}
      and v2["flags"][LIMIT]["metadata"]["payload"] == "100" and v2["flags"][OFF]["metadata"]["payload"] is None,
      "v=2: number and json values as JSON text in metadata.payload, none when disabled")
for path in ["/flags", "/flags/?v=1", "/decide/?v=3", "/decide?v=3"]:
    status, legacy = raw(path, who)
    ok = (status == 200 and "flags" not in legacy and legacy["featureFlags"].get(BANNER) is True
          and legacy["featureFlags"].get(OFF) is False and legacy["featureFlags"].get(EXP) == rec[EXP]["variant"]
          and json.loads(legacy["featureFlagPayloads"][LIMIT]) == 100 and legacy.get("errorsWhileComputingFlags") is False)
    check(ok, f"{path} answers the legacy featureFlags/featureFlagPayloads shape")
status, d4 = raw("/decide/?v=4", who)
check(status == 200 and d4["flags"][LIMIT]["metadata"]["payload"] == "100", "/decide/?v=4 answers the flags shape")
status, tok = raw("/flags/?v=4", {**{k: v for k, v in who.items() if k != "api_key"}, "token": fw.project_key})
check(status == 200 and sorted(tok["flags"]) == sorted(rec), "the key may be sent as `token`")
sdk = fw.sdk_key("production", name=f"posthog-{run}")
status, by_sdk = raw("/flags/?v=4", {**who, "api_key": sdk})
check(status == 200 and by_sdk["flags"][LIMIT]["value"] == 100, "an SDK client key serves its environment")
staging = fw.sdk_key("staging", name=f"posthog-staging-{run}")
status, by_staging = raw("/flags/?v=4", {**who, "api_key": staging})
check(status == 200 and by_staging["flags"][LIMIT]["value"] is None and by_staging["flags"][LIMIT]["enabled"] is False,
      "a staging key sees the staging environment, where the feature is off")
status, bad = raw("/flags/?v=4", {**who, "api_key": "fwpub_not_a_real_key"})
check(status == 401 and isinstance(bad, dict), f"an unknown key is refused with 401 JSON: {status}")
status, missing = raw("/flags/?v=4", {k: v for k, v in who.items() if k != "distinct_id"})
check(status == 400 and isinstance(missing, dict), f"a request without distinct_id is refused with 400 JSON: {status}")
print("posthog-python flags: all checks passed")
