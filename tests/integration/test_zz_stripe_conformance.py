"""Conformance: every request the engine's Stripe client makes is one the
Stripe API of the pinned version accepts.

The reference is the official `stripe` npm package release that targets
2025-03-31.basil (18.0.x), installed by the test setup in tests/node under
the name stripe-basil beside the newer release the webhook signer uses. From
its resource modules (method and path of every operation) and its type
definitions (the parameters of every operation) this test builds the list
of operations, then checks each captured request: a known operation for its
method and path, only parameters that operation takes, the pinned
Stripe-Version, and on a POST a printable Idempotency-Key of at most 255
characters and a form body.

The requests checked are those of the whole integration session (the fakes
append their client's requests to the file named by DUNNING_STRIPE_CAPTURE,
see conftest.py; this file is named to run last) and those of a workload
this test runs itself, so it means something when run alone. A new request
that Stripe would refuse fails CI here.

Run: DUNNING_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_zz_stripe_conformance.py
"""

import json
import os
import re
from pathlib import Path

import pytest

from test_stripe_client import (  # noqa: F401 (fixtures)
    bad_debt_now,
    env,
    fake,
    fake_server,
    seed_failing_account,
)

PKG = Path(__file__).resolve().parents[1] / "node" / "node_modules" / "stripe-basil"
PINNED = "2025-03-31.basil"

pytestmark = pytest.mark.skipif(not (PKG / "cjs").is_dir(),
                                reason="stripe 18.0.x is not installed: cd tests/node && npm install")

METHOD_RE = re.compile(r"(\w+): stripeMethod\(\{\s*method: '(\w+)',\s*fullPath: '([^']+)'", re.S)
FIELD_RE = re.compile(r"^      (\w+)\??:", re.M)


def interface_fields(text, name):
    """Top-level field names of `interface name` in a .d.ts (4-space indent)."""
    m = re.search(r"^    interface %s( extends ([\w.]+))? \{\n(.*?)^    \}" % re.escape(name), text, re.M | re.S)
    if not m:
        return None
    fields = set(FIELD_RE.findall(m.group(3)))
    if m.group(2) == "PaginationParams":
        fields |= {"limit", "starting_after", "ending_before"}
    return fields


def load_spec():
    """[(method, path regex, literal segments, operation name, params or None)]"""
    ops = []
    for js in sorted((PKG / "cjs" / "resources").rglob("*.js")):
        rel = js.relative_to(PKG / "cjs" / "resources").with_suffix("")
        dts = PKG / "types" / (str(rel) + "Resource.d.ts")
        types = dts.read_text() if dts.exists() else ""
        for fn, method, full in METHOD_RE.findall(js.read_text()):
            params = None
            m = re.search(r"^      %s\(\n(?:        \w+: string,\n)*        params\??: (\w+)," % fn, types, re.M)
            if m:
                params = interface_fields(types, m.group(1))
            rx = re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(full)) + "$")
            literal = sum(1 for seg in full.split("/") if seg and not seg.startswith("{"))
            ops.append((method, rx, literal, "%s.%s" % (str(rel).replace(os.sep, "."), fn), params))
    return ops


def api_version():
    m = re.search(r"ApiVersion = '([^']+)'", (PKG / "cjs" / "apiVersion.js").read_text())
    return m.group(1)


def operation(ops, method, path):
    found = [o for o in ops if o[0] == method and o[1].match(path)]
    return max(found, key=lambda o: o[2]) if found else None


