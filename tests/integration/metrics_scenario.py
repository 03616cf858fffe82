"""A known scenario for the metrics, dashboard and report tests, and a way to
scrape `dunning serve` running over its database.

The scenario (on the DUN_T0 timeline, default policy, writes on):

* ``acct_retry``   payment fails on day 0; a retry with the same card
                   succeeds on day 2 (recovered by retry, 2000 usd);
* ``acct_card``    fails on day 0; paid on day 3 with a new card
                   (recovered by card update, 3000 usd);
* ``acct_paybd``   fails, goes to bad debt on day 30 (days past due), pays
                   the consolidated invoice on day 31.5 (exit: paid;
                   recovered by pay-bad-debt, 4000 usd);
* ``acct_wo``      fails, goes to bad debt on day 30 and stays there
                   (its invoice is uncollectible: written off, 5000 usd);
* ``acct_ok``      paid at the first attempt; its account is then flagged
                   bad debt behind dunning's back (drift: stuck_in_bad_debt
                   and flags_disagree), and a drift scan is recorded on day 33.

Not a test file: the tests import it.
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

from conftest import DUN_BINARY, EX_FAIL

SCENARIO_DAY = 33

EXPECTED_RECOVERY = {
    # outcome: (invoices, minor units) in usd
    "retry": (1, 2000),
    "card_update": (1, 3000),
    "other": (0, 0),
    "pay_bad_debt": (1, 4000),
    "written_off": (1, 5000),
    "open": (0, 0),
}


def _failing(dun, st, account, amount):
    evs, objs = st.failing_account(account, amount=amount)
    dun.provider_knows(objs["customer"], behavior="insufficient_funds")
    dun.provider_knows(objs["subscription"], objs["invoice"], objs["charge"])
    dun.ingest(evs, now=dun.at(0, 60))
    return objs


def _paid_by(dun, st, objs, days, payment_method):
    """A successful charge with payment_method, then invoice.paid, on `days`."""
    inv = dun.provider_object(objs["invoice"]["id"])
    cus = dict(objs["customer"])
    cus["invoice_settings"] = {"default_payment_method": payment_method}
    inv["attempt_count"] = inv.get("attempt_count", 1) + 1
    ch = st.charge(inv, cus, status="succeeded", days=days)
    paid = st.paid(inv, days=days)
    dun.provider_knows(paid, ch)
    dun.ingest([st.event("charge.succeeded", ch, days),
                st.event("invoice.paid", paid, days, 1)], now=dun.at(days, 60))


def build(dun, st):
    """Run the scenario; returns the parsed `scan --json` of day 33."""
    dun.init()
    retry = _failing(dun, st, "acct_retry", 2000)
    card = _failing(dun, st, "acct_card", 3000)
    paybd = _failing(dun, st, "acct_paybd", 4000)
    _failing(dun, st, "acct_wo", 5000)
    # the retry reuses the card that failed; the card update uses a new one
    _paid_by(dun, st, retry, 2, retry["charge"]["payment_method"])
    _paid_by(dun, st, card, 3, "pm_new_card_of_acct_card")
    for day in (1.1, 7.1, 14.1, 30.1):
        dun.work(now=dun.at(day))
    # acct_paybd pays its consolidated invoice
    r = dun.ok("pay-bad-debt", "acct_paybd", "--json", now=dun.at(31))
    consolidated = json.loads(r.out)["id"]
    paid = st.paid(dun.provider_object(consolidated), days=31.5)
    dun.provider_knows(paid)
    dun.ingest([st.event("invoice.paid", paid, days=31.5)], now=dun.at(31.5))
    dun.work(now=dun.at(32))
    assert paybd["invoice"]["id"]
    # a healthy account flagged behind dunning's back
    cus = st.customer("acct_ok")
    sub = st.subscription(cus)
    inv = st.invoice(cus, sub, amount=1000)
    ch = st.charge(inv, cus, status="succeeded")
    ok_paid = st.paid(dict(inv, attempt_count=1, attempted=True))
    dun.provider_knows(cus, behavior="ok")
    dun.provider_knows(sub, ok_paid, ch)
    dun.ingest([st.event("customer.created", cus), st.event("invoice.finalized", inv, 0, 1),
                st.event("charge.succeeded", ch, 0, 2), st.event("invoice.paid", ok_paid, 0, 3)],
               now=dun.at(0, 120))
    dun.work(now=dun.at(SCENARIO_DAY))  # acct_paybd's lifting window has closed
    dun.execute("UPDATE accounts SET bad_debt = 1 WHERE id = 'acct_ok'")
    r = dun.expect(EX_FAIL, "scan", "--json", now=dun.at(SCENARIO_DAY))
    return json.loads(r.out)


# ---- Prometheus text ---------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value}; fails on a malformed line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, "malformed sample line: %r" % line
        labels = frozenset(_LABEL.findall(m.group(3) or ""))
        key = (m.group(1), labels)
        assert key not in out, "sample twice: %r" % line
        out[key] = float(m.group(4))
    return out


def value(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    assert key in samples, "no sample %s%s" % (name, labels)
    return samples[key]


def family(samples, name):
    """{frozenset(labels): value} of every sample of one metric name."""
    return {k[1]: v for k, v in samples.items() if k[0] == name}


# ---- the service over the scenario's database --------------------------------


class ServeOver:
    """`dunning --db DB --now T serve` on 127.0.0.1 with a random port.

    The clock is fixed at the scenario's day so no recheck comes due while
    the test reads; webhooks are off (no secrets): nothing changes the data.
    """

    def __init__(self, dun, tmp_path, now, token="metrics-test-token-0123456789", extra_conf=""):
        self.dir = tmp_path
        self.token = token
        conf = tmp_path / "serve-metrics.conf"
        conf.write_text("[server]\nlisten = 127.0.0.1:0\nworkers = 1\npoll_ms = 50\n"
                        "[admin]\ntoken = %s\n%s" % (token, extra_conf))
        self.port_file = tmp_path / "serve-metrics.port"
        self.log_path = tmp_path / "serve-metrics.log"
        self.log = open(self.log_path, "ab")
        env = dun.env()
        self.proc = subprocess.Popen(
            [str(DUN_BINARY), "--db", str(dun.db), "--now", now, "serve", "--config", str(conf),
             "--port-file", str(self.port_file)],
            stdout=self.log, stderr=self.log, env=env, cwd=str(tmp_path))
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.port_file.exists() and self.port_file.read_text().endswith("\n"):
                self.port = int(self.port_file.read_text())
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("serve did not start:\n" + self.logs())

    def logs(self):
        return self.log_path.read_text(errors="replace")

    def get(self, path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path),
                                    timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()

    def metrics(self):
        status, ctype, text = self.get("/metrics")
        assert status == 200
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        return text

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode
