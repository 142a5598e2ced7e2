"""The OpenFeature Python SDK with the published OFREP provider (openfeature-provider-ofrep) evaluates Flywheel
features through POST /ofrep/v1/evaluate/flags/{key}: every value type with reason and variant, errors mapped to
OpenFeature error codes, targeting on context attributes, a rollout's share, environments chosen by the key."""
import json
import logging
import urllib.error
import urllib.request
import uuid

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.contrib.provider.ofrep import OFREPProvider

from flywheel_api import Flywheel, check

logging.basicConfig(level=logging.CRITICAL)  # the SDK logs every expected error at ERROR level
fw = Flywheel()
run = uuid.uuid4().hex[:6]
BOOL, TEXT, INT, FLOAT = f"of-bool-{run}", f"of-string-{run}", f"of-int-{run}", f"of-float-{run}"
OBJ, ROLLOUT, EXP, OFF, PLAIN = f"of-object-{run}", f"of-rollout-{run}", f"of-exp-{run}", f"of-off-{run}", f"of-plain-{run}"

fw.create_feature(BOOL, "boolean", False, [{"type": "force", "condition": {"plan": "pro"}, "value": True}])
fw.create_feature(TEXT, "string", "blue", [{"type": "force", "condition": {"country": {"$in": ["CA", "FR"]}}, "value": "red"}])
fw.create_feature(INT, "number", 3, [{"type": "force", "condition": {"plan": "pro"}, "value": 42}])
fw.create_feature(FLOAT, "number", 0.5, [{"type": "force", "condition": {"plan": "pro"}, "value": 2.75}])
fw.create_feature(OBJ, "json", {"layout": "a"}, [
    {"type": "force", "condition": {"email": {"$regex": "@acme\\.io$"}}, "value": {"layout": "b", "beta": True, "slots": [1, 2]}},
])
fw.create_feature(ROLLOUT, "boolean", False, [{"type": "rollout", "value": True, "coverage": 0.3}])
fw.create_feature(EXP, "string", "control", [
    {"type": "experiment", "variations": ["control", "treatment"], "weights": [0.5, 0.5], "coverage": 1},
])
fw.create_feature(OFF, "boolean", True, [{"type": "force", "value": True}], enabled=False)
fw.create_feature(PLAIN, "string", "static-value")
client_key = fw.sdk_key("production", name=f"openfeature-python-{run}")
staging_key = fw.sdk_key("staging", name=f"openfeature-python-staging-{run}")

# The provider has no built-in credential option: headers_factory is called for every request.
api.set_provider_and_wait(OFREPProvider(fw.url, headers_factory=lambda: {"Authorization": f"Bearer {client_key}"}), domain="bearer")
api.set_provider_and_wait(OFREPProvider(fw.url, headers_factory=lambda: {"X-API-Key": client_key}), domain="x-api-key")
api.set_provider_and_wait(OFREPProvider(fw.url, headers_factory=lambda: {"X-API-Key": fw.project_key}), domain="project-key")
api.set_provider_and_wait(OFREPProvider(fw.url, headers_factory=lambda: {"X-API-Key": staging_key}), domain="staging")
api.set_provider_and_wait(OFREPProvider(fw.url, headers_factory=lambda: {"X-API-Key": "sdk-not-a-real-key"}), domain="bad-key")
api.set_provider_and_wait(OFREPProvider(fw.url), domain="no-key")
of = api.get_client("x-api-key")


def ctx(key, **attrs):
    return EvaluationContext(targeting_key=key, attributes=attrs)


pro = ctx(f"user-pro-{run}", plan="pro", country="CA", email="ada@acme.io")
free = ctx(f"user-free-{run}", plan="free", country="DE", email="bob@example.com")


def ok(details, value, reasons):
    return details.value == value and details.reason in reasons and details.error_code is None


# --- every value type: value, reason, variant ----------------------------------------------------------------
d = of.get_boolean_details(BOOL, False, pro)
check(ok(d, True, {Reason.TARGETING_MATCH}) and isinstance(d.variant, str),
      f"boolean: a matching condition gives True, TARGETING_MATCH and a variant ({d.value}, {d.reason}, {d.variant!r})")
d_free = of.get_boolean_details(BOOL, True, free)
# OFREP has no DEFAULT reason: a feature whose rules did not match still had a dynamic evaluation.
check(d_free.value is False and d_free.error_code is None and d_free.reason in {Reason.TARGETING_MATCH, Reason.UNKNOWN},
      f"boolean: no match gives the feature's default, not the code default ({d_free.value}, {d_free.reason})")
