"""The support panel over HTTP: sign-in, sessions, the refusals (no CSRF
token, another origin, no session), escaping, the record of who pressed
what, and `dunning users`. The same pages in a real browser are
test_panel_browser.py.

Every test runs on SQLite and on PostgreSQL (the `dun` fixture), against
the real `dunning serve`.
"""

import os
import re
import stat
import subprocess

import pytest

from conftest import DUN_BINARY, EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_USAGE
from panel_server import (PANEL_PASSWORD, PANEL_USER, PanelClient, PanelServer, account_path,
                          users_add)

HOSTILE_ID = "acct_<script>alert(1)</script>\"'&é✓"
HOSTILE_NAME = "<img src=x onerror=alert(2)> \"Zoë\" & 'Ωmega'"
HOSTILE_EMAIL = "x\"><script>alert(3)</script>@example.com"


def setup_accounts(dun, dun_stripe):
    """acct_owes: a payment failed; acct_fine: paid, then tampered (stuck in bad debt)."""
    dun.init()
    evs, objs = dun_stripe.failing_account("acct_owes")
    dun.provider_knows(objs["customer"], behavior="insufficient_funds")
    dun.provider_knows(objs["subscription"], objs["invoice"], objs["charge"])
    dun.ingest(evs, now=dun.at(0, 60))
    cus = dun_stripe.customer("acct_fine")
    sub = dun_stripe.subscription(cus)
    inv = dun_stripe.invoice(cus, sub)
    ch = dun_stripe.charge(inv, cus, status="succeeded")
    paid = dun_stripe.paid(dict(inv, attempt_count=1, attempted=True))
    dun.provider_knows(cus, behavior="ok")
    dun.provider_knows(sub, paid, ch)
    dun.ingest([dun_stripe.event("customer.created", cus),
                dun_stripe.event("customer.subscription.created", sub),
                dun_stripe.event("invoice.finalized", inv, 0, 1),
                dun_stripe.event("charge.succeeded", ch, 0, 2),
                dun_stripe.event("invoice.paid", paid, 0, 3)], now=dun.at(0, 60))
    dun.execute("UPDATE accounts SET bad_debt = 1 WHERE id = 'acct_fine'")
    dun.ok("account", "add", HOSTILE_ID, "--name", HOSTILE_NAME, "--email", HOSTILE_EMAIL)
    return objs, cus


@pytest.fixture
def panel(dun, dun_stripe):
    objs, fine_customer = setup_accounts(dun, dun_stripe)
    srv = PanelServer(dun).start()
    srv.owes = objs
    srv.fine_customer = fine_customer
    srv.wait_idle()
    yield srv
    srv.stop()


def actions(dun):
    return dun.sql("SELECT user_name, action, account_id, detail, outcome FROM panel_actions"
                   " ORDER BY id")


def test_panel_is_off_without_a_users_file(dun):
    dun.init()
    srv = PanelServer(dun, users=False).start()
    try:
        status, headers, body = srv.request("GET", "/panel/")
        assert status == 503 and "users_file" in body
        status, _, _ = srv.request("POST", "/panel/login", body="name=a&password=b",
                                   headers={"Origin": srv.origin,
                                            "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 503
    finally:
        srv.stop()


def test_sign_in_sets_a_strict_session_cookie(panel, dun):
    c = PanelClient(panel)
    # Not signed in: pages send you to the sign-in form.
    status, headers, _ = c.get("/panel/")
    assert status == 303 and headers["Location"] == "/panel/login"
    status, headers, body = c.get("/panel/login")
    login_cookie = headers["Set-Cookie"]
    assert "HttpOnly" in login_cookie and "SameSite=Strict" in login_cookie
    assert "Secure" not in login_cookie
    assert "script-src" not in headers["Content-Security-Policy"]  # no script at all
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    # Wrong password, unknown name: the same answer.
    status, _, body = c.login(password="wrong password")
    assert status == 401 and "name or the password is wrong" in body
    status, _, body2 = c.login(name="mallory")
    assert status == 401 and "name or the password is wrong" in body2
    assert "dunning_panel" not in c.cookies
    status, headers, _ = c.login()
    assert status == 303 and headers["Location"] == "/panel/"
    assert re.fullmatch(r"[0-9a-f]{64}", c.cookies["dunning_panel"])
    status, _, body = c.get("/panel/")
    assert status == 200 and 'id="user">alice<' in body
    assert actions(dun)[-1][:2] == ("alice", "sign_in")
    # Signing out ends the session on the server, not only in the browser.
    old = dict(c.cookies)
    status, headers, _ = c.post("/panel/logout", {"csrf": c.csrf()})
    assert status == 303 and headers["Location"] == "/panel/login"
    c.cookies = old
    status, headers, _ = c.get("/panel/")
    assert status == 303 and headers["Location"] == "/panel/login"


def test_secure_cookie_behind_tls(panel):
    _, headers, _ = panel.request("GET", "/panel/login", headers={"X-Forwarded-Proto": "https"})
    assert dict(headers)["Set-Cookie"].endswith("; Secure")
    _, headers, _ = panel.request("GET", "/panel/login")
    assert "Secure" not in dict(headers)["Set-Cookie"]


def test_sign_in_form_needs_its_token_and_origin(panel):
    c = PanelClient(panel)
    status, _, body = c.get("/panel/login")
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)
    fields = {"csrf": token, "name": PANEL_USER, "password": PANEL_PASSWORD}
    # From another origin: refused before the password is even looked at.
    status, _, _ = c.post("/panel/login", fields, origin="http://evil.example")
    assert status == 403 and "dunning_panel" not in c.cookies
    # Without the token bound to the form's cookie.
    status, _, _ = c.post("/panel/login", dict(fields, csrf="0" * 64))
    assert status == 403 and "dunning_panel" not in c.cookies
    status, _, body = c.get("/panel/login")
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)
    status, _, _ = c.post("/panel/login", dict(fields, csrf=token))
    assert status == 303 and "dunning_panel" in c.cookies


