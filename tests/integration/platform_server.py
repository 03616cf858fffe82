"""A user's platform for the integration tests: docs/platform-api.md, strictly.

Writes (ban, unban, entitlement, resource-flags/remove) change only the
restrictions for non-payment, as the contract says; a repeated
Idempotency-Key is answered 200 and not applied again. Reads answer
GET /v1/accounts/{id} and POST /v1/accounts/read with every restriction and
its owner (reason, placed_by) and the number of resource flags.

A test changes the platform behind dunning's back as another system would
(`place`, `lift`, `set_flags`), injects faults (`mode` for writes:
"ok", "slow", "5xx", "4xx"; `read_mode` for reads: "ok", "slow", "5xx",
"garbage"; `fail_5xx`, `reject`), stops and restarts it on the same port
(its state survives), and counts requests (`calls` are the write calls,
`reads` every read request with the number of accounts it asked for).

Loopback only: it listens on 127.0.0.1.
"""

import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "tok_platform_test_0123456789"
OWN = "non_payment"
BATCH_MAX = 1000


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Account:
    def __init__(self):
        self.bans = {}      # reason -> placed_by
        self.levels = {}    # reason -> (level, placed_by)
        self.flags = 0
        self.flags_removed = False

    def as_json(self, account_id):
        rs = [{"type": "ban", "reason": r, "placed_by": by} for r, by in sorted(self.bans.items())]
        rs += [{"type": "entitlement", "level": lvl, "reason": r, "placed_by": by}
               for r, (lvl, by) in sorted(self.levels.items())]
        return {"account_id": account_id, "restrictions": rs, "resource_flags": self.flags}


class _Accounts(dict):
    def __missing__(self, key):
        a = self[key] = Account()
        return a


