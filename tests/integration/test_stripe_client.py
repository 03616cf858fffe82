"""The Stripe client (src/provider/stripe.c) against the Stripe fake.

Drives the real `dunning` binary — `sync`, `backfill`, and `recompute` /
`pay-bad-debt` with [provider] kind = stripe, which write through the
provider seam — against tests/integration/fake_stripe.py on 127.0.0.1, and
checks what the fake received (GET /_test/requests): Stripe-Version,
Idempotency-Key, form encoding, retries after injected faults, backoff on
429, a new key after a stored 4xx, the client-side rate limit and the
consolidated invoice's metadata split. tests/stripe/stripe-tool calls the
provider ops directly where the engine cannot show a property (several
threads on one client, one op repeated in one process).

The binaries are found in $DUNNING_BUILD_DIR (default: build, relative to
the repository root).
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import DunPgUrl, dun_query, dun_writes_on

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DUNNING_BUILD_DIR", "build"))
if not BUILD.is_absolute():
    BUILD = REPO / BUILD
DUNNING = BUILD / "dunning"
TOOL = BUILD / "tests" / "stripe" / "stripe-tool"
FAKE = REPO / "tests" / "integration" / "fake_stripe.py"
API_KEY = "sk_test_dunning_client_42"
VERSION = "2025-03-31.basil"
DAY = 86400

pytestmark = pytest.mark.skipif(not DUNNING.exists(), reason="dunning is not built in %s" % BUILD)


# --------------------------------------------------------------------------
# The fake


class Fake:
    def __init__(self, port):
        self.port = port
        self.base = "http://127.0.0.1:%d" % port

    def ctl(self, method, path, obj=None):
        data = json.dumps(obj).encode() if obj is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def seed(self, **body):
        return self.ctl("POST", "/_test/seed", body)

    def config(self, **settings):
        return self.ctl("POST", "/_test/config", settings)

    def fault(self, **f):
        return self.ctl("POST", "/_test/faults", f)

    def requests(self, path_regex="", method=""):
        q = urllib.parse.urlencode({"path_regex": path_regex, "method": method})
        return self.ctl("GET", "/_test/requests?" + q)["requests"]

    def clear_requests(self):
        self.ctl("DELETE", "/_test/requests")

    def stats(self):
        return self.ctl("GET", "/_test/stats")

    def obj(self, ident):
        return self.ctl("GET", "/_test/objects/" + ident)

    def now(self):
        return self.ctl("GET", "/_test/clock")["now"]

    def api(self, method, path, params=None, idem=None):
        """A Stripe API call as a client other than dunning (a customer paying)."""
        data = urllib.parse.urlencode(params or {}).encode() if method == "POST" else None
        headers = {"Authorization": "Bearer " + API_KEY, "Stripe-Version": VERSION}
        if method == "POST":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if idem:
            headers["Idempotency-Key"] = idem
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def raw(self, method, path, params=None, idem=None):
        """As api(), but any answer: (status, body, headers)."""
        try:
            return 200, self.api(method, path, params, idem), {}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), dict(e.headers)


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    port_file = tmp_path_factory.mktemp("fake") / "port"
    proc = subprocess.Popen([sys.executable, str(FAKE), "--port", "0", "--port-file", str(port_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while not port_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("the Stripe fake did not start: %s" % proc.stderr.read().decode())
        time.sleep(0.02)
    try:
        yield Fake(int(port_file.read_text()))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def fake(fake_server):
    fake_server.ctl("POST", "/_test/reset")
    fake_server.config(api_key=API_KEY)
    return fake_server


class Env:
    """A database, a configuration file pointing at the fake, and the binaries."""

    def __init__(self, tmp_path, fake, writes=True, pg=None):
        """pg: a PostgreSQL cluster (conftest's dun_pg) to run on instead of SQLite."""
        self.dir = tmp_path
        self.fake = fake
        self.pg = pg
        self.db = DunPgUrl(pg.create(), pg) if pg else tmp_path / "dunning.db"
        self.cfg = tmp_path / "dunning.conf"
        self.write_config()
        if writes:  # a new database writes nothing until writes are turned on
            dun_writes_on(self.db, self.cfg if pg else None)

    def write_config(self, **stripe):
        settings = {"api_key": API_KEY, "api_base": self.fake.base, "max_retries": 4,
                    "timeout_ms": 10000}
        settings.update(stripe)
        where = ("url = %s" % self.db) if self.pg else ("path = %s" % self.db)
        lines = ["[database]", where, "[provider]", "kind = stripe", "[stripe]"]
        lines += ["%s = %s" % kv for kv in settings.items()]
        self.cfg.write_text("\n".join(lines) + "\n")

    def run(self, *args, rc=0, now=None, timeout=180):
        cmd = [str(DUNNING), "--config", str(self.cfg)]
        if now is not None:
            cmd += ["--now", str(now)]
        p = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, STRIPE_API_KEY=""))
        assert p.returncode == rc, "rc %d\nstdout:\n%s\nstderr:\n%s" % (p.returncode, p.stdout, p.stderr)
        return p

    def tool(self, *args, rc=0):
        p = subprocess.run([str(TOOL), str(self.cfg)] + list(args), capture_output=True, text=True,
                           timeout=180)
        assert p.returncode == rc, "rc %d\nstdout:\n%s\nstderr:\n%s" % (p.returncode, p.stdout, p.stderr)
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    def sql(self, query, *params):
        return dun_query(self.db, query, *params)


