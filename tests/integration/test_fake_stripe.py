"""Tests of the Stripe fake itself (fake_stripe.py).

The engine's integration tests trust the fake to refuse what Stripe refuses;
these tests hold it to that: auth, form encoding, idempotency, pagination,
fault injection, rate limiting, invoice state rules, events and webhook
signatures. The fake runs as a real process on 127.0.0.1, started the way the
integration tests start it, and is spoken to with urllib only.

Run: /usr/bin/python3 -m pytest tests/integration/test_fake_stripe.py
"""

import hashlib
import hmac
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fake_stripe  # noqa: E402

FORM = "application/x-www-form-urlencoded"
KEY = "sk_test_fake123"
VECTOR_V1 = "53e7527ec21ab7237646d2634f9eb0e0255cb678939e8c3dbbec5cf2a639f66f"


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.raw = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    @property
    def error(self):
        return (self.json or {}).get("error") or {}

    def __repr__(self):
        return "<%d %s>" % (self.status, self.raw[:300])


class Fake:
    def __init__(self, port):
        self.port = port
        self.base = "http://127.0.0.1:%d" % port

    def call(self, method, path, params=None, key=KEY, headers=None, body=None, content_type=FORM,
             idem=None, timeout=10):
        """A Stripe API call. params: dict or list of pairs, form-encoded
        into the body (POST) or the query (GET, DELETE)."""
        h = {"Stripe-Version": fake_stripe.API_VERSION}
        if key is not None:
            h["Authorization"] = "Bearer " + key
        if idem is not None:
            h["Idempotency-Key"] = idem
        url = self.base + path
        data = None
        encoded = urllib.parse.urlencode(params or [], doseq=True)
        if method == "POST":
            data = body if body is not None else encoded.encode()
            if content_type is not None:
                h["Content-Type"] = content_type
        elif encoded:
            url += "?" + encoded
        h.update(headers or {})
        h = {k: v for k, v in h.items() if v is not None}
        req = urllib.request.Request(url, data=data, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Response(r.status, r.headers, r.read().decode())
        except urllib.error.HTTPError as e:
            return Response(e.code, e.headers, e.read().decode())

    def raw(self, method, path, body=b"", headers=None):
        """A request with exactly these headers (urllib would add a
        Content-Type to every body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            h = {"Authorization": "Bearer " + KEY}
            h.update(headers or {})
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return Response(r.status, r.headers, r.read().decode())
        finally:
            conn.close()

    def ok(self, method, path, params=None, **kw):
        r = self.call(method, path, params, **kw)
        assert r.status == 200, r
        return r.json

    def ctl(self, method, path, obj=None, status=200):
        data = json.dumps(obj).encode() if obj is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                got, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            got, body = e.code, e.read()
        assert got == status, body
        return json.loads(body)

    def requests(self, **q):
        return self.ctl("GET", "/_test/requests?" + urllib.parse.urlencode(q))["requests"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port_file = str(tmp_path_factory.mktemp("fake") / "port")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_stripe.py"), "--port", "0",
                             "--port-file", port_file])
    deadline = time.monotonic() + 15
    while not os.path.exists(port_file):
        assert proc.poll() is None, "fake_stripe exited early"
        assert time.monotonic() < deadline, "fake_stripe did not write its port"
        time.sleep(0.02)
    with open(port_file) as f:
        port = int(f.read())
    yield Fake(port)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def fake(server):
    server.ctl("POST", "/_test/reset")
    return server


def seed_customer(fake, card="ok", **extra):
    c = dict(extra, card=card)
    return fake.ctl("POST", "/_test/seed", {"customers": [c]})["customers"][0]["id"]


def draft_with_items(fake, cus, amounts=(1500,), **params):
    p = {"customer": cus, "collection_method": "send_invoice", "days_until_due": "7",
         "pending_invoice_items_behavior": "exclude"}
    p.update(params)
    inv = fake.ok("POST", "/v1/invoices", {k: v for k, v in p.items() if v is not None})
    for a in amounts:
        fake.ok("POST", "/v1/invoiceitems", {"customer": cus, "invoice": inv["id"], "amount": str(a),
                                             "currency": "usd", "description": "item"})
    return inv["id"]


# -- start-up ---------------------------------------------------------------


def test_listens_on_loopback_and_reports_port(fake):
    assert fake.ctl("GET", "/_test/health")["port"] == fake.port
    assert "Control API" in fake_stripe.CONTROL_API


def test_serve_binds_127_0_0_1_only():
    server = fake_stripe.serve(0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


# -- auth -------------------------------------------------------------------


def test_missing_auth_is_401_stripe_shaped(fake):
    r = fake.call("GET", "/v1/customers", key=None)
    assert r.status == 401
    assert r.error["type"] == "invalid_request_error"
    assert "API key" in r.error["message"]
    assert set(r.error) >= {"type", "code", "message", "param"}


@pytest.mark.parametrize("auth", ["Basic c2tfdGVzdF94Og==", "Bearer", "Bearer sk_live_abc", "Bearer pk_test_abc",
                                  "Bearer sk_test_", "sk_test_abc"])
def test_bad_auth_is_401(fake, auth):
    r = fake.call("GET", "/v1/customers", key=None, headers={"Authorization": auth})
    assert r.status == 401, auth
    assert "sk_live_abc" not in r.raw


def test_configured_api_key_is_enforced(fake):
    fake.ctl("POST", "/_test/config", {"api_key": "sk_test_only"})
    assert fake.call("GET", "/v1/customers").status == 401
    assert fake.call("GET", "/v1/customers", key="sk_test_only").status == 200


def test_authorization_is_masked_in_request_log(fake):
    fake.ok("GET", "/v1/customers")
    rec = fake.requests()[-1]
    assert KEY not in json.dumps(rec)
    assert rec["headers"]["Authorization"].startswith("Bearer sk_test_")


# -- form encoding ----------------------------------------------------------


def test_json_body_is_refused(fake):
    r = fake.call("POST", "/v1/customers", body=b'{"email": "a@b.c"}', content_type="application/json")
    assert r.status == 400
    assert "x-www-form-urlencoded" in r.error["message"]
    assert fake.ok("GET", "/v1/customers")["data"] == []


def test_missing_content_type_on_non_empty_body_is_refused(fake):
    r = fake.raw("POST", "/v1/customers", body=b"email=a%40b.c")
    assert r.status == 400
    assert fake.requests()[-1]["headers"]["Content-Type"] is None


def test_empty_post_without_content_type(fake):
    cus = seed_customer(fake)
    inv = draft_with_items(fake, cus)
    assert fake.raw("POST", "/v1/invoices/%s/finalize" % inv).status == 200
    fake.ctl("POST", "/_test/config", {"strict_content_type": True})
    assert fake.raw("POST", "/v1/invoices/%s/void" % inv).status == 400
    assert fake.raw("POST", "/v1/invoices/%s/void" % inv, headers={"Content-Type": FORM}).status == 200


def test_charset_parameter_is_accepted(fake):
    r = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, content_type=FORM + "; charset=utf-8")
    assert r.status == 200


def test_nested_keys_are_decoded(fake):
    cus = fake.ok("POST", "/v1/customers", [("metadata[bad_debt]", "true"), ("metadata[0]", "zero")])
    assert cus["metadata"] == {"bad_debt": "true", "0": "zero"}
    r = fake.call("POST", "/v1/customers", [("items[0][price]", "p"), ("items[1][price]", "q"),
                                            ("expand[]", "x"), ("expand[]", "y")])
    assert r.status == 400 and r.error["code"] == "parameter_unknown" and r.error["param"] == "items"
    assert fake.requests()[-1]["params"] == {"items": [{"price": "p"}, {"price": "q"}], "expand": ["x", "y"]}


def test_decode_form_unit():
    d = fake_stripe.decode_form("a[b][c]=1&a[b][d]=2&l[]=x&l[]=y&m[metadata][0]=z&e=")
    assert d == {"a": {"b": {"c": "1", "d": "2"}}, "l": ["x", "y"], "m": {"metadata": {"0": "z"}}, "e": ""}
    with pytest.raises(fake_stripe.StripeError):
        fake_stripe.decode_form("a=1&a[b]=2")
    with pytest.raises(fake_stripe.StripeError):
        fake_stripe.decode_form("a[b=1")


def test_unknown_parameter_is_refused(fake):
    r = fake.call("POST", "/v1/customers", {"emial": "a@b.c"})
    assert r.status == 400
    assert r.error == {"type": "invalid_request_error", "code": "parameter_unknown",
                       "message": "Received unknown parameter: emial", "param": "emial"}


def test_bad_integer_and_missing_param(fake):
    cus = seed_customer(fake)
    r = fake.call("POST", "/v1/invoiceitems", {"customer": cus, "amount": "12.5", "currency": "usd"})
    assert r.status == 400 and r.error["param"] == "amount"
    r = fake.call("POST", "/v1/invoiceitems", {"customer": cus, "currency": "usd"})
    assert r.status == 400 and r.error["code"] == "parameter_missing"


def test_stripe_version_is_recorded_and_checked(fake):
    fake.ok("GET", "/v1/customers", idem=None)
    assert fake.requests()[-1]["headers"]["Stripe-Version"] == fake_stripe.API_VERSION
    r = fake.call("GET", "/v1/customers", headers={"Stripe-Version": "latest-please"})
    assert r.status == 400
    fake.ctl("POST", "/_test/config", {"require_stripe_version": fake_stripe.API_VERSION})
    assert fake.call("GET", "/v1/customers", headers={"Stripe-Version": None}).status == 400
    assert fake.call("GET", "/v1/customers").status == 200


def test_unknown_url_and_missing_object_are_404(fake):
    r = fake.call("GET", "/v1/nothing")
    assert r.status == 404 and "Unrecognized request URL" in r.error["message"]
    r = fake.call("GET", "/v1/customers/cus_missing")
    assert r.status == 404 and r.error["code"] == "resource_missing"


# -- idempotency ------------------------------------------------------------


def test_same_key_same_params_replays_exact_response(fake):
    a = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-1")
    b = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-1")
    assert a.status == b.status == 200
    assert a.raw == b.raw
    assert b.headers["Idempotent-Replayed"] == "true"
    assert a.headers.get("Idempotent-Replayed") is None
    assert b.headers["Original-Request"] == a.headers["Request-Id"]
    assert len(fake.ok("GET", "/v1/customers")["data"]) == 1
    assert [r["replayed"] for r in fake.requests(method="POST")] == [False, True]


def test_same_key_different_params_is_idempotency_error(fake):
    fake.ok("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-2")
    r = fake.call("POST", "/v1/customers", {"email": "other@b.c"}, idem="k-2")
    assert r.status == 400
    assert r.error["type"] == "idempotency_error"
    assert r.headers["Stripe-Should-Retry"] == "false"
    cus = fake.ok("GET", "/v1/customers")["data"][0]["id"]
    r = fake.call("POST", "/v1/customers/%s" % cus, {"email": "a@b.c"}, idem="k-2")
    assert r.status == 400 and r.error["type"] == "idempotency_error"


def test_idempotency_key_longer_than_255_is_refused(fake):
    r = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k" * 256)
    assert r.status == 400 and r.error["param"] == "Idempotency-Key"
    assert fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k" * 255).status == 200


def test_require_idempotency_key(fake):
    fake.ctl("POST", "/_test/config", {"require_idempotency_key": True})
    r = fake.call("POST", "/v1/customers", {"email": "a@b.c"})
    assert r.status == 400 and r.error["param"] == "Idempotency-Key"
    assert fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-r").status == 200
    assert fake.call("GET", "/v1/customers").status == 200


def test_validation_errors_are_not_stored(fake):
    assert fake.call("POST", "/v1/customers", {"bogus": "1"}, idem="k-3").status == 400
    r = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-3")
    assert r.status == 200 and r.headers.get("Idempotent-Replayed") is None


def test_card_error_is_stored_and_replayed(fake):
    cus = seed_customer(fake, card=["insufficient_funds", "ok"])
    inv = draft_with_items(fake, cus, collection_method="charge_automatically", days_until_due=None)
    fake.ok("POST", "/v1/invoices/%s/finalize" % inv)
    a = fake.call("POST", "/v1/invoices/%s/pay" % inv, idem="pay-1")
    b = fake.call("POST", "/v1/invoices/%s/pay" % inv, idem="pay-1")
    assert a.status == b.status == 402 and a.raw == b.raw
    assert fake.ok("GET", "/v1/invoices/%s" % inv)["attempt_count"] == 1
    assert fake.call("POST", "/v1/invoices/%s/pay" % inv, idem="pay-2").status == 200


def test_idempotency_keys_expire_after_24h(fake):
    fake.ctl("POST", "/_test/clock", {"now": 1700000000})
    fake.ok("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-4")
    fake.ctl("POST", "/_test/clock", {"advance": 86401})
    r = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-4")
    assert r.status == 200 and r.headers.get("Idempotent-Replayed") is None
    assert len(fake.ok("GET", "/v1/customers")["data"]) == 2


def test_keys_are_scoped_per_api_key(fake):
    fake.ok("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-5")
    r = fake.call("POST", "/v1/customers", {"email": "other@b.c"}, idem="k-5", key="sk_test_other")
    assert r.status == 200


def test_concurrent_use_of_a_key_is_409(fake):
    # A slow first request holds the key while a second one arrives.
    fake.ctl("POST", "/_test/faults", {"path_regex": "^/v1/customers$", "method": "POST", "latency_ms": 600})
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("a", fake.call("POST", "/v1/customers", {"email": "a@b.c"},
                                                                       idem="k-6")))
    t.start()
    time.sleep(0.25)
    b = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-6")
    t.join()
    assert out["a"].status == 200
    assert b.status == 409
    assert b.error["code"] == "idempotency_key_in_use"
    assert b.headers["Stripe-Should-Retry"] == "true"
    c = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-6")
    assert c.status == 200 and c.headers["Idempotent-Replayed"] == "true" and c.raw == out["a"].raw


# -- pagination -------------------------------------------------------------


def test_pagination_walks_every_object_once_newest_first(fake):
    fake.ctl("POST", "/_test/seed", {"customers": [{"id": "cus_%02d" % i} for i in range(25)]})
    seen, after, pages = [], None, 0
    while True:
        p = {"limit": "10"}
        if after:
            p["starting_after"] = after
        page = fake.ok("GET", "/v1/customers", p)
        assert page["object"] == "list" and page["url"] == "/v1/customers"
        seen += [c["id"] for c in page["data"]]
        pages += 1
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert pages == 3
    assert seen == ["cus_%02d" % i for i in reversed(range(25))]


def test_pagination_ending_before_and_default_limit(fake):
    fake.ctl("POST", "/_test/seed", {"customers": [{"id": "cus_%02d" % i} for i in range(15)]})
    page = fake.ok("GET", "/v1/customers")
    assert len(page["data"]) == 10 and page["has_more"]
    page = fake.ok("GET", "/v1/customers", {"ending_before": "cus_05", "limit": "3"})
    assert [c["id"] for c in page["data"]] == ["cus_08", "cus_07", "cus_06"]
    assert page["has_more"]


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "101"}, {"limit": "x"},
                                    {"starting_after": "cus_nope"},
                                    {"starting_after": "cus_00", "ending_before": "cus_00"}])
def test_bad_pagination_params(fake, params):
    seed_customer(fake, id="cus_00")
    r = fake.call("GET", "/v1/customers", params)
    assert r.status == 400, params


def test_limit_100_is_allowed(fake):
    assert fake.call("GET", "/v1/customers", {"limit": "100"}).status == 200


# -- faults -----------------------------------------------------------------


def test_fault_status_count_and_should_retry(fake):
    fake.ctl("POST", "/_test/faults", {"path_regex": "^/v1/customers$", "method": "GET", "status": 503,
                                       "count": 2, "stripe_should_retry": "true"})
    for _ in range(2):
        r = fake.call("GET", "/v1/customers")
        assert r.status == 503 and r.error["type"] == "api_error"
        assert r.headers["Stripe-Should-Retry"] == "true"
    assert fake.call("GET", "/v1/customers").status == 200
    assert fake.call("POST", "/v1/customers", {}).status == 200
    assert fake.ctl("GET", "/_test/faults")["faults"] == []


def test_fault_429_is_rate_limit_shaped(fake):
    fake.ctl("POST", "/_test/faults", {"path_regex": "/v1/", "status": 429, "stripe_should_retry": False})
    r = fake.call("GET", "/v1/customers")
    assert r.status == 429 and r.error["code"] == "rate_limit"
    assert r.headers["Stripe-Should-Retry"] == "false"


def test_fault_error_override_and_method_filter(fake):
    fake.ctl("POST", "/_test/faults", {"path_regex": "/v1/customers", "method": "POST", "status": 429,
                                       "error": {"code": "lock_timeout", "message": "locked"}})
    assert fake.call("GET", "/v1/customers").status == 200
    r = fake.call("POST", "/v1/customers", {})
    assert r.status == 429 and r.error["code"] == "lock_timeout" and r.error["message"] == "locked"


def test_fault_drop_closes_the_connection(fake):
    fake.ctl("POST", "/_test/faults", {"path_regex": "/v1/customers", "drop": True})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        fake.call("GET", "/v1/customers")
    assert fake.requests()[-1]["dropped"] is True
    assert fake.call("GET", "/v1/customers").status == 200


def test_fault_latency(fake):
    fake.ctl("POST", "/_test/faults", {"path_regex": "/v1/customers", "latency_ms": 300})
    t = time.monotonic()
    assert fake.call("GET", "/v1/customers").status == 200
    assert time.monotonic() - t >= 0.3


def test_fault_before_does_not_execute(fake):
    fake.ctl("POST", "/_test/faults", {"path_regex": "/v1/customers", "method": "POST", "status": 500})
    assert fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-7").status == 500
    assert fake.ok("GET", "/v1/customers")["data"] == []
    # Not stored: the retry with the same key executes.
    r = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-7")
    assert r.status == 200 and r.headers.get("Idempotent-Replayed") is None


def test_fault_store_replays_the_500(fake):
    fake.ctl("POST", "/_test/faults", {"path_regex": "/v1/customers", "method": "POST", "status": 500,
                                       "store": True})
    a = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-8")
    b = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-8")
    assert a.status == b.status == 500 and a.raw == b.raw
    assert b.headers["Idempotent-Replayed"] == "true"
    assert fake.call("POST", "/v1/customers", {"email": "x@b.c"}, idem="k-8").error["type"] == "idempotency_error"


def test_fault_after_drop_then_retry_with_same_key_replays(fake):
    """The lost-response case: the request took effect, the answer never
    arrived, and the client's retry with the same key must not act twice."""
    fake.ctl("POST", "/_test/faults", {"path_regex": "/v1/customers", "method": "POST", "drop": True,
                                       "phase": "after"})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-9")
    r = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-9")
    assert r.status == 200 and r.headers["Idempotent-Replayed"] == "true"
    assert len(fake.ok("GET", "/v1/customers")["data"]) == 1


def test_retry_advice_is_sent_as_stripe_sends_it(fake):
    """By default a 500 says Stripe-Should-Retry: false, a 503 and a 409
    say true with a Retry-After, a 429 rate_limit has a Retry-After only and
    a 429 lock_timeout says true; a fault can override or drop either."""
    faults = [{"path_regex": "^/v1/customers$", "method": "GET", "status": st} for st in (500, 503, 409, 429)]
    faults.append({"path_regex": "^/v1/customers$", "method": "GET", "status": 429,
                   "error": {"code": "lock_timeout"}})
    faults.append({"path_regex": "^/v1/customers$", "method": "GET", "status": 500,
                   "stripe_should_retry": None, "retry_after": 7})
    fake.ctl("POST", "/_test/faults", {"faults": faults})
    seen = []
    for _ in range(6):
        r = fake.call("GET", "/v1/customers")
        seen.append((r.status, r.error.get("code"), r.headers.get("Stripe-Should-Retry"),
                     r.headers.get("Retry-After")))
    assert seen == [(500, None, "false", None), (503, None, "true", "1"),
                    (409, "idempotency_key_in_use", "true", None), (429, "rate_limit", None, "1"),
                    (429, "lock_timeout", "true", "1"), (500, None, None, "7")]


def test_fault_after_500_executes_and_stores_the_500(fake):
    """As Stripe: the request took effect and its answer, a 500, is what the
    key holds; the same key replays the 500 and never reveals the object."""
    fake.ctl("POST", "/_test/faults", {"path_regex": "/v1/customers", "method": "POST", "status": 500,
                                       "phase": "after"})
    a = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-10")
    assert a.status == 500 and a.headers["Stripe-Should-Retry"] == "false"
    b = fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-10")
    assert b.status == 500 and b.headers["Idempotent-Replayed"] == "true"
    assert b.headers["Stripe-Should-Retry"] == "false"
    assert len(fake.ok("GET", "/v1/customers")["data"]) == 1
    # A new key runs it again: what a client must check before it does so.
    assert fake.call("POST", "/v1/customers", {"email": "a@b.c"}, idem="k-11").status == 200
    assert len(fake.ok("GET", "/v1/customers")["data"]) == 2


def test_unknown_stripe_version_is_refused(fake):
    for bad in ("2025-13-45", "2025-03-31.acacia", "2099-01-01", "basil"):
        r = fake.call("GET", "/v1/customers", headers={"Stripe-Version": bad})
        assert r.status == 400 and r.error["param"] == "Stripe-Version", (bad, r)
    for good in ("2024-06-20", "2025-03-31.basil"):
        assert fake.call("GET", "/v1/customers", headers={"Stripe-Version": good}).status == 200
    fake.ctl("POST", "/_test/config", {"account_api_version": "2025-99-99"}, status=400)


def test_rate_limit_is_on_by_default_at_the_test_mode_rate(fake):
    assert fake.ctl("GET", "/_test/config")["rate_limit_per_s"] == fake_stripe.TEST_MODE_RATE_PER_S == 25
    time.sleep(1.05)
    statuses = [fake.call("GET", "/v1/customers").status for _ in range(40)]
    assert statuses[:25] == [200] * 25 and 429 in statuses
    r = fake.call("GET", "/v1/customers")
    if r.status == 429:
        assert r.headers["Retry-After"] == "1"


def test_events_keep_the_shape_of_the_version_they_were_created_with(fake):
    fake.ctl("POST", "/_test/config", {"account_api_version": "2024-06-20"})
    fake.ctl("POST", "/_test/seed", {"customers": [{"id": "cus_V", "card": "insufficient_funds"}],
                                     "subscriptions": [{"id": "sub_V", "customer": "cus_V", "status": "past_due"}],
                                     "invoices": [{"id": "in_V", "customer": "cus_V", "subscription": "sub_V",
                                                   "amount_due": 1500, "attempts": ["insufficient_funds"]}],
                                     "events": True})
    fake.ctl("POST", "/_test/config", {"account_api_version": fake_stripe.API_VERSION})
    fake.ok("POST", "/v1/invoices/in_V/void", idem="v-1")
    events = fake.ok("GET", "/v1/events")["data"]
    old = [e for e in events if e["api_version"] == "2024-06-20" and e["data"]["object"]["object"] == "invoice"]
    new = [e for e in events if e["type"] == "invoice.voided"]
    assert old and len(new) == 1
    for e in old:
        inv = e["data"]["object"]
        assert "parent" not in inv and inv["subscription"] == "sub_V" and inv["paid"] is False
    inv = new[0]["data"]["object"]
    assert new[0]["api_version"] == fake_stripe.API_VERSION
    assert "subscription" not in inv and inv["parent"]["subscription_details"]["subscription"] == "sub_V"
    # Read with an older Stripe-Version, an invoice comes in that version's
    # shape; the events stay as they were created.
    old_inv = fake.ok("GET", "/v1/invoices/in_V", headers={"Stripe-Version": "2024-06-20"})
    assert old_inv["subscription"] == "sub_V" and old_inv["payment_intent"].startswith("pi_")
    again = fake.ok("GET", "/v1/events/" + new[0]["id"], headers={"Stripe-Version": "2024-06-20"})
    assert again["data"]["object"]["parent"]["subscription_details"]["subscription"] == "sub_V"


def test_bad_faults_are_refused(fake):
    fake.ctl("POST", "/_test/faults", {"path_regex": "x"}, status=400)
    fake.ctl("POST", "/_test/faults", {"path_regex": "(", "status": 500}, status=400)
    fake.ctl("POST", "/_test/faults", {"status": 200}, status=400)
    fake.ctl("POST", "/_test/faults", {"status": 500, "colour": "red"}, status=400)


# -- rate limit -------------------------------------------------------------


def test_rate_limit(fake):
    fake.ctl("POST", "/_test/config", {"rate_limit_per_s": 5})
    statuses = [fake.call("GET", "/v1/customers").status for _ in range(12)]
    assert statuses.count(429) >= 1
    assert statuses[:5] == [200] * 5
    r = fake.call("GET", "/v1/customers")
    if r.status == 429:
        assert r.error["code"] == "rate_limit"
    stats = fake.ctl("GET", "/_test/stats")
    assert stats["rate_limited"] >= 1 and stats["max_in_1s"] >= 6
    time.sleep(1.05)
    assert fake.call("GET", "/v1/customers").status == 200


def test_a_polite_client_is_never_limited(fake):
    fake.ctl("POST", "/_test/config", {"rate_limit_per_s": 25})
    for _ in range(30):
        assert fake.call("GET", "/v1/customers").status == 200
        time.sleep(0.045)
    stats = fake.ctl("GET", "/_test/stats")
    assert stats["rate_limited"] == 0 and stats["max_in_1s"] <= 25


# -- customers and metadata -------------------------------------------------


def test_metadata_merge_semantics(fake):
    cus = fake.ok("POST", "/v1/customers", {"metadata[a]": "1", "metadata[b]": "2"})
    cid = cus["id"]
    cus = fake.ok("POST", "/v1/customers/" + cid, {"metadata[a]": "", "metadata[c]": "3"})
    assert cus["metadata"] == {"b": "2", "c": "3"}
    cus = fake.ok("POST", "/v1/customers/" + cid, {"email": "n@b.c"})
    assert cus["metadata"] == {"b": "2", "c": "3"}
    cus = fake.ok("POST", "/v1/customers/" + cid, {"metadata": ""})
    assert cus["metadata"] == {}
    assert fake.ok("GET", "/v1/customers/" + cid)["email"] == "n@b.c"


def test_metadata_limits(fake):
    cid = seed_customer(fake)
    assert fake.call("POST", "/v1/customers/" + cid, {"metadata[%s]" % ("k" * 41): "v"}).status == 400
    assert fake.call("POST", "/v1/customers/" + cid, {"metadata[k]": "v" * 501}).status == 400
    many = {"metadata[k%d]" % i: "v" for i in range(51)}
    assert fake.call("POST", "/v1/customers/" + cid, many).status == 400
    # A refused update changes nothing.
    assert fake.ok("GET", "/v1/customers/" + cid)["metadata"] == {}
    assert fake.call("POST", "/v1/customers", many).status == 400
    assert len(fake.ok("GET", "/v1/customers")["data"]) == 1


def test_customer_update_event_has_previous_attributes(fake):
    cid = seed_customer(fake)
    fake.ok("POST", "/v1/customers/" + cid, {"metadata[bad_debt]": "true"})
    ev = fake.ok("GET", "/v1/events", {"type": "customer.updated"})["data"][0]
    assert ev["data"]["object"]["metadata"] == {"bad_debt": "true"}
    assert ev["data"]["previous_attributes"] == {"metadata": {}}


# -- subscriptions ----------------------------------------------------------


def test_subscriptions_list_and_cancel(fake):
    cid = seed_customer(fake)
    other = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"subscriptions": [{"id": "sub_1", "customer": cid},
                                                       {"id": "sub_2", "customer": other},
                                                       {"id": "sub_3", "customer": cid, "status": "canceled"}]})
    page = fake.ok("GET", "/v1/subscriptions", {"customer": cid})
    assert [s["id"] for s in page["data"]] == ["sub_1"]
    page = fake.ok("GET", "/v1/subscriptions", {"customer": cid, "status": "all"})
    assert sorted(s["id"] for s in page["data"]) == ["sub_1", "sub_3"]
    sub = fake.ok("DELETE", "/v1/subscriptions/sub_1")
    assert sub["status"] == "canceled" and sub["canceled_at"] and sub["ended_at"]
    assert fake.ok("GET", "/v1/subscriptions/sub_1")["status"] == "canceled"
    assert fake.ok("GET", "/v1/subscriptions", {"customer": cid})["data"] == []
    r = fake.call("DELETE", "/v1/subscriptions/sub_1")
    assert r.status == 400 and r.error["type"] == "invalid_request_error"
    assert fake.ok("GET", "/v1/events", {"type": "customer.subscription.deleted"})["data"][0]["data"]["object"][
        "id"] == "sub_1"
    assert fake.call("DELETE", "/v1/subscriptions/sub_nope").status == 404


