"""Batched workers: `dunning work` settles several accounts per commit.

A drain works the accounts it claimed in shared transactions, each account
under its own savepoint (src/inbox/worker.c, "Batches"). What must hold:

* an account whose claim was taken over while its batch ran is rolled back
  alone: nothing of it lands, its triggers stay with the new owner, and the
  other accounts of the batch commit;
* a failure in one account's apply rolls back that account alone (a failed
  decision, its triggers retrying), the others commit, and the retry
  applies it once;
* `kill -9` of a drain in the middle of its batches, again and again, then
  a run to the end: nothing lost, nothing applied twice (one decision that
  applied per account, each email once), and the scan finds no drift.

The takeover and the failure are made inside the drain's own transaction by
a trigger of the database (SQLite and PostgreSQL), so they land at a known
point of the batch. Runs on both backends (the `dun` fixture).
"""
import random
import signal
import time

from test_cli import failing_account

N_BATCH = 12
VICTIM = "acct_b%02d" % (N_BATCH - 1)  # claimed last: in the middle of the batch
FIRST = "acct_b00"


def population(dun, dun_stripe, n):
    """n accounts whose first payment failed, queued and not worked yet."""
    accounts = ["acct_b%02d" % i for i in range(n)]
    events = []
    for a in accounts:
        evs, objs = dun_stripe.failing_account(a)
        dun.provider_knows(objs["customer"], behavior="insufficient_funds")
        dun.provider_knows(objs["subscription"], objs["invoice"], objs["charge"])
        events += evs
    dun.ingest(events, now=dun.at(0, 60), no_work=True)
    return accounts


def db_trigger(dun, name, table, when_account, body_sqlite, body_pg):
    """A row trigger BEFORE INSERT on table for rows of when_account."""
    if dun.backend == "sqlite":
        dun.execute("CREATE TRIGGER %s BEFORE INSERT ON %s WHEN NEW.account_id = '%s'"
                    " BEGIN %s; END" % (name, table, when_account, body_sqlite))
    else:
        dun.execute("CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $$"
                    " BEGIN %s; RETURN NEW; END $$" % (name, body_pg))
        dun.execute("CREATE TRIGGER %s BEFORE INSERT ON %s FOR EACH ROW"
                    " WHEN (NEW.account_id = '%s') EXECUTE FUNCTION %s()"
                    % (name, table, when_account, name))


def drop_trigger(dun, name, table):
    if dun.backend == "sqlite":
        dun.execute("DROP TRIGGER %s" % name)
    else:
        dun.execute("DROP TRIGGER %s ON %s" % (name, table))
        dun.execute("DROP FUNCTION %s()" % name)


def applied_decisions(dun, account):
    return dun.scalar("SELECT COUNT(*) FROM decisions WHERE account_id = ?1"
                      " AND outcome = 'applied'", (account,))


def test_a_claim_taken_over_mid_batch_rolls_back_that_account_alone(dun, dun_stripe):
    dun.init()
    accounts = population(dun, dun_stripe, N_BATCH)
    # When the batch records the first account's decision, another worker
    # takes the victim's claim (a new token, a live lease): the victim comes
    # later in the same transaction.
    take = ("UPDATE claims SET owner = 'other@elsewhere:1', token = token + 1000,"
            " expires_ms = 9000000000000 WHERE account_id = '%s'" % VICTIM)
    db_trigger(dun, "take_victim", "decisions", FIRST, take, take)
    r = dun.run("work", now=dun.at(0, 120))
    assert r.rc in (0, 1), r
    assert "worker.claim_lost" in r.err and VICTIM in r.err, r.err
    assert "commits: %d accounts in shared transactions, 0 alone" % N_BATCH in r.out, r.out
    drop_trigger(dun, "take_victim", "decisions")

    for a in accounts[:-1]:
        assert applied_decisions(dun, a) == 1, a
        assert len(dun.emails(a)) == 1, a
    # Nothing of the victim landed, and its triggers are the new owner's to settle.
    assert dun.decisions(VICTIM) == 0
    assert dun.emails(VICTIM) == []
    assert dun.scalar("SELECT COUNT(*) FROM applied WHERE account_id = ?1", (VICTIM,)) == 0
    assert dun.scalar("SELECT COUNT(*) FROM dunning WHERE account_id = ?1", (VICTIM,)) == 0
    assert dun.sql("SELECT DISTINCT state FROM inbox WHERE account_id = ?1",
                   (VICTIM,)) == [("processing",)]
    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE account_id <> ?1"
                      " AND state <> 'done'", (VICTIM,)) == 0

    # The other worker dies: its lease runs out, the account is taken back
    # and worked once.
    dun.execute("UPDATE claims SET expires_ms = 0 WHERE account_id = ?1", (VICTIM,))
    dun.work(now=dun.at(0, 180))
    assert applied_decisions(dun, VICTIM) == 1
    assert len(dun.emails(VICTIM)) == 1
    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE state <> 'done'") == 0


