"""SMTP delivery against a real SMTP server.

Drives tests/email/smtp-send-tool (the same template.c and smtp.c the
applier uses) against aiosmtpd servers bound to 127.0.0.1 and checks what
the server received: envelope, headers (a stable Message-ID, Subject,
From, To, Date), body, dot-stuffing, AUTH, STARTTLS, and how each kind of
failure is classified (retryable or terminal) and explained.

The binary is found in $DUNNING_BUILD_DIR (default: build, relative to the
repository root).
"""

import email
import email.policy
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
aiosmtpd_smtp = pytest.importorskip("aiosmtpd.smtp")

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DUNNING_BUILD_DIR", "build"))
if not BUILD.is_absolute():
    BUILD = REPO / BUILD
TOOL = BUILD / "tests" / "email" / "smtp-send-tool"
TEMPLATES = REPO / "templates"

# The plain-text AUTH servers are loopback-only test fixtures.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

USER = "billing"
PASSWORD = "correct horse battery staple"
NOW = "2026-11-20T10:00:00Z"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """Keeps every accepted message; refuses two magic recipients."""

    def __init__(self):
        self.messages = []
        self.logins = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject@"):
            return "550 5.1.1 <%s>: Recipient address rejected: no such user" % address
        if address.startswith("busy@"):
            return "451 4.3.0 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "content": envelope.original_content or envelope.content,
            }
        )
        return "250 2.0.0 Message accepted for delivery"

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, aiosmtpd_smtp.LoginPassword)
            and auth_data.login == USER.encode()
            and auth_data.password == PASSWORD.encode()
        )
        if ok:
            self.logins.append((mechanism, auth_data.login.decode()))
        return aiosmtpd_smtp.AuthResult(success=ok, handled=False)


def start_server(**kwargs):
    handler = Recorder()
    if kwargs.pop("with_auth", False):
        kwargs.update(
            authenticator=handler.authenticator,
            auth_required=True,
            auth_require_tls=False,
        )
    port = free_port()
    controller = aiosmtpd_controller.Controller(
        handler, hostname="127.0.0.1", port=port, **kwargs
    )
    controller.start()
    return controller, handler, port


@pytest.fixture
def server():
    controller, handler, port = start_server()
    yield handler, port
    controller.stop()


@pytest.fixture
def auth_server():
    controller, handler, port = start_server(with_auth=True)
    yield handler, port
    controller.stop()


@pytest.fixture(scope="session")
def tool():
    if not TOOL.exists():
        pytest.fail(
            "%s not found: build first (ninja -C %s) or set DUNNING_BUILD_DIR" % (TOOL, BUILD)
        )
    return str(TOOL)


def run(tool, port, *extra, password=None, tls="none", scheme="smtp", timeout=20):
    args = [
        tool,
        "--url", "%s://127.0.0.1:%d" % (scheme, port),
        "--tls", tls,
        "--from", "billing@example.com",
        "--timeout-ms", "5000",
        "--now", NOW,
    ]
    args += list(extra)
    env = dict(os.environ)
    env.pop("DUNNING_SMTP_PASSWORD", None)
    if password is not None:
        env["DUNNING_SMTP_PASSWORD"] = password
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def send_args(kind="bad_debt", to="ada@example.org", key="acct_9/email/bad_debt/ep1",
              template_dir=TEMPLATES, extra=()):
    return [
        "--to", to,
        "--template-dir", str(template_dir),
        "--kind", kind,
        "--account", "acct_9",
        "--customer-name", "Ada Lovelace",
        "--amount-minor", "4200",
        "--currency", "eur",
        "--invoice", "in_A1:1700:2026-09-01",
        "--invoice", "in_A2:2500:2026-10-01",
        "--pay-url", "https://pay.example.com/i/in_C9",
        "--support-email", "support@example.com",
        "--dedup-key", key,
        *extra,
    ]


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.default)


def body_of(msg):
    """The decoded body with the wire's CRLF line ends read as "\\n"."""
    return msg.get_content().replace("\r\n", "\n")


def test_send_bad_debt_notice(tool, server):
    handler, port = server
    r = run(tool, port, *send_args())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "sent message_id=dunning.acct_9/email/bad_debt/ep1@example.com"

    assert len(handler.messages) == 1
    m = handler.messages[0]
    assert m["mail_from"] == "billing@example.com"
    assert m["rcpt_tos"] == ["ada@example.org"]
    raw = m["content"]
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")

    msg = parse(raw)
    assert msg["Message-ID"] == "<dunning.acct_9/email/bad_debt/ep1@example.com>"
    assert msg["Subject"] == "Final notice: unpaid balance of 42.00 EUR on account acct_9"
    assert msg["From"] == "billing@example.com"
    assert msg["To"] == "ada@example.org"
    assert msg["Date"] == "Fri, 20 Nov 2026 10:00:00 +0000"
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"] == "8bit"
    assert msg["Auto-Submitted"] == "auto-generated"

    body = body_of(msg)
    assert body.startswith("Hello Ada Lovelace,\n")
    assert "42.00 EUR for account acct_9 remains unpaid" in body
    assert "We will make no further attempts to charge your payment method." in body
    assert "- in_A1: 17.00 EUR, issued 2026-09-01\n- in_A2: 25.00 EUR, issued 2026-10-01" in body
    assert "Pay the outstanding balance securely here:\nhttps://pay.example.com/i/in_C9\n" in body
    assert "support@example.com" in body
    assert "{{" not in body