# -- invoices: shape and state rules ----------------------------------------


def test_consolidated_invoice_flow(fake):
    cid = seed_customer(fake)
    inv = fake.ok("POST", "/v1/invoices", {"customer": cid, "collection_method": "send_invoice",
                                           "days_until_due": "14", "pending_invoice_items_behavior": "exclude",
                                           "metadata[consolidated]": "true"})
    assert inv["status"] == "draft" and inv["metadata"] == {"consolidated": "true"}
    assert inv["due_date"] == inv["created"] + 14 * 86400
    for amount in (1200, 300):
        fake.ok("POST", "/v1/invoiceitems", {"customer": cid, "invoice": inv["id"], "amount": str(amount),
                                             "currency": "usd", "description": "old invoice"})
    fin = fake.ok("POST", "/v1/invoices/%s/finalize" % inv["id"])
    assert fin["status"] == "open"
    assert fin["amount_due"] == 1500 and fin["amount_remaining"] == 1500
    assert fin["hosted_invoice_url"].startswith("http://127.0.0.1:")
    assert fin["number"] and fin["status_transitions"]["finalized_at"]
    assert fin["next_payment_attempt"] is None
    assert len(fin["lines"]["data"]) == 2
    page = urllib.request.urlopen(fin["hosted_invoice_url"], timeout=5).read().decode()
    assert inv["id"] in page