@pytest.fixture
def env(request, tmp_path, fake, dun_backend):
    """An Env on SQLite, or on a fresh PostgreSQL database (tests that are
    not about one backend run on both)."""
    pg = request.getfixturevalue("dun_pg") if dun_backend == "postgresql" else None
    return Env(tmp_path, fake, pg=pg)


@pytest.fixture
def make_env(request, fake, dun_backend):
    """A maker of Envs on the test's backend: make_env(tmp_path, writes=...)."""
    pg = request.getfixturevalue("dun_pg") if dun_backend == "postgresql" else None
    return lambda tmp_path, **kw: Env(tmp_path, fake, pg=pg, **kw)


def seed_failing_account(fake, account="acct_A", customer="cus_A", n_invoices=1, ids=None,
                         decline="insufficient_funds", events=False):
    """A customer of `account` with an active subscription and failing invoices."""
    ids = ids or ["in_%s_%d" % (account, i) for i in range(n_invoices)]
    fake.seed(customers=[{"id": customer, "email": "%s@example.com" % account, "name": account,
                          "metadata": {"account_id": account}, "card": decline}],
              subscriptions=[{"id": "sub_" + account, "customer": customer, "status": "past_due"}],
              invoices=[{"id": i, "customer": customer, "subscription": "sub_" + account,
                         "amount_due": 1000 + n, "attempts": [decline]} for n, i in enumerate(ids)],
              events=events)
    return ids


# --------------------------------------------------------------------------
# sync


def test_sync_imports_customers_subscriptions_invoices(env, fake):
    seed_failing_account(fake, "acct_A", "cus_A")
    fake.seed(customers=[{"id": "cus_B", "email": "b@example.com", "metadata": {"account_id": "acct_B"}},
                         {"id": "cus_nobody", "email": "n@example.com"}],
              subscriptions=[{"id": "sub_B", "customer": "cus_B", "status": "canceled"},
                             {"id": "sub_B2", "customer": "cus_B", "status": "active"}],
              invoices=[{"id": "in_B_paid", "customer": "cus_B", "subscription": "sub_B2", "status": "paid"},
                        {"id": "in_B_unc", "customer": "cus_B", "status": "uncollectible"},
                        {"id": "in_nobody", "customer": "cus_nobody", "status": "open"}])
    # 150 more customers: the customer list takes two pages of 100.
    fake.seed(customers=[{"id": "cus_x%03d" % i, "metadata": {"account_id": "acct_x%03d" % i}}
                         for i in range(150)])
    out = env.run("sync").stdout
    assert "153 customers (152 with an account_id), 3 subscriptions, 4 invoices" in out
    assert "queued a sync trigger for 152 accounts" in out

    assert env.sql("SELECT count(*) FROM p_customers") == [(153,)]
    assert env.sql("SELECT count(*) FROM accounts") == [(152,)]
    assert env.sql("SELECT account_id FROM customers WHERE id = 'cus_A'") == [("acct_A",)]
    assert env.sql("SELECT account_id FROM p_customers WHERE id = 'cus_nobody'") == [(None,)]
    # status=all: the canceled subscription is there too.
    assert dict(env.sql("SELECT id, status FROM p_subscriptions")) == {
        "sub_acct_A": "past_due", "sub_B": "canceled", "sub_B2": "active"}
    assert dict(env.sql("SELECT id, status FROM p_invoices")) == {
        "in_acct_A_0": "open", "in_B_paid": "paid", "in_B_unc": "uncollectible", "in_nobody": "open"}
    # The basil shape: subscription under parent, payments from /v1/invoice_payments.
    assert env.sql("SELECT subscription_id FROM p_invoices WHERE id = 'in_acct_A_0'") == [("sub_acct_A",)]
    assert env.sql("SELECT decline_code, status FROM p_attempts WHERE invoice_id = 'in_acct_A_0'") == [
        ("insufficient_funds", "failed")]
    # One sync trigger per mapped account touched, none for the unmapped customer.
    triggers = env.sql("SELECT account_id, kind, state FROM inbox ORDER BY account_id")
    assert len(triggers) == 152
    assert all(kind == "sync" and state == "received" for _, kind, state in triggers)
    assert ("acct_A", "sync", "received") in triggers

    reqs = fake.requests()
    assert reqs and all(r["method"] == "GET" for r in reqs)
    assert all(r["headers"]["Stripe-Version"] == VERSION for r in reqs)
    assert all(r["headers"]["Authorization"].startswith("Bearer sk_test_") for r in reqs)
    customers = [r for r in reqs if r["path"] == "/v1/customers"]
    assert len(customers) == 2
    assert customers[0]["params"] == {"limit": "100"}
    assert customers[1]["params"]["starting_after"] and customers[1]["params"]["limit"] == "100"
    subs = [r for r in reqs if r["path"] == "/v1/subscriptions"]
    assert subs[0]["params"]["status"] == "all"
    # Payments are fetched for open and uncollectible invoices only.
    paid_for = sorted(r["params"]["invoice"] for r in reqs if r["path"] == "/v1/invoice_payments")
    assert paid_for == ["in_B_unc", "in_acct_A_0", "in_nobody"]
    pay = [r for r in reqs if r["path"] == "/v1/invoice_payments"][0]
    assert "expand[]=data.payment.payment_intent" in pay["query"]