class Platform:
    def __init__(self, port=None, token=TOKEN):
        self.port = port or free_port()
        self.token = token
        self.mode = "ok"
        self.read_mode = "ok"
        self.delay = 0.0
        self.fail_5xx = 0
        self.reject = set()
        self.calls = []      # write calls, in arrival order
        self.applied = []    # (account, op, level, key) applied, in order
        self.replays = []
        self.reads = []      # (kind, number of accounts) per read request
        self.accounts = _Accounts()
        self.lock = threading.Lock()
        self.httpd = None

    # -- what a test sees and does ------------------------------------------

    @property
    def url(self):
        return "http://127.0.0.1:%d/v1/" % self.port

    @property
    def state(self):
        """Dunning's part per account: {"banned", "entitlement", "flags_removed"}."""
        with self.lock:
            return {a: {"banned": OWN in acc.bans,
                        "entitlement": acc.levels.get(OWN, ("full", ""))[0],
                        "flags_removed": acc.flags_removed}
                    for a, acc in self.accounts.items()}

    def place(self, account, kind, reason, placed_by, level=None):
        """Another system restricts the account (a legacy handler, trust and safety)."""
        with self.lock:
            acc = self.accounts[account]
            if kind == "ban":
                acc.bans[reason] = placed_by
            else:
                acc.levels[reason] = (level, placed_by)

    def lift(self, account, kind, reason):
        with self.lock:
            acc = self.accounts[account]
            (acc.bans if kind == "ban" else acc.levels).pop(reason, None)

    def set_flags(self, account, n):
        with self.lock:
            self.accounts[account].flags = n

    def restrictions(self, account):
        with self.lock:
            return self.accounts[account].as_json(account)["restrictions"]

    def read_count(self, kind=None):
        with self.lock:
            return sum(1 for k, _n in self.reads if kind is None or k == kind)

    # -- the server ----------------------------------------------------------

    def start(self):
        platform = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body: no Nagle wait between them

            def log_message(self, *a):
                pass

            def answer(self, status, obj, raw=None):
                body = raw if raw is not None else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def body(self):
                n = int(self.headers.get("Content-Length", "0"))
                return self.rfile.read(n)

            def authorized(self):
                return self.headers.get("Authorization") == "Bearer " + platform.token

            def read_fault(self):
                mode = platform.read_mode
                if mode == "slow":
                    time.sleep(platform.delay)
                if mode == "5xx":
                    self.answer(503, {"error": "unavailable"})
                    return True
                if mode == "garbage":
                    self.answer(200, None, raw=b'{"account_id": 42, "restrictions": "no"}')
                    return True
                return False

            def do_GET(self):
                raw = self.body()
                if not self.authorized():
                    return self.answer(401, {"error": "bad token"})
                path = self.path.split("?")[0]
                if path == "/v1/health":
                    return self.answer(200, {"ok": True})
                parts = path.split("/")  # "", v1, accounts, ID
                if len(parts) != 4 or parts[1] != "v1" or parts[2] != "accounts" or raw:
                    return self.answer(404, {"error": "no such route"})
                account = urllib.parse.unquote(parts[3])
                with platform.lock:
                    platform.reads.append(("single", 1))
                if self.read_fault():
                    return
                with platform.lock:
                    obj = platform.accounts[account].as_json(account)
                self.answer(200, obj)

            def do_POST(self):
                if self.path == "/v1/accounts/read":
                    return self.batch_read()
                self.handle_call()

            def do_PUT(self):
                self.handle_call()

            def batch_read(self):
                raw = self.body()
                if not self.authorized():
                    return self.answer(401, {"error": "bad token"})
                try:
                    ids = json.loads(raw)["account_ids"]
                    assert isinstance(ids, list) and all(isinstance(i, str) for i in ids)
                except Exception:
                    return self.answer(400, {"error": "account_ids: a list of strings"})
                if len(ids) > BATCH_MAX:
                    return self.answer(413, {"error": "at most %d accounts" % BATCH_MAX})
                with platform.lock:
                    platform.reads.append(("batch", len(ids)))
                if self.read_fault():
                    return
                with platform.lock:
                    out = [platform.accounts[i].as_json(i) for i in ids]
                self.answer(200, {"accounts": out})

            def handle_call(self):
                raw = self.body()
                body = json.loads(raw) if raw else {}
                key = self.headers.get("Idempotency-Key", "")
                with platform.lock:
                    platform.calls.append({
                        "method": self.command, "path": self.path, "key": key,
                        "auth": self.headers.get("Authorization"), "body": body, "raw": raw})
                    mode, delay = platform.mode, platform.delay
                    fail = platform.fail_5xx > 0
                    if fail:
                        platform.fail_5xx -= 1
                if mode == "slow":
                    time.sleep(delay)
                if not self.authorized():
                    return self.answer(401, {"error": "bad token"})
                if mode == "5xx" or fail:
                    return self.answer(503, {"error": "unavailable"})
                if mode == "4xx":
                    return self.answer(400, {"error": "bad request"})
                parts = self.path.split("/")  # "", v1, accounts, ID, op...
                account = urllib.parse.unquote(parts[3])
                op = "/".join(parts[4:])
                if account in platform.reject:
                    return self.answer(422, {"error": "no such account on the platform"})
                with platform.lock:
                    if key in {a[3] for a in platform.applied}:
                        platform.replays.append(key)
                        return self.answer(200, {"replayed": True})
                    acc = platform.accounts[account]
                    if op == "ban":
                        acc.bans[OWN] = "dunning"
                    elif op == "unban":
                        acc.bans.pop(OWN, None)
                    elif op == "entitlement":
                        if body["level"] == "full":
                            acc.levels.pop(OWN, None)
                        else:
                            acc.levels[OWN] = (body["level"], "dunning")
                    elif op == "resource-flags/remove":
                        acc.flags = 0
                        acc.flags_removed = True
                    else:
                        return self.answer(404, {"error": "no such call"})
                    platform.applied.append((account, op, body.get("level", ""), key))
                self.answer(200, {"ok": True})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def platform_config(path, platform, read_timeout_ms=1000, read_batch=None, timeout_ms=2000):
    """A config file with the HTTP platform (the database comes from --db)."""
    lines = ["[platform]", "kind = http", "base_url = %s" % platform.url,
             "token = %s" % platform.token, "timeout_ms = %d" % timeout_ms,
             "read_timeout_ms = %d" % read_timeout_ms]
    if read_batch:
        lines.append("read_batch = %d" % read_batch)
    path.write_text("\n".join(lines) + "\n")
    return path
