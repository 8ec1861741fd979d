"""Schemathesis hooks of tests/openapi_conformance.rs.

They make the generated requests what a real client sends, where JSON Schema
cannot say it:
- a fresh Idempotency-Key per request (a key names one request; reusing it
  with another body is refused with 422, as documented);
- no env var or config key twice in one request (the document says so in
  words; JSON Schema has no "unique by property");
- half of the path parameters pointing at resources that exist (a project,
  its environment, service, config key), so the rules behind a found
  resource are reached too, not only "404 Not Found";
- no `stream=true` on the logs endpoint: a stream does not end (its own
  test is tests/subscriptions.rs);
- backups and branches asked of the fixture database only (a KV store's
  are a 400, as the reference says, and a path cannot say which kind it
  names); restores
  aimed at no resource (a restore's window, "not before the first backup",
  depends on the database's history: tests/resources.rs covers it); no
  `config` in a resource update (which settings are allowed depends on the
  provider of the resource the path names);
- a valid CIDR block in a TCP allowlist rule (JSON Schema cannot say what
  an IPv4 or IPv6 block is), picked from the generated text.
"""

import os
import uuid
import zlib

import schemathesis

FIXTURE = {
    "id": os.environ.get("ST_PROJECT"),
    "envId": os.environ.get("ST_ENV_ID"),
    "name": os.environ.get("ST_SERVICE"),
    "key": os.environ.get("ST_CONFIG_KEY"),
    "serviceId": os.environ.get("ST_SERVICE_ID"),
    "resourceId": os.environ.get("ST_RESOURCE_ID"),
}


def _keys_repeat(items):
    if not isinstance(items, list):
        return False
    keys = [repr(i.get("key")) for i in items if isinstance(i, dict)]
    return len(keys) != len(set(keys))


@schemathesis.hook
def filter_case(context, case):
    body = case.body
    if isinstance(body, dict):
        return not any(_keys_repeat(body.get(k)) for k in ("vars", "entries"))
    return True


@schemathesis.hook
def map_case(context, case):
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
    # A log stream does not end: tests/subscriptions.rs covers it.
    if case.query and "stream" in case.query:
        case.query["stream"] = False
    label = case.operation.label
    if label == "POST /services/{serviceId}/tcp-proxy/allowlist" and isinstance(
        case.body, dict
    ) and isinstance(case.body.get("cidr"), str):
        n = zlib.crc32(case.body["cidr"].encode())
        case.body["cidr"] = f"10.{n % 256}.{(n >> 8) % 256}.0/24"
    if label in ("PATCH /resources/{resourceId}", "PUT /resources/{resourceId}"):
        if isinstance(case.body, dict):
            case.body.pop("config", None)
    params = case.path_parameters
    if not params:
        return case
    if label in (
        "GET /resources/{resourceId}/backups",
        "POST /resources/{resourceId}/branch",
    ):
        params["resourceId"] = FIXTURE["resourceId"]
        return case
    if label == "POST /resources/{resourceId}/restore":
        params["resourceId"] = str(uuid.UUID(int=0))
        return case
    if case.operation.label == "DELETE /projects/{id}":
        # Deleting the fixture project would leave nothing to aim at (the
        # generator also reuses identifiers it saw in responses).
        if params.get("id") in (FIXTURE["id"], os.environ.get("ST_PROJECT_ID")):
            params["id"] = "not-the-fixture"
    elif zlib.crc32(repr(sorted(params.items())).encode()) % 2 == 0:
        for name in params:
            if FIXTURE.get(name):
                params[name] = FIXTURE[name]
    return case