def test_message_id_is_stable_per_dedup_key(tool, server):
    handler, port = server
    for key in ["acct_9/email/bad_debt/ep1", "acct_9/email/bad_debt/ep1", "acct_9/email/bad_debt/ep2"]:
        r = run(tool, port, *send_args(key=key))
        assert r.returncode == 0, r.stderr
    ids = [parse(m["content"])["Message-ID"] for m in handler.messages]
    assert ids[0] == ids[1] == "<dunning.acct_9/email/bad_debt/ep1@example.com>"
    assert ids[2] == "<dunning.acct_9/email/bad_debt/ep2@example.com>"


def test_every_kind_is_delivered(tool, server):
    handler, port = server
    kinds = ["payment_failed", "card_update_required", "restricted", "suspended",
             "bad_debt", "resolved"]
    for kind in kinds:
        r = run(tool, port, *send_args(kind=kind, key="acct_9/email/%s/x" % kind))
        assert r.returncode == 0, (kind, r.stderr)
    assert len(handler.messages) == len(kinds)
    for kind, m in zip(kinds, handler.messages):
        msg = parse(m["content"])
        assert msg["Subject"], kind
        assert "{{" not in body_of(msg), kind


def test_last_notice_without_link(tool, server):
    handler, port = server
    args = send_args(kind="payment_failed", key="acct_9/email/payment_failed/in_A2")
    i = args.index("--pay-url")
    del args[i:i + 2]
    r = run(tool, port, *args, "--retries-left", "0")
    assert r.returncode == 0, r.stderr
    body = body_of(parse(handler.messages[0]["content"]))
    assert "This was our final automatic attempt" in body
    assert "attempts remaining" not in body
    assert "http" not in body
    assert "To pay, sign in to your account and open the Billing page." in body


def test_dot_lines_survive(tool, server, tmp_path):
    """curl dot-stuffs: a line "." must not end the message early."""
    handler, port = server
    tdir = tmp_path / "templates"
    shutil.copytree(TEMPLATES, tdir)
    (tdir / "resolved.txt").write_text(
        "Subject: Dots\n\nfirst\n.\n.hidden line\n..two\nlast {{account_id}}\n"
    )
    r = run(tool, port, *send_args(kind="resolved", template_dir=tdir))
    assert r.returncode == 0, r.stderr
    raw = handler.messages[0]["content"]
    assert b"\r\nfirst\r\n.\r\n.hidden line\r\n..two\r\nlast acct_9\r\n" in raw
    body = body_of(parse(raw))
    assert body == "first\n.\n.hidden line\n..two\nlast acct_9\n"


def test_non_ascii_subject_and_body(tool, server, tmp_path):
    handler, port = server
    tdir = tmp_path / "templates"
    shutil.copytree(TEMPLATES, tdir)
    (tdir / "resolved.txt").write_text(
        "Subject: Zahlung erhalten, {{customer_name}} \u2014 danke\n\nGr\u00fc\u00dfe {{customer_name}}\n",
        encoding="utf-8",
    )
    r = run(tool, port, *send_args(kind="resolved", template_dir=tdir)[:-2],
            "--dedup-key", "k", "--customer-name", "Jos\u00e9")
    assert r.returncode == 0, r.stderr
    msg = parse(handler.messages[0]["content"])
    assert str(msg["Subject"]) == "Zahlung erhalten, Jos\u00e9 \u2014 danke"
    assert body_of(msg) == "Gr\u00fc\u00dfe Jos\u00e9\n"


def test_header_injection_is_neutralized(tool, server):
    handler, port = server
    r = run(tool, port, *send_args(kind="resolved"), "--customer-name",
            "Eve\r\nBcc: victim@example.net")
    assert r.returncode == 0, r.stderr
    m = handler.messages[0]
    assert m["rcpt_tos"] == ["ada@example.org"]
    msg = parse(m["content"])
    assert msg["Bcc"] is None
    assert "Hello Eve  Bcc: victim@example.net," in body_of(msg)


def test_auth_success(tool, auth_server):
    handler, port = auth_server
    r = run(tool, port, *send_args(), "--username", USER, password=PASSWORD)
    assert r.returncode == 0, r.stderr
    assert len(handler.messages) == 1
    assert handler.logins and handler.logins[0][1] == USER


def test_auth_wrong_password(tool, auth_server):
    handler, port = auth_server
    r = run(tool, port, *send_args(), "--username", USER, password="wrong password")
    assert r.returncode == 1
    assert "DUN_E_CONFIG (terminal)" in r.stderr
    assert "535" in r.stderr
    assert "AUTH" in r.stderr
    assert "wrong password" not in r.stderr
    assert handler.messages == []


