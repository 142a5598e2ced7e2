"""Reads Flywheel's native API for the client-compatibility tests (stdlib only)."""
import json
import os
import urllib.error
import urllib.request


class Flywheel:
    def __init__(self):
        self.url = os.environ["FLYWHEEL_URL"].rstrip("/")
        self.project_id = os.environ["FLYWHEEL_PROJECT_ID"]
        self.project_key = os.environ["FLYWHEEL_PROJECT_KEY"]
        self.personal_key = os.environ["FLYWHEEL_PERSONAL_KEY"]

    def get(self, path):
        req = urllib.request.Request(
            f"{self.url}/api/v1/projects/{self.project_id}{path}",
            headers={"Authorization": f"Bearer {self.personal_key}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def events(self, **query):
        qs = "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in query.items())
        status, body = self.get(f"/events?{qs}")
        assert status == 200, (status, body)
        return body["results"]

    def person(self, distinct_id):
        status, body = self.get(f"/persons/{urllib.request.quote(distinct_id)}")
        assert status == 200, (status, body)
        return body


def check(condition, message):
    if not condition:
        raise AssertionError(message)
    print(f"ok - {message}")
