"""A database written by the previous release keeps its emails sent once.

The stage emails are now sent once per stage entry instead of once per
episode, and idempotency keys are built from escaped ids. Neither may make
an upgraded installation send again what it already sent. The fixture
data/release_emails.sql is a dump of a database made by the release before
that change (its binary, driving the scenario below); this test loads it,
runs today's binary over the same accounts and checks that no email is sent
twice, while a new entry into a stage is still told.

To remake the fixture with another release's binary:
    DUNNING_BUILD_DIR=<old build> DUNNING_MAKE_RELEASE_DB=tests/integration/data/release_emails.sql \\
        /usr/bin/python3 -m pytest tests/integration/test_release_upgrade.py -k make
"""

import os
import sqlite3
from pathlib import Path

import pytest

from test_cli import failing_account

DUMP = Path(__file__).resolve().parent / "data" / "release_emails.sql"


def scenario(dun, dun_stripe):
    """acct_s: failing for 15 days (payment_failed, restricted, suspended
    emails). acct_q: restricted at 8 days, paid at 9 (resolved)."""
    dun.init()
    failing_account(dun, dun_stripe, "acct_s")
    objs = failing_account(dun, dun_stripe, "acct_q")
    for day in (1, 8, 15):
        dun.ok("recompute", "acct_s", now=dun.at(day))
    dun.ok("recompute", "acct_q", now=dun.at(8))
    paid = dun_stripe.paid(objs["invoice"], days=9)
    dun.provider_knows(paid)
    dun.ingest([dun_stripe.event("invoice.paid", paid, days=9)], now=dun.at(9))
    dun.ok("work", now=dun.at(9, 60))


def sent(dun):
    return sorted(dun.sql("SELECT key, state FROM emails"))


@pytest.mark.skipif(not os.environ.get("DUNNING_MAKE_RELEASE_DB"), reason="only when remaking the fixture")
def test_make_release_db(dun, dun_stripe):
    scenario(dun, dun_stripe)
    con = sqlite3.connect(str(dun.db))
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        text = "\n".join(con.iterdump()) + "\nPRAGMA user_version = %d;\n" % version
    finally:
        con.close()
    Path(os.environ["DUNNING_MAKE_RELEASE_DB"]).write_text(text)


def test_an_upgraded_database_sends_none_of_its_emails_again(dun, dun_stripe):
    con = sqlite3.connect(str(dun.db))
    try:
        con.executescript(DUMP.read_text())
    finally:
        con.close()
    before = sent(dun)
    kinds = sorted(k.split("/email/")[1] for k, _ in before)
    assert kinds == ["payment_failed/in_t00004", "payment_failed/in_t00016", "resolved/ep1",
                     "restricted/ep1", "restricted/ep1", "suspended/ep1"], kinds
    # Today's binary, over every account, at the same time and later.
    for day in (15.5, 16, 20):
        dun.ok("recompute", "acct_s", now=dun.at(day))
        dun.ok("recompute", "acct_q", now=dun.at(day))
        dun.ok("work", now=dun.at(day, 60))
    assert sent(dun) == before
    # The upgraded file is sound (the mirror's tables were rebuilt in account order).
    assert dun.sql("PRAGMA integrity_check") == [("ok",)]
    # A new entry is still told: acct_q fails again and is restricted anew.
    assert dun.sql("SELECT stage FROM dunning WHERE account_id = 'acct_q'") == [("none",)]
