#!/usr/bin/env python3
"""fake_stripe.py — an in-memory HTTP fake of the Stripe API for integration tests.

The engine's Stripe client is tested against this server instead of
api.stripe.com. It is not a mock that answers whatever it is asked: it keeps
customers, subscriptions, invoices, invoice items, payment intents, charges,
invoice payments and events in memory, and it enforces the request rules of
the real API that a client can get wrong (see /work/shared/stripe/STRIPE.md):

* `Authorization: Bearer sk_test_...` on every /v1 request, else 401;
* POST bodies are `application/x-www-form-urlencoded` with Stripe's nested
  keys (`metadata[k]=v`, `items[0][price]=p`, `expand[]=x`), else 400;
  unknown parameters are refused (400 parameter_unknown), as Stripe does;
* `Idempotency-Key` (at most 255 characters): the first response of a POST
  whose execution began is stored for 24 h (fake clock) and replayed with
  `Idempotent-Replayed: true`; the same key with other parameters is a 400
  idempotency_error; validation errors are not stored;
* lists paginate with `limit` (1..100), `starting_after`, `ending_before`,
  newest first, `{"object": "list", "data", "has_more", "url"}`;
* invoice state rules (draft → open → paid | uncollectible | void; only open
  and uncollectible can be voided or paid; only open can be marked
  uncollectible), with Stripe-shaped errors
  `{"error": {"type", "code", "message", "param"}}`;
* invoices have the 2025-03-31.basil shape: the subscription is at
  `parent.subscription_details.subscription`, payments are listed by
  `/v1/invoice_payments`, and there is no top-level `charge`,
  `payment_intent`, `paid` or `subscription`;
* every state change records an event (`/v1/events`), and events can be
  delivered, signed, to a webhook URL on 127.0.0.1;
* Stripe's own automation runs when a test says what time it is
  (`POST /_test/scheduler/run`, like advancing a Stripe test clock): the
  first automatic attempt of a finalized invoice, Smart Retries of failed
  ones (for invoices with `auto_advance` true, while `next_payment_attempt`
  is set), `invoice.upcoming` before a subscription renews and
  `invoice.overdue` after a sent invoice's due date.

A control API under /_test/ (no auth, never recorded) lets a test seed
objects, inject faults, set the clock, set a rate limit and read back every
request the client made. It is documented in CONTROL_API below and in
`--help`.

Start: /usr/bin/python3 tests/integration/fake_stripe.py --port 0 --port-file PATH
The server binds 127.0.0.1 only and writes the chosen port to PATH once it
is listening. Python 3 standard library only.
"""

import argparse
import copy
import hashlib
import hmac
import http.server
import json
import os
import queue
import random
import re
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

API_VERSION = "2025-03-31.basil"
# Versions Stripe has released, reaching back far enough for any account
# still in use. Any other Stripe-Version (a typo, a date that was never a
# release) is refused with a 400, as Stripe refuses it.
KNOWN_VERSIONS = frozenset([
    "2020-08-27", "2022-08-01", "2022-11-15", "2023-08-16", "2023-10-16", "2024-04-10",
    "2024-06-20", "2024-09-30.acacia", "2024-10-28.acacia", "2024-11-20.acacia",
    "2024-12-18.acacia", "2025-01-27.acacia", "2025-02-24.acacia", "2025-03-31.basil",
    "2025-04-30.basil", "2025-05-28.basil", "2025-06-30.basil", "2025-07-30.basil",
    "2025-08-27.basil",
])
BASIL_DATE = "2025-03-31"
# Stripe's test-mode limit (live mode allows about 100/s). On by default so
# that a client that does not pace itself fails here as it would at Stripe;
# a test that needs more raises it explicitly through /_test/config.
TEST_MODE_RATE_PER_S = 25
RETRY_AFTER_S = 1
BODY_MAX_BYTES = 1024 * 1024
IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_TTL_S = 24 * 3600
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
EXPAND_MAX_DEPTH = 4
# Smart Retries, as the fake plays them: Stripe's recommended default is 8
# tries within 2 weeks, so 7 retries after the first failed attempt, at
# these offsets from it (Stripe picks the moments itself; a test needs
# them known). A test may set its own schedule through /_test/config.
SMART_RETRY_SCHEDULE_S = [d * 86400 for d in (1, 3, 5, 7, 9, 11, 14)]
# Declines Stripe never retries (its list of "hard" decline codes).
NON_RETRYABLE_DECLINES = frozenset([
    "incorrect_number", "lost_card", "pickup_card", "stolen_card", "revocation_of_authorization",
    "revocation_of_all_authorizations", "authentication_required", "transaction_not_allowed",
    "highest_risk_level",
])

CONTROL_API = """\
Control API (no auth, JSON bodies, never recorded or rate limited):
  GET  /_test/health                 {"ok": true}
  POST /_test/reset                  forget everything (objects, events, faults,
                                     requests, idempotency keys, config, clock)
  GET  /_test/clock                  {"now": unix, "fixed": bool}
  POST /_test/clock                  {"now": unix} fixes the clock, {"now": null}
                                     back to the wall clock, {"advance": seconds}
  POST /_test/config                 merge settings; GET returns them:
       rate_limit_per_s: int|null    answer 429 rate_limit (with Retry-After)
                                     above this many /v1 requests in any
                                     sliding second; 25 (Stripe's test mode)
                                     by default, null turns it off
       account_api_version: str      the account's default API version: the
                                     shape of the events it creates and of
                                     answers to requests without
                                     Stripe-Version (default 2025-03-31.basil)
       api_key: str|null             accept only this key (else any sk_test_*)
       require_stripe_version: str|null   refuse requests without this
                                     Stripe-Version header
       strict_content_type: bool     require the form Content-Type even on
                                     empty POST bodies (default false)
       require_idempotency_key: bool refuse a POST without Idempotency-Key
                                     (400; Stripe accepts it, the engine must
                                     not send one)
       webhook_url: str|null         deliver events here (127.0.0.1 only)
       webhook_secrets: [str]        sign deliveries with each (rotation)
       webhook_include_v0: bool      add a v0 signature, as test events do
       smart_retries: bool           Stripe retries failed payments of invoices
                                     with auto_advance true by itself (on by
                                     default, as for new Stripe accounts);
                                     false: no retries (next_payment_attempt
                                     stays null after a failure)
       retry_schedule_s: [int]       the retries' offsets from the first failed
                                     attempt (default 1, 3, 5, 7, 9, 11, 14 days:
                                     8 tries within 2 weeks)
       upcoming_renewal_days: int|null  invoice.upcoming this many days before
                                     a subscription renews (default 3; null: off)
       overdue_after_days: int|null  invoice.overdue this many days after a sent
                                     invoice's due date (default 1; null: off)
  POST /_test/faults                 one fault object or {"faults": [...]}:
       path_regex (re.search on the path), method, status (429, 500, 503...),
       count (default 1; negative = forever), latency_ms, drop (close the
       connection without answering), stripe_should_retry (true|false|null:
       the header; by default as Stripe sends it: "false" on a 500, "true"
       on a 503, a 409 and a 429 lock_timeout, none otherwise), retry_after
       (seconds|null; by default 1 on 429 and 503), error {type, code,
       message} to override the body,
       phase "before" (default: instead of executing) | "after" (execute,
       then answer with the fault; Stripe stores that answer under the
       Idempotency-Key, so a retry with the same key gets the error again
       and never learns what was done; a dropped connection after
       executing leaves the real result stored),
       probability (0 < p <= 1: the fault fires on that share of the matching
       requests, drawn from its own generator seeded with "seed", default 0;
       a request it passes over goes on to the next fault),
       store (phase before only: save the fault's answer under the
       request's Idempotency-Key, as Stripe saves a 500 once execution began)
  GET  /_test/faults, DELETE /_test/faults
  POST /_test/seed                   {"customers": [...], "subscriptions": [...],
                                     "invoices": [...], "events": bool}
       customer: id, email, name, metadata, card: "ok" | "<decline_code>" |
                 "none" | {decline_code, code, advice_code, network_advice_code,
                 network_decline_code} | a list of those, used one per payment
                 attempt (the last one sticks). Seeding an existing id updates it.
       subscription: id, customer, status, metadata, collection_method,
                 created, current_period_start, current_period_end, amount
       invoice: id, customer, subscription, status, amount_due, amount_paid,
                 currency, collection_method, billing_reason, created, due_date,
                 auto_advance (default: true for a subscription's automatically
                 charged invoice, as Stripe makes them), next_payment_attempt
                 (default: as Stripe schedules it), metadata,
                 attempts: [card behaviour...]
  GET  /_test/requests[?path_regex=&method=]   recorded /v1 requests
  DELETE /_test/requests
  GET  /_test/stats                  {"requests", "rate_limited", "max_in_1s", ...}
  GET  /_test/objects/{id}           any stored object, as is
  GET  /_test/deliveries             webhook delivery attempts
  POST /_test/webhooks/flush         {"timeout_s": 5} wait for pending deliveries
  POST /_test/webhooks/redeliver     {"event": "evt_..."} send again (new t)
  POST /_test/scheduler/run          Stripe's automation up to the clock's now,
                                     as a test clock advancing does: every due
                                     automatic payment attempt (the first one an
                                     hour after finalization, then Smart Retries),
                                     oldest first, each at its due time with its
                                     events (invoice.payment_failed, invoice.paid,
                                     invoice_payment.paid, ...); invoice.upcoming
                                     and invoice.overdue once each where due.
                                     {"attempts": [{invoice, at, outcome,
                                     attempt_count}], "upcoming": [sub ids],
                                     "overdue": [invoice ids]}
"""


# --------------------------------------------------------------------------
# Errors


class StripeError(Exception):
    """An API error answered in Stripe's shape.

    saved tells the idempotency layer whether the answer is stored under the
    request's key: Stripe stores results only once an endpoint began
    executing, so validation errors are not saved and can be retried with
    the same key.
    """

    def __init__(self, status, type_, message, code=None, param=None, saved=False, extra=None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "code": code, "message": message, "param": param}}
        if extra:
            self.body["error"].update(extra)
        self.saved = saved


def invalid(message, param=None, code=None, status=400, saved=False):
    return StripeError(status, "invalid_request_error", message, code=code, param=param, saved=saved)


def state_error(message, param=None, code=None):
    """A rule of the object's state refused the request (execution began)."""
    return invalid(message, param=param, code=code, saved=True)


def no_such(kind, ident, param="id", status=404):
    return invalid("No such %s: '%s'" % (kind, ident), param=param, code="resource_missing", status=status)


# --------------------------------------------------------------------------
# Form decoding

KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def decode_form(text):
    """Decode Stripe's nested form keys into dicts and lists.

    `a[b]=1` → {"a": {"b": "1"}}, `a[]=x&a[]=y` → {"a": ["x", "y"]},
    `items[0][price]=p` → {"items": [{"price": "p"}]}. A dict whose keys are
    all digits becomes a list, except under `metadata`, whose keys are free.
    Raises StripeError on names that are not well formed or that are used
    both as a value and as a hash.
    """
    root = {}
    auto_index = {}
    for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        m = KEY_RE.match(name)
        if not m:
            raise invalid("Invalid parameter name: %s" % name, param=name)
        segs = [m.group(1)] + re.findall(r"\[([^\[\]]*)\]", m.group(2))
        node = root
        for i, seg in enumerate(segs):
            if seg == "":
                path = tuple(segs[:i])
                seg = str(auto_index.get(path, 0))
                auto_index[path] = int(seg) + 1
            last = i == len(segs) - 1
            if last:
                if isinstance(node.get(seg), dict):
                    raise invalid("Invalid %s: cannot be both a value and a hash" % name, param=name)
                node[seg] = value
            else:
                child = node.setdefault(seg, {})
                if not isinstance(child, dict):
                    raise invalid("Invalid %s: cannot be both a value and a hash" % name, param=name)
                node = child
    return listify(root, None)


def listify(node, key):
    if not isinstance(node, dict):
        return node
    out = {k: listify(v, k) for k, v in node.items()}
    if key != "metadata" and out and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out


# --------------------------------------------------------------------------
# Parameter helpers


def check_params(params, allowed):
    for k in params:
        if k not in allowed and k != "expand":
            raise invalid("Received unknown parameter: %s" % k, param=k, code="parameter_unknown")


def get_str(params, name, required=False, choices=None):
    v = params.get(name)
    if v is None:
        if required:
            raise invalid("Missing required param: %s." % name, param=name, code="parameter_missing")
        return None
    if not isinstance(v, str):
        raise invalid("Invalid %s: must be a string" % name, param=name)
    if required and v == "":
        raise invalid(
            "You passed an empty string for '%s'. We assume empty values are an attempt to "
            "unset a parameter; however '%s' cannot be unset." % (name, name),
            param=name,
            code="parameter_invalid_empty",
        )
    if choices is not None and v not in choices:
        raise invalid(
            "Invalid %s: must be one of %s" % (name, ", ".join(choices)), param=name, code="parameter_invalid"
        )
    return v


def get_int(params, name, required=False, lo=None, hi=None):
    v = get_str(params, name, required=required)
    if v is None:
        return None
    if not re.fullmatch(r"-?[0-9]+", v):
        raise invalid("Invalid integer: %s" % v, param=name, code="parameter_invalid_integer")
    n = int(v)
    if lo is not None and n < lo:
        raise invalid("This value must be greater than or equal to %d." % lo, param=name)
    if hi is not None and n > hi:
        raise invalid("This value must be less than or equal to %d." % hi, param=name)
    return n


def get_bool(params, name):
    v = get_str(params, name)
    if v is None:
        return None
    if v not in ("true", "false"):
        raise invalid("Invalid boolean: %s" % v, param=name)
    return v == "true"


def get_metadata(params):
    """The metadata update of a request: None, "clear", or a dict of changes."""
    if "metadata" not in params:
        return None
    md = params["metadata"]
    if md == "":
        return "clear"
    if not isinstance(md, dict):
        raise invalid("Invalid object", param="metadata")
    for k, v in md.items():
        if not isinstance(v, str):
            raise invalid("Invalid metadata[%s]: values must be strings" % k, param="metadata[%s]" % k)
        if len(k) > METADATA_KEY_MAX:
            raise invalid(
                "Metadata keys can have up to %d characters; '%s' is too long." % (METADATA_KEY_MAX, k),
                param="metadata[%s]" % k,
            )
        if len(v) > METADATA_VALUE_MAX:
            raise invalid(
                "Metadata values can have up to %d characters, but you passed in a value that is "
                "%d characters." % (METADATA_VALUE_MAX, len(v)),
                param="metadata[%s]" % k,
            )
    return md


def merge_metadata(current, change):
    """Stripe's merge: set keys, an empty value deletes one, "" clears all.
    Returns the new metadata without touching current; raises when the
    result would have too many keys."""
    if change is None:
        return dict(current or {})
    if change == "clear":
        return {}
    merged = dict(current or {})
    for k, v in change.items():
        if v == "":
            merged.pop(k, None)
        else:
            merged[k] = v
    if len(merged) > METADATA_MAX_KEYS:
        raise invalid("You can have up to %d metadata keys." % METADATA_MAX_KEYS, param="metadata")
    return merged


