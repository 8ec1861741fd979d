#!/usr/bin/env python3
"""What the local runtime's sandboxes cost a deploy.

Starts `sylphx serve` twice on fresh data directories, once with sandboxes
(the default) and once with --insecure-shared-sandbox, deploys the same small
app N times in each through the REST API, and times each deploy from the
request to `success` (clone, release command, new replica ready and routed,
old one retired), polling every 5 ms. Also times one request through the app
router afterwards. Run as root (sandboxes need it):

    python3 bench/sandbox.py [--bin target/release/sylphx] [-n 20]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

APP = """
import os, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method, url, token=None, body=None, host=None):
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    if host:
        req.add_header("Host", host)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, data, timeout=60) as r:
        text = r.read().decode()
        return json.loads(text) if text.startswith(("{", "[")) else text


def make_repo(path):
    os.makedirs(path)
    with open(os.path.join(path, "app.py"), "w") as f:
        f.write(APP)
    with open(os.path.join(path, "Procfile"), "w") as f:
        f.write("release: true\nweb: exec python3 app.py\n")
    git = ["git", "-c", "user.email=b@example.com", "-c", "user.name=b"]
    subprocess.run(git + ["init", "-q", "-b", "main"], cwd=path, check=True)
    subprocess.run(git + ["add", "-A"], cwd=path, check=True)
    subprocess.run(git + ["commit", "-qm", "app"], cwd=path, check=True)


def run_mode(binary, work, repo, mode, n):
    data = os.path.join(work, mode)
    port, apps = free_port(), free_port()
    args = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--apps-listen", f"127.0.0.1:{apps}"]
    if mode == "shared":
        args.append("--insecure-shared-sandbox")
    env = dict(os.environ, SYLPHX_DATA_DIR=data, SYLPHX_LOG="warn")
    log = open(os.path.join(work, mode + ".log"), "w")
    server = subprocess.Popen(args, env=env, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        for _ in range(600):
            try:
                call("GET", base + "/health/status")
                break
            except OSError:
                time.sleep(0.05)
        token = open(os.path.join(data, "admin-token")).read().strip()
        call("POST", base + "/projects", token, {"name": "b", "slug": "b", "gitRepository": repo})
        deploys = []
        for _ in range(n):
            t0 = time.monotonic()
            d = call("POST", base + "/projects/b/deploy", token, {})
            while True:
                rows = call("GET", base + "/projects/b/deployments?limit=1", token)
                if rows and rows[0]["id"] == d["deploymentId"] and rows[0]["status"] in ("success", "failed"):
                    break
                time.sleep(0.005)
            deploys.append((time.monotonic() - t0) * 1000)
            assert rows[0]["status"] == "success", rows[0]
        requests = []
        for _ in range(200):
            t0 = time.monotonic()
            assert call("GET", f"http://127.0.0.1:{apps}/", host="b.localhost") == "ok"
            requests.append((time.monotonic() - t0) * 1000)
        return deploys, requests
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def summary(xs):
    xs = sorted(xs)
    return f"median {statistics.median(xs):7.1f} ms, p90 {xs[int(len(xs) * 0.9) - 1]:7.1f} ms, min {xs[0]:7.1f} ms"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "sylphx"))
    p.add_argument("-n", type=int, default=20)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="sylphx-sandbox-bench-")
    os.chmod(work, 0o755)  # the sandboxes reach their releases through it
    try:
        repo = os.path.join(work, "repo")
        make_repo(repo)
        for mode in ("sandboxed", "shared"):
            deploys, requests = run_mode(a.bin, work, repo, mode, a.n)
            print(f"{mode:9}  deploy to success: {summary(deploys)}")
            print(f"{'':9}  request via router: {summary(requests)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
