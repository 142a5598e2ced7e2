"""A realistic segment-analytics-python session against a running `flywheel serve`, read back through the native API."""
import uuid

import segment.analytics as analytics

from flywheel_api import Flywheel, check

fw = Flywheel()
errors = []
run = uuid.uuid4().hex[:8]
anon, user, old = f"seg-anon-{run}", f"seg-user-{run}", f"seg-old-{run}"

client = analytics.Client(fw.project_key, host=fw.url, on_error=lambda e, batch: errors.append(e), upload_size=20)
client.page(anonymous_id=anon, name="Pricing", properties={"url": "https://example.com/pricing"})
client.track(anonymous_id=anon, event="Signup Started", properties={"plan": "team"})
client.identify(user_id=user, anonymous_id=anon, traits={"email": f"{run}@example.com", "plan": "team"})
client.alias(previous_id=old, user_id=user)
client.group(user_id=user, group_id=f"org-{run}", traits={"name": "Globex", "employees": 40})
client.screen(user_id=user, name="Dashboard")
for i in range(30):
    client.track(user_id=user, event="Report Viewed", properties={"i": i})
client.flush()
client.shutdown()

# gzip-compressed batches.
gz = analytics.Client(fw.project_key, host=fw.url, gzip=True, on_error=lambda e, batch: errors.append(e))
for i in range(20):
    gz.track(user_id=user, event="Exported", properties={"i": i})
gz.flush()
gz.shutdown()
check(not errors, f"the SDK reported no errors: {errors}")

person = fw.person(user)
check(person["distinct_ids"] == sorted([anon, user, old]), f"identify and alias merged ids: {person['distinct_ids']}")
check(person["properties"].get("email") == f"{run}@example.com", "identify traits became person properties")
groups = person["groups"]
check(len(groups) == 1 and groups[0]["group_key"] == f"org-{run}", f"group call linked the person: {groups}")
check(groups[0]["properties"].get("name") == "Globex", "group traits became group properties")

events = fw.events(person_id=person["id"], limit=1000)
names = sorted(e["event"] for e in events)
expected = sorted(["$pageview", "Signup Started", "$identify", "$create_alias", "$groupidentify", "$screen"] + ["Report Viewed"] * 30 + ["Exported"] * 20)
check(names == expected, f"every message is stored once under the person ({len(names)} of {len(expected)})")
page = [e for e in events if e["event"] == "$pageview"][0]
check(page["properties"].get("$current_url") == "https://example.com/pricing", "page url mapped to $current_url")
screen = [e for e in events if e["event"] == "$screen"][0]
check(screen["properties"].get("$screen_name") == "Dashboard", "screen name mapped to $screen_name")
check(sorted(e["properties"]["i"] for e in events if e["event"] == "Exported") == list(range(20)), "the gzip batches arrived whole")
check(all(e["properties"].get("$lib") == "analytics-python" for e in events), f"library recorded: {events[0]['properties'].get('$lib')}")
print("segment-analytics-python session: all checks passed")