def test_basil_invoice_shape(fake):
    cid = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"subscriptions": [{"id": "sub_b", "customer": cid}],
                                     "invoices": [{"id": "in_b", "customer": cid, "subscription": "sub_b",
                                                   "attempts": ["insufficient_funds"]}]})
    inv = fake.ok("GET", "/v1/invoices/in_b")
    for gone in ("charge", "payment_intent", "paid", "subscription"):
        assert gone not in inv
    assert inv["parent"]["subscription_details"]["subscription"] == "sub_b"
    assert inv["billing_reason"] == "subscription_cycle"
    assert fake.ok("GET", "/v1/invoices", {"subscription": "sub_b"})["data"][0]["id"] == "in_b"


def test_invoice_list_filters(fake):
    a = seed_customer(fake)
    b = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"invoices": [
        {"id": "in_a1", "customer": a}, {"id": "in_a2", "customer": a, "status": "paid"},
        {"id": "in_b1", "customer": b}]})
    ids = [i["id"] for i in fake.ok("GET", "/v1/invoices", {"customer": a, "status": "open", "limit": "100"})["data"]]
    assert ids == ["in_a1"]
    assert fake.call("GET", "/v1/invoices", {"status": "late"}).status == 400


@pytest.mark.parametrize("status,action,ok", [
    ("paid", "mark_uncollectible", False), ("void", "mark_uncollectible", False),
    ("uncollectible", "mark_uncollectible", False), ("draft", "mark_uncollectible", False),
    ("open", "mark_uncollectible", True),
    ("paid", "void", False), ("void", "void", False), ("draft", "void", False),
    ("open", "void", True), ("uncollectible", "void", True),
    ("paid", "pay", False), ("void", "pay", False), ("draft", "pay", False),
    ("open", "pay", True), ("uncollectible", "pay", True),
    ("open", "finalize", False), ("paid", "finalize", False), ("draft", "finalize", True),
])
def test_invoice_state_rules(fake, status, action, ok):
    cid = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_s", "customer": cid, "status": status}]})
    before = fake.ok("GET", "/v1/invoices/in_s")
    r = fake.call("POST", "/v1/invoices/in_s/" + action)
    if ok:
        assert r.status == 200, r
    else:
        assert r.status == 400, r
        assert r.error["type"] == "invalid_request_error"
        assert fake.ok("GET", "/v1/invoices/in_s") == before


