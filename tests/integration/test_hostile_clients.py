"""`dunning serve` against hostile and odd HTTP clients, on 127.0.0.x only.

Covered: a slowloris flood from another address (127.0.0.2; Linux routes
all of 127.0.0.0/8 to the loopback interface) at twice a small connection
limit while /healthz and webhooks from 127.0.0.1 are still served; the
header deadline closing a connection that dribbles its headers; pipelined
requests; a client that half-closes after its request; SIGTERM with a
client stuck in its body (stops within the grace period, exit 0); control
characters in ids and bodies reaching the log escaped; an account id
containing "/" through the admin API (percent-encoded) and malformed
percent-encodings refused; /readyz failing on a full disk and recovering
(root only: a private mount namespace with a tiny tmpfs).

Webhooks are signed here with HMAC-SHA256 as Stripe documents it
(test_serve.py checks the verifier against Stripe's own library). No
assertion is about speed: the time limits below only bound how long a
test waits for something that must happen.
"""

import hashlib
import hmac
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import DunPgUrl, dun_db_line

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DUNNING_BUILD_DIR", "build"))
if not BUILD.is_absolute():
    BUILD = REPO / BUILD
BIN = BUILD / "dunning"

SECRET = "whsec_hostile_clients"
TOKEN = "admin-token-hostile"

pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} is not built")


# ---- requests ---------------------------------------------------------------------------