def test_sync_twice_changes_nothing_and_work_recomputes(env, fake):
    seed_failing_account(fake)
    env.run("sync")
    first = env.sql("SELECT id, status, amount_due, attempt_count FROM p_invoices ORDER BY id")
    env.run("sync")
    assert env.sql("SELECT id, status, amount_due, attempt_count FROM p_invoices ORDER BY id") == first
    assert env.sql("SELECT count(*) FROM p_customers") == [(1,)]
    out = env.run("work").stdout
    assert "processed 1 accounts" in out
    assert env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'") == [("notified",)]
    assert env.sql("SELECT trigger_kind FROM decisions") == [("sync",)]


# --------------------------------------------------------------------------
# backfill


def api_customer(fake, account):
    """A customer created through the API with metadata account_id (its
    customer.created event carries the metadata)."""
    return fake.api("POST", "/v1/customers", {"email": account + "@example.com",
                                              "metadata[account_id]": account})["id"]


def test_backfill_replays_events_oldest_first_and_is_idempotent(env, fake):
    t0 = fake.now()
    fake.ctl("POST", "/_test/clock", {"now": t0 - 2 * DAY})
    old = api_customer(fake, "acct_old")
    fake.ctl("POST", "/_test/clock", {"now": t0})
    cus = api_customer(fake, "acct_A")
    fake.seed(subscriptions=[{"id": "sub_A", "customer": cus, "status": "past_due"}],
              invoices=[{"id": "in_A", "customer": cus, "subscription": "sub_A", "amount_due": 1000,
                         "attempts": ["insufficient_funds"]}], events=True)
    api_customer(fake, "acct_C")
    fake.ctl("POST", "/_test/clock", {"now": None})
    all_events = fake.api("GET", "/v1/events?limit=100")["data"]
    recent = [e for e in all_events if e["created"] >= t0 - 3600]
    assert len(recent) < len(all_events)

    out = env.run("backfill", "--since", str(t0 - 3600)).stdout
    assert "replayed %d events" % len(recent) in out
    assert "0 duplicates" in out and "0 unmapped customers" in out and "0 rejected" in out
    # Storage order: rowid on SQLite; on PostgreSQL a fresh table that only
    # took inserts keeps them in heap order (ctid).
    stored = env.sql("SELECT id FROM events_raw ORDER BY %s" % ("ctid" if env.pg else "rowid"))
    # Oldest first: Stripe lists newest first, the engine took them in order.
    assert [i for i, in stored] == [e["id"] for e in reversed(recent)]
    assert env.sql("SELECT count(*) FROM events_raw WHERE object_id = ?", old) == [(0,)]
    assert env.sql("SELECT id FROM accounts ORDER BY id") == [("acct_A",), ("acct_C",)]
    assert ("payment_failed",) in env.sql("SELECT kind FROM inbox WHERE account_id = 'acct_A'")
    assert env.sql("SELECT status, subscription_id FROM p_invoices WHERE id = 'in_A'") == [
        ("open", "sub_A")]
    [req] = [r for r in fake.requests("/v1/events") if "created" in r["params"]]
    assert req["params"]["created"] == {"gte": str(t0 - 3600)}
    assert "created[gte]=%d" % (t0 - 3600) in req["query"]

    triggers = env.sql("SELECT count(*) FROM inbox")
    out = env.run("backfill", "--since", str(t0 - 3600)).stdout
    assert "0 triggered, %d duplicates" % len(recent) in out
    assert env.sql("SELECT count(*) FROM inbox") == triggers
    assert env.sql("SELECT count(*) FROM events_raw") == [(len(recent),)]
    # Basil-shaped events link no payment to its invoice (no invoice on the
    # charge or payment intent, no payment_intent on the invoice).
    assert env.sql("SELECT count(*) FROM p_attempts WHERE invoice_id = 'in_A'") == [(0,)]
    fake.clear_requests()
    out = env.run("work").stdout
    assert "processed 2 accounts" in out
    # The recompute's targeted refresh fetched the links, and dunning starts.
    assert env.sql("SELECT decline_code FROM p_attempts WHERE invoice_id = 'in_A'") == [
        ("insufficient_funds",)]
    assert env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'") == [("notified",)]
    assert sorted(r["path"] for r in fake.requests()) == [
        "/v1/charges", "/v1/invoice_payments", "/v1/invoices/in_A"]


def test_backfill_pages_through_many_events(env, fake):
    fake.config(rate_limit_per_s=None)  # the setup creates 230 customers at once
    for i in range(230):
        api_customer(fake, "acct_%03d" % i)
    out = env.run("backfill", "--since", "2000-01-01").stdout
    assert "replayed 230 events" in out
    assert len(fake.requests("/v1/events")) == 3
    assert env.sql("SELECT count(*) FROM accounts") == [(230,)]