def test_transitions_record_events_and_timestamps(fake):
    fake.ctl("POST", "/_test/clock", {"now": 1700000000})
    cid = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_t", "customer": cid}]})
    inv = fake.ok("POST", "/v1/invoices/in_t/mark_uncollectible")
    assert inv["status"] == "uncollectible"
    assert inv["status_transitions"]["marked_uncollectible_at"] == 1700000000
    inv = fake.ok("POST", "/v1/invoices/in_t/void")
    assert inv["status"] == "void" and inv["status_transitions"]["voided_at"] == 1700000000
    types = [e["type"] for e in fake.ok("GET", "/v1/events")["data"]]
    assert types == ["invoice.voided", "invoice.marked_uncollectible"]


def test_invoice_metadata_update_on_any_status(fake):
    cid = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_m", "customer": cid, "status": "paid"}]})
    inv = fake.ok("POST", "/v1/invoices/in_m", {"metadata[bad_debt_amount]": "1500"})
    assert inv["metadata"] == {"bad_debt_amount": "1500"}
    assert fake.call("POST", "/v1/invoices/in_m", {"days_until_due": "3"}).status == 400


def test_invoiceitem_rules(fake):
    cid = seed_customer(fake)
    other = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_open", "customer": cid}]})
    r = fake.call("POST", "/v1/invoiceitems", {"customer": cid, "invoice": "in_open", "amount": "5",
                                               "currency": "usd"})
    assert r.status == 400 and r.error["code"] == "invoice_not_editable"
    inv = draft_with_items(fake, cid, amounts=())
    r = fake.call("POST", "/v1/invoiceitems", {"customer": other, "invoice": inv, "amount": "5", "currency": "usd"})
    assert r.status == 400
    r = fake.call("POST", "/v1/invoiceitems", {"customer": cid, "invoice": inv, "amount": "5", "currency": "eur"})
    assert r.status == 400
    r = fake.call("POST", "/v1/invoices", {"customer": cid, "collection_method": "send_invoice"})
    assert r.status == 400 and r.error["param"] == "days_until_due"
    r = fake.call("POST", "/v1/invoices", {"customer": "cus_nope"})
    assert r.status == 400 and r.error["code"] == "resource_missing"


