"""The mirror's invoices and payment attempts carry their customer's account
(p_invoices.account_id and p_attempts.account_id, the key the drift scan
reads them by) whatever order the events arrive in: an invoice and its
attempts stored while the customer is linked to no account take the account
when the customer is mapped later; an attempt stored before its invoice takes
it when the invoice arrives; relinking the customer moves them all.

The provider's customer and its subscriptions follow the link the same way
(p_customers.linked_account_id and p_subscriptions.account_id, schema
migration 20).

Since schema migration 18 the mirror writes the column itself (no trigger
checks an insert of an invoice or attempt); the triggers on customers move
the rows when a link changes. Uses the conftest fixtures; both backends.
"""


def accounts_of(dun, *ids):
    rows = dun.sql("SELECT id, account_id FROM p_invoices UNION ALL"
                   " SELECT id, account_id FROM p_attempts")
    got = dict(rows)
    return [got[i] for i in ids]


def test_rows_take_the_account_of_a_customer_mapped_after_them(dun, dun_stripe):
    dun.init()
    cus = dun_stripe.customer("acct_late")
    unmapped = dict(cus, metadata={})
    sub = dun_stripe.subscription(cus)
    inv = dun_stripe.invoice(cus, sub)
    ch = dun_stripe.charge(inv, cus, days=0.1)
    later = dun_stripe.invoice(cus, sub, days=1)
    early = dun_stripe.charge(later, cus, days=1.1)  # arrives before its invoice
    dun.ingest([dun_stripe.event("customer.created", unmapped),
                dun_stripe.event("invoice.finalized", inv),
                dun_stripe.event("charge.failed", ch, 0.1)], no_work=True)
    assert accounts_of(dun, inv["id"], ch["id"]) == ["", ""]

    # The customer names its account: its invoice and attempt follow.
    dun.ingest([dun_stripe.event("customer.updated", cus, 0.5)], no_work=True)
    assert dun.scalar("SELECT account_id FROM customers WHERE id = ?", (cus["id"],)) == "acct_late"
    assert accounts_of(dun, inv["id"], ch["id"]) == ["acct_late", "acct_late"]

    # An attempt before its invoice has no account until the invoice comes.
    dun.ingest([dun_stripe.event("charge.failed", early, 1.1)], no_work=True)
    assert accounts_of(dun, early["id"]) == [""]
    dun.ingest([dun_stripe.event("invoice.payment_failed", later, 1.2)], no_work=True)
    assert accounts_of(dun, later["id"], early["id"]) == ["acct_late", "acct_late"]

    # Relinked to another account: everything moves.
    dun.ok("account", "add", "acct_other", "--customer", cus["id"])
    assert accounts_of(dun, inv["id"], ch["id"], later["id"], early["id"]) == ["acct_other"] * 4


def links_of(dun, cus_id, sub_id):
    """The account p_customers and p_subscriptions are keyed by (migration 20)."""
    return [dun.scalar("SELECT linked_account_id FROM p_customers WHERE id = ?", (cus_id,)),
            dun.scalar("SELECT account_id FROM p_subscriptions WHERE id = ?", (sub_id,))]


def test_provider_customer_and_subscription_follow_the_link(dun, dun_stripe):
    dun.init()
    cus = dun_stripe.customer("acct_late")
    unmapped = dict(cus, metadata={})
    sub = dun_stripe.subscription(cus)
    dun.ingest([dun_stripe.event("customer.created", unmapped),
                dun_stripe.event("customer.subscription.created", sub, 0.1)], no_work=True)
    assert links_of(dun, cus["id"], sub["id"]) == ["", ""]

    dun.ingest([dun_stripe.event("customer.updated", cus, 0.5)], no_work=True)
    assert links_of(dun, cus["id"], sub["id"]) == ["acct_late", "acct_late"]

    dun.ok("account", "add", "acct_other", "--customer", cus["id"])
    assert links_of(dun, cus["id"], sub["id"]) == ["acct_other", "acct_other"]
