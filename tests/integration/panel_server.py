"""A `dunning serve` with the support panel on, for the panel's tests.

PanelServer starts the real binary over a database the `dun` fixture
filled (SQLite file or PostgreSQL URL), with a users file made by
`dunning users add`; PanelClient is a person's browser reduced to HTTP:
a cookie jar, the sign-in form, and forms posted with their CSRF token
and the panel's own Origin.
"""

import http.client
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from conftest import DUN_BINARY

PANEL_USER = "alice"
PANEL_PASSWORD = "correct horse battery"


def users_add(path, name, password, expect=0):
    r = subprocess.run([str(DUN_BINARY), "users", "add", name, "--file", str(path)],
                       input=password + "\n", capture_output=True, text=True)
    assert r.returncode == expect, (r.returncode, r.stdout, r.stderr)
    return r


class PanelServer:
    def __init__(self, dun, users=True, extra=""):
        self.dun = dun
        self.dir = Path(dun.workdir)
        self.users = self.dir / "panel-users"
        if users:
            users_add(self.users, PANEL_USER, PANEL_PASSWORD)
        db_line = ("url = %s" % dun.db) if dun.backend == "postgresql" else ("path = %s" % dun.db)
        panel = "[panel]\nusers_file = %s\n" % self.users if users else ""
        self.conf = self.dir / "panel.conf"
        self.conf.write_text(
            "[server]\nlisten = 127.0.0.1:0\nworkers = 2\npoll_ms = 50\n"
            "[database]\n%s\n[admin]\ntoken = admin-token\n"
            "[inbox]\nlease_s = 5\nbackoff_base_s = 1\nbackoff_max_s = 2\n%s%s"
            % (db_line, panel, extra))
        self.port_file = self.dir / "panel.port"
        self.log_path = self.dir / "panel.log"
        self.proc = None
        self.port = None

    def start(self, timeout=20):
        if self.port_file.exists():
            self.port_file.unlink()
        self.log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
        env["TZ"] = "UTC"
        self.proc = subprocess.Popen(
            [str(DUN_BINARY), "serve", "--config", str(self.conf), "--port-file",
             str(self.port_file)], stdout=self.log, stderr=self.log, env=env, cwd=self.dir)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.port_file.exists() and self.port_file.read_text().endswith("\n"):
                self.port = int(self.port_file.read_text())
                return self
            if self.proc.poll() is not None:
                raise AssertionError("serve exited %s:\n%s" % (self.proc.returncode, self.logs()))
            time.sleep(0.02)
        raise AssertionError("serve did not start:\n" + self.logs())

    def logs(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            rc = self.proc.wait(30)
            self.log.close()
            assert rc == 0, "serve exited %s:\n%s" % (rc, self.logs()[-3000:])

    @property
    def origin(self):
        return "http://127.0.0.1:%d" % self.port

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def wait_idle(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            n = self.dun.scalar("SELECT COUNT(*) FROM inbox WHERE state IN"
                                " ('received', 'processing', 'retrying')")
            if n == 0:
                return
            time.sleep(0.05)
        raise AssertionError("inbox not drained:\n" + self.logs()[-3000:])


def account_path(account_id, suffix=""):
    return "/panel/accounts/" + quote(account_id, safe="") + suffix


class PanelClient:
    """One person's browser, as far as HTTP goes."""

    def __init__(self, server):
        self.s = server
        self.cookies = {}

    def _cookie_header(self):
        return "; ".join("%s=%s" % kv for kv in self.cookies.items())

    def _keep(self, headers):
        for name, value in headers:
            if name.lower() != "set-cookie":
                continue
            k, v = value.split(";", 1)[0].split("=", 1)
            if "Max-Age=0" in value:
                self.cookies.pop(k, None)
            else:
                self.cookies[k] = v

    def get(self, path):
        h = {"Cookie": self._cookie_header()} if self.cookies else {}
        status, headers, body = self.s.request("GET", path, headers=h)
        self._keep(headers)
        return status, dict(headers), body

    def post(self, path, fields, origin="self", extra_headers=None):
        h = {"Content-Type": "application/x-www-form-urlencoded"}
        if self.cookies:
            h["Cookie"] = self._cookie_header()
        if origin == "self":
            h["Origin"] = self.s.origin
        elif origin is not None:
            h["Origin"] = origin
        h.update(extra_headers or {})
        status, headers, body = self.s.request("POST", path, body=urlencode(fields), headers=h)
        self._keep(headers)
        return status, dict(headers), body

    def login(self, name=PANEL_USER, password=PANEL_PASSWORD):
        status, _, body = self.get("/panel/login")
        assert status == 200, body
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)
        return self.post("/panel/login", {"csrf": token, "name": name, "password": password})

    def csrf(self, page="/panel/"):
        status, _, body = self.get(page)
        assert status == 200, body
        return re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)