def test_pending_items_included_only_when_asked(fake):
    cid = seed_customer(fake)
    fake.ok("POST", "/v1/invoiceitems", {"customer": cid, "amount": "700", "currency": "usd"})
    ex = draft_with_items(fake, cid, amounts=())
    inc = draft_with_items(fake, cid, amounts=(), pending_invoice_items_behavior="include")
    assert fake.ok("POST", "/v1/invoices/%s/finalize" % ex)["status"] == "paid"  # nothing due
    assert fake.ok("POST", "/v1/invoices/%s/finalize" % inc)["amount_due"] == 700


# -- payments ---------------------------------------------------------------


def test_pay_with_working_card(fake):
    cid = seed_customer(fake, card="ok")
    inv = draft_with_items(fake, cid, amounts=(2500,))
    fake.ok("POST", "/v1/invoices/%s/finalize" % inv)
    paid = fake.ok("POST", "/v1/invoices/%s/pay" % inv)
    assert paid["status"] == "paid" and paid["amount_paid"] == 2500 and paid["amount_remaining"] == 0
    assert paid["attempt_count"] == 1 and paid["attempted"]
    ips = fake.ok("GET", "/v1/invoice_payments", {"invoice": inv})["data"]
    assert len(ips) == 1 and ips[0]["status"] == "paid" and ips[0]["amount_paid"] == 2500
    pi = fake.ok("GET", "/v1/payment_intents/" + ips[0]["payment"]["payment_intent"])
    assert pi["status"] == "succeeded" and pi["last_payment_error"] is None
    types = {e["type"] for e in fake.ok("GET", "/v1/events", {"limit": "100"})["data"]}
    assert {"invoice.paid", "invoice.payment_succeeded", "payment_intent.succeeded", "charge.succeeded"} <= types


