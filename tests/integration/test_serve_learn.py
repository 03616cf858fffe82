"""`dunning serve`: the simulated provider learns what webhooks show.

The simulated provider learns the customers, subscriptions, invoices and
charges that webhooks describe (so it can act on accounts it did not
create), in the order they were stored.

On SQLite, where commits are serial, it learns after the webhooks are
stored, off the path Stripe waits on: in the background while no webhook
batch waits, and before any operation of its own. A learning the store
refuses holds the simulator back (nothing after it is learnt, nothing is
lost) until the store accepts it. On PostgreSQL, where several replicas
commit side by side, it learns inside the committer's transaction, in the
event's savepoint: an event answered 200 has been learnt, and an event
whose learning fails is not stored either (503, Stripe delivers it again).
"""

import time
from concurrent.futures import ThreadPoolExecutor

from test_serve import (  # noqa: F401  (serve and node_signer are fixtures)
    DAY,
    SECRET_A,
    charge_failed,
    customer_created,
    event,
    failing_account_events,
    now,
    node_signer,
    serve,
    sign_batch,
)


def learnt(s, timeout=20):
    """Wait until the simulator has learnt every stored webhook (at once on PostgreSQL)."""
    if s.pg is not None:
        return
    deadline = time.time() + timeout
    while True:
        mark = s.sql("SELECT seq FROM sim_learnt")[0][0]
        last = s.sql("SELECT COALESCE(MAX(rowid), 0) FROM events_raw")[0][0]
        if mark == last:
            return
        assert time.time() < deadline, f"not learnt: mark {mark}, last event {last}"
        time.sleep(0.05)


def sim_row(s, object_id):
    rows = s.sql("SELECT type, customer_id, behavior FROM sim_objects WHERE id = ?", object_id)
    return rows[0] if rows else None


def poison(s, table="sim_objects"):
    """Make the store refuse to write the customer cus_poison into table."""
    if s.pg is not None:
        s.sql("CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
              " IF NEW.id = 'cus_poison' THEN RAISE EXCEPTION 'poisoned'; END IF;"
              " RETURN NEW; END $$")
        s.sql(f"CREATE TRIGGER poison BEFORE INSERT ON {table} FOR EACH ROW"
              " EXECUTE FUNCTION poison()")
    else:
        s.sql(f"CREATE TRIGGER poison BEFORE INSERT ON {table} WHEN NEW.id = 'cus_poison'"
              " BEGIN SELECT RAISE(ABORT, 'poisoned'); END")


def cure(s, table="sim_objects"):
    """Undo poison()."""
    s.sql(f"DROP TRIGGER poison ON {table}" if s.pg is not None else "DROP TRIGGER poison")


def test_an_event_the_store_refuses_is_refused_alone(serve):
    """The committer stores a batch without a savepoint per event; one that
    fails sends the batch through again event by event: only it is refused."""
    s = serve()
    t = now() - DAY
    poison(s, "p_customers")
    bad = customer_created("acct_poison", "cus_poison", t)
    others = [customer_created(f"acct_ok{i}", f"cus_ok{i}", t) for i in range(12)]
    # At once, so that the committer takes several of them in one batch.
    payloads = [bad] + others
    headers = sign_batch([(p, SECRET_A, None) for p in payloads])
    with ThreadPoolExecutor(len(payloads)) as pool:
        results = list(pool.map(lambda ph: s.deliver(ph[0], header=ph[1]),
                                zip(payloads, headers)))
    assert results[0][0] == 503, results[0]
    assert [r[0] for r in results[1:]] == [200] * 12, results
    assert s.sql("SELECT COUNT(*) FROM events_raw WHERE id = 'evt_cus_cus_poison'") == [(0,)]
    assert s.sql("SELECT COUNT(*) FROM p_customers WHERE id LIKE 'cus_ok%'") == [(12,)]
    assert s.sql("SELECT COUNT(*) FROM events_raw WHERE id LIKE 'evt_cus_cus_ok%'") == [(12,)]
    cure(s, "p_customers")
    status, body = s.deliver(bad)
    assert status == 200 and body["duplicate"] is False
    assert s.sql("SELECT COUNT(*) FROM p_customers WHERE id = 'cus_poison'") == [(1,)]


def test_an_acknowledged_webhook_has_been_learnt(serve):
    s = serve()
    for p in failing_account_events("acct_learn", days_ago=2):
        assert s.deliver(p)[0] == 200
    learnt(s)
    assert sim_row(s, "cus_acct_learn") == ("customer", "cus_acct_learn", "=lost_card")
    assert sim_row(s, "in_acct_learn") == ("invoice", "cus_acct_learn", "")
    assert sim_row(s, "ch_in_acct_learn") == ("charge", "cus_acct_learn", "")
    # A redelivery is a duplicate: nothing is learnt again.
    s.sql("UPDATE sim_objects SET behavior = '=ok' WHERE id = 'cus_acct_learn'")
    t = now() - 2 * DAY
    dup = event("evt_cf_in_acct_learn", "charge.failed", t,
                charge_failed("ch_in_acct_learn", "cus_acct_learn", "in_acct_learn", t))
    status, body = s.deliver(dup)
    assert status == 200 and body["duplicate"] is True
    learnt(s)
    assert sim_row(s, "cus_acct_learn")[2] == "=ok"
    # A new charge teaches the card's new behaviour.
    later = event("evt_cf_later", "charge.failed", t + 60,
                  charge_failed("ch_later", "cus_acct_learn", "in_acct_learn", t + 60,
                                reason="expired_card"))
    assert s.deliver(later)[0] == 200
    learnt(s)
    assert sim_row(s, "cus_acct_learn")[2] == "=expired_card"