def sign(payload: bytes, secret=SECRET) -> str:
    t = int(time.time())
    mac = hmac.new(secret.encode(), b"%d." % t + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def customer_event(account, customer, evt_id):
    return json.dumps({
        "id": evt_id, "object": "event", "api_version": "2024-06-20",
        "type": "customer.created", "created": int(time.time()), "livemode": False,
        "data": {"object": {"id": customer, "object": "customer",
                            "email": "billing@example.com", "name": "x",
                            "metadata": {"account_id": account}}},
    }, separators=(",", ":")).encode()


def webhook_request(payload: bytes, close=False) -> bytes:
    return (f"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Stripe-Signature: {sign(payload)}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode() + payload


def get_request(path, token=None, close=False) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + (f"Authorization: Bearer {token}\r\n" if token else "")
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def read_responses(sock, n, timeout=20):
    """Read until n whole responses (with Content-Length) arrived or the peer closed."""
    sock.settimeout(timeout)
    buf, out = b"", []
    deadline = time.time() + timeout
    while len(out) < n and time.time() < deadline:
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = buf[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            if len(buf) < head_end + 4 + length:
                break
            status = int(head.split(" ")[1])
            out.append((status, buf[head_end + 4:head_end + 4 + length]))
            buf = buf[head_end + 4 + length:]
        if len(out) >= n:
            break
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return out


def closed_by_peer(sock, timeout):
    """Whether the server closes sock within timeout (reading and dropping what comes)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        sock.settimeout(max(0.05, deadline - time.time()))
        try:
            if not sock.recv(4096):
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
    return False


# ---- the server -------------------------------------------------------------------------


class Server:
    """One `dunning serve`, optionally started through a wrapper command."""

    def __init__(self, tmp_path, db_dir=None, wrap=None, pg=None, **server):
        self.dir = Path(tmp_path)
        self.db_dir = Path(db_dir) if db_dir else self.dir
        self.db = DunPgUrl(pg.create("hostile"), pg) if pg else self.db_dir / "hostile.db"
        self.conf = self.dir / "hostile.conf"
        self.port_file = self.dir / "hostile.port"
        self.log_path = self.dir / "hostile.log"
        opts = {"listen": "127.0.0.1:0", "workers": "1", "poll_ms": "50",
                "body_max_bytes": "65536"}
        opts.update({k: str(v) for k, v in server.items()})
        self.conf.write_text(
            "[server]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
            + f"[database]\n{dun_db_line(self.db)}\n[stripe]\nwebhook_secrets = {SECRET}\n"
            + f"[admin]\ntoken = {TOKEN}\n")
        self.wrap = wrap or []
        self.proc = None

    def start(self, timeout=20):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("DUNNING_") and k != "STRIPE_WEBHOOK_SECRETS"}
        self.log = open(self.log_path, "ab")
        argv = [str(BIN), "serve", "--config", str(self.conf), "--port-file",
                str(self.port_file)]
        self.proc = subprocess.Popen(self.wrap + argv, stdout=self.log, stderr=self.log,
                                     env=env, cwd=self.dir)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.port_file.exists() and self.port_file.read_text().endswith("\n"):
                self.port = int(self.port_file.read_text())
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.logs()}")
            time.sleep(0.02)
        raise AssertionError(f"serve did not start:\n{self.logs()}")

    def logs(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_bytes(self):
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def connect(self, source="127.0.0.1", timeout=10):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect(("127.0.0.1", self.port))
        return s

    def exchange(self, data, n=1, half_close=False, timeout=20):
        s = self.connect(timeout=timeout)
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            return read_responses(s, n, timeout)
        finally:
            s.close()

    def get(self, path, token=TOKEN):
        r = self.exchange(get_request(path, token, close=True))
        assert r, f"no answer to GET {path}:\n{self.logs()[-2000:]}"
        status, body = r[0]
        return status, json.loads(body) if body else None

    def deliver(self, payload):
        r = self.exchange(webhook_request(payload, close=True))
        assert r, f"no answer to a webhook:\n{self.logs()[-2000:]}"
        return r[0][0]

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"serve did not stop on SIGTERM:\n{self.logs()[-3000:]}")
        self.log.close()
        return self.proc.returncode

    def wait_settled(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, body = self.get("/events?limit=1")
            c = body["counts"]
            if c["received"] == 0 and c["processing"] == 0 and c["retrying"] == 0:
                return c
            time.sleep(0.05)
        raise AssertionError(f"inbox not drained:\n{self.logs()[-3000:]}")


@pytest.fixture
def server(request, tmp_path, dun_backend):
    """A maker of `dunning serve` processes on the test's backend."""
    started = []
    pg = request.getfixturevalue("dun_pg") if dun_backend == "postgresql" else None

    def make(**kw):
        if pg is not None:
            kw.setdefault("pg", pg)
        s = Server(tmp_path, **kw)
        started.append(s)
        return s.start()

    yield make
    for s in started:
        if s.proc and s.proc.poll() is None:
            rc = s.stop()
            assert rc == 0, f"serve exited {rc} on SIGTERM:\n{s.logs()[-3000:]}"


def _more_descriptors(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"needs {n} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


# ---- slowloris ---------------------------------------------------------------------------


def test_slowloris_from_one_address_leaves_other_clients_served(server):
    limit, per_client = 512, 64
    _more_descriptors(4 * limit)
    try:
        probe = socket.socket()
        probe.bind(("127.0.0.2", 0))
        probe.close()
    except OSError as e:
        pytest.skip(f"cannot bind 127.0.0.2: {e}")
    s = server(max_connections=limit, max_connections_per_client=per_client,
               header_timeout_ms=3000)
    # 2x the connection limit from 127.0.0.2, each sending its headers byte by byte.
    slow = []
    for _ in range(2 * limit):
        try:
            c = s.connect(source="127.0.0.2", timeout=5)
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.append(c)
        except OSError:
            pass
    stop = threading.Event()

    def dribble():
        while not stop.is_set():
            for c in list(slow):
                try:
                    c.send(b"X")
                except OSError:
                    pass
            stop.wait(0.5)

    t = threading.Thread(target=dribble)
    t.start()
    try:
        # From 127.0.0.1 everything is still answered, several times over.
        for i in range(5):
            status, body = s.get("/healthz", token=None)
            assert (status, body) == (200, {"status": "ok"})
            assert s.deliver(customer_event(f"acct_sl{i}", f"cus_sl{i}", f"evt_sl{i}")) == 200
        stored = s.get("/events?limit=10")[1]["counts"]
        assert sum(stored.values()) == 5
        # The server kept at most per_client of the flood: the others were closed.
        time.sleep(0.5)
        alive = 0
        for c in slow:
            c.setblocking(False)
            try:
                c.recv(1)  # b"": closed by the server
            except BlockingIOError:
                alive += 1  # still open, nothing to read
            except OSError:
                pass  # reset by the server
        assert alive <= per_client, alive
        # The ones it kept are closed at the header deadline, dribbling or not.
        deadline = time.time() + 15
        while time.time() < deadline and "event=http.header_timeout" not in s.logs():
            time.sleep(0.1)
        assert "event=http.header_timeout" in s.logs(), s.logs()[-3000:]
    finally:
        stop.set()
        t.join()
        for c in slow:
            c.close()
    # MHD's complaints about refused connections are rate-limited, not one per connection.
    assert s.logs().count("event=http.mhd") < limit, s.logs().count("event=http.mhd")
    status, body = s.get("/healthz", token=None)
    assert status == 200


def test_header_deadline_closes_a_dribbling_connection(server):
    s = server(header_timeout_ms=1000)
    c = s.connect()
    stop = threading.Event()

    def dribble():
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200:
            if stop.wait(0.1):
                return
            try:
                c.send(bytes([b]))
            except OSError:
                return

    t = threading.Thread(target=dribble)
    t.start()
    try:
        assert closed_by_peer(c, timeout=15), "the slow connection was never closed"
    finally:
        stop.set()
        t.join()
        c.close()
    assert "event=http.header_timeout connections=1" in s.logs()
    # A client that sends its headers at once is not affected.
    assert s.get("/healthz", token=None)[0] == 200


# ---- pipelining, half-close ----------------------------------------------------------------


def test_pipelined_requests_are_all_answered(server):
    s = server()
    payloads = [customer_event(f"acct_pl{i}", f"cus_pl{i}", f"evt_pl{i}") for i in range(4)]
    data = b"".join(webhook_request(p) for p in payloads[:2])
    data += get_request("/healthz") + get_request("/readyz")
    data += b"".join(webhook_request(p) for p in payloads[2:3])
    data += get_request("/events?limit=1", TOKEN)
    data += webhook_request(payloads[3], close=True)
    answers = s.exchange(data, n=7)
    assert [st for st, _ in answers] == [200] * 7, (answers, s.logs()[-3000:])
    assert json.loads(answers[0][1])["event_id"] == "evt_pl0"
    assert json.loads(answers[2][1]) == {"status": "ok"}
    assert json.loads(answers[6][1])["event_id"] == "evt_pl3"
    # As `printf ... | nc` sends them: all at once, then the client's end-of-file.
    payloads = [customer_event(f"acct_pn{i}", f"cus_pn{i}", f"evt_pn{i}") for i in range(4)]
    answers = s.exchange(b"".join(webhook_request(p) for p in payloads), n=4, half_close=True)
    assert [st for st, _ in answers] == [200] * 4, (answers, s.logs()[-3000:])
    assert [json.loads(b)["event_id"] for _, b in answers] == [f"evt_pn{i}" for i in range(4)]


def test_half_closed_client_gets_its_answer(server):
    s = server()
    for i in range(5):
        p = customer_event(f"acct_hc{i}", f"cus_hc{i}", f"evt_hc{i}")
        answers = s.exchange(webhook_request(p), half_close=True)
        assert answers and answers[0][0] == 200, (answers, s.logs()[-2000:])
        assert json.loads(answers[0][1])["event_id"] == f"evt_hc{i}"
    answers = s.exchange(get_request("/readyz"), half_close=True)
    assert answers and answers[0][0] == 200, answers
    answers = s.exchange(get_request("/accounts/acct_hc0", TOKEN), half_close=True)
    assert answers and answers[0][0] in (200, 404), answers
    stored = s.get("/events?limit=10")[1]["counts"]
    assert sum(stored.values()) == 5


# ---- stopping ---------------------------------------------------------------------------------


def test_sigterm_with_a_slow_body_client_stops_within_the_grace(server):
    grace_ms = 1500
    s = server(shutdown_grace_ms=grace_ms)
    p = customer_event("acct_sb", "cus_sb", "evt_sb")
    req = webhook_request(p)
    c = s.connect()
    c.sendall(req[:len(req) - len(p) + 10])  # the headers and 10 bytes of the body
    time.sleep(0.3)
    # A second client completes its webhook during the grace period: it is answered.
    req2 = webhook_request(customer_event("acct_sc", "cus_sc", "evt_sc"))
    c2 = s.connect()
    c2.sendall(req2[:-5])
    # Let the server read those bytes: a request whose first byte it has not
    # read when the stop begins is a new request, answered 503 shutting_down.
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    c2.sendall(req2[-5:])
    # bounded wait: the grace, the few seconds given to complete requests, and slack
    assert s.proc.wait(grace_ms / 1000 + 15) == 0, s.logs()[-3000:]
    s.log.close()
    answers = read_responses(c2, 1, timeout=5)
    assert answers and answers[0][0] == 200, answers
    assert closed_by_peer(c, timeout=5)
    c.close()
    c2.close()
    logs = s.logs()
    # the slow one, and the answered one if its kept-alive connection was still open
    assert re.search(r"event=server.grace_over cut_connections=[12] ", logs), logs[-3000:]
    assert "event=server.stopped" in logs
    assert "drain_timeout" not in logs


# ---- what reaches the log -----------------------------------------------------------------------


def test_control_characters_reach_the_log_escaped(server):
    s = server()
    # in a path segment (percent-encoded: the request line itself cannot carry them)
    status, body = s.get("/accounts/acct%0D%0Aevent=forged%1B%5B31m%07%7F")
    assert status == 404, body
    assert body["error"]["code"] == "account_not_found"
    # in an event id and in an account id inside a signed webhook body
    evt = "evt_\r\nts=forged level=error\x1b]0;title\x07\x7f"
    assert s.deliver(customer_event("acct_\x1b[2Jx", "cus_ctl", evt)) == 200
    # in a header value of a request the server refuses
    r = s.exchange(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=\x1b[0m\r\n"
                   b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert r and r[0][0] == 400, r
    s.wait_settled()
    assert s.stop() == 0
    raw = s.log_bytes()
    for bad in (b"\r", b"\x1b", b"\x07", b"\x7f", b"\x00"):
        assert bad not in raw, (bad, raw[-3000:])
    lines = raw.decode().splitlines()
    assert all(line.startswith("ts=") for line in lines), [l for l in lines if not l.startswith("ts=")]
    assert not any("ts=forged" in line.split(" ", 1)[0] for line in lines)
    assert r'account="acct\r\nevent=forged\x1b[31m\x07\x7f"' in raw.decode()
    assert r'event_id="evt_\r\nts=forged level=error\x1b]0;title\x07\x7f"' in raw.decode()


# ---- account ids with "/" and malformed encodings -------------------------------------------


def test_account_id_with_a_slash_through_the_admin_api(server):
    s = server()
    assert s.deliver(customer_event("org/42", "cus_slash", "evt_slash")) == 200
    s.wait_settled()
    status, body = s.get("/accounts/org%2F42")
    assert status == 200, body
    assert body["account"]["id"] == "org/42"
    r = s.exchange(b"POST /accounts/org%2f42/recompute?wait=10 HTTP/1.1\r\nHost: x\r\n"
                   b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 0\r\n"
                   b"Connection: close\r\n\r\n")
    assert r and r[0][0] == 200, r
    assert json.loads(r[0][1])["account_id"] == "org/42"
    status, body = s.get("/events?account=org%2F42")
    assert status == 200 and {e["account_id"] for e in body["events"]} == {"org/42"}
    # unencoded, it is another path
    status, body = s.get("/accounts/org/42")
    assert status == 404 and body["error"]["code"] == "not_found"
    # other escapes decode too
    status, body = s.get("/accounts/org%2F%34%32")
    assert status == 200 and body["account"]["id"] == "org/42"


@pytest.mark.parametrize("path", ["/accounts/%zz", "/accounts/org%2", "/accounts/org%",
                                  "/accounts/a%00b", "/accounts/a%G1", "/events?account=%2x",
                                  "/healthz?x=%"])
def test_malformed_percent_encoding_is_400(server, path):
    s = server()
    token = None if path.startswith("/healthz") else TOKEN
    status, body = s.get(path, token=token)
    assert status == 400, body
    assert body["error"]["code"] == "malformed_url"


def test_overlong_path_and_id_are_refused(server):
    s = server()
    status, body = s.get("/accounts/" + "a" * 600)
    assert status == 414, body
    status, body = s.get("/accounts/" + "%41" * 150)
    assert status == 400 and body["error"]["code"] == "invalid_account", body


# ---- readiness on a full disk ----------------------------------------------------------------


def test_readyz_fails_while_the_disk_is_full_and_recovers(tmp_path, server):
    if os.geteuid() != 0:
        pytest.skip("needs root: the full disk is a tiny tmpfs in a private mount namespace")
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1) from util-linux")
    disk = tmp_path / "disk"
    disk.mkdir()
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs -o size=8m tmpfs "{disk}" && exec "$@"', "sh"]
    try:
        s = server(db_dir=disk, wrap=wrap)
    except AssertionError as e:
        if "mount" in str(e) or "unshare" in str(e):
            pytest.skip(f"cannot make a private tmpfs here: {str(e)[:200]}")
        raise
    # The namespace's view of the tmpfs, from outside it.
    inside = Path(f"/proc/{s.proc.pid}/root") / str(disk).lstrip("/")
    assert (inside / "hostile.db").exists(), "the database is not on the tmpfs"
    assert not (disk / "hostile.db").exists(), "the tmpfs is visible outside its namespace"
    status, body = s.get("/readyz", token=None)
    assert status == 200 and body["ready"] is True, body
    filler = inside / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    try:
        status, body = s.get("/readyz", token=None)
        assert status == 503, body
        assert body["ready"] is False
        assert "disk full" in body["reason"], body
        # Still alive and answering otherwise.
        assert s.get("/healthz", token=None)[0] == 200
    finally:
        filler.unlink()
    deadline = time.time() + 10
    while time.time() < deadline:
        status, body = s.get("/readyz", token=None)
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200 and body["ready"] is True, body
    assert s.deliver(customer_event("acct_disk", "cus_disk", "evt_disk")) == 200