def test_writing_forms_refuse_missing_csrf_and_other_origins(panel, dun):
    c = PanelClient(panel)
    c.login()
    token = c.csrf()
    path = account_path("acct_fine", "/recompute")
    before = (actions(dun), dun.scalar("SELECT COUNT(*) FROM inbox"))
    refused = [
        ({}, "self", None),                                   # no token
        ({"csrf": "f" * 64}, "self", None),                   # a wrong token
        ({"csrf": token}, "http://evil.example", None),       # another origin
        ({"csrf": token}, "http://127.0.0.1:1", None),        # another port: another origin
        ({"csrf": token}, "null", None),                      # an opaque origin
        ({"csrf": token}, None, None),                        # no Origin, no Referer
        ({"csrf": token}, None, {"Referer": "http://evil.example/x"}),
        ({"csrf": token}, "self", {"Sec-Fetch-Site": "cross-site"}),
        ({"csrf": token}, "self", {"Sec-Fetch-Site": "same-site"}),
    ]
    for fields, origin, extra in refused:
        status, _, body = c.post(path, fields, origin=origin, extra_headers=extra)
        assert status == 403, (fields, origin, extra, status, body)
        assert "Refused" in body
    # Nothing was written by any of them.
    assert (actions(dun), dun.scalar("SELECT COUNT(*) FROM inbox")) == before
    # A form posted as JSON is not a form.
    status, _, _ = panel.request("POST", path, body='{"csrf":"%s"}' % token,
                                 headers={"Content-Type": "application/json",
                                          "Origin": panel.origin,
                                          "Cookie": "dunning_panel=" + c.cookies["dunning_panel"]})
    assert status == 403
    # Not signed in at all.
    status, _, _ = PanelClient(panel).post(path, {"csrf": token})
    assert status == 403
    # Referer of the panel itself (a browser that sends no Origin) is accepted.
    status, headers, _ = c.post(path, {"csrf": token}, origin=None,
                                extra_headers={"Referer": panel.origin + "/panel/"})
    assert status == 303 and "?trigger=" in headers["Location"]
    assert actions(dun)[-1][:3] == ("alice", "recompute", "acct_fine")