def expand_list(params):
    v = params.get("expand", [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise invalid("Invalid array", param="expand")
    for path in v:
        if len(path.split(".")) > EXPAND_MAX_DEPTH:
            raise invalid(
                "You cannot expand more than %d levels of a property. Property: %s" % (EXPAND_MAX_DEPTH, path),
                param="expand",
            )
    return v


def mask_key(key):
    return key[:8] + "****" + key[-4:] if len(key) > 12 else "****"


def sign_payload(secret, t, body):
    """Stripe's v1 webhook signature: hex HMAC-SHA256(secret, "<t>.<body>")."""
    return hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------
# Card behaviour

# Decline codes that Stripe reports as their own error code, not card_declined.
OWN_ERROR_CODES = {"expired_card", "incorrect_cvc", "incorrect_number", "processing_error", "authentication_required"}

DECLINE_MESSAGES = {
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "incorrect_number": "Your card number is incorrect.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
    "lost_card": "Your card has been declined.",
    "stolen_card": "Your card has been declined.",
}


def card_outcome(behaviour):
    """Normalise a seeded card behaviour into {"ok": bool, ...decline fields}."""
    if behaviour is None or behaviour == "ok":
        return {"ok": True}
    if behaviour == "none":
        return {"ok": False, "none": True}
    if isinstance(behaviour, str):
        behaviour = {"decline_code": behaviour}
    if not isinstance(behaviour, dict):
        raise ValueError("card behaviour must be a string or an object")
    if behaviour.get("decline_code") in (None, "ok") and not behaviour.get("code"):
        return {"ok": True}
    decline = behaviour.get("decline_code") or behaviour.get("code")
    return {
        "ok": False,
        "decline_code": decline,
        "code": behaviour.get("code") or (decline if decline in OWN_ERROR_CODES else "card_declined"),
        "advice_code": behaviour.get("advice_code"),
        "network_advice_code": behaviour.get("network_advice_code"),
        "network_decline_code": behaviour.get("network_decline_code"),
        "message": behaviour.get("message") or DECLINE_MESSAGES.get(decline, "Your card was declined."),
    }


# --------------------------------------------------------------------------
# State


class State:
    """Everything the fake knows. Guarded by one lock; handlers hold it while
    they execute, so every request sees and leaves a consistent state."""

    def __init__(self, port_ref):
        self.lock = threading.RLock()
        self.port_ref = port_ref
        self.reset()

    def reset(self):
        self.objects = {}  # id -> object (what the API returns)
        self.kind_of = {}  # id -> resource kind ("customer", ...)
        self.seq = {}  # id -> creation sequence, for stable ordering
        self.counter = 0
        self.fixed_now = None
        self.cards = {}  # customer id -> list of behaviours
        self.invoice_pi = {}  # invoice id -> payment intent id
        self.first_failed = {}  # invoice id -> time of its first failed attempt
        self.upcoming_sent = set()  # (subscription id, period end) announced
        self.overdue_sent = set()  # invoice ids announced overdue
        self.events = []  # ids, oldest first
        self.idem = {}  # (api key, idempotency key) -> stored response
        self.in_flight = set()
        self.faults = []
        self.fault_counter = 0
        self.requests = []
        self.admitted = []  # monotonic times of requests within the rate window
        self.rate_limited = 0
        self.config = {
            "rate_limit_per_s": TEST_MODE_RATE_PER_S,
            "account_api_version": API_VERSION,
            "api_key": None,
            "require_stripe_version": None,
            "strict_content_type": False,
            "require_idempotency_key": False,
            "webhook_url": None,
            "webhook_secrets": [],
            "webhook_include_v0": False,
            "smart_retries": True,
            "retry_schedule_s": list(SMART_RETRY_SCHEDULE_S),
            "upcoming_renewal_days": 3,
            "overdue_after_days": 1,
        }
        self.deliveries = []
        self.generation = getattr(self, "generation", 0) + 1

    # -- time and ids

    def now(self):
        return self.fixed_now if self.fixed_now is not None else int(time.time())

    def new_id(self, prefix):
        self.counter += 1
        return "%s_F%013d" % (prefix, self.counter)

    def store(self, kind, obj):
        self.objects[obj["id"]] = obj
        self.kind_of[obj["id"]] = kind
        self.counter += 1
        self.seq[obj["id"]] = self.counter
        return obj

    def get(self, kind, ident, param="id", status=404):
        if self.kind_of.get(ident) != kind:
            raise no_such(kind.replace("_", " "), ident, param=param, status=status)
        return self.objects[ident]

    def all_of(self, kind):
        """Objects of a kind, newest first (by created, then creation order)."""
        items = [o for i, o in self.objects.items() if self.kind_of[i] == kind]
        items.sort(key=lambda o: (o.get("created", 0), self.seq[o["id"]]), reverse=True)
        return items

    def port(self):
        return self.port_ref[0]

    # -- events

    def emit(self, type_, obj, previous=None, request=None):
        version = self.config["account_api_version"]
        ev = {
            "id": self.new_id("evt"),
            "object": "event",
            "api_version": version,
            "created": self.now(),
            "data": {"object": shape(self, obj, version)},
            "livemode": False,
            "pending_webhooks": 1 if self.config["webhook_url"] else 0,
            "request": {
                "id": request["id"] if request else None,
                "idempotency_key": request["idempotency_key"] if request else None,
            },
            "type": type_,
        }
        if previous is not None:
            ev["data"]["previous_attributes"] = previous
        self.store("event", ev)
        self.events.append(ev["id"])
        if self.config["webhook_url"]:
            WEBHOOKS.enqueue(self, ev["id"])
        return ev

    # -- object constructors

    def new_customer(self, p, ident=None, created=None):
        cid = ident or self.new_id("cus")
        obj = {
            "id": cid,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": created if created is not None else self.now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": p.get("description"),
            "email": p.get("email"),
            "invoice_prefix": "F%06X" % (self.counter & 0xFFFFFF),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": {},
            "name": p.get("name"),
            "next_invoice_sequence": 1,
            "phone": p.get("phone"),
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        return self.store("customer", obj)

    def new_subscription(self, customer, status, ident=None, created=None, amount=2000, currency="usd"):
        sid = ident or self.new_id("sub")
        created = created if created is not None else self.now()
        obj = {
            "id": sid,
            "object": "subscription",
            "application": None,
            "billing_cycle_anchor": created,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": created,
            "currency": currency,
            "customer": customer,
            "days_until_due": None,
            "default_payment_method": None,
            "description": None,
            "ended_at": None,
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": self.new_id("si"),
                        "object": "subscription_item",
                        "created": created,
                        "current_period_start": created,
                        "current_period_end": created + 30 * 86400,
                        "metadata": {},
                        "price": {
                            "id": "price_fake_monthly",
                            "object": "price",
                            "currency": currency,
                            "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
                            "type": "recurring",
                            "unit_amount": amount,
                        },
                        "quantity": 1,
                        "subscription": sid,
                    }
                ],
                "has_more": False,
                "url": "/v1/subscription_items?subscription=%s" % sid,
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": {},
            "pause_collection": None,
            "start_date": created,
            "status": status,
            "test_clock": None,
            "trial_end": None,
            "trial_start": None,
        }
        return self.store("subscription", obj)

    def new_invoice(self, customer, ident=None, created=None, collection_method="charge_automatically",
                    subscription=None, billing_reason="manual", currency="usd"):
        iid = ident or self.new_id("in")
        obj = self.invoice_object(iid, customer, created, collection_method, subscription, billing_reason,
                                  currency)
        return self.store("invoice", obj)

    def invoice_object(self, iid, customer, created=None, collection_method="charge_automatically",
                       subscription=None, billing_reason="manual", currency="usd"):
        """A new draft invoice as Stripe renders it; not stored."""
        created = created if created is not None else self.now()
        cus = self.objects[customer]
        obj = {
            "id": iid,
            "object": "invoice",
            "account_country": "US",
            "account_name": "fake-stripe",
            "amount_due": 0,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": False,
            "automatically_finalizes_at": None,
            "billing_reason": billing_reason,
            "collection_method": collection_method,
            "created": created,
            "currency": currency,
            "customer": customer,
            "customer_email": cus.get("email"),
            "customer_name": cus.get("name"),
            "default_payment_method": None,
            "description": None,
            "due_date": None,
            "effective_at": None,
            "ending_balance": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "lines": {"object": "list", "data": [], "has_more": False, "url": "/v1/invoices/%s/lines" % iid},
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": None,
            "number": None,
            "parent": None,
            "period_end": created,
            "period_start": created,
            "receipt_number": None,
            "starting_balance": 0,
            "status": "draft",
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": 0,
            "total": 0,
            "test_clock": None,
            "webhooks_delivered_at": None,
        }
        if subscription:
            obj["parent"] = {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription},
            }
        return obj

    def add_line(self, inv, amount, description, invoice_item=None):
        sub = (inv.get("parent") or {}).get("subscription_details") or {}
        line = {
            "id": self.new_id("il"),
            "object": "line_item",
            "amount": amount,
            "currency": inv["currency"],
            "description": description,
            "invoice": inv["id"],
            "livemode": False,
            "metadata": {},
            "period": {"start": inv["period_start"], "end": inv["period_end"]},
            "quantity": 1,
        }
        if invoice_item:
            line["parent"] = {
                "type": "invoice_item_details",
                "invoice_item_details": {"invoice_item": invoice_item, "proration": False, "subscription": None},
                "subscription_item_details": None,
            }
        else:
            line["parent"] = {
                "type": "subscription_item_details",
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": False,
                    "subscription": sub.get("subscription"),
                    "subscription_item": None,
                },
            }
        inv["lines"]["data"].append(line)
        self.retotal(inv)

    def retotal(self, inv):
        total = sum(line["amount"] for line in inv["lines"]["data"])
        inv["subtotal"] = inv["total"] = inv["amount_due"] = total
        inv["amount_remaining"] = max(0, total - inv["amount_paid"])

    def hosted_url(self, inv):
        return "http://127.0.0.1:%d/i/%s" % (self.port(), inv["id"])

    def next_card(self, customer):
        seq = self.cards.get(customer) or ["ok"]
        behaviour = seq[0]
        if len(seq) > 1:
            self.cards[customer] = seq[1:]
        return card_outcome(behaviour)

    def payment_intent_for(self, inv):
        pid = self.invoice_pi.get(inv["id"])
        if pid:
            return self.objects[pid]
        pi = {
            "id": self.new_id("pi"),
            "object": "payment_intent",
            "amount": inv["amount_remaining"],
            "amount_received": 0,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic",
            "confirmation_method": "automatic",
            "created": self.now(),
            "currency": inv["currency"],
            "customer": inv["customer"],
            "description": "Payment for Invoice",
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": {},
            "payment_method": None,
            "payment_method_types": ["card"],
            "status": "requires_payment_method",
        }
        self.store("payment_intent", pi)
        self.invoice_pi[inv["id"]] = pi["id"]
        ip = {
            "id": self.new_id("inpay"),
            "object": "invoice_payment",
            "amount_paid": None,
            "amount_requested": inv["amount_remaining"],
            "created": self.now(),
            "currency": inv["currency"],
            "invoice": inv["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"type": "payment_intent", "payment_intent": pi["id"]},
            "status": "open",
            "status_transitions": {"canceled_at": None, "paid_at": None},
        }
        self.store("invoice_payment", ip)
        return pi

    def invoice_payment_of(self, pi_id):
        for o in self.all_of("invoice_payment"):
            if o["payment"].get("payment_intent") == pi_id:
                return o
        return None

    def attempt(self, inv, outcome, at=None, request=None, emit=True):
        """One payment attempt on an open or uncollectible invoice."""
        at = at if at is not None else self.now()
        pi = self.payment_intent_for(inv)
        pm = {
            "id": self.new_id("pm"),
            "object": "payment_method",
            "type": "card",
            "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030, "country": "US"},
        }
        ch = {
            "id": self.new_id("ch"),
            "object": "charge",
            "amount": inv["amount_remaining"],
            "amount_captured": 0,
            "amount_refunded": 0,
            "captured": False,
            "created": at,
            "currency": inv["currency"],
            "customer": inv["customer"],
            "description": "Payment for Invoice",
            "disputed": False,
            "failure_code": None,
            "failure_message": None,
            "livemode": False,
            "metadata": {},
            "outcome": None,
            "paid": False,
            "payment_intent": pi["id"],
            "payment_method": pm["id"],
            "payment_method_details": {"type": "card", "card": pm["card"]},
            "refunded": False,
            "status": "failed",
        }
        self.store("charge", ch)
        pi["latest_charge"] = ch["id"]
        pi["payment_method"] = pm["id"]
        inv["attempt_count"] += 1
        inv["attempted"] = True
        ip = self.invoice_payment_of(pi["id"])
        if outcome["ok"]:
            ch.update(
                amount_captured=ch["amount"],
                captured=True,
                paid=True,
                status="succeeded",
                outcome={
                    "advice_code": None,
                    "network_advice_code": None,
                    "network_decline_code": None,
                    "network_status": "approved_by_network",
                    "reason": None,
                    "risk_level": "normal",
                    "seller_message": "Payment complete.",
                    "type": "authorized",
                },
            )
            pi.update(status="succeeded", amount_received=ch["amount"], last_payment_error=None)
            if ip:
                ip.update(status="paid", amount_paid=ch["amount"])
                ip["status_transitions"]["paid_at"] = at
            self.mark_paid(inv, at)
            if emit:
                self.emit("charge.succeeded", ch, request=request)
                self.emit("payment_intent.succeeded", pi, request=request)
                if ip:
                    self.emit("invoice_payment.paid", ip, request=request)
                self.emit("invoice.paid", inv, request=request)
                self.emit("invoice.payment_succeeded", inv, request=request)
            return None
        blocked = outcome["decline_code"] == "highest_risk_level"
        ch.update(
            failure_code=outcome["code"],
            failure_message=outcome["message"],
            outcome={
                "advice_code": outcome["advice_code"],
                "network_advice_code": outcome["network_advice_code"],
                "network_decline_code": outcome["network_decline_code"],
                "network_status": "not_sent_to_network" if blocked else "declined_by_network",
                "reason": outcome["decline_code"],
                "risk_level": "highest" if blocked else "normal",
                "seller_message": "Stripe blocked this payment as too risky."
                if blocked
                else "The bank did not return any further details with this decline.",
                "type": "blocked" if blocked else "issuer_declined",
            },
        )
        err = {
            "type": "card_error",
            "code": outcome["code"],
            "decline_code": outcome["decline_code"],
            "advice_code": outcome["advice_code"],
            "network_advice_code": outcome["network_advice_code"],
            "network_decline_code": outcome["network_decline_code"],
            "message": outcome["message"],
            "charge": ch["id"],
            "payment_method": pm,
        }
        pi.update(status="requires_payment_method", last_payment_error=err)
        self.schedule_retry(inv, outcome, at)
        if emit:
            self.emit("charge.failed", ch, request=request)
            self.emit("payment_intent.payment_failed", pi, request=request)
            self.emit("invoice.payment_failed", inv, request=request)
        return StripeError(
            402,
            "card_error",
            outcome["message"],
            code=outcome["code"],
            saved=True,
            extra={
                "decline_code": outcome["decline_code"],
                "advice_code": outcome["advice_code"],
                "network_advice_code": outcome["network_advice_code"],
                "network_decline_code": outcome["network_decline_code"],
                "charge": ch["id"],
                "payment_intent": copy.deepcopy(pi),
            },
        )

    def schedule_retry(self, inv, outcome, at):
        """After a failed attempt: when Stripe will try again by itself.

        Stripe retries only invoices it collects automatically and advances
        by itself (collection_method charge_automatically, auto_advance
        true), only while its retries are on, never after a decline it
        knows to be final, and at most as often as the schedule says;
        otherwise next_payment_attempt is null."""
        first = self.first_failed.setdefault(inv["id"], at)
        inv["next_payment_attempt"] = None
        if inv["collection_method"] != "charge_automatically" or inv["status"] != "open":
            return
        if not inv["auto_advance"] or not self.config["smart_retries"]:
            return
        if outcome.get("decline_code") in NON_RETRYABLE_DECLINES or \
                outcome.get("advice_code") == "do_not_try_again":
            return
        schedule = self.config["retry_schedule_s"]
        done = inv["attempt_count"] - 1  # retries made after the first attempt
        if done < len(schedule):
            inv["next_payment_attempt"] = max(first + schedule[done], at + 1)

    def mark_paid(self, inv, at):
        inv["amount_paid"] = inv["amount_due"]
        inv["amount_remaining"] = 0
        inv["status"] = "paid"
        inv["next_payment_attempt"] = None
        inv["status_transitions"]["paid_at"] = at
        inv["auto_advance"] = False

    # -- the rate window

    def admit(self, limit):
        """Whether one more /v1 request fits in the last second."""
        t = time.monotonic()
        while self.admitted and t - self.admitted[0] >= 1.0:
            self.admitted.pop(0)
        if limit is not None and len(self.admitted) >= limit:
            self.rate_limited += 1
            return False
        self.admitted.append(t)
        return True


# --------------------------------------------------------------------------
# API versions


def pre_basil(version):
    return version[:10] < BASIL_DATE


def shape(st, obj, version):
    """A copy of obj as the API renders it at version. Objects are kept in
    the basil shape; before 2025-03-31 an invoice carried its subscription,
    payment intent, charge and paid flag at the top level and had no parent,
    and its lines named their invoice item or subscription directly. Events
    are never reshaped: they keep the version they were created with."""
    out = copy.deepcopy(obj)
    if pre_basil(version):
        _old_shape(st, out)
    return out


def _old_shape(st, node):
    if isinstance(node, list):
        for x in node:
            _old_shape(st, x)
        return
    if not isinstance(node, dict) or node.get("object") == "event":
        return
    for v in node.values():
        _old_shape(st, v)
    if node.get("object") == "invoice":
        parent = node.pop("parent", None) or {}
        sub = (parent.get("subscription_details") or {}).get("subscription")
        node["subscription"] = sub
        node["subscription_details"] = {"metadata": {}} if sub else None
        pi_id = st.invoice_pi.get(node.get("id"))
        pi = st.objects.get(pi_id) if pi_id else None
        node["payment_intent"] = pi_id
        node["charge"] = pi.get("latest_charge") if pi else None
        node["paid"] = node.get("status") == "paid"
        node.pop("amount_overpaid", None)
    elif node.get("object") == "line_item" and "parent" in node:
        parent = node.pop("parent") or {}
        item = (parent.get("invoice_item_details") or {}).get("invoice_item")
        sub = (parent.get("subscription_item_details") or {}).get("subscription")
        node["type"] = "invoiceitem" if item else "subscription"
        node["invoice_item"] = item
        node["subscription"] = sub


# --------------------------------------------------------------------------
# Lists and expansion


def paginate(st, kind, items, params, url):
    """items: the filtered list, newest first. The cursor is looked up among
    all objects of the kind, so a cursor outside the filter still works."""
    limit = get_int(params, "limit", lo=1, hi=100)
    limit = 10 if limit is None else limit
    after = get_str(params, "starting_after")
    before = get_str(params, "ending_before")
    if after and before:
        raise invalid("You may only specify one of these parameters: ending_before, starting_after.")
    order = {o["id"]: i for i, o in enumerate(st.all_of(kind))}
    if after:
        if after not in order:
            raise no_such(kind.replace("_", " "), after, param="starting_after", status=400)
        rest = [o for o in items if order[o["id"]] > order[after]]
        page, more = rest[:limit], len(rest) > limit
    elif before:
        if before not in order:
            raise no_such(kind.replace("_", " "), before, param="ending_before", status=400)
        rest = [o for o in items if order[o["id"]] < order[before]]
        page, more = rest[-limit:], len(rest) > limit
    else:
        page, more = items[:limit], len(items) > limit
    return {"object": "list", "data": [copy.deepcopy(o) for o in page], "has_more": more, "url": url}


def expand(st, obj, paths):
    """Replace id fields named by dotted paths with the objects they name."""
    for path in paths:
        expand_path(st, obj, path.split("."), path)
    return obj


def expand_path(st, node, segs, path):
    if isinstance(node, list):
        for item in node:
            expand_path(st, item, segs, path)
        return
    if not isinstance(node, dict):
        return
    seg = segs[0]
    if seg not in node or seg == "id":
        raise invalid("This property cannot be expanded (%s)." % seg, param="expand")
    if len(segs) > 1:
        expand_path(st, node[seg], segs[1:], path)
        return
    v = node[seg]
    if v is None or isinstance(v, dict):
        return
    if not isinstance(v, str) or v not in st.objects:
        raise invalid("This property cannot be expanded (%s)." % seg, param="expand")
    node[seg] = copy.deepcopy(st.objects[v])


def created_filter(params, name="created"):
    """Stripe's range filter: created=N or created[gte|gt|lte|lt]=N."""
    v = params.get(name)
    if v is None:
        return lambda t: True
    if isinstance(v, str):
        n = get_int(params, name)
        return lambda t: t == n
    if not isinstance(v, dict):
        raise invalid("Invalid %s" % name, param=name)
    bounds = {}
    for op, raw in v.items():
        if op not in ("gt", "gte", "lt", "lte"):
            raise invalid("Received unknown parameter: %s[%s]" % (name, op), param="%s[%s]" % (name, op))
        bounds[op] = get_int(v, op)
    return lambda t: (
        ("gt" not in bounds or t > bounds["gt"])
        and ("gte" not in bounds or t >= bounds["gte"])
        and ("lt" not in bounds or t < bounds["lt"])
        and ("lte" not in bounds or t <= bounds["lte"])
    )


# --------------------------------------------------------------------------
# API endpoints. Each takes (st, params, match, request) and returns the
# answer body (status 200) or raises StripeError. They run under st.lock.


def customer_create(st, p, m, req):
    check_params(p, {"email", "name", "description", "phone", "metadata"})
    for k in ("email", "name", "description", "phone"):
        get_str(p, k)
    md = merge_metadata({}, get_metadata(p))
    cus = st.new_customer(p)
    cus["metadata"] = md
    st.emit("customer.created", cus, request=req)
    return cus


def customer_update(st, p, m, req):
    cus = st.get("customer", m["id"])
    check_params(p, {"email", "name", "description", "phone", "metadata"})
    md = merge_metadata(cus["metadata"], get_metadata(p))
    fields = {k: get_str(p, k) or None for k in ("email", "name", "description", "phone") if k in p}
    before = copy.deepcopy(cus)
    cus.update(fields)
    cus["metadata"] = md
    previous = {k: before[k] for k in cus if before.get(k) != cus[k]}
    if previous:
        st.emit("customer.updated", cus, previous=previous, request=req)
    return cus


def customer_get(st, p, m, req):
    check_params(p, set())
    return st.get("customer", m["id"])


def customer_list(st, p, m, req):
    check_params(p, {"email", "created", "limit", "starting_after", "ending_before"})
    email = get_str(p, "email")
    when = created_filter(p)
    items = [c for c in st.all_of("customer") if (email is None or c["email"] == email) and when(c["created"])]
    return paginate(st, "customer", items, p, "/v1/customers")


SUB_STATUSES = ("incomplete", "incomplete_expired", "trialing", "active", "past_due", "canceled", "unpaid", "paused")


def subscription_list(st, p, m, req):
    check_params(p, {"customer", "status", "price", "collection_method", "created", "limit", "starting_after",
                     "ending_before"})
    customer = get_str(p, "customer")
    status = get_str(p, "status", choices=SUB_STATUSES + ("all", "ended"))
    method = get_str(p, "collection_method", choices=("charge_automatically", "send_invoice"))
    when = created_filter(p)

    def wanted(s):
        if status is None:
            # Stripe lists only subscriptions that are not canceled by default.
            if s["status"] == "canceled":
                return False
        elif status == "ended":
            if s["status"] not in ("canceled", "incomplete_expired"):
                return False
        elif status != "all" and s["status"] != status:
            return False
        return ((customer is None or s["customer"] == customer)
                and (method is None or s["collection_method"] == method)
                and when(s["created"]))

    items = [s for s in st.all_of("subscription") if wanted(s)]
    return paginate(st, "subscription", items, p, "/v1/subscriptions")


def subscription_get(st, p, m, req):
    check_params(p, set())
    return st.get("subscription", m["id"])


def subscription_cancel(st, p, m, req):
    sub = st.get("subscription", m["id"])
    check_params(p, {"invoice_now", "prorate", "cancellation_details"})
    get_bool(p, "invoice_now")
    get_bool(p, "prorate")
    details = p.get("cancellation_details") or {}
    if not isinstance(details, dict):
        raise invalid("Invalid object", param="cancellation_details")
    check_params({"cancellation_details[%s]" % k: v for k, v in details.items()},
                 {"cancellation_details[comment]", "cancellation_details[feedback]"})
    if sub["status"] in ("canceled", "incomplete_expired"):
        raise state_error(
            "A canceled subscription can only update its cancellation_details and metadata.", param="id"
        )
    now = st.now()
    previous = {"status": sub["status"], "canceled_at": None, "ended_at": None}
    sub.update(status="canceled", canceled_at=now, ended_at=now)
    sub["cancellation_details"] = {
        "comment": details.get("comment"),
        "feedback": details.get("feedback"),
        "reason": "cancellation_requested",
    }
    st.emit("customer.subscription.deleted", sub, previous=previous, request=req)
    return sub


INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")


def invoice_list(st, p, m, req):
    check_params(p, {"customer", "status", "subscription", "collection_method", "created", "due_date", "limit",
                     "starting_after", "ending_before"})
    customer = get_str(p, "customer")
    status = get_str(p, "status", choices=INVOICE_STATUSES)
    sub = get_str(p, "subscription")
    method = get_str(p, "collection_method", choices=("charge_automatically", "send_invoice"))
    when = created_filter(p)

    def wanted(i):
        parent_sub = ((i.get("parent") or {}).get("subscription_details") or {}).get("subscription")
        return ((customer is None or i["customer"] == customer)
                and (status is None or i["status"] == status)
                and (sub is None or parent_sub == sub)
                and (method is None or i["collection_method"] == method)
                and when(i["created"]))

    items = [i for i in st.all_of("invoice") if wanted(i)]
    return paginate(st, "invoice", items, p, "/v1/invoices")


def invoice_get(st, p, m, req):
    check_params(p, set())
    return st.get("invoice", m["id"])


def invoice_create(st, p, m, req):
    check_params(p, {"customer", "collection_method", "days_until_due", "due_date", "pending_invoice_items_behavior",
                     "metadata", "description", "auto_advance", "currency", "subscription"})
    cid = get_str(p, "customer", required=True)
    method = get_str(p, "collection_method", choices=("charge_automatically", "send_invoice")) or \
        "charge_automatically"
    days = get_int(p, "days_until_due", lo=0, hi=730)
    due = get_int(p, "due_date")
    behaviour = get_str(p, "pending_invoice_items_behavior", choices=("exclude", "include")) or "exclude"
    md = merge_metadata({}, get_metadata(p))
    description = get_str(p, "description")
    auto = get_bool(p, "auto_advance")
    currency = (get_str(p, "currency") or "usd").lower()
    sub_id = get_str(p, "subscription")
    if method == "send_invoice" and days is None and due is None:
        raise invalid("Missing required param: days_until_due.", param="days_until_due", code="parameter_missing")
    if method == "charge_automatically" and (days is not None or due is not None):
        param = "days_until_due" if days is not None else "due_date"
        raise invalid("You may only specify %s for invoices with collection_method=send_invoice." % param,
                      param=param)
    st.get("customer", cid, param="customer", status=400)
    if sub_id:
        sub = st.get("subscription", sub_id, param="subscription", status=400)
        if sub["customer"] != cid:
            raise invalid("The subscription does not belong to this customer.", param="subscription")
    inv = st.new_invoice(cid, collection_method=method, subscription=sub_id, currency=currency)
    inv["description"] = description
    inv["auto_advance"] = bool(auto)
    if method == "send_invoice":
        inv["due_date"] = due if due is not None else inv["created"] + days * 86400
    inv["metadata"] = md
    if behaviour == "include":
        for ii in st.all_of("invoiceitem")[::-1]:
            if ii["customer"] == cid and ii["invoice"] is None and ii["currency"] == currency:
                ii["invoice"] = inv["id"]
                st.add_line(inv, ii["amount"], ii["description"], invoice_item=ii["id"])
    st.emit("invoice.created", inv, request=req)
    return inv


def invoice_update(st, p, m, req):
    inv = st.get("invoice", m["id"])
    check_params(p, {"metadata", "description", "auto_advance", "days_until_due", "due_date"})
    md = merge_metadata(inv["metadata"], get_metadata(p))
    description = get_str(p, "description")
    auto = get_bool(p, "auto_advance")
    days = get_int(p, "days_until_due", lo=0, hi=730)
    due = get_int(p, "due_date")
    if (days is not None or due is not None) and inv["status"] != "draft":
        raise state_error("You can only update the due date of a draft invoice.",
                          param="days_until_due" if days is not None else "due_date",
                          code="invoice_not_editable")
    before = copy.deepcopy(inv)
    inv["metadata"] = md
    if "description" in p:
        inv["description"] = description or None
    if auto is not None:
        inv["auto_advance"] = auto
    if days is not None:
        inv["due_date"] = inv["created"] + days * 86400
    if due is not None:
        inv["due_date"] = due
    previous = {k: before[k] for k in inv if before.get(k) != inv[k]}
    if previous:
        st.emit("invoice.updated", inv, previous=previous, request=req)
    return inv


def invoice_finalize(st, p, m, req):
    inv = st.get("invoice", m["id"])
    check_params(p, {"auto_advance"})
    auto = get_bool(p, "auto_advance")
    if inv["status"] != "draft":
        raise state_error("This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                          param="invoice")
    now = st.now()
    cus = st.objects[inv["customer"]]
    inv["number"] = "%s-%04d" % (cus["invoice_prefix"], cus["next_invoice_sequence"])
    cus["next_invoice_sequence"] += 1
    inv["status"] = "open"
    inv["status_transitions"]["finalized_at"] = now
    inv["effective_at"] = now
    inv["hosted_invoice_url"] = st.hosted_url(inv)
    inv["invoice_pdf"] = inv["hosted_invoice_url"] + "/pdf"
    if auto is not None:
        inv["auto_advance"] = auto
    st.retotal(inv)
    if inv["collection_method"] == "charge_automatically":
        inv["next_payment_attempt"] = now + 3600 if inv["auto_advance"] else None
    st.emit("invoice.finalized", inv, request=req)
    if inv["amount_due"] == 0:
        st.mark_paid(inv, now)
        st.emit("invoice.paid", inv, request=req)
    return inv


def invoice_mark_uncollectible(st, p, m, req):
    inv = st.get("invoice", m["id"])
    check_params(p, set())
    if inv["status"] != "open":
        raise state_error("You can only mark an invoice as uncollectible if it is open; this invoice is %s."
                          % inv["status"], param="invoice")
    inv["status"] = "uncollectible"
    inv["status_transitions"]["marked_uncollectible_at"] = st.now()
    inv["next_payment_attempt"] = None
    inv["auto_advance"] = False
    st.emit("invoice.marked_uncollectible", inv, previous={"status": "open"}, request=req)
    return inv


def invoice_void(st, p, m, req):
    inv = st.get("invoice", m["id"])
    check_params(p, set())
    if inv["status"] not in ("open", "uncollectible"):
        raise state_error("You can only void an invoice that is open or uncollectible; this invoice is %s."
                          % inv["status"], param="invoice")
    previous = {"status": inv["status"]}
    inv["status"] = "void"
    inv["status_transitions"]["voided_at"] = st.now()
    inv["next_payment_attempt"] = None
    inv["auto_advance"] = False
    st.emit("invoice.voided", inv, previous=previous, request=req)
    return inv


def invoice_pay(st, p, m, req):
    inv = st.get("invoice", m["id"])
    check_params(p, {"paid_out_of_band", "forgive", "off_session", "payment_method", "source", "mandate"})
    oob = get_bool(p, "paid_out_of_band")
    for k in ("forgive", "off_session"):
        get_bool(p, k)
    if inv["status"] == "draft":
        raise state_error("You can only pay an invoice that is open or uncollectible; finalize it first.",
                          param="invoice")
    if inv["status"] == "paid":
        raise state_error("Invoice is already paid", param="invoice")
    if inv["status"] == "void":
        raise state_error("You can only pay an invoice that is open or uncollectible; this invoice is void.",
                          param="invoice")
    now = st.now()
    if oob or inv["amount_remaining"] == 0:
        st.mark_paid(inv, now)
        st.emit("invoice.paid", inv, request=req)
        return inv
    outcome = st.next_card(inv["customer"])
    if outcome.get("none"):
        raise state_error("This customer has no attached payment source or default payment method.",
                          param="payment_method")
    err = st.attempt(inv, outcome, at=now, request=req)
    if err:
        raise err
    return inv


def invoiceitem_create(st, p, m, req):
    check_params(p, {"customer", "invoice", "amount", "currency", "description", "metadata", "subscription"})
    cid = get_str(p, "customer", required=True)
    amount = get_int(p, "amount", required=True)
    currency = get_str(p, "currency", required=True).lower()
    description = get_str(p, "description")
    iid = get_str(p, "invoice")
    md = merge_metadata({}, get_metadata(p))
    st.get("customer", cid, param="customer", status=400)
    inv = None
    if iid:
        inv = st.get("invoice", iid, param="invoice", status=400)
        if inv["customer"] != cid:
            raise invalid("The invoice %s does not belong to customer %s." % (iid, cid), param="invoice")
        if inv["status"] != "draft":
            raise state_error("Invoice items can only be added to draft invoices; %s is %s."
                              % (iid, inv["status"]), param="invoice", code="invoice_not_editable")
        if inv["currency"] != currency:
            raise invalid("The currency of the invoice item (%s) must match the invoice's (%s)."
                          % (currency, inv["currency"]), param="currency")
    ii = {
        "id": st.new_id("ii"),
        "object": "invoiceitem",
        "amount": amount,
        "currency": currency,
        "customer": cid,
        "date": st.now(),
        "created": st.now(),
        "description": description,
        "discountable": True,
        "invoice": iid,
        "livemode": False,
        "metadata": md,
        "parent": None,
        "period": {"start": st.now(), "end": st.now()},
        "proration": False,
        "quantity": 1,
        "test_clock": None,
    }
    st.store("invoiceitem", ii)
    if inv:
        st.add_line(inv, amount, description, invoice_item=ii["id"])
    st.emit("invoiceitem.created", ii, request=req)
    return ii


def invoiceitem_get(st, p, m, req):
    check_params(p, set())
    return st.get("invoiceitem", m["id"])


def invoiceitem_list(st, p, m, req):
    check_params(p, {"customer", "invoice", "pending", "created", "limit", "starting_after", "ending_before"})
    customer = get_str(p, "customer")
    invoice = get_str(p, "invoice")
    pending = get_bool(p, "pending")
    when = created_filter(p)
    items = [i for i in st.all_of("invoiceitem")
             if (customer is None or i["customer"] == customer)
             and (invoice is None or i["invoice"] == invoice)
             and (pending is None or (i["invoice"] is None) == pending)
             and when(i["created"])]
    return paginate(st, "invoiceitem", items, p, "/v1/invoiceitems")


def invoice_payment_list(st, p, m, req):
    check_params(p, {"invoice", "payment", "status", "limit", "starting_after", "ending_before"})
    invoice = get_str(p, "invoice")
    status = get_str(p, "status", choices=("canceled", "open", "paid"))
    pay = p.get("payment") or {}
    if not isinstance(pay, dict):
        raise invalid("Invalid object", param="payment")
    items = [i for i in st.all_of("invoice_payment")
             if (invoice is None or i["invoice"] == invoice)
             and (status is None or i["status"] == status)
             and all(i["payment"].get(k) == v for k, v in pay.items())]
    return paginate(st, "invoice_payment", items, p, "/v1/invoice_payments")


def invoice_payment_get(st, p, m, req):
    check_params(p, set())
    return st.get("invoice_payment", m["id"])


def payment_intent_get(st, p, m, req):
    check_params(p, {"client_secret"})
    return st.get("payment_intent", m["id"])


def charge_get(st, p, m, req):
    check_params(p, set())
    return st.get("charge", m["id"])


def charge_list(st, p, m, req):
    check_params(p, {"customer", "payment_intent", "created", "limit", "starting_after", "ending_before"})
    customer = get_str(p, "customer")
    pi = get_str(p, "payment_intent")
    when = created_filter(p)
    items = [c for c in st.all_of("charge")
             if (customer is None or c["customer"] == customer)
             and (pi is None or c["payment_intent"] == pi)
             and when(c["created"])]
    return paginate(st, "charge", items, p, "/v1/charges")


def event_list(st, p, m, req):
    check_params(p, {"type", "types", "created", "delivery_success", "limit", "starting_after", "ending_before"})
    t = get_str(p, "type")
    types = p.get("types")
    if types is not None and (not isinstance(types, list) or not all(isinstance(x, str) for x in types)):
        raise invalid("Invalid array", param="types")
    if t is not None and types is not None:
        raise invalid("You may only specify one of these parameters: type, types.", param="types")
    when = created_filter(p)

    def type_matches(ev_type, pattern):
        if pattern.endswith(".*"):
            return ev_type.startswith(pattern[:-1])
        return ev_type == pattern

    def wanted(ev):
        if t is not None and not type_matches(ev["type"], t):
            return False
        if types is not None and not any(type_matches(ev["type"], x) for x in types):
            return False
        return when(ev["created"])

    items = [e for e in st.all_of("event") if wanted(e)]
    return paginate(st, "event", items, p, "/v1/events")


def event_get(st, p, m, req):
    check_params(p, set())
    return st.get("event", m["id"])


ID = r"(?P<id>[A-Za-z0-9_]+)"
ROUTES = [
    ("GET", r"/v1/customers", customer_list),
    ("POST", r"/v1/customers", customer_create),
    ("GET", r"/v1/customers/" + ID, customer_get),
    ("POST", r"/v1/customers/" + ID, customer_update),
    ("GET", r"/v1/subscriptions", subscription_list),
    ("GET", r"/v1/subscriptions/" + ID, subscription_get),
    ("DELETE", r"/v1/subscriptions/" + ID, subscription_cancel),
    ("GET", r"/v1/invoices", invoice_list),
    ("POST", r"/v1/invoices", invoice_create),
    ("GET", r"/v1/invoices/" + ID, invoice_get),
    ("POST", r"/v1/invoices/" + ID, invoice_update),
    ("POST", r"/v1/invoices/" + ID + r"/finalize", invoice_finalize),
    ("POST", r"/v1/invoices/" + ID + r"/mark_uncollectible", invoice_mark_uncollectible),
    ("POST", r"/v1/invoices/" + ID + r"/void", invoice_void),
    ("POST", r"/v1/invoices/" + ID + r"/pay", invoice_pay),
    ("GET", r"/v1/invoiceitems", invoiceitem_list),
    ("POST", r"/v1/invoiceitems", invoiceitem_create),
    ("GET", r"/v1/invoiceitems/" + ID, invoiceitem_get),
    ("GET", r"/v1/invoice_payments", invoice_payment_list),
    ("GET", r"/v1/invoice_payments/" + ID, invoice_payment_get),
    ("GET", r"/v1/payment_intents/" + ID, payment_intent_get),
    ("GET", r"/v1/charges", charge_list),
    ("GET", r"/v1/charges/" + ID, charge_get),
    ("GET", r"/v1/events", event_list),
    ("GET", r"/v1/events/" + ID, event_get),
]
ROUTES = [(method, re.compile(pattern + r"\Z"), fn) for method, pattern, fn in ROUTES]


def route(method, path):
    for rmethod, rx, fn in ROUTES:
        m = rx.match(path)
        if m and rmethod == method:
            return fn, m.groupdict()
    raise invalid("Unrecognized request URL (%s: %s). Please see https://stripe.com/docs or we can help at "
                  "https://support.stripe.com/." % (method, path), status=404)


# --------------------------------------------------------------------------
# Seeding (control API)


def seed(st, body):
    out = {"customers": [], "subscriptions": [], "invoices": []}
    emit = bool(body.get("events"))
    for c in body.get("customers", []):
        cid = c.get("id")
        if cid and st.kind_of.get(cid) == "customer":
            cus = st.objects[cid]
            for k in ("email", "name", "description", "phone"):
                if k in c:
                    cus[k] = c[k]
            if "metadata" in c:
                cus["metadata"] = dict(c["metadata"])
        else:
            cus = st.new_customer(c, ident=cid, created=c.get("created"))
            # The metadata first: customer.created carries it, as it does when
            # a customer is created through the API with metadata.
            if "metadata" in c:
                cus["metadata"] = dict(c["metadata"])
            if emit:
                st.emit("customer.created", cus)
        if "card" in c:
            card = c["card"] if isinstance(c["card"], list) else [c["card"]]
            for b in card:
                card_outcome(b)
            st.cards[cus["id"]] = list(card)
        out["customers"].append(cus)
    for s in body.get("subscriptions", []):
        cid = s["customer"]
        st.get("customer", cid, param="customer", status=400)
        status = s.get("status", "active")
        if status not in SUB_STATUSES:
            raise invalid("Invalid status: %s" % status, param="status")
        sub = st.new_subscription(cid, status, ident=s.get("id"), created=s.get("created"),
                                  amount=s.get("amount", 2000), currency=s.get("currency", "usd"))
        sub["metadata"] = dict(s.get("metadata", {}))
        sub["collection_method"] = s.get("collection_method", "charge_automatically")
        item = sub["items"]["data"][0]
        for k in ("current_period_start", "current_period_end"):
            if k in s:
                item[k] = s[k]
        if status == "canceled":
            sub["canceled_at"] = sub["ended_at"] = s.get("canceled_at", st.now())
        if emit:
            st.emit("customer.subscription.created", sub)
        out["subscriptions"].append(sub)
    for i in body.get("invoices", []):
        out["invoices"].append(seed_invoice(st, i, emit))
    return out


def seed_invoice(st, i, emit):
    cid = i["customer"]
    st.get("customer", cid, param="customer", status=400)
    sub_id = i.get("subscription")
    if sub_id:
        sub = st.get("subscription", sub_id, param="subscription", status=400)
    attempts = i.get("attempts", [])
    outcomes = [card_outcome(a) for a in attempts]
    status = i.get("status") or ("paid" if outcomes and outcomes[-1]["ok"] else "open")
    if status not in INVOICE_STATUSES:
        raise invalid("Invalid status: %s" % status, param="status")
    method = i.get("collection_method", "charge_automatically")
    reason = i.get("billing_reason", "subscription_cycle" if sub_id else "manual")
    created = i.get("created", st.now())
    inv = st.new_invoice(cid, ident=i.get("id"), created=created, collection_method=method,
                         subscription=sub_id, billing_reason=reason, currency=i.get("currency", "usd"))
    if sub_id:
        sub["latest_invoice"] = inv["id"]
    # Stripe advances (and retries) a subscription's automatically charged
    # invoices by itself; invoices made through the API do not by default.
    inv["auto_advance"] = bool(i.get("auto_advance", bool(sub_id) and method == "charge_automatically"))
    st.add_line(inv, i.get("amount_due", 1000), i.get("description", "Fake subscription"))
    inv["metadata"] = dict(i.get("metadata", {}))
    if method == "send_invoice":
        inv["due_date"] = i.get("due_date", created + 30 * 86400)
    elif "due_date" in i:
        inv["due_date"] = i["due_date"]
    if status != "draft":
        cus = st.objects[cid]
        inv["number"] = i.get("number") or "%s-%04d" % (cus["invoice_prefix"], cus["next_invoice_sequence"])
        cus["next_invoice_sequence"] += 1
        inv["status"] = "open"
        inv["status_transitions"]["finalized_at"] = created
        inv["effective_at"] = created
        inv["hosted_invoice_url"] = st.hosted_url(inv)
        inv["invoice_pdf"] = inv["hosted_invoice_url"] + "/pdf"
        if inv["auto_advance"] and method == "charge_automatically":
            inv["next_payment_attempt"] = created + 3600  # the first automatic attempt
        for n, outcome in enumerate(outcomes):
            at = attempts[n].get("created", created + n * 86400) if isinstance(attempts[n], dict) else \
                created + n * 86400
            if inv["status"] == "paid":
                break
            st.attempt(inv, outcome, at=at, emit=emit)
    if "amount_paid" in i and inv["status"] != "paid":
        inv["amount_paid"] = i["amount_paid"]
        inv["amount_remaining"] = max(0, inv["amount_due"] - inv["amount_paid"])
    now = st.now()
    if status == "paid" and inv["status"] != "paid":
        st.mark_paid(inv, now)
    elif status == "uncollectible":
        inv["status"] = "uncollectible"
        inv["status_transitions"]["marked_uncollectible_at"] = i.get("marked_uncollectible_at", now)
        inv["next_payment_attempt"] = None
        inv["auto_advance"] = False
    elif status == "void":
        inv["status"] = "void"
        inv["status_transitions"]["voided_at"] = i.get("voided_at", now)
        inv["next_payment_attempt"] = None
        inv["auto_advance"] = False
    if "next_payment_attempt" in i:
        inv["next_payment_attempt"] = i["next_payment_attempt"]
    if "attempt_count" in i:
        inv["attempt_count"] = i["attempt_count"]
        inv["attempted"] = i["attempt_count"] > 0
    if emit:
        st.emit("invoice.created", inv)
    return inv


# --------------------------------------------------------------------------
# Stripe's own automation (control API: POST /_test/scheduler/run)


def run_scheduler(st):
    """Do what Stripe does by itself between the last run and the clock's
    now, as advancing a Stripe test clock does: every automatic payment
    attempt that fell due, oldest first, each made at its due time (its
    events carry that time), then invoice.upcoming and invoice.overdue where
    due, once each. Caller holds st.lock."""
    now = st.now()
    saved = st.fixed_now
    out = {"attempts": [], "upcoming": [], "overdue": []}
    try:
        while True:
            due = [i for i in st.all_of("invoice")
                   if i["status"] == "open" and i["auto_advance"]
                   and i["collection_method"] == "charge_automatically"
                   and i["next_payment_attempt"] is not None and i["next_payment_attempt"] <= now]
            if not due:
                break
            inv = min(due, key=lambda i: (i["next_payment_attempt"], st.seq[i["id"]]))
            at = inv["next_payment_attempt"]
            st.fixed_now = at
            outcome = st.next_card(inv["customer"])
            if outcome.get("none"):
                # No payment method to try: Stripe stops retrying.
                inv["next_payment_attempt"] = None
                out["attempts"].append({"invoice": inv["id"], "at": at, "outcome": "no_payment_method",
                                        "attempt_count": inv["attempt_count"]})
                continue
            failed = st.attempt(inv, outcome, at=at)
            out["attempts"].append({"invoice": inv["id"], "at": at, "outcome": "failed" if failed else "paid",
                                    "attempt_count": inv["attempt_count"]})
    finally:
        st.fixed_now = saved
    days = st.config["upcoming_renewal_days"]
    for sub in st.all_of("subscription")[::-1]:
        if days is None or sub["status"] not in ("active", "past_due", "trialing") or \
                sub["collection_method"] != "charge_automatically":
            continue
        item = sub["items"]["data"][0]
        end = item["current_period_end"]
        if not end - days * 86400 <= now < end or (sub["id"], end) in st.upcoming_sent:
            continue
        st.upcoming_sent.add((sub["id"], end))
        st.emit("invoice.upcoming", upcoming_invoice(st, sub, item))
        out["upcoming"].append(sub["id"])
    after = st.config["overdue_after_days"]
    for inv in st.all_of("invoice")[::-1]:
        if after is None or inv["status"] != "open" or inv["collection_method"] != "send_invoice" or \
                not inv["due_date"] or now < inv["due_date"] + after * 86400 or inv["id"] in st.overdue_sent:
            continue
        st.overdue_sent.add(inv["id"])
        st.emit("invoice.overdue", inv)
        out["overdue"].append(inv["id"])
    return out


def upcoming_invoice(st, sub, item):
    """The invoice a subscription will create at its renewal, as
    invoice.upcoming carries it: a preview that does not exist yet, so it
    has no id."""
    end = item["current_period_end"]
    inv = st.invoice_object("", sub["customer"], created=end, subscription=sub["id"],
                            billing_reason="upcoming", currency=sub["currency"])
    del inv["id"]
    amount = item["price"]["unit_amount"] * item.get("quantity", 1)
    inv.update(amount_due=amount, amount_remaining=amount, subtotal=amount, total=amount,
               auto_advance=True, next_payment_attempt=end, period_start=end,
               period_end=end + 30 * 86400)
    inv["lines"] = {"object": "list", "has_more": False, "url": "/v1/invoices/upcoming/lines", "data": [{
        "id": st.new_id("il_tmp"), "object": "line_item", "amount": amount, "currency": sub["currency"],
        "description": "Fake subscription", "livemode": False, "metadata": {},
        "period": {"start": end, "end": end + 30 * 86400}, "quantity": 1,
        "parent": {"type": "subscription_item_details", "invoice_item_details": None,
                   "subscription_item_details": {"invoice_item": None, "proration": False,
                                                 "subscription": sub["id"], "subscription_item": item["id"]}}}]}
    return inv


# --------------------------------------------------------------------------
# Webhook delivery


class Webhooks:
    """Delivers events to the configured URL from one thread, in order,
    signed like Stripe (t=<now>,v1=<hmac>[,v1=...][,v0=...])."""

    def __init__(self):
        self.q = queue.Queue()
        self.thread = None
        self.pending = 0
        self.cond = threading.Condition()

    def enqueue(self, st, event_id):
        with self.cond:
            self.pending += 1
        self.q.put((st, st.generation, event_id))
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="webhooks", daemon=True)
            self.thread.start()

    def run(self):
        while True:
            st, generation, event_id = self.q.get()
            try:
                self.deliver(st, generation, event_id)
            finally:
                with self.cond:
                    self.pending -= 1
                    self.cond.notify_all()

    def deliver(self, st, generation, event_id):
        with st.lock:
            if st.generation != generation or event_id not in st.objects:
                return
            url = st.config["webhook_url"]
            secrets = list(st.config["webhook_secrets"])
            include_v0 = st.config["webhook_include_v0"]
            event = copy.deepcopy(st.objects[event_id])
            t = st.now()
            attempt = 1 + sum(1 for d in st.deliveries if d["event"] == event_id)
        if not url:
            return
        body = json.dumps(event, indent=2).encode()
        parts = ["t=%d" % t] + ["v1=%s" % sign_payload(s, t, body) for s in secrets]
        if include_v0:
            parts.append("v0=%s" % sign_payload("whsec_v0_" + (secrets[0] if secrets else ""), t, body))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": ",".join(parts),
        }
        record = {"event": event_id, "type": event["type"], "attempt": attempt, "t": t, "url": url,
                  "status": None, "error": None}
        try:
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                record["status"] = resp.status
        except urllib.error.HTTPError as e:
            record["status"] = e.code
        except (OSError, ValueError) as e:
            record["error"] = str(e)
        with st.lock:
            if st.generation == generation:
                st.deliveries.append(record)
                if event_id in st.objects and record["status"] and 200 <= record["status"] < 300:
                    st.objects[event_id]["pending_webhooks"] = 0

    def flush(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True


WEBHOOKS = Webhooks()


def loopback_url(url):
    u = urllib.parse.urlsplit(url)
    return u.scheme == "http" and u.hostname in ("127.0.0.1", "localhost", "::1")


# --------------------------------------------------------------------------
# HTTP


FAULT_KEYS = {"path_regex", "method", "status", "count", "latency_ms", "drop", "stripe_should_retry", "error",
              "phase", "store", "retry_after", "probability", "seed"}
CONFIG_TYPES = {
    "rate_limit_per_s": (int, type(None)),
    "account_api_version": (str,),
    "api_key": (str, type(None)),
    "require_stripe_version": (str, type(None)),
    "strict_content_type": (bool,),
    "require_idempotency_key": (bool,),
    "webhook_url": (str, type(None)),
    "webhook_secrets": (list,),
    "webhook_include_v0": (bool,),
    "smart_retries": (bool,),
    "retry_schedule_s": (list,),
    "upcoming_renewal_days": (int, type(None)),
    "overdue_after_days": (int, type(None)),
}


def fault_error(status):
    if status == 409:
        return {"type": "idempotency_error", "code": "idempotency_key_in_use",
                "message": "There is currently another in-progress request using this Idempotent Key "
                           "(probably because of a timeout). Please retry this request later."}
    if status == 503:
        return {"type": "api_error", "code": None,
                "message": "The service is temporarily unavailable (injected fault). Please try again later."}
    if status == 429:
        return {"type": "invalid_request_error", "code": "rate_limit",
                "message": "Too many requests hit the API too quickly. We recommend an exponential backoff of "
                           "your requests."}
    if status >= 500:
        return {"type": "api_error", "code": None,
                "message": "An unknown error occurred while processing this request (injected fault)."}
    return {"type": "invalid_request_error", "code": None, "message": "Injected fault."}


def retry_headers(status, code, fault=None):
    """The retry advice Stripe sends with an error: Stripe-Should-Retry
    "false" on a 500 (the request may have been executed; its answer is
    stored under the key), "true" where trying again later will work (a
    409 key in use, a 429 lock_timeout, a 503), and Retry-After (seconds) on
    a 429 and a 503. A fault may override either; null leaves it out."""
    h = {}
    if status == 500:
        should = False
    elif status in (409, 503) or (status == 429 and code == "lock_timeout"):
        should = True
    else:
        should = None
    after = RETRY_AFTER_S if status in (429, 503) else None
    if fault is not None:
        should = fault.get("stripe_should_retry", should)
        after = fault.get("retry_after", after)
    if should is not None:
        h["Stripe-Should-Retry"] = ("true" if should else "false") if isinstance(should, bool) else str(should)
    if after is not None:
        h["Retry-After"] = str(int(after))
    return h


class ControlError(Exception):
    pass


CAPTURE_LOCK = threading.Lock()


def capture(entry):
    """Append a request of the engine's client (by its User-Agent) to the
    file named by DUNNING_STRIPE_CAPTURE, one JSON line each, for the
    conformance test; requests of tests that speak to the fake directly
    (some on purpose wrong) are not the client's and are left out."""
    path = os.environ.get("DUNNING_STRIPE_CAPTURE")
    if not path or not (entry["headers"].get("User-Agent") or "").startswith("dunning-stripe/"):
        return
    line = json.dumps({k: entry[k] for k in ("method", "path", "query", "params", "headers")})
    with CAPTURE_LOCK, open(path, "a") as f:
        f.write(line + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-stripe/1.0"
    st = None  # set by serve()
    verbose = False

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("fake_stripe: %s\n" % (fmt % args))

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    # -- plumbing

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > BODY_MAX_BYTES:
                    raise invalid("Request body too large.", status=413)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit():
            self.close_connection = True
            raise invalid("Invalid Content-Length: %s" % length)
        n = int(length)
        if n > BODY_MAX_BYTES:
            raise invalid("Request body too large.", status=413)
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, body, headers=None, raw=None, content_type="application/json"):
        data = raw if raw is not None else (json.dumps(body, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def dispatch(self, method):
        url = urllib.parse.urlsplit(self.path)
        try:
            if url.path.startswith("/_test/"):
                self.control(method, url)
            elif url.path.startswith("/i/"):
                self.hosted_page(url.path)
            else:
                self.api(method, url)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in the fake: say so loudly, keep serving
            traceback.print_exc()
            self.close_connection = True
            try:
                self.send(500, {"error": {"type": "api_error", "code": None, "param": None,
                                          "message": "fake_stripe internal error: %s: %s" % (type(e).__name__, e)}})
            except OSError:
                pass

    def hosted_page(self, path):
        inv_id = path.split("/")[2]
        with self.st.lock:
            inv = self.st.objects.get(inv_id)
            ok = inv is not None and self.st.kind_of[inv_id] == "invoice"
            text = "<html><body><h1>Invoice %s</h1><p>Status: %s</p></body></html>" % (
                inv_id, inv["status"]) if ok else "<html><body>Not found</body></html>"
        self.read_body()
        self.send(200 if ok else 404, None, raw=text.encode(), content_type="text/html; charset=utf-8")

    # -- the Stripe API

    def api(self, method, url):
        """One /v1 request: record it, meet any fault, then execute."""
        st = self.st
        request_id = "req_" + hashlib.sha1(os.urandom(8)).hexdigest()[:14]
        hdr = self.headers
        idem_key = hdr.get("Idempotency-Key")
        auth = hdr.get("Authorization") or ""
        scheme, _, key = auth.partition(" ")
        with st.lock:
            st.counter += 1
            entry = {
                "seq": st.counter,
                "at": st.now(),
                "mono": time.monotonic(),
                "method": method,
                "path": url.path,
                "query": url.query,
                "headers": {
                    "Idempotency-Key": idem_key,
                    "Stripe-Version": hdr.get("Stripe-Version"),
                    "Content-Type": hdr.get("Content-Type"),
                    "User-Agent": hdr.get("User-Agent"),
                    "Authorization": (scheme + " " + mask_key(key)) if key else (scheme or None),
                },
                "params": None,
                "status": None,
                "replayed": False,
                "dropped": False,
                "fault": None,
                "request_id": request_id,
                "error": None,
            }
            st.requests.append(entry)
            fault = self.take_fault(method, url.path)
            entry["fault"] = fault["id"] if fault else None
        headers = {"Request-Id": request_id, "Stripe-Version": hdr.get("Stripe-Version") or API_VERSION}
        if method == "POST" and idem_key is not None:
            headers["Idempotency-Key"] = idem_key
        try:
            body = self.read_body()
        except StripeError as e:
            self.close_connection = True
            self.finish_api(entry, e.status, e.body, headers)
            return
        try:
            params = self.decode(method, url, body)
        except StripeError:
            params = None
        with st.lock:
            entry["params"] = params
        capture(entry)
        latency_s = fault["latency_ms"] / 1000.0 if fault and fault.get("latency_ms") else 0
        acting = fault and (fault.get("drop") or fault.get("status"))
        if acting and fault.get("phase", "before") == "before":
            time.sleep(latency_s)
            if fault.get("store") and not fault.get("drop"):
                self.answer_fault(entry, fault, headers, store=(auth, idem_key, method, url.path, params))
            else:
                self.answer_fault(entry, fault, headers)
            return
        status, out, extra = self.execute(method, url, body, auth, idem_key, request_id, entry, latency_s)
        headers.update(extra)
        if acting:
            # phase "after": the request took effect; only the answer is lost.
            # Stripe keeps the answer it gave (the 500) under the key; a lost
            # connection leaves the real result stored.
            executed = status < 400 or (auth, idem_key) in st.idem
            self.answer_fault(entry, fault, headers,
                              store=(auth, idem_key, method, url.path, params) if executed else None,
                              replace=True)
            return
        self.finish_api(entry, status, out, headers)

    def finish_api(self, entry, status, out, headers):
        with self.st.lock:
            entry["status"] = status
            if status >= 400:
                entry["error"] = out.get("error")
        self.send(status, out, headers)

    def take_fault(self, method, path):
        for f in self.st.faults:
            if f.get("method") and f["method"].upper() != method:
                continue
            if not re.search(f.get("path_regex", ""), path):
                continue
            if f.get("probability") is not None and f["rng"].random() >= f["probability"]:
                continue
            if f["count"] > 0:
                f["count"] -= 1
            f["hits"] += 1
            if f["count"] == 0:
                self.st.faults.remove(f)
            return f
        return None

    def answer_fault(self, entry, fault, headers, store=None, replace=False):
        """Answer with a fault instead of the real result. store, for a
        phase-before fault with "store" or a phase-after fault: (auth, key,
        method, path, params): save the fault's answer under the
        Idempotency-Key, as Stripe saves a 500 once an endpoint began
        executing; replace: over the result the execution stored."""
        st = self.st
        if fault.get("drop"):
            with st.lock:
                entry["dropped"] = True
            self.drop()
            return
        status = int(fault["status"])
        err = dict(fault_error(status))
        err.update(fault.get("error") or {})
        err.setdefault("param", None)
        out = {"error": err}
        headers.update(retry_headers(status, err.get("code"), fault))
        if store:
            auth, key, method, path, params = store
            with st.lock:
                if method == "POST" and key and params is not None and (replace or (auth, key) not in st.idem):
                    st.idem[(auth, key)] = {
                        "fingerprint": fingerprint(method, path, params),
                        "status": status,
                        "body": out,
                        "headers": {k: v for k, v in headers.items() if k in ("Stripe-Should-Retry", "Retry-After")},
                        "request_id": entry["request_id"],
                        "created": st.now(),
                    }
        self.finish_api(entry, status, out, headers)

    def execute(self, method, url, body, auth, idem_key, request_id, entry, latency_s=0):
        """Auth, rate limit, decoding, idempotency and the endpoint itself.
        An injected latency is spent after the Idempotency-Key is marked in
        flight, like a slow execution: a second request with the same key
        meanwhile gets 409 idempotency_key_in_use. Returns (status, body,
        extra headers)."""
        st = self.st
        try:
            with st.lock:
                self.check_auth(auth)
                if not st.admit(st.config["rate_limit_per_s"]):
                    raise invalid("Too many requests hit the API too quickly. We recommend an exponential "
                                  "backoff of your requests.", code="rate_limit", status=429)
                params = self.decode(method, url, body)
                version = self.headers.get("Stripe-Version")
                if version is not None and version not in KNOWN_VERSIONS:
                    raise invalid("Invalid Stripe API version: %s" % version, param="Stripe-Version",
                                  code="api_version_invalid")
                want = st.config["require_stripe_version"]
                if want and version != want:
                    raise invalid("This test server requires Stripe-Version: %s (got %s)." % (want, version),
                                  param="Stripe-Version")
                fn, match = route(method, url.path)
                expansions = expand_list(params)
                if method == "POST" and idem_key is None and st.config["require_idempotency_key"]:
                    raise invalid("This test server requires an Idempotency-Key on every POST.",
                                  param="Idempotency-Key")
                idempotent = method == "POST" and idem_key is not None
                if idempotent:
                    replay = self.idempotent_lookup(auth, idem_key, method, url.path, params)
                    if replay is not None:
                        entry["replayed"] = True
                        return replay
                    st.in_flight.add((auth, idem_key))
        except StripeError as e:
            extra = retry_headers(e.status, e.body["error"]["code"])
            if e.body["error"]["type"] == "idempotency_error" and e.status == 400:
                extra["Stripe-Should-Retry"] = "false"
            return e.status, e.body, extra
        try:
            time.sleep(latency_s)
            with st.lock:
                p = {k: v for k, v in params.items() if k != "expand"}
                req = {"id": request_id, "idempotency_key": idem_key}
                try:
                    out = copy.deepcopy(fn(st, p, match, req))
                    expand(st, out, expansions)
                    out = shape(st, out, self.headers.get("Stripe-Version") or st.config["account_api_version"])
                    status, saved = 200, True
                except StripeError as e:
                    out, status, saved = e.body, e.status, e.saved
                if idempotent and saved:
                    st.idem[(auth, idem_key)] = {
                        "fingerprint": fingerprint(method, url.path, params),
                        "status": status,
                        "body": out,
                        "headers": {},
                        "request_id": request_id,
                        "created": st.now(),
                    }
        finally:
            if idempotent:
                with st.lock:
                    st.in_flight.discard((auth, idem_key))
        return status, copy.deepcopy(out), {}

    def check_auth(self, auth):
        want = self.st.config["api_key"]
        if not auth:
            raise StripeError(401, "invalid_request_error",
                              "You did not provide an API key. You need to provide your API key in the "
                              "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")
        scheme, _, key = auth.partition(" ")
        if scheme != "Bearer" or not key:
            raise StripeError(401, "invalid_request_error",
                              "Invalid API Key provided: this test server accepts only 'Authorization: Bearer "
                              "sk_test_...'.")
        if want is not None and key != want:
            raise StripeError(401, "invalid_request_error", "Invalid API Key provided: %s" % mask_key(key))
        if not re.fullmatch(r"(sk|rk)_test_[A-Za-z0-9_]+", key):
            raise StripeError(401, "invalid_request_error", "Invalid API Key provided: %s" % mask_key(key))

    def decode(self, method, url, body):
        if method == "GET" or method == "DELETE":
            if body:
                raise invalid("%s requests must not have a body; send parameters in the query string." % method)
            return decode_form(url.query)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if url.query:
            raise invalid("POST parameters must be sent in the body, not the query string.")
        if ctype != "application/x-www-form-urlencoded" and (body or ctype or self.st.config["strict_content_type"]):
            raise invalid("Invalid request: the Content-Type of a POST must be application/x-www-form-urlencoded "
                          "(got %s)." % (ctype or "none"), code=None)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid("Invalid request: the body is not valid UTF-8.")
        return decode_form(text)

    def idempotent_lookup(self, auth, key, method, path, params):
        st = self.st
        if len(key) > IDEMPOTENCY_KEY_MAX:
            raise invalid("Idempotency-Key must be %d characters or less (got %d)." % (IDEMPOTENCY_KEY_MAX, len(key)),
                          param="Idempotency-Key")
        if key == "":
            raise invalid("Idempotency-Key must not be empty.", param="Idempotency-Key")
        now = st.now()
        for k in [k for k, v in st.idem.items() if now - v["created"] > IDEMPOTENCY_TTL_S]:
            del st.idem[k]
        if (auth, key) in st.in_flight:
            raise StripeError(409, "idempotency_error",
                              "There is currently another in-progress request using this Idempotent Key "
                              "(probably because of a timeout). Please retry this request later.",
                              code="idempotency_key_in_use")
        saved = st.idem.get((auth, key))
        if saved is None:
            return None
        if saved["fingerprint"] != fingerprint(method, path, params):
            raise StripeError(400, "idempotency_error",
                              "Keys for idempotent requests can only be used with the same parameters they were "
                              "first used with. Try using a key other than '%s' if you meant to execute a "
                              "different request." % key)
        headers = dict(saved["headers"])
        headers["Idempotent-Replayed"] = "true"
        headers["Original-Request"] = saved["request_id"]
        return saved["status"], copy.deepcopy(saved["body"]), headers

    # -- the control API

    def control(self, method, url):
        st = self.st
        raw = self.read_body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            self.send(400, {"error": "body is not JSON"})
            return
        q = dict(urllib.parse.parse_qsl(url.query))
        path = url.path.rstrip("/")
        try:
            with st.lock:
                out = self.control_route(method, path, body, q)
        except ControlError as e:
            self.send(400, {"error": str(e)})
            return
        except StripeError as e:
            self.send(400, {"error": e.body["error"]["message"]})
            return
        except (KeyError, TypeError, ValueError, re.error) as e:
            self.send(400, {"error": "%s: %s" % (type(e).__name__, e)})
            return
        if out is None:
            self.send(404, {"error": "unknown control path %s %s" % (method, path)})
            return
        if path == "/_test/webhooks/flush":
            ok = WEBHOOKS.flush(float(body.get("timeout_s", 5)))
            out = {"ok": ok, "pending": WEBHOOKS.pending}
        self.send(200, out)

    def control_route(self, method, path, body, q):
        st = self.st
        if path == "/_test/health" and method == "GET":
            return {"ok": True, "port": st.port()}
        if path == "/_test/reset" and method == "POST":
            st.reset()
            return {"ok": True}
        if path == "/_test/clock":
            if method == "POST":
                if "advance" in body:
                    st.fixed_now = st.now() + int(body["advance"])
                elif "now" in body:
                    st.fixed_now = None if body["now"] is None else int(body["now"])
                else:
                    raise ControlError("give now or advance")
            return {"now": st.now(), "fixed": st.fixed_now is not None}
        if path == "/_test/config":
            if method == "POST":
                for k, v in body.items():
                    if k == "webhook_secret":
                        k, v = "webhook_secrets", [v] if v else []
                    if k not in CONFIG_TYPES:
                        raise ControlError("unknown config key %s" % k)
                    if not isinstance(v, CONFIG_TYPES[k]) or (isinstance(v, bool) and bool not in CONFIG_TYPES[k]):
                        raise ControlError("bad type for %s" % k)
                    if k == "webhook_url" and v and not loopback_url(v):
                        raise ControlError("webhook_url must be http://127.0.0.1 (or localhost)")
                    if k == "rate_limit_per_s" and v is not None and v < 1:
                        raise ControlError("rate_limit_per_s must be at least 1")
                    if k == "retry_schedule_s" and (
                            not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
                            or v != sorted(set(v))):
                        raise ControlError("retry_schedule_s: positive seconds, strictly increasing")
                    if k in ("upcoming_renewal_days", "overdue_after_days") and v is not None and v < 0:
                        raise ControlError("%s must not be negative" % k)
                    if k == "account_api_version" and v not in KNOWN_VERSIONS:
                        raise ControlError("account_api_version: %s is not a Stripe API version" % v)
                    st.config[k] = v
            return dict(st.config)
        if path == "/_test/faults":
            if method == "DELETE":
                st.faults = []
                return {"ok": True}
            if method == "POST":
                faults = body.get("faults") if "faults" in body else [body]
                ids = []
                for f in faults:
                    ids.append(self.add_fault(f))
                return {"ids": ids, "id": ids[0] if len(ids) == 1 else None}
            return {"faults": [{k: v for k, v in f.items() if k != "rng"} for f in st.faults]}
        if path == "/_test/seed" and method == "POST":
            return seed(st, body)
        if path == "/_test/scheduler/run" and method == "POST":
            return run_scheduler(st)
        if path == "/_test/requests":
            if method == "DELETE":
                st.requests = []
                return {"ok": True}
            rx = re.compile(q.get("path_regex", ""))
            m = q.get("method", "").upper()
            data = [r for r in st.requests if rx.search(r["path"]) and (not m or r["method"] == m)]
            return {"requests": copy.deepcopy(data)}
        if path == "/_test/stats" and method == "GET":
            times = sorted(r["mono"] for r in st.requests)
            best, lo = 0, 0
            for hi, t in enumerate(times):
                while t - times[lo] >= 1.0:
                    lo += 1
                best = max(best, hi - lo + 1)
            return {
                "requests": len(st.requests),
                "rate_limited": st.rate_limited,
                "max_in_1s": best,
                "replayed": sum(1 for r in st.requests if r["replayed"]),
                "events": len(st.events),
                "objects": len(st.objects),
            }
        if path.startswith("/_test/objects/") and method == "GET":
            ident = path.rsplit("/", 1)[1]
            if ident not in st.objects:
                raise ControlError("no object %s" % ident)
            return st.objects[ident]
        if path == "/_test/deliveries" and method == "GET":
            return {"deliveries": copy.deepcopy(st.deliveries)}
        if path == "/_test/webhooks/flush" and method == "POST":
            return {}
        if path == "/_test/webhooks/redeliver" and method == "POST":
            ev = body["event"]
            if st.kind_of.get(ev) != "event":
                raise ControlError("no event %s" % ev)
            if not st.config["webhook_url"]:
                raise ControlError("no webhook_url configured")
            WEBHOOKS.enqueue(st, ev)
            return {"ok": True}
        return None

    def add_fault(self, f):
        st = self.st
        for k in f:
            if k not in FAULT_KEYS:
                raise ControlError("unknown fault key %s" % k)
        re.compile(f.get("path_regex", ""))
        if not (f.get("status") or f.get("drop") or f.get("latency_ms")):
            raise ControlError("a fault needs status, drop or latency_ms")
        if f.get("phase", "before") not in ("before", "after"):
            raise ControlError("phase is before or after")
        if f.get("status") is not None and not 400 <= int(f["status"]) <= 599:
            raise ControlError("status must be 4xx or 5xx")
        st.fault_counter += 1
        fault = dict(f)
        fault["id"] = "fault_%d" % st.fault_counter
        fault["count"] = int(f.get("count", 1))
        if fault["count"] == 0:
            raise ControlError("count 0 would never fire; use a negative count for forever")
        fault["hits"] = 0
        if f.get("probability") is not None:
            p = f["probability"]
            if not isinstance(p, (int, float)) or not 0 < p <= 1:
                raise ControlError("probability is a number in (0, 1]")
            fault["rng"] = random.Random(f.get("seed", 0))
        st.faults.append(fault)
        return fault["id"]


def fingerprint(method, path, params):
    return "%s %s %s" % (method, path, json.dumps(params, sort_keys=True))


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(port=0, port_file=None, verbose=False):
    """Start the fake on 127.0.0.1:port (0 picks a free one). Returns the
    server; its port is server.server_address[1]. Used by main() and tests."""
    port_ref = [0]
    st = State(port_ref)
    handler = type("BoundHandler", (Handler,), {"st": st, "verbose": verbose})
    server = Server(("127.0.0.1", port), handler)
    port_ref[0] = server.server_address[1]
    server.state = st
    if port_file:
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port_ref[0])
        os.replace(tmp, port_file)
    return server


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="In-memory fake of the Stripe API for integration tests (binds 127.0.0.1 only).",
        epilog=CONTROL_API,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    ap.add_argument("--port-file", help="write the chosen port here once listening")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)
    server = serve(args.port, args.port_file, args.verbose)
    sys.stderr.write("fake_stripe: listening on 127.0.0.1:%d\n" % server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