def test_a_card_set_explicitly_is_not_overwritten(serve):
    s = serve()
    t = now() - DAY
    assert s.deliver(customer_created("acct_told", "cus_told", t))[0] == 200
    learnt(s)
    s.sql("UPDATE sim_objects SET behavior = 'insufficient_funds' WHERE id = 'cus_told'")
    p = event("evt_cf_told", "charge.failed", t,
              charge_failed("ch_told", "cus_told", "in_told", t, reason="lost_card"))
    assert s.deliver(p)[0] == 200
    learnt(s)
    assert sim_row(s, "cus_told")[2] == "insufficient_funds"
    assert sim_row(s, "ch_told") == ("charge", "cus_told", "")


def test_a_failed_learning_stores_nothing_of_that_event(serve):
    s = serve()
    if s.pg is None:
        return held_back_by_a_failed_learning(s)
    t = now() - DAY
    # The store refuses to learn one customer.
    poison(s)
    bad = customer_created("acct_poison", "cus_poison", t)
    good = customer_created("acct_fine", "cus_fine", t)
    results = s.deliver_all([bad, good])
    assert results[0][0] == 503, results[0]
    assert results[1][0] == 200, results[1]
    # Nothing of the refused event: not stored, not mirrored, not learnt.
    assert s.sql("SELECT COUNT(*) FROM events_raw WHERE id = 'evt_cus_cus_poison'") == [(0,)]
    assert s.sql("SELECT COUNT(*) FROM p_customers WHERE id = 'cus_poison'") == [(0,)]
    assert sim_row(s, "cus_poison") is None
    assert sim_row(s, "cus_fine") == ("customer", "cus_fine", "=ok")
    # Delivered again once the store accepts it: stored and learnt.
    cure(s, "sim_objects")
    status, body = s.deliver(bad)
    assert status == 200 and body["duplicate"] is False
    assert sim_row(s, "cus_poison") == ("customer", "cus_poison", "=ok")
    assert s.sql("SELECT COUNT(*) FROM events_raw WHERE id = 'evt_cus_cus_poison'") == [(1,)]


def held_back_by_a_failed_learning(s):
    """SQLite: the event is stored and answered; the simulator waits for the store."""
    t = now() - DAY
    poison(s)
    bad = customer_created("acct_poison", "cus_poison", t)
    good = customer_created("acct_fine", "cus_fine", t)
    results = s.deliver_all([bad, good])
    assert [r[0] for r in results] == [200, 200], results
    assert s.sql("SELECT COUNT(*) FROM events_raw WHERE id IN"
                 " ('evt_cus_cus_poison', 'evt_cus_cus_fine')") == [(2,)]
    # The background learning keeps failing on the refused one, and learns
    # nothing after it: in order or not at all.
    time.sleep(0.5)
    assert sim_row(s, "cus_poison") is None
    assert sim_row(s, "cus_fine") is None
    mark = s.sql("SELECT seq FROM sim_learnt")[0][0]
    assert mark < s.sql("SELECT rowid FROM events_raw WHERE id = 'evt_cus_cus_poison'")[0][0]
    # Once the store accepts it, everything is learnt, nothing delivered again.
    cure(s)
    learnt(s)
    assert sim_row(s, "cus_poison") == ("customer", "cus_poison", "=ok")
    assert sim_row(s, "cus_fine") == ("customer", "cus_fine", "=ok")


def test_a_learnt_object_refers_to_its_event_and_is_read_through_it(serve):
    s = serve()
    t = now() - DAY
    cus = {"id": "cus_ref", "object": "customer", "email": "billing+acct_ref@example.com",
           "name": "acct_ref", "metadata": {"account_id": "acct_ref"},
           "invoice_settings": {"default_payment_method": "pm_one"}}
    assert s.deliver(event("evt_ref_1", "customer.created", t, cus))[0] == 200
    learnt(s)
    # Kept as a reference to the stored event, not as a second copy.
    assert s.sql("SELECT body FROM sim_objects WHERE id = 'cus_ref'") == [("event:evt_ref_1",)]
    p = event("evt_ref_cf", "charge.failed", t + 10,
              charge_failed("ch_ref", "cus_ref", "in_ref", t + 10, reason="lost_card"))
    assert s.deliver(p)[0] == 200
    learnt(s)
    assert sim_row(s, "cus_ref")[2] == "=lost_card"
    # The same card in an update: the learnt customer is read through its
    # event, its card compared and found unchanged, the behaviour kept.
    cus["name"] = "acct_ref renamed"
    assert s.deliver(event("evt_ref_2", "customer.updated", t + 20, cus))[0] == 200
    learnt(s)
    assert s.sql("SELECT body FROM sim_objects WHERE id = 'cus_ref'") == [("event:evt_ref_2",)]
    assert sim_row(s, "cus_ref")[2] == "=lost_card"
    # A new card works again.
    cus["invoice_settings"] = {"default_payment_method": "pm_two"}
    assert s.deliver(event("evt_ref_3", "customer.updated", t + 30, cus))[0] == 200
    learnt(s)
    assert sim_row(s, "cus_ref")[2] == "=ok"