def test_every_value_is_escaped(panel):
    c = PanelClient(panel)
    c.login()
    # Search by a prefix of the hostile id lists it, escaped.
    status, _, body = c.get("/panel/search?q=" + "acct_%3Cscr")
    assert status == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;é✓" in body
    assert "&lt;img src=x onerror=alert(2)&gt; &quot;Zoë&quot; &amp; &#39;Ωmega&#39;" in body
    assert "<script" not in body.lower() and "<img" not in body.lower()
    # The exact id goes straight to the account page.
    from urllib.parse import quote
    status, headers, _ = c.get("/panel/search?q=" + quote(HOSTILE_ID, safe=""))
    assert status == 303 and headers["Location"] == account_path(HOSTILE_ID)
    status, _, body = c.get(account_path(HOSTILE_ID))
    assert status == 200
    assert "<script" not in body.lower() and "<img" not in body.lower()
    assert 'id="account-id">acct_&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;é✓<' in body
    assert "x&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;@example.com" in body
    # Links carry the id percent-encoded.
    assert 'href="/panel/accounts/acct_%3Cscript%3Ealert%281%29%3C%2Fscript%3E%22%27%26%C3%A9%E2%9C%93/recompute"' in body
    # Search by email and by customer id.
    status, headers, _ = c.get("/panel/search?q=" + quote("ACCT_FINE@example.com"))
    assert status == 303 and headers["Location"] == account_path("acct_fine")
    status, headers, _ = c.get("/panel/search?q=" + panel.fine_customer["id"])
    assert status == 303 and headers["Location"] == account_path("acct_fine")
    status, _, body = c.get("/panel/search?q=nobody-like-this")
    assert status == 200 and "No account matches" in body
    status, _, body = c.get(account_path("acct_nobody"))
    assert status == 404
    # A malformed escape in the path or a search too long: refused, not guessed.
    assert c.get("/panel/accounts/acct%zz")[0] == 400
    assert c.get("/panel/search?q=" + "x" * 201)[0] == 403


def test_kill_switch_needs_a_reason_and_records_who(panel, dun):
    c = PanelClient(panel)
    c.login()
    token = c.csrf(account_path("acct_owes"))
    path = account_path("acct_owes", "/kill-switch")
    status, _, body = c.post(path, {"csrf": token, "on": "1", "reason": "   "})
    assert status == 403 and "reason" in body
    assert dun.scalar("SELECT kill_switch FROM accounts WHERE id = 'acct_owes'") == 0
    status, _, _ = c.post(path, {"csrf": token, "on": "1",
                                 "reason": "customer disputes <everything> \"now\""})
    assert status == 303
    assert dun.scalar("SELECT kill_switch FROM accounts WHERE id = 'acct_owes'") == 1
    assert actions(dun)[-1] == ("alice", "kill_switch_on", "acct_owes",
                                "customer disputes <everything> \"now\"", "ok")
    status, _, body = c.get(account_path("acct_owes"))
    assert "kill switch on" in body
    assert "customer disputes &lt;everything&gt; &quot;now&quot;" in body
    status, _, _ = c.post(path, {"csrf": token, "on": "0", "reason": "resolved"})
    assert status == 303
    assert dun.scalar("SELECT kill_switch FROM accounts WHERE id = 'acct_owes'") == 0
    status, _, body = c.post(path, {"csrf": token, "on": "2", "reason": "x"})
    assert status == 403
    status, _, body = c.post(account_path("acct_nobody", "/kill-switch"),
                             {"csrf": token, "on": "1", "reason": "x"})
    assert status == 404


def test_recompute_from_the_panel_repairs_drift(panel, dun):
    c = PanelClient(panel)
    c.login()
    status, _, body = c.get(account_path("acct_fine"))
    assert "stuck_in_bad_debt" in body
    status, _, body = c.get(account_path("acct_fine", "/recompute"))
    assert status == 200 and "set_account_bad_debt" in body
    assert dun.scalar("SELECT bad_debt FROM accounts WHERE id = 'acct_fine'") == 1  # a dry run
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)
    status, headers, _ = c.post(account_path("acct_fine", "/recompute"), {"csrf": token})
    assert status == 303
    panel.wait_idle()
    status, _, body = c.get(headers["Location"])
    assert 'id="recompute-status" class="banner done"' in body
    assert 'id="drift-none"' in body
    assert dun.scalar("SELECT bad_debt FROM accounts WHERE id = 'acct_fine'") == 0
    trigger = int(headers["Location"].rsplit("=", 1)[1])
    assert dun.scalar("SELECT kind FROM inbox WHERE id = ?", (trigger,)) == "support_recompute"
    assert dun.scalar("SELECT source FROM inbox WHERE id = ?", (trigger,)) == "panel"
    assert ("alice", "recompute", "acct_fine", "trigger %d" % trigger, "queued") in actions(dun)


