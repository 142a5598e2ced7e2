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

    def send(self, method, path, body=None):
        """A native API call with the personal key; returns (status, parsed body)."""
        req = urllib.request.Request(
            f"{self.url}/api/v1/projects/{self.project_id}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.personal_key}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def create_feature(self, key, value_type, default, rules=None, enabled=True, **extra):
        """Creates a feature whose production environment has `rules`; returns the stored document."""
        body = {"key": key, "value_type": value_type, "default_value": default,
                "environments": {"production": {"enabled": enabled, "rules": rules or []}}, **extra}
        status, created = self.send("POST", "/features", body)
        assert status == 201, (status, created)
        return created

    def sdk_key(self, environment="production", name="client-tests"):
        status, conn = self.send("POST", "/sdk-connections", {"environment": environment, "name": name})
        assert status == 201, (status, conn)
        return conn["client_key"]

    def evaluate(self, attributes, environment="production"):
        """Flywheel's own server-side evaluation, the reference the SDK answers are compared with."""
        status, body = self.send("POST", "/evaluate", {"environment": environment, "attributes": attributes})
        assert status == 200, (status, body)
        return body["results"]

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