def test_pay_with_declining_card(fake):
    cid = seed_customer(fake, card={"decline_code": "insufficient_funds", "advice_code": "try_again_later",
                                    "network_advice_code": "24"})
    inv = draft_with_items(fake, cid, collection_method="charge_automatically", days_until_due=None)
    fake.ok("POST", "/v1/invoices/%s/finalize" % inv, {"auto_advance": "true"})
    r = fake.call("POST", "/v1/invoices/%s/pay" % inv)
    assert r.status == 402
    assert r.error["type"] == "card_error" and r.error["code"] == "card_declined"
    assert r.error["decline_code"] == "insufficient_funds"
    got = fake.ok("GET", "/v1/invoices/" + inv)
    # Stripe retries an invoice it advances by itself: the first retry a day on.
    assert got["status"] == "open" and got["attempt_count"] == 1
    assert got["next_payment_attempt"] == got["status_transitions"]["finalized_at"] + 86400
    ip = fake.ok("GET", "/v1/invoice_payments", {"invoice": inv})["data"][0]
    assert ip["status"] == "open"
    pi = fake.ok("GET", "/v1/payment_intents/" + ip["payment"]["payment_intent"], {"expand[]": "latest_charge"})
    err = pi["last_payment_error"]
    assert err["decline_code"] == "insufficient_funds" and err["advice_code"] == "try_again_later"
    assert err["network_advice_code"] == "24"
    ch = pi["latest_charge"]
    assert ch["object"] == "charge" and ch["status"] == "failed"
    assert ch["outcome"]["reason"] == "insufficient_funds" and ch["outcome"]["type"] == "issuer_declined"
    assert ch["failure_code"] == "card_declined"
    ev = fake.ok("GET", "/v1/events", {"type": "invoice.payment_failed"})["data"]
    assert len(ev) == 1 and ev[0]["data"]["object"]["id"] == inv


def test_expired_card_has_its_own_code(fake):
    cid = seed_customer(fake, card="expired_card")
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_x", "customer": cid}]})
    r = fake.call("POST", "/v1/invoices/in_x/pay")
    assert r.status == 402 and r.error["code"] == "expired_card" and r.error["decline_code"] == "expired_card"


def test_card_sequence_then_success_reuses_payment_intent(fake):
    cid = seed_customer(fake, card=["insufficient_funds", "insufficient_funds", "ok"])
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_q", "customer": cid, "amount_due": 900}]})
    assert fake.call("POST", "/v1/invoices/in_q/pay").status == 402
    assert fake.call("POST", "/v1/invoices/in_q/pay").status == 402
    inv = fake.ok("POST", "/v1/invoices/in_q/pay")
    assert inv["status"] == "paid" and inv["attempt_count"] == 3
    ips = fake.ok("GET", "/v1/invoice_payments", {"invoice": "in_q"})["data"]
    assert len(ips) == 1 and ips[0]["status"] == "paid"


def test_uncollectible_invoice_can_be_paid(fake):
    cid = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_u", "customer": cid, "status": "uncollectible"}]})
    assert fake.ok("POST", "/v1/invoices/in_u/pay")["status"] == "paid"


def test_paid_out_of_band_and_no_card(fake):
    cid = seed_customer(fake, card="none")
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_o", "customer": cid}, {"id": "in_n", "customer": cid}]})
    assert fake.call("POST", "/v1/invoices/in_n/pay").status == 400
    assert fake.ok("POST", "/v1/invoices/in_o/pay", {"paid_out_of_band": "true"})["status"] == "paid"


def test_seeded_attempts(fake):
    cid = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_h", "customer": cid, "created": 1700000000,
                                                   "attempts": ["insufficient_funds", "do_not_honor"]}]})
    inv = fake.ok("GET", "/v1/invoices/in_h")
    assert inv["status"] == "open" and inv["attempt_count"] == 2
    ip = fake.ok("GET", "/v1/invoice_payments", {"invoice": "in_h"})["data"][0]
    pi = fake.ok("GET", "/v1/payment_intents/" + ip["payment"]["payment_intent"])
    assert pi["last_payment_error"]["decline_code"] == "do_not_honor"
    assert fake.ok("GET", "/v1/events")["data"] == []  # seeds do not emit unless asked


def test_charges_of_a_payment_intent_are_listed_newest_first(fake):
    cid = seed_customer(fake, card=["insufficient_funds", "expired_card"])
    other = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"invoices": [
        {"id": "in_c", "customer": cid, "created": 1700000000,
         "attempts": ["insufficient_funds", "expired_card"]},
        {"id": "in_d", "customer": other, "attempts": ["do_not_honor"]}]})
    ip = fake.ok("GET", "/v1/invoice_payments", {"invoice": "in_c"})["data"][0]
    pi = ip["payment"]["payment_intent"]
    charges = fake.ok("GET", "/v1/charges", {"payment_intent": pi})["data"]
    assert [c["outcome"]["reason"] for c in charges] == ["expired_card", "insufficient_funds"]
    assert all(c["payment_intent"] == pi and "invoice" not in c for c in charges)  # basil
    assert charges[0]["id"] == fake.ok("GET", "/v1/payment_intents/" + pi)["latest_charge"]
    page = fake.ok("GET", "/v1/charges", {"payment_intent": pi, "limit": "1"})
    assert page["has_more"] and len(page["data"]) == 1
    assert len(fake.ok("GET", "/v1/charges", {"customer": other})["data"]) == 1
    assert len(fake.ok("GET", "/v1/charges")["data"]) == 3
    assert fake.call("GET", "/v1/charges", {"invoice": "in_c"}).status == 400


def test_seeded_customer_created_event_carries_metadata(fake):
    fake.ctl("POST", "/_test/seed", {"customers": [{"id": "cus_m", "metadata": {"account_id": "acct_m"}}],
                                     "events": True})
    [ev] = fake.ok("GET", "/v1/events", {"type": "customer.created"})["data"]
    assert ev["data"]["object"]["metadata"] == {"account_id": "acct_m"}
    # Seeding it again updates the metadata without a new event.
    fake.ctl("POST", "/_test/seed", {"customers": [{"id": "cus_m", "metadata": {"account_id": "acct_n"}}],
                                     "events": True})
    assert fake.ok("GET", "/v1/customers/cus_m")["metadata"] == {"account_id": "acct_n"}
    assert len(fake.ok("GET", "/v1/events")["data"]) == 1