check(d.variant != d_free.variant, f"the two outcomes have different variants ({d.variant!r}, {d_free.variant!r})")
d = of.get_string_details(TEXT, "code-default", pro)
check(ok(d, "red", {Reason.TARGETING_MATCH}), f"string: targeted value ({d.value}, {d.reason})")
d = of.get_string_details(TEXT, "code-default", free)
check(d.value == "blue" and d.error_code is None, f"string: feature default ({d.value}, {d.reason})")
d = of.get_integer_details(INT, 0, pro)
check(ok(d, 42, {Reason.TARGETING_MATCH}) and type(d.value) is int, f"integer: targeted value ({d.value!r}, {d.reason})")
d = of.get_integer_details(INT, 0, free)
check(d.value == 3 and type(d.value) is int and d.error_code is None, f"integer: feature default ({d.value!r})")
d = of.get_float_details(FLOAT, 0.0, pro)
check(ok(d, 2.75, {Reason.TARGETING_MATCH}), f"float: targeted value ({d.value!r}, {d.reason})")
d = of.get_float_details(FLOAT, 0.0, free)
check(d.value == 0.5 and d.error_code is None, f"float: feature default ({d.value!r})")
d = of.get_object_details(OBJ, {}, pro)
check(ok(d, {"layout": "b", "beta": True, "slots": [1, 2]}, {Reason.TARGETING_MATCH}), f"object: targeted value ({d.value}, {d.reason})")
d = of.get_object_details(OBJ, {}, free)
check(d.value == {"layout": "a"} and d.error_code is None, f"object: feature default ({d.value})")
d = of.get_string_details(PLAIN, "code-default", free)
check(ok(d, "static-value", {Reason.STATIC}), f"a feature without rules is STATIC ({d.value}, {d.reason})")
check(isinstance(d.flag_metadata, dict) and all(isinstance(v, (bool, int, float, str)) for v in d.flag_metadata.values()),
      f"flag metadata is a flat map of primitives: {d.flag_metadata}")

# --- errors ----------------------------------------------------------------------------------------------------
d = of.get_boolean_details(f"no-such-flag-{run}", True, pro)
check(d.value is True and d.error_code == ErrorCode.FLAG_NOT_FOUND and d.reason == Reason.ERROR,
      f"an unknown flag: code default with FLAG_NOT_FOUND ({d.error_code}, {d.error_message})")
d = of.get_boolean_details(TEXT, False, pro)
check(d.value is False and d.error_code == ErrorCode.TYPE_MISMATCH, f"a string flag read as boolean: TYPE_MISMATCH ({d.error_code})")
d = of.get_integer_details(OBJ, 7, pro)
check(d.value == 7 and d.error_code == ErrorCode.TYPE_MISMATCH, f"an object flag read as integer: TYPE_MISMATCH ({d.error_code})")
d = of.get_boolean_details(BOOL, True, EvaluationContext(attributes={"plan": "pro"}))
check(d.value is True and d.error_code == ErrorCode.TARGETING_KEY_MISSING,
      f"a context without targetingKey: TARGETING_KEY_MISSING ({d.error_code}, {d.error_message})")
d = api.get_client("bad-key").get_boolean_details(BOOL, True, pro)
check(d.value is True and d.error_code == ErrorCode.GENERAL and d.error_message == "unauthorized",
      f"an unknown key: 401, read as GENERAL 'unauthorized' ({d.error_code}, {d.error_message})")
d = api.get_client("no-key").get_boolean_details(BOOL, True, pro)
check(d.value is True and d.error_message == "unauthorized", f"no key at all: 401 ({d.error_code}, {d.error_message})")

# --- a feature disabled in the environment: the code default, reason DISABLED, no error -----------------------------
d = of.get_boolean_details(OFF, False, pro)
check(d.value is False and d.reason == Reason.DISABLED and d.error_code is None,
      f"a disabled feature returns the code default with DISABLED ({d.value}, {d.reason}, {d.error_code}, {d.error_message})")
d = of.get_boolean_details(OFF, True, pro)
check(d.value is True and d.reason == Reason.DISABLED, "the code default is whatever the caller passed")

# --- keys and environments -------------------------------------------------------------------------------------
for domain in ["bearer", "project-key"]:
    d = api.get_client(domain).get_integer_details(INT, 0, pro)
    check(ok(d, 42, {Reason.TARGETING_MATCH}), f"{domain}: the same answer as X-API-Key with the client key")
d = api.get_client("staging").get_integer_details(INT, -1, pro)
check(d.value == -1 and d.reason == Reason.DISABLED, f"a staging client key sees staging, where the feature is off ({d.reason})")

# --- targeting by context attributes ---------------------------------------------------------------------------
# GrowthBook semantics: $in on an array attribute matches when any element is listed.
cases = [({"country": "FR"}, "red"), ({"country": "US"}, "blue"), ({"country": "ca"}, "blue"),
         ({"country": ["US", "CA"]}, "red"), ({}, "blue")]
for attrs, want in cases:
    got = of.get_string_value(TEXT, "code-default", ctx(f"t-{run}", **attrs))
    check(got == want, f"country={attrs.get('country', '(absent)')!r} -> {want!r} (got {got!r})")
check(of.get_object_value(OBJ, {}, ctx(f"t-{run}", email="x@ACME.io")) == {"layout": "a"}, "$regex is case-sensitive")

