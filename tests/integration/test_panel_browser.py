"""The support panel in a real browser: Debian's chromium driven by
playwright-core (tests/browser/panel_walk.js), over a real `dunning serve`
with real data.

The walk signs in, runs a drift scan, opens the drifting account, sees why
it drifts, presses recompute (dry run first, then apply) and sees the drift
gone; opens an account whose id, name and email are full of <script>,
quotes and unicode and checks they show as text and nothing runs; turns its
kill switch on with a reason; creates a pay-bad-debt link; sees an observed
account's shadow decision; retries a dead trigger; visits the outboxes,
rollout and actions pages; posts a form from another origin (refused); and
signs out. Every page is kept as a screenshot in test-artifacts/panel/
(or $DUNNING_ARTIFACTS/panel/). Afterwards this file checks the database:
what the browser did is what was recorded, by whom.

Skipped, saying why, without chromium or without `npm install` in tests/node.
"""

import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import DUN_REPO, Dunning, StripeEvents
from panel_server import PANEL_PASSWORD, PANEL_USER, PanelServer

NODE_DIR = DUN_REPO / "tests" / "node"
WALK = DUN_REPO / "tests" / "browser" / "panel_walk.js"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("DUNNING_ARTIFACTS", DUN_REPO / "test-artifacts")) / "panel"

HOSTILE_ID = "acct_<script>alert('id')</script>\"é✓"
HOSTILE_NAME = "<img src=x onerror=alert('name')> \"Zoë\" & 'Ωmega' 🚀"
HOSTILE_EMAIL = "zoe\"><svg onload=alert(1)>@example.com"
KILL_REASON = "disputed </td><script>alert('reason')</script> — «ask Zoë»"


def _ready():
    if not Path(CHROMIUM).exists():
        return "chromium is not installed (scripts/deps.sh --with-node installs it)"
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed: cd tests/node && npm install"
    return None


pytestmark = pytest.mark.skipif(_ready() is not None, reason=str(_ready()))


class EvilPage(http.server.BaseHTTPRequestHandler):
    """A page on another origin whose form posts to the panel."""

    target = ""

    def do_GET(self):
        body = ("<!doctype html><html><body><h1>Win a prize</h1>"
                "<form method=\"post\" action=\"%s\">"
                "<input type=\"hidden\" name=\"csrf\" value=\"%s\">"
                "<button id=\"go\" type=\"submit\">Claim</button></form></body></html>"
                % (self.target, "0" * 64)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def failing(dun, st, account, days=0.0):
    evs, objs = st.failing_account(account, days=days)
    dun.provider_knows(objs["customer"], behavior="insufficient_funds")
    dun.provider_knows(objs["subscription"], objs["invoice"], objs["charge"])
    dun.ingest(evs, now=dun.at(days, 60))
    return objs


def healthy(dun, st, account):
    cus = st.customer(account)
    sub = st.subscription(cus)
    inv = st.invoice(cus, sub)
    ch = st.charge(inv, cus, status="succeeded")
    paid = st.paid(dict(inv, attempt_count=1, attempted=True))
    dun.provider_knows(cus, behavior="ok")
    dun.provider_knows(sub, paid, ch)
    dun.ingest([st.event("customer.created", cus), st.event("customer.subscription.created", sub),
                st.event("invoice.finalized", inv, 0, 1), st.event("charge.succeeded", ch, 0, 2),
                st.event("invoice.paid", paid, 0, 3)], now=dun.at(0, 60))


def test_a_person_clicks_through_the_panel(tmp_path):
    dun = Dunning(tmp_path / "panel.db", tmp_path)
    st = StripeEvents("b")
    dun.init()
    healthy(dun, st, "acct_fine")
    failing(dun, st, "acct_owes")
    failing(dun, st, "acct_watch")
    for i in range(3):
        healthy(dun, st, "acct_ok_%d" % i)
    dun.ok("account", "add", HOSTILE_ID, "--name", HOSTILE_NAME, "--email", HOSTILE_EMAIL)
    dun.ok("rollout", "deny", "acct_watch")  # observed: the engine keeps a shadow
    # The drift a person will find: flagged bad debt although it owes nothing.
    dun.execute("UPDATE accounts SET bad_debt = 1 WHERE id = 'acct_fine'")
    dun.execute("INSERT INTO inbox(account_id, kind, source, state, attempts, last_error,"
                " created_at, updated_at) VALUES ('acct_owes', 'payment_failed', 'webhook',"
                " 'dead', 8, 'platform unreachable', ?, ?)", (dun.T0, dun.T0))

    srv = PanelServer(dun).start()
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EvilPage)
    EvilPage.target = srv.origin + "/panel/accounts/acct_owes/recompute"
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        # The service's workers catch up first (rechecks due since March: bad debt).
        srv.wait_idle()
        assert dun.scalar("SELECT stage FROM dunning WHERE account_id = 'acct_owes'") == "bad_debt"
        assert dun.scalar("SELECT bad_debt FROM accounts WHERE id = 'acct_fine'") == 1
        before_evil = dun.scalar("SELECT COUNT(*) FROM inbox WHERE account_id = 'acct_owes'"
                                 " AND kind = 'support_recompute'")
        if ARTIFACTS.exists():
            shutil.rmtree(ARTIFACTS)
        cfg = tmp_path / "walk.json"
        cfg.write_text(json.dumps({
            "base": srv.origin, "user": PANEL_USER, "password": PANEL_PASSWORD,
            "artifacts": str(ARTIFACTS), "chromium": CHROMIUM, "drift_account": "acct_fine",
            "hostile_id": HOSTILE_ID, "hostile_name": HOSTILE_NAME,
            "hostile_email": HOSTILE_EMAIL, "bad_debt_account": "acct_owes",
            "observe_account": "acct_watch", "kill_reason": KILL_REASON,
            "evil_url": "http://127.0.0.1:%d/" % evil.server_address[1]}))
        r = subprocess.run(["node", str(WALK), str(cfg)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:] + srv.logs()[-3000:]

        # What the browser did is in the database, by whom.
        acts = dun.sql("SELECT user_name, action, account_id, detail FROM panel_actions"
                       " ORDER BY id")
        assert {a[0] for a in acts} == {PANEL_USER}
        kinds = [a[1] for a in acts]
        for k in ("sign_in", "drift_scan", "recompute", "kill_switch_on", "pay_bad_debt_link",
                  "retry_trigger"):
            assert k in kinds, (k, acts)
        assert (PANEL_USER, "kill_switch_on", HOSTILE_ID, KILL_REASON) in acts
        assert dun.scalar("SELECT kill_switch FROM accounts WHERE id = ?", (HOSTILE_ID,)) == 1
        # The drift is gone from the stores, and a scan agrees.
        assert dun.scalar("SELECT bad_debt FROM accounts WHERE id = 'acct_fine'") == 0
        srv.wait_idle()
        scan = json.loads(dun.run("scan", "--json").out)
        assert "acct_fine" not in json.dumps(scan["examples"])
        # The form from another origin wrote nothing.
        assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE account_id = 'acct_owes'"
                          " AND kind = 'support_recompute'") == before_evil
        assert not [a for a in acts if a[1] == "recompute" and a[2] == "acct_owes"]
        # The dead trigger was retried and settled.
        assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE state = 'dead'") == 0
        shots = sorted(p.name for p in ARTIFACTS.glob("*.png"))
        assert len(shots) >= 18, shots
    finally:
        evil.shutdown()
        srv.stop()