def test_expand_errors(fake):
    cid = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_e", "customer": cid}]})
    assert fake.ok("GET", "/v1/invoices/in_e", {"expand[]": "customer"})["customer"]["id"] == cid
    assert fake.call("GET", "/v1/invoices/in_e", {"expand[]": "status"}).status == 400
    assert fake.call("GET", "/v1/invoices/in_e", {"expand[]": "nope"}).status == 400
    page = fake.ok("GET", "/v1/invoices", {"expand[]": "data.customer"})
    assert page["data"][0]["customer"]["object"] == "customer"


# -- events -----------------------------------------------------------------


def test_events_shape_filters_and_pagination(fake):
    fake.ctl("POST", "/_test/clock", {"now": 1700000000})
    for i in range(3):
        fake.ok("POST", "/v1/customers", {"email": "c%d@b.c" % i}, idem="e%d" % i)
    fake.ctl("POST", "/_test/clock", {"now": 1700000100})
    cid = fake.ok("GET", "/v1/customers")["data"][0]["id"]
    fake.ok("POST", "/v1/customers/" + cid, {"metadata[x]": "1"})
    ev = fake.ok("GET", "/v1/events")["data"]
    assert [e["type"] for e in ev] == ["customer.updated"] + ["customer.created"] * 3
    e = ev[-1]
    assert e["id"].startswith("evt_") and e["object"] == "event" and e["api_version"] == fake_stripe.API_VERSION
    assert e["created"] == 1700000000 and e["data"]["object"]["object"] == "customer"
    assert e["request"]["idempotency_key"] == "e0" and e["request"]["id"].startswith("req_")
    assert len(fake.ok("GET", "/v1/events", {"created[gte]": "1700000050"})["data"]) == 1
    assert len(fake.ok("GET", "/v1/events", {"created[lt]": "1700000050"})["data"]) == 3
    assert len(fake.ok("GET", "/v1/events", {"type": "customer.*"})["data"]) == 4
    assert len(fake.ok("GET", "/v1/events", {"types[]": ["customer.updated", "invoice.paid"]})["data"]) == 1
    page = fake.ok("GET", "/v1/events", {"limit": "2"})
    assert page["has_more"]
    rest = fake.ok("GET", "/v1/events", {"limit": "2", "starting_after": page["data"][-1]["id"]})
    assert not rest["has_more"] and len(rest["data"]) == 2
    assert fake.ok("GET", "/v1/events/" + e["id"])["id"] == e["id"]
    assert fake.call("GET", "/v1/events", {"created[around]": "1"}).status == 400


def test_event_snapshots_do_not_change_later(fake):
    cid = seed_customer(fake)
    fake.ok("POST", "/v1/customers/" + cid, {"metadata[a]": "1"})
    fake.ok("POST", "/v1/customers/" + cid, {"metadata[a]": "2"})
    evs = fake.ok("GET", "/v1/events")["data"]
    assert [e["data"]["object"]["metadata"]["a"] for e in evs] == ["2", "1"]


# -- control API ------------------------------------------------------------


def test_requests_log_records_headers_and_params(fake):
    fake.call("POST", "/v1/customers", {"metadata[k]": "v"}, idem="rec-1")
    rec = fake.requests(path_regex="^/v1/customers$", method="POST")[-1]
    assert rec["headers"]["Idempotency-Key"] == "rec-1"
    assert rec["headers"]["Stripe-Version"] == fake_stripe.API_VERSION
    assert rec["headers"]["Content-Type"] == FORM
    assert rec["params"] == {"metadata": {"k": "v"}} and rec["status"] == 200
    fake.ctl("DELETE", "/_test/requests")
    assert fake.requests() == []


def test_control_calls_are_not_recorded(fake):
    fake.ctl("GET", "/_test/stats")
    fake.ctl("GET", "/_test/clock")
    assert fake.requests() == []


def test_clock(fake):
    assert fake.ctl("POST", "/_test/clock", {"now": 1700000000}) == {"now": 1700000000, "fixed": True}
    assert fake.ctl("POST", "/_test/clock", {"advance": 60})["now"] == 1700000060
    assert fake.ok("POST", "/v1/customers", {})["created"] == 1700000060
    assert fake.ctl("POST", "/_test/clock", {"now": None})["fixed"] is False


def test_reset_forgets_everything(fake):
    seed_customer(fake)
    fake.ctl("POST", "/_test/config", {"rate_limit_per_s": 1})
    fake.ctl("POST", "/_test/reset")
    assert fake.ok("GET", "/v1/customers")["data"] == []
    # Back to Stripe's test-mode limit, which is on by default.
    assert fake.ctl("GET", "/_test/config")["rate_limit_per_s"] == 25


def test_bad_control_requests(fake):
    fake.ctl("POST", "/_test/config", {"colour": 1}, status=400)
    fake.ctl("POST", "/_test/config", {"webhook_url": "http://example.com/hook"}, status=400)
    fake.ctl("POST", "/_test/seed", {"invoices": [{"customer": "cus_nope"}]}, status=400)
    fake.ctl("GET", "/_test/nothing", status=404)
    fake.ctl("GET", "/_test/objects/cus_nope", status=400)


# -- webhooks ---------------------------------------------------------------


def test_sign_payload_matches_the_stripe_md_vector():
    with open(os.path.join(HERE, "..", "server", "webhook_test_vector_payload.json"), "rb") as f:
        body = f.read()
    assert len(body) == 119
    assert fake_stripe.sign_payload("whsec_test_secret", 1700000000, body) == VECTOR_V1


class Receiver(http.server.BaseHTTPRequestHandler):
    got = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def verify(header, body, secret):
    parts = [p.split("=", 1) for p in header.split(",")]
    t = [v for k, v in parts if k == "t"][0]
    want = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(k == "v1" and hmac.compare_digest(v, want) for k, v in parts), int(t)


def test_webhooks_are_delivered_signed(fake):
    Receiver.got = []
    rx = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=rx.serve_forever, daemon=True).start()
    try:
        fake.ctl("POST", "/_test/clock", {"now": 1700000000})
        fake.ctl("POST", "/_test/config", {"webhook_url": "http://127.0.0.1:%d/hook" % rx.server_address[1],
                                           "webhook_secrets": ["whsec_old", "whsec_new"],
                                           "webhook_include_v0": True})
        cid = seed_customer(fake)
        fake.ok("POST", "/v1/customers/" + cid, {"metadata[bad_debt]": "true"})
        assert fake.ctl("POST", "/_test/webhooks/flush", {"timeout_s": 5})["ok"]
        assert len(Receiver.got) == 1
        headers, body = Receiver.got[0]
        event = json.loads(body)
        assert event["type"] == "customer.updated"
        sig = headers["Stripe-Signature"]
        assert sig.count("v1=") == 2 and "v0=" in sig
        assert verify(sig, body, "whsec_new") == (True, 1700000000)
        assert verify(sig, body, "whsec_old")[0]
        assert not verify(sig, body, "whsec_other")[0]
        # A redelivery carries the same event id under a new t and signature.
        fake.ctl("POST", "/_test/clock", {"advance": 3600})
        fake.ctl("POST", "/_test/webhooks/redeliver", {"event": event["id"]})
        assert fake.ctl("POST", "/_test/webhooks/flush", {"timeout_s": 5})["ok"]
        headers2, body2 = Receiver.got[1]
        assert json.loads(body2)["id"] == event["id"]
        assert verify(headers2["Stripe-Signature"], body2, "whsec_new") == (True, 1700003600)
        deliveries = fake.ctl("GET", "/_test/deliveries")["deliveries"]
        assert [(d["attempt"], d["status"]) for d in deliveries] == [(1, 200), (2, 200)]
    finally:
        rx.shutdown()
        rx.server_close()