# --- a 30% rollout over many targeting keys, and an experiment, agree with Flywheel's own evaluation ---------------
on, disagree, splits, variants = 0, [], 0, {}
n = 1000
for i in range(n):
    key = f"rollout-{run}-{i}"
    d = of.get_boolean_details(ROLLOUT, False, ctx(key))
    on += d.value is True
    splits += d.reason == Reason.SPLIT
    e = of.get_string_details(EXP, "code-default", ctx(key))
    variants[e.value] = variants.get(e.value, 0) + 1
    if i % 10 == 0:
        reference = fw.evaluate({"id": key})
        if d.value != reference[ROLLOUT]["value"] or e.value != reference[EXP]["value"]:
            disagree.append((key, d.value, e.value, reference[ROLLOUT]["value"], reference[EXP]["value"]))
check(0.25 <= on / n <= 0.35, f"the 30% rollout is on for {on / n:.1%} of {n} targeting keys")
check(splits >= on, f"rollout hits report SPLIT ({splits} SPLIT for {on} on)")
check(set(variants) == {"control", "treatment"} and all(0.44 <= c / n <= 0.56 for c in variants.values()),
      f"the 50/50 experiment splits {variants}")
check(not disagree, f"OFREP answers equal Flywheel's server-side evaluation ({disagree[:3]})")

# --- the raw protocol: what the provider does not show ----------------------------------------------------------


def post(path, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{fw.url}{path}", data=data, method="POST",
                                 headers={"Content-Type": "application/json", "X-API-Key": client_key, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


status, headers, body = post(f"/ofrep/v1/evaluate/flags/{OFF}", {"context": {"targetingKey": "u"}})
doc = json.loads(body)
check(status == 200 and "value" not in doc and doc["reason"] == "DISABLED" and doc["key"] == OFF,
      f"a disabled feature: 200, reason DISABLED, no value member: {doc}")
check(isinstance(doc.get("variant"), str),
      f"a disabled feature still sends a string variant (the Python provider reads data['variant'] unconditionally): {doc}")
status, headers, body = post(f"/ofrep/v1/evaluate/flags/{INT}", {"context": {"targetingKey": "u", "plan": "pro"}})
check(status == 200 and headers.get("Content-Type", "").startswith("application/json") and json.loads(body)["value"] == 42,
      "single evaluation answers application/json")
status, _, body = post(f"/ofrep/v1/evaluate/flags/no-such-{run}", {"context": {"targetingKey": "u"}})
doc = json.loads(body)
check(status == 404 and doc.get("errorCode") == "FLAG_NOT_FOUND" and doc.get("key") == f"no-such-{run}",
      f"404 body has key and errorCode FLAG_NOT_FOUND: {doc}")
status, _, body = post(f"/ofrep/v1/evaluate/flags/{BOOL}", {"context": {"plan": "pro"}})
doc = json.loads(body)
check(status == 400 and doc.get("errorCode") == "TARGETING_KEY_MISSING" and doc.get("key") == BOOL and "errorDetails" in doc,
      f"400 TARGETING_KEY_MISSING with key and errorDetails: {doc}")
status, _, body = post(f"/ofrep/v1/evaluate/flags/{BOOL}", b"{not json")
doc = json.loads(body)
check(status == 400 and doc.get("errorCode") == "PARSE_ERROR" and doc.get("key") == BOOL, f"a body that is not JSON: 400 PARSE_ERROR: {doc}")
status, _, body = post(f"/ofrep/v1/evaluate/flags/{BOOL}", {"context": "nope"})
doc = json.loads(body)
check(status == 400 and doc.get("errorCode") in ("INVALID_CONTEXT", "PARSE_ERROR"), f"a context that is not an object: 400 {doc}")
status, _, _ = post(f"/ofrep/v1/evaluate/flags/{BOOL}", {"context": {"targetingKey": "u"}}, {"X-API-Key": "sdk-nope"})
check(status == 401, f"an unknown key: 401 ({status})")

status, headers, body = post("/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "bulk-user", "plan": "pro", "country": "FR"}})
bulk = json.loads(body)
by_key = {f["key"]: f for f in bulk.get("flags", [])}
etag = headers.get("ETag")
check(status == 200 and etag and {BOOL, TEXT, INT, FLOAT, OBJ, ROLLOUT, EXP, OFF, PLAIN} <= set(by_key),
      f"bulk evaluation returns every flag with an ETag ({status}, {etag})")
check(by_key[BOOL]["value"] is True and by_key[TEXT]["value"] == "red" and by_key[INT]["value"] == 42
      and "value" not in by_key[OFF] and by_key[OFF]["reason"] == "DISABLED", "bulk values match single evaluation")
status, headers304, body = post("/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "bulk-user", "plan": "pro", "country": "FR"}},
                                {"If-None-Match": etag})
check(status == 304 and body == b"", f"If-None-Match with the current ETag: 304 with an empty body ({status})")
status, headers2, _ = post("/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "bulk-user", "plan": "free", "country": "FR"}},
                           {"If-None-Match": etag})
check(status == 200 and headers2.get("ETag") != etag, "another context with the old ETag: 200 and a new ETag")

api.shutdown()
print("openfeature-python OFREP: all checks passed")