def test_auth_required_but_not_configured(tool, auth_server):
    handler, port = auth_server
    r = run(tool, port, *send_args())
    assert r.returncode == 1
    assert "DUN_E_CONFIG (terminal)" in r.stderr
    assert "530" in r.stderr
    assert handler.messages == []


def test_check(tool, auth_server):
    handler, port = auth_server
    r = run(tool, port, "--check", "--username", USER, password=PASSWORD)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    assert handler.messages == []
    assert handler.logins

    r = run(tool, port, "--check", "--username", USER, password="nope")
    assert r.returncode == 1
    assert "DUN_E_CONFIG (terminal)" in r.stderr
    assert "535" in r.stderr
    assert "nope" not in r.stderr


def test_check_server_without_auth(tool, server):
    """A username is configured but the server offers no AUTH: say so at start-up."""
    handler, port = server
    r = run(tool, port, "--check", "--username", USER, password=PASSWORD)
    assert r.returncode == 1
    assert "DUN_E_CONFIG (terminal)" in r.stderr
    assert "offered no AUTH" in r.stderr


def test_unreachable_server(tool):
    port = free_port()  # nothing listens there
    r = run(tool, port, *send_args())
    assert r.returncode == 1
    assert "DUN_E_EMAIL (retryable)" in r.stderr
    assert "smtp://127.0.0.1:%d" % port in r.stderr
    assert "onnect" in r.stderr  # curl: "Failed to connect ... Couldn't connect"

    r = run(tool, port, "--check")
    assert r.returncode == 1
    assert "DUN_E_EMAIL (retryable)" in r.stderr


def test_silent_server_times_out(tool):
    """The TCP connection is accepted by the kernel but no greeting ever comes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        port = s.getsockname()[1]
        start = time.monotonic()
        r = run(tool, port, *send_args(), "--timeout-ms", "700")
        elapsed = time.monotonic() - start
    assert r.returncode == 1
    assert "DUN_E_TIMEOUT (retryable)" in r.stderr
    assert elapsed < 10


def test_recipient_rejected_is_terminal(tool, server):
    handler, port = server
    r = run(tool, port, *send_args(to="reject@example.org"))
    assert r.returncode == 1
    assert "DUN_E_INVALID (terminal)" in r.stderr
    assert "RCPT" in r.stderr and "550" in r.stderr
    assert handler.messages == []


def test_temporary_failure_is_retryable(tool, server):
    handler, port = server
    r = run(tool, port, *send_args(to="busy@example.org"))
    assert r.returncode == 1
    assert "DUN_E_EMAIL (retryable)" in r.stderr
    assert "451" in r.stderr


def test_missing_template_dir(tool, server, tmp_path):
    handler, port = server
    r = run(tool, port, *send_args(template_dir=tmp_path / "nowhere"))
    assert r.returncode == 1
    assert "DUN_E_CONFIG (terminal)" in r.stderr
    assert str(tmp_path / "nowhere" / "payment_failed.txt") in r.stderr
    assert "No such file or directory" in r.stderr


# ---- TLS ----


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(crt), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return key, crt


def tls_context(cert):
    key, crt = cert
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(crt), str(key))
    return ctx


def test_starttls_with_auth(tool, cert):
    """AUTH is offered only after STARTTLS (aiosmtpd's default), as on real relays."""
    handler = Recorder()
    port = free_port()
    controller = aiosmtpd_controller.Controller(
        handler, hostname="127.0.0.1", port=port, tls_context=tls_context(cert),
        require_starttls=True, authenticator=handler.authenticator, auth_required=True,
    )
    controller.start()
    try:
        r = run(tool, port, *send_args(), "--username", USER, "--ca-file", str(cert[1]),
                password=PASSWORD, tls="starttls")
        assert r.returncode == 0, r.stderr
        assert len(handler.messages) == 1
        assert handler.logins

        # Without the CA the self-signed certificate is not trusted.
        r = run(tool, port, *send_args(), "--username", USER, password=PASSWORD,
                tls="starttls")
        assert r.returncode == 1
        assert "DUN_E_CONFIG (terminal)" in r.stderr
    finally:
        controller.stop()


def test_starttls_required_but_not_offered(tool, server, cert):
    handler, port = server
    r = run(tool, port, *send_args(), "--ca-file", str(cert[1]), tls="starttls")
    assert r.returncode == 1
    assert "DUN_E_CONFIG (terminal)" in r.stderr
    assert handler.messages == []


def test_clear_text_password_refused_for_remote_host(tool):
    r = subprocess.run(
        [tool, "--url", "smtp://mail.example.com:25", "--tls", "none", "--from",
         "billing@example.com", "--username", USER, "--password", "pw", "--check"],
        capture_output=True, text=True, timeout=20,
    )
    assert r.returncode == 1
    assert "DUN_E_CONFIG (terminal)" in r.stderr
    assert "clear text" in r.stderr
