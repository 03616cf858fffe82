"""The dashboards in dashboards/ against a real Prometheus.

A real `prometheus` (Debian's package) scrapes `dunning serve` running over
the metrics scenario's database (metrics_scenario.py: recoveries by retry,
card update and pay-bad-debt, a write-off, an account in bad debt, drift).
Then every query of every panel of both dashboards is evaluated through
Prometheus' HTTP API with the template variables filled in as Grafana would:
a query that Prometheus refuses, or that returns nothing (no series, or a
quantile of no observations: NaN), fails the test. A
few answers are compared with counts made directly in the database, so a
query that reads the wrong family fails too.

What every query answered is written to
test-artifacts/prometheus/queries-<backend>.json (panel, expression, number
of series, a sample value) so a reader can see what the dashboards show
over the scenario.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from fake_stripe import sign_payload
from metrics_scenario import SCENARIO_DAY, ServeOver, build

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
ARTIFACTS = ROOT / "test-artifacts" / "prometheus"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

# The account the drilldown is evaluated for: in bad debt at the scenario's end.
DRILLDOWN_ACCOUNT = "acct_wo"

# What Grafana would put in for its built-in variables with a 1 s scrape.
BUILTINS = {"__rate_interval": "10s", "__interval": "5s", "__range": "2m"}


def dashboards():
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels_of(board):
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def substitute(expr, variables):
    """expr with $name, ${name} and ${name:format} replaced from variables."""
    def one(m):
        name = m.group(1) or m.group(2)
        assert name in variables, "unknown template variable $%s in %r" % (name, expr)
        return variables[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A real Prometheus on 127.0.0.1 scraping one target every second."""

    def __init__(self, tmp_path, target_port):
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        conf = self.dir / "prometheus.yml"
        conf.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: dunning\n    static_configs:\n"
            "      - targets: ['127.0.0.1:%d']\n" % target_port)
        self.log_path = self.dir / "prometheus.log"
        self.log = open(self.log_path, "ab")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [PROMETHEUS, "--config.file=%s" % conf, "--storage.tsdb.path=%s" % (self.dir / "data"),
             "--web.listen-address=127.0.0.1:%d" % self.port,
             "--web.console.templates=%s" % self.dir, "--web.console.libraries=%s" % self.dir],
            stdout=self.log, stderr=self.log, cwd=str(self.dir))

    def logs(self):
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s" % (self.port, path)
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422: the body says why
            return json.loads(e.read())

    def wait_up(self, timeout=60):
        """Wait for a successful scrape of the target."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            assert self.proc.poll() is None, "prometheus exited:\n" + self.logs()
            try:
                last = self.api("targets")
                active = last["data"]["activeTargets"]
                if active and all(t["health"] == "up" for t in active):
                    return active
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise AssertionError("no successful scrape: %r\n%s" % (last, self.logs()))

    def query(self, expr):
        return self.api("query", query=expr)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


WEBHOOK_SECRET = "whsec_dashboards_test_0123456789"
DELIVERIES = 8


def deliver(srv, body, secret, t):
    """POST one webhook, signed with secret at t (None: unsigned); the status."""
    headers = {"Content-Type": "application/json"}
    if secret:
        headers["Stripe-Signature"] = "t=%d,v1=%s" % (t, sign_payload(secret, t, body))
    req = urllib.request.Request("http://127.0.0.1:%d/webhooks/stripe" % srv.port, data=body,
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def scraped(dun, dun_stripe, tmp_path):
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("the prometheus binary is not installed (scripts/deps.sh installs it)")
    build(dun, dun_stripe)
    now = dun.T0 + SCENARIO_DAY * dun.DAY + 3600
    srv = ServeOver(dun, tmp_path, dun.at(SCENARIO_DAY, 3600),
                    extra_conf="[stripe]\nwebhook_secrets = %s\n" % WEBHOOK_SECRET)
    prom = None
    try:
        prom = Prometheus(tmp_path, srv.port)
        prom.wait_up()
        # Webhook deliveries over a few scrapes, so the rates, the latency and
        # the group-commit quantiles have something to show: events of a type
        # dunning stores and ignores (they change no account), and one with a
        # wrong signature (refused).
        for _ in range(DELIVERIES):
            ev = dun_stripe.event("product.updated", {"id": "prod_pro", "object": "product"},
                                  SCENARIO_DAY)
            assert deliver(srv, json.dumps(ev).encode(), WEBHOOK_SECRET, now) == 200
            time.sleep(0.5)
        assert deliver(srv, b"{}", "whsec_not_the_secret_0123456789", now) == 400
        # wait until the last delivery has been scraped, then two scrapes more
        deadline = time.time() + 30
        seen = 0
        while time.time() < deadline and seen < DELIVERIES + 1:
            time.sleep(0.5)
            r = prom.query("max(dunning_webhook_duration_seconds_count)")["data"]["result"]
            seen = int(r[0]["value"][1]) if r else 0
        assert seen == DELIVERIES + 1, prom.logs()
        time.sleep(2.5)
        yield dun, srv, prom
    finally:
        if prom:
            prom.stop()
        assert srv.stop() == 0, srv.logs()[-3000:]


def test_the_dashboards_are_grafana_models_with_a_datasource_variable():
    boards = dashboards()
    assert set(boards) == {"dunning-aggregate", "dunning-account"}
    for name, board in boards.items():
        assert board["uid"] == name
        assert 36 <= board["schemaVersion"] <= 41, name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        ds = variables["datasource"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus", name
        ids = [p["id"] for p in panels_of(board)]
        assert len(ids) == len(set(ids)), name
        n_targets = 0
        for p in panels_of(board):
            assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
            if p["type"] in ("row", "text"):
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert t["expr"].strip(), p["title"]
                n_targets += 1
        for v in variables.values():
            if v["type"] == "query":
                assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert n_targets >= 8, name
    account = {v["name"]: v for v in boards["dunning-account"]["templating"]["list"]}
    assert account["account_id"]["definition"] == \
        "label_values(dunning_account_stage, account_id)"
    # the drilldown links to the support panel's account page (src/server/panel.c)
    links = [link["url"] for p in panels_of(boards["dunning-account"])
             for link in p.get("links", [])]
    link = "${panel_url}/panel/accounts/${account_id:percentencode}"
    assert links and all(u == link for u in links), links
    panel_c = (ROOT / "src" / "server" / "panel.c").read_text()
    assert '"/panel/accounts/"' in panel_c


def _label_values(prom, definition):
    """Grafana's label_values(metric, label) through Prometheus' label API."""
    m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", definition)
    assert m, definition
    r = prom.api("label/%s/values" % m.group(2), **{"match[]": m.group(1)})
    assert r["status"] == "success", r
    return r["data"]


def _sample(result_type, result):
    """(value, labels) of one series: the first whose value is not 0, if any."""
    if result_type == "scalar":
        return result[1], {}
    if result_type == "matrix":
        series = [(r["values"][-1][1], r["metric"]) for r in result]
    else:
        series = [(r["value"][1], r["metric"]) for r in result]
    return next((s for s in series if float(s[0]) != 0), series[0])


def test_every_panel_query_answers_over_the_scenario(scraped, dun_backend):
    dun, srv, prom = scraped
    boards = dashboards()
    record = []
    failures = []
    for name, board in boards.items():
        variables = dict(BUILTINS)
        for v in board["templating"]["list"]:
            if v["type"] == "datasource":
                variables[v["name"]] = "prometheus"  # only in the datasource fields
            elif v["type"] == "query":
                values = _label_values(prom, v["definition"])
                assert values, "variable %s of %s lists nothing" % (v["name"], name)
                record.append({"dashboard": name, "variable": v["name"],
                               "query": v["definition"], "values": values})
                if v["name"] == "account_id":
                    assert DRILLDOWN_ACCOUNT in values, values
                    variables[v["name"]] = DRILLDOWN_ACCOUNT
                else:
                    variables[v["name"]] = v.get("allValue") or values[0]
            elif v["type"] == "textbox":
                variables[v["name"]] = v["query"]
        for p in panels_of(board):
            for t in p.get("targets", []):
                expr = substitute(t["expr"], variables)
                r = prom.query(expr)
                entry = {"dashboard": name, "panel": p["title"], "refId": t["refId"],
                         "expr": expr}
                if r.get("status") != "success":
                    failures.append("%s / %s: %s: %s" % (name, p["title"], expr, r))
                    entry["error"] = r.get("error")
                else:
                    data = r["data"]
                    result = data["result"]
                    n = len(result) if data["resultType"] in ("vector", "matrix") else 1
                    entry["series"] = n
                    if not n:
                        failures.append("%s / %s: empty: %s" % (name, p["title"], expr))
                    else:
                        entry["sample"], entry["sample_labels"] = \
                            _sample(data["resultType"], result)
                        # a quantile of nothing: the panel would show no data
                        if entry["sample"] == "NaN":
                            failures.append("%s / %s: NaN: %s" % (name, p["title"], expr))
                record.append(entry)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / ("queries-%s.json" % dun_backend)).write_text(json.dumps(record, indent=1) + "\n")
    assert not failures, "\n".join(failures)
    assert sum(1 for e in record if "expr" in e) >= 70


def _vector(prom, expr):
    r = prom.query(expr)
    assert r["status"] == "success", r
    return {frozenset(s["metric"].items()): float(s["value"][1]) for s in r["data"]["result"]}


def test_dashboard_answers_equal_the_database(scraped):
    dun, srv, prom = scraped
    panels = {p["title"]: p for b in dashboards().values() for p in panels_of(b)}

    def answer(title, ref="A", **variables):
        expr = [t["expr"] for t in panels[title]["targets"] if t["refId"] == ref][0]
        return _vector(prom, substitute(expr, dict(BUILTINS, instance=".*", **variables)))

    # Drift per class: the last recorded scan's rows.
    drift = answer("Drifting accounts per class (last scan)")
    rows = dun.sql("SELECT c.class, c.accounts FROM drift_scan_classes c WHERE c.scan_id ="
                   " (SELECT MAX(id) FROM drift_scans)")
    assert rows and {dict(k)["class"]: v for k, v in drift.items()} == \
        {cls: float(n) for cls, n in rows}
    # Bad-debt entries and exits, all time.
    assert list(answer("Entered bad debt (all time)").values()) == \
        [float(dun.scalar("SELECT COUNT(*) FROM bad_debt_episodes"))] == [2.0]
    assert list(answer("Left bad debt (all time)").values()) == \
        [float(dun.scalar("SELECT COUNT(*) FROM bad_debt_episodes WHERE exited_at > 0"))]
    # Accounts per stage.
    stages = {dict(k)["stage"]: v for k, v in answer("Accounts per stage now").items()}
    for stage, n in dun.sql("SELECT stage, COUNT(*) FROM dunning GROUP BY stage"):
        assert stages[stage] == n, stage
    # The funnel: 3 of 4 failed invoices recovered.
    assert list(answer("Recovered share").values()) == [0.75]
    # Time in bad debt: one ended episode, its quantile inside its bucket.
    stayed = dun.scalar("SELECT exited_at - entered_at FROM bad_debt_episodes"
                        " WHERE exited_at > 0")
    p50 = list(answer("Time in bad debt of ended episodes (quantiles)").values())[0]
    assert (86400 if stayed > 86400 else 0) < p50 <= (259200 if stayed > 86400 else 86400)
    # The drilldown: acct_wo's stage, time in it, money owed.
    acct = {"account_id": DRILLDOWN_ACCOUNT}
    stage, since = dun.sql("SELECT stage, since FROM dunning WHERE account_id = ?",
                           (DRILLDOWN_ACCOUNT,))[0]
    assert answer("Stage", **acct) == {frozenset({("account_id", DRILLDOWN_ACCOUNT),
                                                  ("stage", stage), ("job", "dunning")}): 1.0}
    assert list(answer("Time in this stage", **acct).values()) == \
        [float(dun.T0 + SCENARIO_DAY * dun.DAY + 3600 - since)]
    owed = dun.scalar("SELECT SUM(i.amount_remaining) FROM p_invoices i JOIN customers c"
                      " ON c.id = i.customer_id WHERE c.account_id = ?"
                      " AND i.status IN ('open', 'uncollectible')", (DRILLDOWN_ACCOUNT,))
    assert list(answer("Money owed (minor units)", **acct).values()) == [float(owed)] == [5000.0]
    # Webhooks: the stored-and-ignored deliveries and the refused one, answered in under 5 s.
    outcomes = answer("Webhook deliveries by outcome")
    assert {dict(k)["outcome"] for k, v in outcomes.items() if v > 0} == \
        {"ignored_type", "rejected"}, outcomes
    assert {dict(k)["reason"] for k, v in answer("Refused deliveries by reason").items()
            if v > 0} == {"signature"}
    p99 = list(answer("Webhook latency (arrival to answer)", ref="C").values())[0]
    assert 0 < p99 <= 5
