#!/usr/bin/env python3
"""Managed data services on the local runtime: how long from `POST /resources`
to `status: ready` for PostgreSQL and Redis, how long a fast branch of a
100 MB database takes, and how long a point-in-time restore takes.

Usage: bench/resources.py <path to a release `sylphx` binary> [runs]

It starts `sylphx serve` (as root, sandboxes on, SQLite store) in a fresh
temporary data directory on free ports, measures through the REST API
(polling `GET /resources/:id` every 10 ms, so a figure may read up to 10 ms
long), prints a table, and stops everything it started. Needs psql.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, base, token):
        self.base, self.token = base, token

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.token)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def ready(self, rid, started):
        """Seconds from `started` until the resource is ready."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status, r = self.call("GET", f"/resources/{rid}")
            if r and r.get("status") == "ready":
                return time.monotonic() - started, r
            if r and r.get("status") == "failed":
                raise SystemExit(f"resource failed: {r}")
            time.sleep(0.01)
        raise SystemExit(f"resource {rid} never became ready")

    def provision(self, body):
        started = time.monotonic()
        status, r = self.call("POST", "/resources", body)
        assert status == 202, (status, r)
        return self.ready(r["id"], started)


def psql(url, sql):
    out = subprocess.run(["psql", url, "-tAc", sql], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def summary(name, xs):
    xs = sorted(xs)
    return f"| {name} | {len(xs)} | {xs[0]*1000:.0f} | {statistics.median(xs)*1000:.0f} | {xs[-1]*1000:.0f} |"


def main():
    binary = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    work = tempfile.mkdtemp(prefix="sylphx-bench-")
    os.chmod(work, 0o755)
    data = os.path.join(work, "data")
    port = free_port()
    env = dict(os.environ)
    env.update({
        "SYLPHX_DATA_DIR": data,
        "SYLPHX_RATE_LIMITS": "off",
        "SYLPHX_MAX_RESOURCES_PER_ORGANIZATION": "100",
        "SYLPHX_RESOURCE_PORTS": "23000-23199",
        "SYLPHX_LOG": "warn",
    })
    env.pop("SYLPHX_DATABASE_URL", None)
    log = open(os.path.join(work, "serve.log"), "w")
    serve = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--apps-listen", f"127.0.0.1:{free_port()}"],
        env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/health/status", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline or serve.poll() is not None:
                    raise SystemExit("serve did not start; see " + log.name)
                time.sleep(0.05)
        token = open(os.path.join(data, "admin-token")).read().strip()
        api = Api(base, token)

        pg, kv = [], []
        for i in range(runs):
            pg.append(api.provision({"name": f"pg{i}", "kind": "database"})[0])
            kv.append(api.provision({"name": f"kv{i}", "kind": "kv"})[0])

        # A 100 MB database: its fast branch, then a point-in-time restore.
        _, big = api.provision({"name": "big", "kind": "database", "config": {"memoryMb": 512}})
        url = big["connectionString"]
        psql(url, "create table t (id bigint, pad text); "
                  "insert into t select g, repeat('x', 900) from generate_series(1, 100000) g")
        size = int(psql(url, "select pg_database_size(current_database())"))
        branch, restore = [], []
        for i in range(runs):
            started = time.monotonic()
            status, b = api.call("POST", f"/resources/{big['id']}/branch", {"name": f"b{i}", "fast": True})
            assert status == 201, (status, b)
            took, b = api.ready(b["id"], started)
            branch.append(took)
            assert psql(b["connectionString"], "select count(*) from t") == "100000"
            api.call("DELETE", f"/resources/{b['id']}")
        for i in range(runs):
            target = psql(url, "select to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
            psql(url, f"insert into t values (-{i + 1}, 'after')")
            started = time.monotonic()
            status, r = api.call("POST", f"/resources/{big['id']}/restore", {"targetTime": target})
            assert status == 202, (status, r)
            took, r = api.ready(r["restoreId"], started)
            restore.append(took)
            assert psql(r["connectionString"], "select count(*) from t where id < 0") == str(i)
            api.call("DELETE", f"/resources/{r['id']}")

        print(f"database for branch and restore: {size / 1e6:.0f} MB\n")
        print("| measured | runs | min ms | median ms | max ms |")
        print("|---|---|---|---|---|")
        print(summary("PostgreSQL: POST /resources to ready", pg))
        print(summary("Redis: POST /resources to ready", kv))
        print(summary("fast branch of the database to ready", branch))
        print(summary("point-in-time restore to ready", restore))
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