def violations(ops, req):
    out = []
    where = "%s %s" % (req["method"], req["path"])
    op = operation(ops, req["method"], req["path"])
    if op is None:
        return ["%s: no such operation in stripe %s" % (where, PINNED)]
    if req["headers"].get("Stripe-Version") != PINNED:
        out.append("%s: Stripe-Version %r" % (where, req["headers"].get("Stripe-Version")))
    params = req.get("params")
    if params is None:
        out.append("%s: the parameters could not be decoded" % where)
        params = {}
    allowed = op[4]
    if allowed is None and params:
        out.append("%s (%s) takes no parameters, got %s" % (where, op[3], sorted(params)))
    elif allowed is not None:
        for name in params:
            if name not in allowed:
                out.append("%s (%s): unknown parameter %r" % (where, op[3], name))
    if isinstance(params.get("expand"), dict):
        out.append("%s: expand must be an array (expand[]=...)" % where)
    if req["method"] == "POST":
        key = req["headers"].get("Idempotency-Key") or ""
        if not key or len(key) > 255 or not all(0x20 < ord(c) < 0x7f for c in key):
            out.append("%s: Idempotency-Key %r" % (where, key))
        if req["headers"].get("Content-Type") != "application/x-www-form-urlencoded":
            out.append("%s: Content-Type %r" % (where, req["headers"].get("Content-Type")))
    return out


def test_the_reference_is_the_basil_release():
    assert api_version() == PINNED
    assert json.loads((PKG / "package.json").read_text())["version"].startswith("18.0.")
    ops = load_spec()
    # The parser found what the engine needs (so a parse that finds nothing fails here).
    for method, path in [("POST", "/v1/invoices"), ("POST", "/v1/invoiceitems"), ("GET", "/v1/events"),
                         ("POST", "/v1/invoices/in_1/pay"), ("DELETE", "/v1/subscriptions/sub_1"),
                         ("GET", "/v1/invoice_payments")]:
        op = operation(ops, method, path)
        assert op is not None and op[4], (method, path)
    assert "pending_invoice_items_behavior" in operation(ops, "POST", "/v1/invoices")[4]
    assert operation(ops, "POST", "/v1/invoices/in_1/finalize")[3] == "Invoices.finalizeInvoice"
    # And it can tell a wrong request from a right one.
    bad = {"method": "POST", "path": "/v1/invoiceitems", "params": {"customer": "c", "amount_minor": "1"},
           "headers": {"Stripe-Version": PINNED, "Idempotency-Key": "k",
                       "Content-Type": "application/x-www-form-urlencoded"}}
    assert violations(ops, bad) == ["POST /v1/invoiceitems (InvoiceItems.create): unknown parameter 'amount_minor'"]
    assert violations(ops, dict(bad, path="/v1/invoices/in_1/settle"))
    assert violations(ops, dict(bad, params={"customer": "c"}, headers=dict(bad["headers"], **{
        "Idempotency-Key": "acct/\u00e9"})))


def workload(env, fake):
    """What the engine asks of Stripe in one life: sync, recompute into bad
    debt, the consolidated invoice, a payment retry, a backfill."""
    seed_failing_account(fake, n_invoices=2, events=True)
    env.run("sync")
    now = bad_debt_now(fake)
    env.run("recompute", "acct_A", now=now)
    env.run("pay-bad-debt", "acct_A", now=now)
    env.tool("op", "pay_invoice", "in_acct_A_1", "--key", "acct_A/retry_payment/in_acct_A_1/2")
    env.run("backfill", "--since", "2000-01-01")


def test_every_request_of_the_client_is_well_formed(env, fake):
    ops = load_spec()
    workload(env, fake)
    own = [r for r in fake.requests() if (r["headers"].get("User-Agent") or "").startswith("dunning-stripe/")]
    assert len(own) >= 10
    captured = []
    path = os.environ.get("DUNNING_STRIPE_CAPTURE")
    if path and os.path.exists(path):
        with open(path) as f:
            captured = [json.loads(line) for line in f if line.strip()]
    problems = []
    seen = set()
    for req in own + captured:
        for v in violations(ops, req):
            if v not in seen:
                seen.add(v)
                problems.append(v)
    assert problems == [], "\n".join(problems)
    kinds = {(r["method"], operation(ops, r["method"], r["path"])[3]) for r in own + captured}
    print("checked %d requests of %d operations" % (len(own) + len(captured), len(kinds)))
