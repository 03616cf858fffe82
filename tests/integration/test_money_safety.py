"""Money safety against a Stripe that fails the way Stripe fails.

The Stripe fake answers a request that executed and then failed with a 500
carrying Stripe-Should-Retry: false and stores that 500 under the
Idempotency-Key, as Stripe does: the same key never reveals what was done,
and a new key runs the create again. These tests drive the real binary
through those failures and check at the fake that no effect happened twice:
no invoice item billed twice, no second consolidated invoice, no second
charge.

Run: DUNNING_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_money_safety.py
"""

import pytest

from test_stripe_client import (  # noqa: F401 (fixtures)
    bad_debt_now,
    env,
    fake,
    fake_server,
    seed_failing_account,
)


@pytest.fixture(autouse=True)
def reads_beside_the_client(fake):
    """These tests read the fake's invoices and items through the API right
    after the client's own burst of requests; the client paces itself, but
    the test's reads would share the 25/s test-mode window with it and get
    a 429. The pacing is tested in test_stripe_client.py; here the window
    is raised so the test's own reads cannot be refused."""
    fake.config(rate_limit_per_s=1000)


def consolidated_of(fake, customer="cus_A"):
    invs = fake.api("GET", "/v1/invoices?customer=%s&collection_method=send_invoice&limit=100" % customer)["data"]
    return [i for i in invs if i["metadata"].get("bad_debt_invoices")]


def items_of(fake, invoice_id):
    return fake.api("GET", "/v1/invoiceitems?invoice=%s&limit=100" % invoice_id)["data"]


def to_bad_debt(env, fake, n=2):
    ids = seed_failing_account(fake, n_invoices=n)
    env.run("sync")
    now = bad_debt_now(fake)
    assert "-> bad_debt" in env.run("recompute", "acct_A", now=now).stdout
    return ids, now


def test_an_invoice_item_executed_then_answered_500_is_not_billed_twice(env, fake):
    """The case that billed 4000 instead of 3000: the item is created, the
    answer is a stored 500, the next run must find the item, not add it again."""
    ids, now = to_bad_debt(env, fake)
    fake.fault(path_regex="^/v1/invoiceitems$", method="POST", status=500, phase="after")
    fake.clear_requests()
    err = env.run("pay-bad-debt", "acct_A", now=now, rc=69).stderr
    assert "HTTP 500" in err
    [first] = fake.requests("^/v1/invoiceitems$", "POST")
    assert first["status"] == 500
    # The item exists at Stripe although the client was told 500.
    [draft] = consolidated_of(fake)
    assert len(items_of(fake, draft["id"])) == 1

    out = env.run("pay-bad-debt", "acct_A", now=now).stdout
    assert "created consolidated invoice" in out
    [inv] = consolidated_of(fake)
    assert inv["id"] == draft["id"] and inv["status"] == "open"
    items = items_of(fake, inv["id"])
    assert sorted(i["metadata"]["dunning_covers"] for i in items) == sorted(ids)
    assert inv["amount_due"] == 1000 + 1001
    # The item the first run made was found by its metadata, not created again.
    creates = fake.requests("^/v1/invoiceitems$", "POST")
    assert [r["params"]["metadata"]["dunning_covers"] for r in creates].count(first["params"]["metadata"]["dunning_covers"]) == 1


def test_a_draft_executed_then_answered_500_is_found_not_created_again(env, fake):
    ids, now = to_bad_debt(env, fake)
    fake.fault(path_regex="^/v1/invoices$", method="POST", status=500, phase="after")
    env.run("pay-bad-debt", "acct_A", now=now, rc=69)
    assert len(consolidated_of(fake)) == 1
    fake.clear_requests()
    env.run("pay-bad-debt", "acct_A", now=now)
    [inv] = consolidated_of(fake)
    assert inv["status"] == "open" and inv["amount_due"] == 2001
    assert fake.requests("^/v1/invoices$", "POST") == []
    assert inv["metadata"]["dunning_key"].startswith("acct_A/create_consolidated_invoice/")


def test_a_finalize_executed_then_answered_500_is_checked_in_the_same_run(env, fake):
    ids, now = to_bad_debt(env, fake)
    fake.fault(path_regex="/finalize$", method="POST", status=500, phase="after")
    out = env.run("pay-bad-debt", "acct_A", now=now).stdout
    assert "created consolidated invoice" in out
    [inv] = consolidated_of(fake)
    assert inv["status"] == "open" and len(items_of(fake, inv["id"])) == 2
    assert [r["status"] for r in fake.requests("/finalize$", "POST")] == [500]