def test_backfill_usage_errors(env):
    assert "needs --since" in env.run("backfill", rc=64).stderr
    assert "cannot read" in env.run("backfill", "--since", "yesterday", rc=64).stderr
    p = subprocess.run([str(DUNNING), "--db", str(env.db), "backfill", "--since", "1"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 64 and "needs --config" in p.stderr


# --------------------------------------------------------------------------
# the targeted refresh: basil webhooks alone start dunning


def basil_failing_account(fake, account="acct_A", declines=("insufficient_funds", "expired_card")):
    """A customer created through the API, a subscription and an invoice
    whose payment failed once per decline, a day apart, every change
    recorded as a basil-shaped event. Returns (invoice id, time of the first
    attempt)."""
    cus = api_customer(fake, account)
    first = fake.now() - len(declines) * DAY
    inv = "in_" + account
    fake.seed(subscriptions=[{"id": "sub_" + account, "customer": cus, "status": "past_due"}],
              invoices=[{"id": inv, "customer": cus, "subscription": "sub_" + account,
                         "amount_due": 1500, "created": first - 3600,
                         "attempts": [{"decline_code": d, "created": first + n * DAY}
                                      for n, d in enumerate(declines)]}],
              events=True)
    return inv, first


def ingest_fake_events(env, fake):
    """Every event the fake recorded, oldest first, through `dunning ingest`
    (the webhook path) without processing the triggers."""
    events = fake.api("GET", "/v1/events?limit=100")["data"][::-1]
    path = env.dir / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    env.run("ingest", str(path), "--no-work")
    return events


def test_basil_webhooks_alone_start_dunning_through_a_targeted_refresh(env, fake):
    inv, first = basil_failing_account(fake)
    events = ingest_fake_events(env, fake)
    assert {"charge.failed", "payment_intent.payment_failed", "invoice.payment_failed"} <= {
        e["type"] for e in events}
    # What the webhooks left: an open invoice attempted twice, its attempts
    # in the mirror but tied to no invoice, so the policy sees nothing failing.
    assert env.sql("SELECT status, attempt_count, payment_intent FROM p_invoices WHERE id = ?",
                   inv) == [("open", 2, "")]
    assert env.sql("SELECT count(*) FROM p_attempts WHERE invoice_id = ''") == [(2,)]

    # The drift scan reads the mirror only: it never calls Stripe.
    fake.clear_requests()
    env.run("scan")
    assert fake.requests() == []

    env.run("work")
    assert env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'") == [("notified",)]
    # expired_card is a hard decline: the customer is asked for another card.
    assert env.sql("SELECT kind, invoice_id FROM emails WHERE account_id = 'acct_A'") == [
        ("card_update_required", inv)]

    # The refresh: two rounds of reads, nothing else.
    reqs = fake.requests()
    assert all(r["method"] == "GET" and r["status"] == 200 for r in reqs), reqs
    [pi] = [ip["payment"]["payment_intent"] for ip in
            fake.api("GET", "/v1/invoice_payments?invoice=" + inv)["data"]]
    assert sorted((r["path"], json.dumps(r["params"], sort_keys=True)) for r in reqs) == sorted([
        ("/v1/invoices/" + inv, "{}"),
        ("/v1/invoice_payments", json.dumps({"expand": ["data.payment.payment_intent"],
                                             "invoice": inv, "limit": "100"}, sort_keys=True)),
        ("/v1/charges", json.dumps({"limit": "100", "payment_intent": pi}, sort_keys=True)),
    ])
    charges = [r for r in reqs if r["path"] == "/v1/charges"]
    assert charges[0]["seq"] > max(r["seq"] for r in reqs if r["path"] != "/v1/charges")

    # The mirror now ties both attempts, the earlier one included, to the invoice.
    assert env.sql("SELECT payment_intent FROM p_invoices WHERE id = ?", inv) == [(pi,)]
    assert env.sql("SELECT count(*) FROM p_attempts WHERE invoice_id = ''") == [(0,)]
    x = json.loads(env.run("explain", "acct_A", "--json").stdout)
    [xi] = x["invoices"]
    assert xi["failing"] and xi["hard_decline"]
    assert [(a["decline_code"], a["status"], a["decline_class"], a["created"])
            for a in xi["attempts"]] == [("insufficient_funds", "failed", "soft", first),
                                         ("expired_card", "failed", "hard", first + DAY)]
    # Dunning counts from the first failed attempt, not the latest.
    assert x["evaluation"]["delinquent_since"] == first

    # Attempts known now: evaluating the account again calls nothing.
    fake.clear_requests()
    env.run("recompute", "acct_A")
    assert fake.requests() == []


def test_no_refresh_when_the_mirror_knows_the_attempts(env, fake):
    seed_failing_account(fake, decline="expired_card")
    env.run("sync")  # links the attempts through the invoice payments
    fake.clear_requests()
    assert "processed 1 accounts" in env.run("work").stdout
    assert env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'") == [("notified",)]
    assert fake.requests() == []
    assert json.loads(env.run("explain", "acct_A", "--json").stdout)["invoices"][0]["failing"]
    assert fake.requests() == []


def test_a_failed_refresh_fails_the_recompute_as_retryable(env, fake):
    env.write_config(max_retries=0)
    inv, _ = basil_failing_account(fake, declines=("expired_card",))
    ingest_fake_events(env, fake)
    fake.fault(path_regex="^/v1/invoice_payments$", status=500, count=-1)
    p = env.run("work", rc=1)
    assert "processed 1 accounts" in p.stdout and "1 failed" in p.stdout
    assert "event=gather.refresh_failed account=acct_A invoices=1" in p.stderr
    assert "HTTP 500" in p.stderr
    # Nothing decided on the lagging mirror; the trigger retries, saying why.
    assert env.sql("SELECT COUNT(*) FROM decisions WHERE account_id = 'acct_A'") == [(0,)]
    assert env.sql("SELECT count(*) FROM p_attempts WHERE invoice_id <> ''") == [(0,)]
    errors = env.sql("SELECT DISTINCT state, last_error FROM inbox WHERE account_id = 'acct_A'")
    assert [st for st, _e in errors] == ["retrying"] and "HTTP 500" in errors[0][1], errors
    fake.ctl("DELETE", "/_test/faults")
    env.run("recompute", "acct_A")
    assert env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'") == [("notified",)]


def test_refresh_op_ties_every_charge_to_its_invoice(env, fake):
    """The provider op itself: per invoice the invoice, its invoice payments,
    the payment intent and every charge oldest first, each naming the
    invoice (basil leaves that out), for several invoices at once."""
    cus = api_customer(fake, "acct_T")
    fake.seed(invoices=[{"id": "in_T1", "customer": cus, "attempts": ["insufficient_funds", "lost_card"]},
                        {"id": "in_T2", "customer": cus, "attempts": ["do_not_honor"]}])
    fake.clear_requests()
    [line] = env.tool("op", "refresh_invoices", "in_T1", "in_T2")
    assert line["rc"] == "DUN_OK"
    objs = line["obj"]
    assert [o["object"] for o in objs] == [
        "invoice", "invoice_payment", "payment_intent", "charge", "charge",
        "invoice", "invoice_payment", "payment_intent", "charge"]
    assert [o["id"] for o in objs if o["object"] == "invoice"] == ["in_T1", "in_T2"]
    assert [o["outcome"]["reason"] for o in objs if o["object"] == "charge"] == [
        "insufficient_funds", "lost_card", "do_not_honor"]
    assert [o["invoice"] for o in objs if o["object"] in ("payment_intent", "charge")] == [
        "in_T1"] * 3 + ["in_T2"] * 2
    assert fake.obj([o for o in objs if o["object"] == "charge"][0]["id"]).get("invoice") is None
    reqs = fake.requests()
    assert len(reqs) == 6 and all(r["method"] == "GET" for r in reqs)
    [line] = env.tool("op", "refresh_invoices", "in_nope", rc=1)
    assert line["rc"] == "DUN_E_PROVIDER_REJECTED" and "HTTP 404" in line["err"]


# --------------------------------------------------------------------------
# what goes over the wire


def bad_debt_now(fake):
    return fake.now() + 40 * DAY


def test_writes_carry_version_idempotency_key_and_form_encoding(env, fake):
    fake.config(require_stripe_version=VERSION, strict_content_type=True, require_idempotency_key=True)
    seed_failing_account(fake)
    env.run("sync")
    fake.clear_requests()
    out = env.run("recompute", "acct_A", now=bad_debt_now(fake)).stdout
    assert "-> bad_debt" in out
    reqs = fake.requests()
    assert all(r["status"] == 200 for r in reqs), reqs
    assert all(r["headers"]["Stripe-Version"] == VERSION for r in reqs)
    posts = [r for r in reqs if r["method"] == "POST"]
    assert {r["path"] for r in posts} == {"/v1/invoices/in_acct_A_0/mark_uncollectible",
                                          "/v1/invoices/in_acct_A_0", "/v1/customers/cus_A"}
    for r in posts:
        assert r["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
        key = r["headers"]["Idempotency-Key"]
        assert key.startswith("acct_A/") and len(key) <= 255
    # The consequence key names the write: each POST has its own.
    assert len({r["headers"]["Idempotency-Key"] for r in posts}) == len(posts)
    meta = {r["path"]: r["params"] for r in posts}
    assert meta["/v1/customers/cus_A"] == {"metadata": {"bad_debt": "true"}}
    assert meta["/v1/invoices/in_acct_A_0"] == {"metadata": {"bad_debt_amount": "1000"}}
    # Reads and the DELETE carry no key; the DELETE has no body.
    others = [r for r in reqs if r["method"] != "POST"]
    assert all(r["headers"]["Idempotency-Key"] is None for r in others)
    delete = [r for r in reqs if r["method"] == "DELETE"]
    assert [r["path"] for r in delete] == ["/v1/subscriptions/sub_acct_A"]
    # The re-check before destructive writes read the invoices fresh first.
    assert reqs[0]["method"] == "GET" and reqs[0]["path"] == "/v1/invoices"
    assert reqs[0]["params"] == {"customer": "cus_A", "limit": "100"}
    assert fake.obj("in_acct_A_0")["status"] == "uncollectible"
    assert fake.obj("sub_acct_A")["status"] == "canceled"
    assert fake.obj("cus_A")["metadata"] == {"account_id": "acct_A", "bad_debt": "true"}
    # The provider's replies were folded into the mirror.
    assert env.sql("SELECT status FROM p_invoices WHERE id = 'in_acct_A_0'") == [("uncollectible",)]
    assert env.sql("SELECT status FROM p_subscriptions WHERE id = 'sub_acct_A'") == [("canceled",)]
    assert env.sql("SELECT meta_bad_debt FROM p_customers WHERE id = 'cus_A'") == [(1,)]


def test_recheck_before_destructive_writes_sees_a_payment(env, fake):
    seed_failing_account(fake)
    env.run("sync")
    # The customer pays; no webhook reaches the engine.
    fake.api("POST", "/v1/invoices/in_acct_A_0/pay", {"paid_out_of_band": "true"}, idem="customer-pays")
    fake.clear_requests()
    err = env.run("recompute", "acct_A", now=bad_debt_now(fake), rc=75).stderr
    assert "in_acct_A_0 was paid" in err
    assert not fake.requests(method="POST") and not fake.requests(method="DELETE")
    assert env.sql("SELECT status FROM p_invoices WHERE id = 'in_acct_A_0'") == [("paid",)]
    out = env.run("recompute", "acct_A", now=bad_debt_now(fake)).stdout
    assert "-> bad_debt" not in out


# --------------------------------------------------------------------------
# retries


def test_retries_5xx_503_and_dropped_connections_with_the_same_key(env, fake):
    seed_failing_account(fake)
    env.run("sync")
    path = "/v1/invoices/in_acct_A_0/mark_uncollectible"
    # A 500 without Stripe-Should-Retry (as a proxy in front of Stripe would send it).
    fake.fault(faults=[{"path_regex": path + "$", "status": 500, "count": 1, "stripe_should_retry": None},
                       {"path_regex": path + "$", "status": 503, "count": 1},
                       {"path_regex": path + "$", "drop": True, "count": 1}])
    fake.clear_requests()
    env.run("recompute", "acct_A", now=bad_debt_now(fake))
    reqs = fake.requests(path + "$")
    assert [r["status"] for r in reqs if not r["dropped"]] == [500, 503, 200]
    assert any(r["dropped"] for r in reqs)
    assert len({r["headers"]["Idempotency-Key"] for r in reqs}) == 1
    assert fake.obj("in_acct_A_0")["status"] == "uncollectible"


def test_a_lost_answer_is_replayed_not_executed_twice(env, fake):
    seed_failing_account(fake)
    env.run("sync")
    path = "/v1/invoices/in_acct_A_0/mark_uncollectible"
    # The write takes effect, then the answer is lost: the retry with the same
    # key gets the stored result and does not act again.
    fake.fault(path_regex=path + "$", drop=True, phase="after")
    fake.clear_requests()
    env.run("recompute", "acct_A", now=bad_debt_now(fake))
    reqs = fake.requests(path + "$")
    assert [(r["dropped"], r["replayed"]) for r in reqs] == [(True, False), (False, True)]
    assert reqs[1]["status"] == 200
    events = fake.api("GET", "/v1/events?type=invoice.marked_uncollectible")["data"]
    assert len(events) == 1


def test_a_500_after_executing_is_checked_not_executed_again(env, fake):
    seed_failing_account(fake)
    env.run("sync")
    path = "/v1/invoices/in_acct_A_0/mark_uncollectible"
    # The write takes effect, then Stripe answers 500 with Stripe-Should-Retry:
    # false and stores that 500 under the key: the client reads the invoice
    # to learn what happened instead of acting again under a new key.
    fake.fault(path_regex=path + "$", status=500, phase="after")
    fake.clear_requests()
    env.run("recompute", "acct_A", now=bad_debt_now(fake))
    reqs = fake.requests(path + "$")
    assert [(r["status"], r["replayed"]) for r in reqs] == [(500, False)]
    assert len(fake.requests("^/v1/invoices/in_acct_A_0$", "GET")) >= 1
    events = fake.api("GET", "/v1/events?type=invoice.marked_uncollectible")["data"]
    assert len(events) == 1
    # The same key replays the stored 500, as Stripe does.
    key = reqs[0]["headers"]["Idempotency-Key"]
    status, body, headers = fake.raw("POST", path, {}, key)
    assert status == 500 and headers.get("Idempotent-Replayed") == "true"
    assert headers.get("Stripe-Should-Retry") == "false"


def test_429_backs_off_exponentially(env, fake):
    seed_failing_account(fake)
    env.run("sync")
    path = "/v1/customers/cus_A"
    fake.fault(path_regex=path + "$", method="POST", status=429, count=3)
    fake.clear_requests()
    env.run("recompute", "acct_A", now=bad_debt_now(fake))
    reqs = fake.requests(path + "$", "POST")
    assert [r["status"] for r in reqs] == [429, 429, 429, 200]
    gaps = [b["mono"] - a["mono"] for a, b in zip(reqs, reqs[1:])]
    # Retry n waits between half and all of 0.5 s * 2^(n-1).
    assert gaps[0] >= 0.25 and gaps[1] >= 0.5 and gaps[2] >= 1.0, gaps
    # Nothing was stored under the key (a 429 never executes): it is kept.
    assert len({r["headers"]["Idempotency-Key"] for r in reqs}) == 1


def test_stripe_should_retry_false_is_obeyed(env, fake):
    seed_failing_account(fake)
    env.run("sync")
    path = "/v1/invoices/in_acct_A_0/mark_uncollectible"
    fake.fault(path_regex=path + "$", status=503, stripe_should_retry=False)
    fake.clear_requests()
    err = env.run("recompute", "acct_A", now=bad_debt_now(fake), rc=69).stderr
    assert "HTTP 503" in err
    assert len(fake.requests(path + "$")) == 1


def test_retries_give_up_after_max_retries(env, fake):
    env.write_config(max_retries=2)
    seed_failing_account(fake)
    env.run("sync")
    fake.fault(path_regex="mark_uncollectible$", status=502, count=-1)
    fake.clear_requests()
    err = env.run("recompute", "acct_A", now=bad_debt_now(fake), rc=69).stderr
    assert "HTTP 502" in err and "after 3 tries" in err
    assert len(fake.requests("mark_uncollectible$")) == 3
    # The trigger is kept for a later retry by the inbox.
    assert env.sql("SELECT state FROM inbox WHERE kind = 'support_recompute'") == [("retrying",)]


def test_a_400_is_not_retried_and_the_next_call_uses_a_new_key(env, fake):
    seed_failing_account(fake)
    env.run("sync")
    env.run("recompute", "acct_A", now=bad_debt_now(fake))
    # Stripe stored a 400 for the consolidated invoice's creation (execution began).
    fake.fault(path_regex="^/v1/invoices$", method="POST", status=400, store=True,
               error={"message": "Something about the customer was wrong."})
    fake.clear_requests()
    err = env.run("pay-bad-debt", "acct_A", now=bad_debt_now(fake), rc=1).stderr
    assert "HTTP 400" in err and "Something about the customer" in err
    first = fake.requests("^/v1/invoices$", "POST")
    assert len(first) == 1 and first[0]["status"] == 400
    key = first[0]["headers"]["Idempotency-Key"]
    assert key.startswith("acct_A/create_consolidated_invoice/") and key.endswith("/create")
    fake.clear_requests()
    # The same consequence again, in a new process: the old key only replays the
    # error, so the client moves to a new one and the invoice is created.
    out = env.run("pay-bad-debt", "acct_A", now=bad_debt_now(fake)).stdout
    assert "created consolidated invoice" in out
    again = fake.requests("^/v1/invoices$", "POST")
    assert [(r["headers"]["Idempotency-Key"], r["status"], r["replayed"]) for r in again] == [
        (key, 400, True), (key + "/r1", 200, False)]


def test_a_400_in_one_process_takes_a_new_key_next_time(env, fake):
    seed_failing_account(fake)
    fake.fault(path_regex="^/v1/customers/cus_A$", method="POST", status=400)
    lines = env.tool("op", "set_customer_metadata", "cus_A", "bad_debt", "true", "--key", "K",
                     "--times", "3", rc=1)
    assert [line["rc"] for line in lines] == ["DUN_E_PROVIDER_REJECTED", "DUN_OK", "DUN_OK"]
    assert "HTTP 400" in lines[0]["err"]
    reqs = fake.requests("^/v1/customers/cus_A$", "POST")
    assert [(r["headers"]["Idempotency-Key"], r["status"], r["replayed"]) for r in reqs] == [
        ("K", 400, False), ("K/r1", 200, False), ("K/r1", 200, True)]


def test_card_declined_on_a_payment_retry_is_an_outcome(env, fake):
    seed_failing_account(fake, decline="insufficient_funds")
    [line] = env.tool("op", "pay_invoice", "in_acct_A_0", "--key", "acct_A/retry_payment/in_acct_A_0/2")
    assert line["rc"] == "DUN_OK"
    assert line["obj"]["id"] == "in_acct_A_0" and line["obj"]["attempt_count"] == 2
    reqs = fake.requests("/pay$")
    assert [r["status"] for r in reqs] == [402]


def test_cancel_of_a_canceled_subscription_succeeds(env, fake):
    seed_failing_account(fake)
    lines = env.tool("op", "cancel_subscription", "sub_acct_A", "--times", "2")
    assert [line["rc"] for line in lines] == ["DUN_OK", "DUN_OK"]
    assert all(line["obj"]["status"] == "canceled" for line in lines)
    assert [r["status"] for r in fake.requests("/v1/subscriptions/", "DELETE")] == [200, 400]


# --------------------------------------------------------------------------
# rate limit


def test_rate_limit_is_never_exceeded(env, fake):
    """The fake allows 25 requests in any sliding second; the client's default
    limit is 25/s. A sync with 150 open invoices fetches their payments eight
    at a time, and four threads share one client: never a 429."""
    fake.seed(customers=[{"id": "cus_R", "metadata": {"account_id": "acct_R"}}],
              invoices=[{"id": "in_R%03d" % i, "customer": "cus_R", "attempts": ["insufficient_funds"]}
                        for i in range(150)])
    fake.seed(customers=[{"id": "cus_T", "metadata": {"account_id": "acct_T"}}],
              invoices=[{"id": "in_T%d" % i, "customer": "cus_T", "attempts": ["insufficient_funds"]}
                        for i in range(2)])
    fake.config(rate_limit_per_s=25)
    time.sleep(1.1)
    t = time.monotonic()
    env.run("sync")
    elapsed = time.monotonic() - t
    stats = fake.stats()
    assert stats["rate_limited"] == 0, stats
    assert stats["max_in_1s"] <= 25, stats
    assert stats["requests"] >= 150
    # And not much slower than the limit allows.
    assert elapsed < stats["requests"] / 25 * 1.25 + 2, (elapsed, stats)

    time.sleep(1.1)
    fake.clear_requests()
    [res] = env.tool("threads", "4", "10", "cus_T")
    assert res == {"ok": 40, "failed": 0, "errors": []}
    stats = fake.stats()
    assert stats["requests"] == 120 and stats["rate_limited"] == 0, stats
    assert stats["max_in_1s"] <= 25, stats


def test_without_the_client_limit_the_fake_answers_429_and_the_client_backs_off(env, fake):
    """The control for the test above: the fake's limit is real, and 429s are survived."""
    env.write_config(rate_limit_per_s=1000, max_retries=10)
    fake.seed(customers=[{"id": "cus_R", "metadata": {"account_id": "acct_R"}}],
              invoices=[{"id": "in_R%03d" % i, "customer": "cus_R", "attempts": ["insufficient_funds"]}
                        for i in range(60)])
    fake.config(rate_limit_per_s=25)
    time.sleep(1.1)
    env.run("sync")
    assert fake.stats()["rate_limited"] > 0
    assert env.sql("SELECT count(*) FROM p_attempts") == [(60,)]


# --------------------------------------------------------------------------
# the consolidated invoice


def test_consolidated_invoice_splits_a_long_list_of_originals(env, fake):
    ids = ["in_%s%03d" % ("Q" * 24, i) for i in range(25)]  # 30 characters each
    seed_failing_account(fake, ids=ids)
    env.run("sync")
    now = bad_debt_now(fake)
    env.run("recompute", "acct_A", now=now)
    assert all(fake.obj(i)["status"] == "uncollectible" for i in ids)
    out = env.run("pay-bad-debt", "acct_A", "--json", now=now).stdout
    inv = json.loads(out)
    assert sorted(inv["covers"]) == sorted(ids)
    made = fake.obj(inv["id"])
    md = made["metadata"]
    assert set(md) == {"bad_debt_invoices", "bad_debt_invoices_2", "dunning_key"}
    md = {k: v for k, v in md.items() if k != "dunning_key"}
    assert all(len(v) <= 500 for v in md.values())
    assert len(md["bad_debt_invoices"]) > 450  # filled before continuing
    joined = (md["bad_debt_invoices"] + "," + md["bad_debt_invoices_2"]).split(",")
    assert sorted(joined) == sorted(ids)
    assert made["status"] == "open" and made["collection_method"] == "send_invoice"
    assert made["amount_due"] == sum(1000 + n for n in range(25))
    assert len(made["lines"]["data"]) == 25
    assert made["due_date"] is not None
    reqs = fake.requests("^/v1/(invoices|invoiceitems)$", "POST") + fake.requests("/finalize$")
    keys = [r["headers"]["Idempotency-Key"] for r in reqs]
    assert len(set(keys)) == len(keys) == 27
    assert all(k.startswith("acct_A/create_consolidated_invoice/") for k in keys)
    create = fake.requests("^/v1/invoices$", "POST")[0]["params"]
    assert create["pending_invoice_items_behavior"] == "exclude"
    assert create["days_until_due"] == "30"
    # The mirror joined the two values back.
    [(covers,)] = env.sql("SELECT meta_bad_debt_invoices FROM p_invoices WHERE id = ?", inv["id"])
    assert sorted(covers.split(",")) == sorted(ids)
    # Asking again returns the same invoice.
    again = json.loads(env.run("pay-bad-debt", "acct_A", "--json", now=now).stdout)
    assert again["id"] == inv["id"]


# --------------------------------------------------------------------------
# failures the operator sees


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_api_base(env):
    env.write_config(api_base="http://127.0.0.1:%d" % free_port(), max_retries=1)
    err = env.run("sync", rc=69).stderr
    assert "cannot reach Stripe" in err and "after 2 tries" in err
    assert "reachable" in err
    err = env.run("backfill", "--since", "1", rc=69).stderr
    assert "cannot reach Stripe" in err


def test_wrong_api_key(env, fake):
    env.write_config(api_key="sk_test_wrong_key_123456")
    err = env.run("sync", rc=78).stderr
    assert "HTTP 401" in err and "check [stripe] api_key" in err
    assert "sk_test_wrong_key_123456" not in err
    assert len(fake.requests()) == 1  # a 401 is not retried


def test_timeout(env, fake):
    env.write_config(timeout_ms=300, max_retries=1)
    fake.fault(path_regex="^/v1/customers$", latency_ms=1500, count=-1, status=500)
    err = env.run("sync", rc=75).stderr
    assert "no answer in time" in err


def test_bad_stripe_settings_fail_at_start(env):
    env.write_config(api_base="http://stripe.example.com")
    assert "must be an https:// URL" in env.run("sync", rc=78).stderr
    env.write_config(api_key="")
    err = env.run("sync", rc=78).stderr
    assert "api_key" in err
