"""A realistic posthog-python session against a running `flywheel serve`, read back through the native API."""
import logging
import uuid

from posthog import Posthog

from flywheel_api import Flywheel, check

logging.basicConfig(level=logging.WARNING)
fw = Flywheel()
errors = []
run = uuid.uuid4().hex[:8]
anon, user, alias_id = f"anon-{run}", f"user-{run}", f"alias-{run}"

client = Posthog(fw.project_key, host=fw.url, flush_at=10, flush_interval=0.2, on_error=lambda e, batch: errors.append(e))
for page in ["/", "/pricing", "/signup"]:
    client.capture("$pageview", distinct_id=anon, properties={"$current_url": f"https://example.com{page}"})
client.capture("$identify", distinct_id=user, properties={"$anon_distinct_id": anon, "$set": {"email": f"{run}@example.com", "plan": "free"}})
client.set_once(distinct_id=user, properties={"signup_source": "ads"})
client.set(distinct_id=user, properties={"plan": "pro"})
client.alias(previous_id=user, distinct_id=alias_id)
client.group_identify("company", f"acme-{run}", {"name": "Acme", "seats": 12}, distinct_id=user)
client.capture("invited_teammate", distinct_id=user, groups={"company": f"acme-{run}"}, properties={"count": 2})
client.flush()
client.shutdown()

# A second client sends its batch gzip-compressed.
gz = Posthog(fw.project_key, host=fw.url, gzip=True, flush_at=50, on_error=lambda e, batch: errors.append(e))
for i in range(50):
    gz.capture("feature_used", distinct_id=user, properties={"i": i, "feature": "export"})
gz.flush()
gz.shutdown()
check(not errors, f"the SDK reported no errors: {errors}")

person = fw.person(anon)
check(person["distinct_ids"] == sorted([anon, user, alias_id]), f"identify and alias merged ids: {person['distinct_ids']}")
check(person["is_identified"] is True, "the person is identified")
props = person["properties"]
check(props.get("email") == f"{run}@example.com", "$set from $identify applied")
check(props.get("plan") == "pro", "later set() wins")
check(props.get("signup_source") == "ads", "set_once applied")
groups = person["groups"]
check(len(groups) == 1 and groups[0]["group_type"] == "company" and groups[0]["group_key"] == f"acme-{run}", f"person linked to its group: {groups}")
check(groups[0]["properties"] == {"name": "Acme", "seats": 12}, "group properties from group_identify")

events = fw.events(person_id=person["id"], limit=1000)
names = sorted(e["event"] for e in events)
expected = sorted(["$pageview"] * 3 + ["$identify", "$set_once", "$set", "$create_alias", "$groupidentify", "invited_teammate"] + ["feature_used"] * 50)
check(names == expected, f"every event is stored once under the person ({len(names)} of {len(expected)})")
check(all(e["person_id"] == person["id"] for e in events), "every event resolves to the merged person")
check(all(e["properties"].get("$lib") == "posthog-python" for e in events), "SDK properties kept")
urls = sorted(e["properties"]["$current_url"] for e in events if e["event"] == "$pageview")
check(urls == ["https://example.com/", "https://example.com/pricing", "https://example.com/signup"], "event properties kept")
used = sorted(e["properties"]["i"] for e in events if e["event"] == "feature_used")
check(used == list(range(50)), "the gzip batch arrived whole")
invited = [e for e in events if e["event"] == "invited_teammate"][0]
check(invited["properties"]["$groups"] == {"company": f"acme-{run}"}, "groups sent with capture are stored")
print("posthog-python session: all checks passed")