def test_pages_answer(panel):
    c = PanelClient(panel)
    c.login()
    for page, marker in [("/panel/triggers", "dead-triggers"), ("/panel/outboxes", "outbox-emails"),
                         ("/panel/rollout", "rollout-mode"), ("/panel/drift", "scan-when"),
                         ("/panel/actions", "Who pressed what")]:
        status, headers, body = c.get(page)
        assert status == 200 and marker in body, page
        assert headers["Cache-Control"] == "no-store"
    status, headers, body = c.get("/panel/style.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    assert c.get("/panel/nothing-here")[0] in (404,)


def test_drift_page_shows_the_last_recorded_scan(panel, dun):
    """A scan run elsewhere (the CLI, a cron job) is what the drift page shows
    until a newer one; a scan run from the panel is recorded like any other."""
    c = PanelClient(panel)
    c.login()
    status, _, body = c.get("/panel/drift")
    assert status == 200 and "No scan has been recorded yet" in body
    r = dun.run("scan")  # acct_fine is stuck in bad debt: drifting
    assert r.rc == 1, r
    status, _, body = c.get("/panel/drift")
    assert "a recorded scan" in body and 'id="scan-drifting">1 drifting' in body, body
    assert re.search(r"<th>stuck_in_bad_debt</th><td>1</td>", body), body
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)
    scans = dun.scalar("SELECT COUNT(*) FROM drift_scans")
    status, _, body = c.post("/panel/drift/scan", {"csrf": token})
    assert status == 200 and 'id="scan-drifting">1 drifting' in body
    assert dun.scalar("SELECT COUNT(*) FROM drift_scans") == scans + 1


def test_users_command(tmp_path):
    f = tmp_path / "users"
    users_add(f, "bob", "a long password")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    text = f.read_text()
    assert re.search(r"^bob:\$y\$[./0-9A-Za-z$]+$", text, re.M)
    assert "a long password" not in text
    users_add(f, "bob", "another password", expect=EX_CANTCREAT)
    users_add(f, "carol", "short", expect=EX_DATAERR)
    users_add(f, "c:rol", "a long password", expect=EX_USAGE)
    users_add(f, "<script>", "a long password", expect=EX_USAGE)
    r = subprocess.run([str(DUN_BINARY), "users", "add", "dave", "--file", str(f)],
                       input="", capture_output=True, text=True)
    assert r.returncode == EX_DATAERR and "no password" in r.stderr
    users_add(f, "carol", "password of carol")
    r = subprocess.run([str(DUN_BINARY), "users", "list", "--file", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["bob", "carol"]
    r = subprocess.run([str(DUN_BINARY), "users", "passwd", "bob", "--file", str(f)],
                       input="a new password\n", capture_output=True, text=True)
    assert r.returncode == 0
    assert f.read_text().count("bob:") == 1 and f.read_text() != text
    r = subprocess.run([str(DUN_BINARY), "users", "remove", "bob", "--file", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "bob:" not in f.read_text()
    r = subprocess.run([str(DUN_BINARY), "users", "remove", "bob", "--file", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == EX_NOINPUT
    r = subprocess.run([str(DUN_BINARY), "users", "add", "erin"], capture_output=True,
                       text=True, input="a long password\n")
    assert r.returncode == EX_USAGE and "--file" in r.stderr
    # A hand-broken file is reported with its line, and not rewritten.
    f.write_text("carol:$y$abc\nthis line is wrong\n")
    r = subprocess.run([str(DUN_BINARY), "users", "add", "frank", "--file", str(f)],
                       input="a long password\n", capture_output=True, text=True)
    assert r.returncode == EX_DATAERR and "line 2" in r.stderr
    assert f.read_text() == "carol:$y$abc\nthis line is wrong\n"


def test_a_person_removed_from_the_users_file_cannot_sign_in(panel):
    c = PanelClient(panel)
    assert c.login()[0] == 303
    subprocess.run([str(DUN_BINARY), "users", "remove", PANEL_USER, "--file", str(panel.users)],
                   check=True, capture_output=True)
    assert PanelClient(panel).login()[0] == 401


def test_root_leads_to_the_panel(panel):
    status, headers, _ = panel.request("GET", "/")
    assert status == 303 and dict(headers)["Location"] == "/panel/"


def test_wrong_passwords_pause_the_name(panel, dun):
    c = PanelClient(panel)
    for _ in range(5):
        assert c.login(password="not it at all")[0] == 401
    # Now even the right password is refused for that name, for a while...
    status, _, body = c.login()
    assert status == 429 and "paused" in body
    assert "dunning_panel" not in c.cookies
    # ...and other names are not affected.
    users_add(panel.users, "bob", "password of bob")
    assert PanelClient(panel).login(name="bob", password="password of bob")[0] == 303
    assert "panel.sign_in_locked" in panel.logs()
