#!/usr/bin/python3
"""A stand-in for typesense-server where Typesense is not installed.

It takes the real program's `--config=<file>` (an INI file with a
`[server]` section), listens where that file says (the API and the Raft
peering port, both on `api-address`/`peering-address`), answers `/health`
with `{"ok":true}`, and lets only requests carrying the configured key in
`X-TYPESENSE-API-KEY` list, create and read collections, answering 401
otherwise, as Typesense does. Collections are kept in `data-dir`.
"""
import configparser, http.server, json, os, socket, sys, threading

path = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config="))
conf = configparser.ConfigParser()
conf.read(path)
s = conf["server"]
key = s["api-key"]
data = s["data-dir"]
store = os.path.join(data, "collections.json")

def load():
    try:
        with open(store) as f:
            return json.load(f)
    except FileNotFoundError:
        return []

peer = socket.socket()
peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
peer.bind((s["peering-address"], int(s["peering-port"])))
peer.listen()

class Api(http.server.BaseHTTPRequestHandler):
    def answer(self, code, body):
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def allowed(self):
        if self.headers.get("X-TYPESENSE-API-KEY") == key:
            return True
        self.answer(401, {"message": "Forbidden - a valid `x-typesense-api-key` header must be sent."})
        return False

    def do_GET(self):
        if self.path == "/health":
            return self.answer(200, {"ok": True})
        if not self.allowed():
            return
        if self.path == "/collections":
            return self.answer(200, load())
        name = self.path.removeprefix("/collections/")
        found = [c for c in load() if c["name"] == name]
        if found:
            return self.answer(200, found[0])
        self.answer(404, {"message": "Not Found"})

    def do_POST(self):
        if not self.allowed():
            return
        if self.path != "/collections":
            return self.answer(404, {"message": "Not Found"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        collections = load()
        if any(c["name"] == body["name"] for c in collections):
            return self.answer(409, {"message": "A collection with name `%s` already exists." % body["name"]})
        body["num_documents"] = 0
        collections.append(body)
        with open(store + ".tmp", "w") as f:
            json.dump(collections, f)
        os.replace(store + ".tmp", store)
        self.answer(201, body)

    def log_message(self, fmt, *args):
        sys.stdout.write("I " + fmt % args + "\n")
        sys.stdout.flush()

threading.Thread(target=lambda: [peer.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
print("Typesense stand-in serving on %s:%s" % (s["api-address"], s["api-port"]), flush=True)
http.server.ThreadingHTTPServer((s["api-address"], int(s["api-port"])), Api).serve_forever()