def test_a_failure_in_one_apply_rolls_back_that_account_alone(dun, dun_stripe):
    dun.init()
    accounts = population(dun, dun_stripe, N_BATCH)
    victim = accounts[N_BATCH // 2]
    db_trigger(dun, "refuse_email", "emails", victim,
               "SELECT RAISE(ABORT, 'email refused by the test')",
               "RAISE EXCEPTION 'email refused by the test'")
    r = dun.run("work", now=dun.at(0, 120))
    assert r.rc == 1, r
    assert "commits: %d accounts in shared transactions, 0 alone" % N_BATCH in r.out, r.out
    drop_trigger(dun, "refuse_email", "emails")

    for a in accounts:
        if a != victim:
            assert applied_decisions(dun, a) == 1, a
            assert len(dun.emails(a)) == 1, a
    # The victim: a failed decision, nothing applied (not even the
    # consequences before the email), its triggers retrying with the reason.
    assert dun.sql("SELECT outcome, n_applied FROM decisions WHERE account_id = ?1",
                   (victim,)) == [("failed", 0)]
    error = dun.scalar("SELECT error FROM decisions WHERE account_id = ?1", (victim,))
    assert "refused by the test" in error, error
    assert dun.emails(victim) == []
    assert dun.scalar("SELECT COUNT(*) FROM applied WHERE account_id = ?1", (victim,)) == 0
    assert dun.scalar("SELECT COUNT(*) FROM dunning WHERE account_id = ?1", (victim,)) == 0
    rows = dun.sql("SELECT DISTINCT state, last_error FROM inbox WHERE account_id = ?1",
                   (victim,))
    assert len(rows) == 1 and rows[0][0] == "retrying" and "refused" in rows[0][1], rows

    # After its backoff the retry applies it, once.
    dun.work(now=dun.at(0, 3600))
    assert applied_decisions(dun, victim) == 1
    assert len(dun.emails(victim)) == 1
    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE state <> 'done'") == 0


def test_kill9_mid_batch_loses_nothing_and_applies_nothing_twice(dun, dun_stripe):
    dun.init()
    n = 400
    accounts = population(dun, dun_stripe, n)
    rng = random.Random(11)
    now = dun.at(0, 120)
    kills = 0
    for _ in range(6):
        done = dun.scalar("SELECT COUNT(*) FROM decisions")
        if done >= n - 20:
            break
        # Kill once a few more batches have committed: somewhere inside the next.
        target = done + rng.randint(5, 60)
        proc = dun.popen("work", now=now)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if dun.scalar("SELECT COUNT(*) FROM decisions") >= target:
                break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    assert kills >= 1
    dun.work(now=now)

    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE state <> 'done'") == 0
    per_account = dict(dun.sql("SELECT account_id, COUNT(*) FROM decisions"
                               " WHERE outcome = 'applied' GROUP BY account_id"))
    assert per_account == {a: 1 for a in accounts}
    assert dun.scalar("SELECT COUNT(*) FROM decisions WHERE outcome <> 'applied'") == 0
    twice = dun.sql("SELECT account_id, kind, invoice_id FROM emails"
                    " GROUP BY account_id, kind, invoice_id HAVING COUNT(*) > 1")
    assert twice == []
    assert dun.scalar("SELECT COUNT(*) FROM emails") == n
    stages = dun.sql("SELECT stage, COUNT(*) FROM dunning GROUP BY stage")
    assert len(stages) == 1 and stages[0][1] == n, stages
    r = dun.ok("scan", now=now)
    assert "0 drifting" in r.out, r.out
