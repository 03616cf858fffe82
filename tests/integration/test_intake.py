"""The webhook intake answers every well-signed event it does not act on
with 200 and the reason, counted in /metrics; invoice_payment events are
mapped through their invoice; signature timestamps are judged as Stripe's
libraries judge them (only an old one is refused; a replay is stopped by
the event id).

Signed with the official stripe npm package (tests/node), delivered to the
real `dunning serve` on 127.0.0.1.

Run: DUNNING_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_intake.py
"""

import json

from test_serve import (  # noqa: F401 (fixtures)
    DAY,
    customer_created,
    event,
    invoice,
    node_signer,
    now,
    serve,
)


def metric(srv, outcome):
    status, _, text = srv.request("GET", "/metrics")
    assert status == 200
    needle = 'dunning_webhook_requests_total{outcome="%s"} ' % outcome
    for line in text.decode().splitlines():
        if line.startswith(needle):
            return int(line[len(needle):])
    raise AssertionError("no metric line for outcome %s" % outcome)


def test_events_not_acted_on_are_200_with_the_reason_counted(serve):
    s = serve()
    t = now() - DAY
    assert s.deliver(customer_created("acct_ig", "cus_ig", t - DAY))[0] == 200
    upcoming = invoice("in_unused", "cus_ig", t, status="draft", basil=True)
    del upcoming["id"]  # an upcoming invoice does not exist yet
    no_customer = invoice("in_nc", "cus_ig", t, basil=True)
    no_customer["customer"] = None
    no_status = invoice("in_ns", "cus_ig", t, basil=True)
    no_status["status"] = None
    cases = [("evt_up", "invoice.upcoming", upcoming, "ignored_no_id"),
             ("evt_nc", "invoice.updated", no_customer, "ignored_no_customer"),
             ("evt_ns", "invoice.updated", no_status, "ignored_no_status"),
             ("evt_pl", "plan.created", {"id": "plan_1", "object": "plan"}, "ignored_type")]
    for evt_id, type_, obj, outcome in cases:
        status, body = s.deliver(event(evt_id, type_, t, obj))
        assert status == 200, body
        assert body["outcome"] == outcome and body["received"] is True
        assert metric(s, outcome) == 1
    # Stored once, and a redelivery is a duplicate, still 200.
    status, body = s.deliver(event("evt_up", "invoice.upcoming", t, upcoming))
    assert status == 200 and body["duplicate"] is True
    assert s.sql("SELECT outcome FROM events_raw WHERE id = 'evt_up'") == [("ignored_no_id",)]
    assert s.sql("SELECT count(*) FROM p_invoices WHERE id IN ('in_nc', 'in_ns')") == [(0,)]
    # A broken envelope is still refused: it is not a Stripe event.
    status, body = s.deliver(b'{"id": "evt_x", "type": "invoice.updated"}')
    assert status == 400


def test_invoice_payment_events_are_mapped_through_their_invoice(serve):
    s = serve()
    t = now() - 2 * DAY
    assert s.deliver(customer_created("acct_ip", "cus_ip", t - DAY))[0] == 200
    assert s.deliver(event("evt_ip_inv", "invoice.payment_failed", t,
                           invoice("in_ip", "cus_ip", t, basil=True)))[0] == 200
    s.wait_idle()
    paid = {"id": "inpay_1", "object": "invoice_payment", "invoice": "in_ip", "status": "paid",
            "amount_paid": 5000, "currency": "usd", "is_default": True, "created": t + 60,
            "payment": {"type": "payment_intent", "payment_intent": "pi_ip"}}
    status, body = s.deliver(event("evt_ip_paid", "invoice_payment.paid", t + 60, paid))
    assert status == 200, body
    assert body["outcome"] in ("triggered", "coalesced"), body
    assert s.sql("SELECT account_id FROM events_raw WHERE id = 'evt_ip_paid'") == [("acct_ip",)]
    # One for an invoice the mirror does not know: acknowledged, unmapped.
    other = dict(paid, id="inpay_2", invoice="in_unknown")
    status, body = s.deliver(event("evt_ip_other", "invoice_payment.paid", t + 60, other))
    assert status == 200 and body["outcome"] == "unmapped"


def test_a_future_timestamp_is_accepted_and_a_replay_stopped_by_the_event_id(serve):
    s = serve()
    payload = customer_created("acct_fut", "cus_fut", now() - DAY, evt_id="evt_fut")
    status, body = s.deliver(payload, timestamp=now() + 900)
    assert status == 200 and body["duplicate"] is False, body
    status, body = s.deliver(payload, timestamp=now() + 900)
    assert status == 200 and body["duplicate"] is True
    assert s.sql("SELECT count(*) FROM events_raw WHERE id = 'evt_fut'") == [(1,)]
    # Old is still refused.
    status, body = s.deliver(customer_created("acct_old", "cus_old", now(), evt_id="evt_old"),
                             timestamp=now() - 3600)
    assert status == 400 or status == 401, body