def test_a_payment_executed_then_answered_500_is_not_charged_again(env, fake):
    seed_failing_account(fake, decline="insufficient_funds")
    fake.seed(customers=[{"id": "cus_A", "card": "ok"}])
    fake.fault(path_regex="/pay$", method="POST", status=500, phase="after")
    [line] = env.tool("op", "pay_invoice", "in_acct_A_0", "--key", "acct_A/retry_payment/in_acct_A_0/2")
    assert line["rc"] == "DUN_OK" and line["obj"]["status"] == "paid"
    [line] = env.tool("op", "pay_invoice", "in_acct_A_0", "--key", "acct_A/retry_payment/in_acct_A_0/2")
    assert line["rc"] == "DUN_OK" and line["obj"]["status"] == "paid"
    charges = fake.api("GET", "/v1/charges?customer=cus_A&limit=100")["data"]
    assert [c["status"] for c in charges].count("succeeded") == 1


def test_idempotency_keys_are_printable_and_unambiguous_for_any_account_id(env, fake):
    """Account ids come from customer metadata: one with '/' and non-ASCII
    must give printable keys that cannot meet another account's."""
    for account, cus in (("acct/\u00e9", "cus_A"), ("acct", "cus_B")):
        fake.seed(customers=[{"id": cus, "email": cus + "@example.com", "metadata": {"account_id": account},
                              "card": "insufficient_funds"}],
                  subscriptions=[{"id": "sub_" + cus, "customer": cus, "status": "past_due"}],
                  invoices=[{"id": "in_" + cus, "customer": cus, "subscription": "sub_" + cus,
                             "amount_due": 1000, "attempts": ["insufficient_funds"]}])
    env.run("sync")
    now = bad_debt_now(fake)
    fake.clear_requests()
    env.run("recompute", "acct/\u00e9", now=now)
    env.run("recompute", "acct", now=now)
    keys = [r["headers"]["Idempotency-Key"] for r in fake.requests(method="POST")]
    assert keys and all(all(0x20 < ord(ch) < 0x7f for ch in k) for k in keys), keys
    assert any(k.startswith("acct%2f%c3%a9/") for k in keys), keys
    assert len(set(keys)) == len(keys)


def test_a_consolidated_invoice_is_voided_when_the_original_is_paid_directly(env, fake):
    """The same debt must not stay payable twice: once the customer pays the
    original, the open consolidated invoice is voided in the same
    recompute, the episode ends as paid, and the email names the voided
    invoice."""
    ids, now = to_bad_debt(env, fake, n=1)
    env.run("pay-bad-debt", "acct_A", now=now)
    [cons] = consolidated_of(fake)
    assert cons["status"] == "open"
    # The customer pays the original on its hosted page instead.
    fake.seed(customers=[{"id": "cus_A", "card": "ok"}])
    fake.ctl("POST", "/_test/clock", {"now": now + 600})  # the engine lives at --now
    assert fake.api("POST", "/v1/invoices/%s/pay" % ids[0], {}, idem="customer-pays")["status"] == "paid"
    env.run("sync", now=now + 1800)  # the engine's clock is ahead of the fake's: keep it so
    fake.clear_requests()
    out = env.run("recompute", "acct_A", now=now + 3600).stdout
    assert "void_invoice %s" % cons["id"] in out, out
    assert fake.obj(cons["id"])["status"] == "void"
    assert [r["status"] for r in fake.requests("^/v1/invoices/%s/void$" % cons["id"], "POST")] == [200]
    assert env.sql("SELECT exit_reason FROM bad_debt_episodes WHERE account_id = 'acct_A'") == [("paid",)]
    stage = env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'")
    assert stage == [("none",)]
    [(subject, body)] = env.sql("SELECT subject, body FROM emails WHERE kind = 'resolved'")
    assert subject.startswith("Payment received")
    assert "Invoice %s, which combined your unpaid invoices, has been cancelled" % cons["id"] in body
    # Nothing more to do: a second recompute plans nothing at Stripe.
    fake.clear_requests()
    env.run("recompute", "acct_A", now=now + 7200)
    assert fake.requests(method="POST") == []