# -- Stripe's own automation: Smart Retries, the scheduler, upcoming, overdue --


def seed_retried(fake, card, created=1700000000, **inv):
    """A subscription customer whose invoice failed once, at created."""
    fake.ctl("POST", "/_test/clock", {"now": created})
    cid = seed_customer(fake, card=card)
    fake.ctl("POST", "/_test/seed", {"subscriptions": [{"id": "sub_r", "customer": cid,
                                                        "status": "past_due"}]})
    i = dict({"id": "in_r", "customer": cid, "subscription": "sub_r", "created": created,
              "attempts": [{"decline_code": "insufficient_funds", "created": created}]}, **inv)
    fake.ctl("POST", "/_test/seed", {"invoices": [i]})
    return cid


def test_smart_retries_only_where_stripe_advances_the_invoice(fake):
    seed_retried(fake, "insufficient_funds")
    inv = fake.ok("GET", "/v1/invoices/in_r")
    assert inv["auto_advance"] is True and inv["next_payment_attempt"] == 1700000000 + 86400
    # An invoice made through the API does not advance by itself: no retries.
    cid = seed_customer(fake, card="insufficient_funds")
    other = draft_with_items(fake, cid, collection_method="charge_automatically", days_until_due=None)
    fake.ok("POST", "/v1/invoices/%s/finalize" % other)
    assert fake.call("POST", "/v1/invoices/%s/pay" % other).status == 402
    assert fake.ok("GET", "/v1/invoices/" + other)["next_payment_attempt"] is None
    # Retries off for the account: a new failure schedules nothing.
    fake.ctl("POST", "/_test/config", {"smart_retries": False})
    fake.ctl("POST", "/_test/seed", {"invoices": [{"id": "in_off", "customer": cid,
                                                   "attempts": ["insufficient_funds"]}]})
    assert fake.ok("GET", "/v1/invoices/in_off")["next_payment_attempt"] is None


def test_scheduler_runs_due_retries_at_their_time_until_the_schedule_ends(fake):
    seed_retried(fake, ["insufficient_funds"] * 10)
    fake.ctl("POST", "/_test/config", {"retry_schedule_s": [86400, 3 * 86400]})
    # Nothing is due yet: the clock has not moved.
    assert fake.ctl("POST", "/_test/scheduler/run")["attempts"] == []
    fake.ctl("POST", "/_test/clock", {"advance": 30 * 86400})
    out = fake.ctl("POST", "/_test/scheduler/run")
    # Day 1 and day 3 after the first failure; the schedule ends there.
    assert [(a["at"] - 1700000000, a["outcome"]) for a in out["attempts"]] == \
        [(86400, "failed"), (3 * 86400, "failed")]
    inv = fake.ok("GET", "/v1/invoices/in_r")
    assert inv["attempt_count"] == 3 and inv["next_payment_attempt"] is None and inv["status"] == "open"
    failed = [e for e in fake.ok("GET", "/v1/events", {"type": "invoice.payment_failed"})["data"]]
    assert sorted(e["created"] - 1700000000 for e in failed) == [86400, 3 * 86400]
    # Nothing more to do, however often it runs.
    assert fake.ctl("POST", "/_test/scheduler/run")["attempts"] == []
    # The requests log holds only what a client asked: Stripe's own attempts are not requests.
    assert fake.requests(path_regex="/pay$") == []


def test_scheduler_retry_that_succeeds_emits_the_payment_events(fake):
    seed_retried(fake, ["ok"])
    fake.ctl("POST", "/_test/clock", {"advance": 2 * 86400})
    [a] = fake.ctl("POST", "/_test/scheduler/run")["attempts"]
    assert a["outcome"] == "paid" and a["at"] == 1700000000 + 86400
    inv = fake.ok("GET", "/v1/invoices/in_r")
    assert inv["status"] == "paid" and inv["next_payment_attempt"] is None and inv["auto_advance"] is False
    types = [e["type"] for e in reversed(fake.ok("GET", "/v1/events", {"limit": "100"})["data"])]
    assert types == ["charge.succeeded", "payment_intent.succeeded", "invoice_payment.paid",
                     "invoice.paid", "invoice.payment_succeeded"]
    ip = fake.ok("GET", "/v1/events", {"type": "invoice_payment.paid"})["data"][0]["data"]["object"]
    assert ip["object"] == "invoice_payment" and ip["invoice"] == "in_r" and ip["status"] == "paid"
    assert "customer" not in ip  # an invoice_payment names no customer


def test_a_hard_decline_is_not_retried_by_stripe(fake):
    seed_retried(fake, "lost_card", attempts=[{"decline_code": "lost_card", "created": 1700000000}])
    assert fake.ok("GET", "/v1/invoices/in_r")["next_payment_attempt"] is None


def test_scheduler_announces_upcoming_renewals_and_overdue_invoices(fake):
    fake.ctl("POST", "/_test/clock", {"now": 1700000000})
    cid = seed_customer(fake)
    fake.ctl("POST", "/_test/seed", {"subscriptions": [
        {"id": "sub_u", "customer": cid, "status": "active", "current_period_end": 1700000000 + 5 * 86400}]})
    sent = draft_with_items(fake, cid)  # send_invoice, due in 7 days
    fake.ok("POST", "/v1/invoices/%s/finalize" % sent)
    out = fake.ctl("POST", "/_test/scheduler/run")
    assert out["upcoming"] == [] and out["overdue"] == []
    fake.ctl("POST", "/_test/clock", {"advance": 2 * 86400})  # 3 days before renewal
    assert fake.ctl("POST", "/_test/scheduler/run")["upcoming"] == ["sub_u"]
    assert fake.ctl("POST", "/_test/scheduler/run")["upcoming"] == []  # once per period
    [ev] = fake.ok("GET", "/v1/events", {"type": "invoice.upcoming"})["data"]
    up = ev["data"]["object"]
    assert "id" not in up and up["object"] == "invoice" and up["customer"] == cid
    assert up["billing_reason"] == "upcoming" and up["next_payment_attempt"] == 1700000000 + 5 * 86400
    assert up["parent"]["subscription_details"]["subscription"] == "sub_u"
    fake.ctl("POST", "/_test/clock", {"advance": 6 * 86400})  # a day past the due date
    assert fake.ctl("POST", "/_test/scheduler/run")["overdue"] == [sent]
    [ev] = fake.ok("GET", "/v1/events", {"type": "invoice.overdue"})["data"]
    assert ev["data"]["object"]["id"] == sent and ev["data"]["object"]["status"] == "open"


def test_bad_scheduler_settings_are_refused(fake):
    fake.ctl("POST", "/_test/config", {"retry_schedule_s": [3, 2]}, status=400)
    fake.ctl("POST", "/_test/config", {"retry_schedule_s": [0]}, status=400)
    fake.ctl("POST", "/_test/config", {"overdue_after_days": -1}, status=400)
    fake.ctl("POST", "/_test/config", {"smart_retries": "yes"}, status=400)
