/*
 * schema.c — the versioned schema of the engine's SQLite store.
 *
 * Each migration is a list of statements applied in one transaction; the
 * database's PRAGMA user_version is the number of migrations applied. A
 * migration is never edited once released: changes are new migrations
 * appended at the end. A database whose user_version is larger than the
 * number of migrations here was written by a newer binary and is refused.
 *
 * Tables, by store (see DESIGN.md):
 *   engine     accounts, customers, dunning, invoice_docs, inbox, decisions,
 *              applied, emails, bad_debt_episodes, outcome_events,
 *              rollout_list, settings, rollout_log, parity_reports,
 *              drift_scans, drift_scan_classes
 *   shadow     shadow_dunning, shadow_invoices, shadow_subscriptions,
 *              shadow_consequences — what observe mode would have done
 *   platform   platform (the built-in local platform, and the engine's view
 *              of an HTTP platform), platform_outbox (calls to deliver)
 *   events     outcome_deliveries (outcome_events per endpoint)
 *   provider   p_customers, p_subscriptions, p_invoices, p_attempts — the
 *              mirror of provider objects, fed by webhooks and API replies
 *   simulated  sim_objects, sim_events — the built-in simulated provider's
 *              own state (it plays Stripe for the embedded default)
 */
#include "schema.h"

#include <stddef.h>
#include <string.h>

static const char *const migration_1[] = {
    "CREATE TABLE accounts ("
    " id TEXT PRIMARY KEY,"
    " segment TEXT NOT NULL DEFAULT 'self_serve'"
    "  CHECK (segment IN ('self_serve','enterprise','contract')),"
    " bad_debt INTEGER NOT NULL DEFAULT 0,"
    " no_successful_payment INTEGER NOT NULL DEFAULT 0,"
    " kill_switch INTEGER NOT NULL DEFAULT 0,"
    " email TEXT NOT NULL DEFAULT '',"
    " name TEXT NOT NULL DEFAULT '',"
    " created_at INTEGER NOT NULL DEFAULT 0)",

    "CREATE TABLE customers ("
    " id TEXT PRIMARY KEY,"
    " account_id TEXT NOT NULL,"
    " bad_debt INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX customers_account ON customers(account_id)",

    "CREATE TABLE dunning ("
    " account_id TEXT PRIMARY KEY,"
    " stage TEXT NOT NULL DEFAULT 'none',"
    " since INTEGER NOT NULL DEFAULT 0,"
    " episode INTEGER NOT NULL DEFAULT 0,"
    " lifting_since INTEGER NOT NULL DEFAULT 0,"
    " next_recheck_at INTEGER NOT NULL DEFAULT 0,"
    " updated_at INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX dunning_recheck ON dunning(next_recheck_at) WHERE next_recheck_at > 0",

    "CREATE TABLE platform ("
    " account_id TEXT PRIMARY KEY,"
    " banned INTEGER NOT NULL DEFAULT 0,"
    " entitlement TEXT NOT NULL DEFAULT 'full',"
    " resource_flags INTEGER NOT NULL DEFAULT 0,"
    " updated_at INTEGER NOT NULL DEFAULT 0)",

    "CREATE TABLE invoice_docs ("
    " invoice_id TEXT PRIMARY KEY,"
    " closed INTEGER NOT NULL DEFAULT 0,"
    " paylinks_enabled INTEGER NOT NULL DEFAULT 1,"
    " updated_at INTEGER NOT NULL DEFAULT 0)",

    "CREATE TABLE p_customers ("
    " id TEXT PRIMARY KEY,"
    " account_id TEXT,"
    " email TEXT NOT NULL DEFAULT '',"
    " name TEXT NOT NULL DEFAULT '',"
    " default_payment_method TEXT NOT NULL DEFAULT '',"
    " meta_bad_debt INTEGER NOT NULL DEFAULT 0,"
    " metadata TEXT NOT NULL DEFAULT '{}',"
    " version INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX p_customers_account ON p_customers(account_id)",

    "CREATE TABLE p_subscriptions ("
    " id TEXT PRIMARY KEY,"
    " customer_id TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " version INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX p_subscriptions_customer ON p_subscriptions(customer_id)",

    "CREATE TABLE p_invoices ("
    " id TEXT PRIMARY KEY,"
    " customer_id TEXT NOT NULL,"
    " subscription_id TEXT NOT NULL DEFAULT '',"
    " status TEXT NOT NULL,"
    " amount_due INTEGER NOT NULL DEFAULT 0,"
    " amount_paid INTEGER NOT NULL DEFAULT 0,"
    " amount_remaining INTEGER NOT NULL DEFAULT 0,"
    " currency TEXT NOT NULL DEFAULT 'usd',"
    " attempt_count INTEGER NOT NULL DEFAULT 0,"
    " billing_reason TEXT NOT NULL DEFAULT '',"
    " collection_method TEXT NOT NULL DEFAULT 'charge_automatically',"
    " created INTEGER NOT NULL DEFAULT 0,"
    " paid_at INTEGER NOT NULL DEFAULT 0,"
    " hosted_invoice_url TEXT NOT NULL DEFAULT '',"
    " payment_intent TEXT NOT NULL DEFAULT '',"
    " meta_bad_debt_amount INTEGER,"
    " meta_bad_debt_paid INTEGER NOT NULL DEFAULT 0,"
    " meta_bad_debt_invoices TEXT,"
    " metadata TEXT NOT NULL DEFAULT '{}',"
    " version INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX p_invoices_customer ON p_invoices(customer_id)",
    "CREATE INDEX p_invoices_pi ON p_invoices(payment_intent) WHERE payment_intent <> ''",

    "CREATE TABLE p_attempts ("
    " id TEXT PRIMARY KEY,"
    " invoice_id TEXT,"
    " payment_intent TEXT NOT NULL DEFAULT '',"
    " created INTEGER NOT NULL DEFAULT 0,"
    " status TEXT NOT NULL,"
    " payment_method TEXT NOT NULL DEFAULT '',"
    " decline_code TEXT NOT NULL DEFAULT '',"
    " advice_code TEXT NOT NULL DEFAULT '',"
    " network_advice_code TEXT NOT NULL DEFAULT '',"
    " version INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX p_attempts_invoice ON p_attempts(invoice_id)",
    "CREATE INDEX p_attempts_pi ON p_attempts(payment_intent) WHERE payment_intent <> ''",

    /* The durable inbox of triggers; see src/inbox/inbox.c for the states. */
    "CREATE TABLE inbox ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " account_id TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " source TEXT NOT NULL DEFAULT '',"
    " event_id TEXT NOT NULL DEFAULT '',"
    " dedup_key TEXT UNIQUE,"
    " state TEXT NOT NULL DEFAULT 'received'"
    "  CHECK (state IN ('received','processing','done','retrying','dead')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT NOT NULL DEFAULT '',"
    " not_before INTEGER NOT NULL DEFAULT 0,"
    " claimed_by TEXT NOT NULL DEFAULT '',"
    " claimed_at INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL)",
    "CREATE INDEX inbox_ready ON inbox(state, not_before)"
    " WHERE state IN ('received','retrying','processing')",
    "CREATE INDEX inbox_account ON inbox(account_id, state)",

    /* Raw provider events as received, deduplicated by id. */
    "CREATE TABLE events_raw ("
    " id TEXT PRIMARY KEY,"
    " type TEXT NOT NULL,"
    " object_id TEXT NOT NULL DEFAULT '',"
    " created INTEGER NOT NULL DEFAULT 0,"
    " received_at INTEGER NOT NULL,"
    " account_id TEXT NOT NULL DEFAULT '',"
    " outcome TEXT NOT NULL DEFAULT '',"
    " body TEXT NOT NULL)",
    "CREATE INDEX events_raw_object ON events_raw(object_id, type)",

    "CREATE TABLE decisions ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " account_id TEXT NOT NULL,"
    " trigger_id INTEGER NOT NULL DEFAULT 0,"
    " trigger_kind TEXT NOT NULL DEFAULT '',"
    " at INTEGER NOT NULL,"
    " mode TEXT NOT NULL,"
    " stage_from TEXT NOT NULL,"
    " stage_to TEXT NOT NULL,"
    " held INTEGER NOT NULL DEFAULT 0,"
    " skipped INTEGER NOT NULL DEFAULT 0,"
    " n_planned INTEGER NOT NULL DEFAULT 0,"
    " n_applied INTEGER NOT NULL DEFAULT 0,"
    " outcome TEXT NOT NULL,"
    " error TEXT NOT NULL DEFAULT '',"
    " reasons TEXT NOT NULL DEFAULT '[]',"
    " plan TEXT NOT NULL DEFAULT '[]')",
    "CREATE INDEX decisions_account ON decisions(account_id, id)",

    /* One row per consequence key: what was applied, once, and how it went. */
    "CREATE TABLE applied ("
    " key TEXT PRIMARY KEY,"
    " account_id TEXT NOT NULL,"
    " type TEXT NOT NULL,"
    " decision_id INTEGER NOT NULL,"
    " at INTEGER NOT NULL,"
    " outcome TEXT NOT NULL,"
    " error TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX applied_account ON applied(account_id)",

    "CREATE TABLE emails ("
    " key TEXT PRIMARY KEY,"
    " account_id TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " invoice_id TEXT NOT NULL DEFAULT '',"
    " to_addr TEXT NOT NULL DEFAULT '',"
    " subject TEXT NOT NULL DEFAULT '',"
    " body TEXT NOT NULL DEFAULT '',"
    " message_id TEXT NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','sent','failed')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT NOT NULL DEFAULT '',"
    " created_at INTEGER NOT NULL,"
    " sent_at INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX emails_account ON emails(account_id)",

    "CREATE TABLE bad_debt_episodes ("
    " account_id TEXT NOT NULL,"
    " episode INTEGER NOT NULL,"
    " entered_at INTEGER NOT NULL,"
    " reason TEXT NOT NULL,"
    " products TEXT NOT NULL DEFAULT '',"
    " amount_minor INTEGER NOT NULL DEFAULT 0,"
    " exited_at INTEGER NOT NULL DEFAULT 0,"
    " exit_reason TEXT NOT NULL DEFAULT '',"
    " PRIMARY KEY (account_id, episode))",
    "CREATE INDEX bad_debt_open ON bad_debt_episodes(account_id) WHERE exited_at = 0",

    "CREATE TABLE outcome_events ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " key TEXT NOT NULL UNIQUE,"
    " account_id TEXT NOT NULL,"
    " type TEXT NOT NULL,"
    " payload TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " delivered_at INTEGER NOT NULL DEFAULT 0)",

    "CREATE TABLE rollout_list ("
    " account_id TEXT PRIMARY KEY,"
    " list TEXT NOT NULL CHECK (list IN ('allow','deny')))",

    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",

    "CREATE TABLE sim_objects ("
    " id TEXT PRIMARY KEY,"
    " type TEXT NOT NULL,"
    " customer_id TEXT NOT NULL DEFAULT '',"
    " behavior TEXT NOT NULL DEFAULT '',"
    " body TEXT NOT NULL)",
    "CREATE INDEX sim_objects_customer ON sim_objects(customer_id, type)",
    "CREATE TABLE sim_events ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " body TEXT NOT NULL,"
    " delivered INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX sim_events_pending ON sim_events(seq) WHERE delivered = 0",
    NULL,
};

/*
 * Migration 2 — real effects (see docs/effects.md):
 *   platform_outbox     intents for the HTTP platform, written by the applier
 *                       in the transaction of their `applied` record and
 *                       delivered in id order per account by the sender;
 *   emails              rebuilt to add the 'sending' claim (claimed_by,
 *                       claimed_at) so one sender wins a key across workers,
 *                       engines and a legacy writer; `source` says who wrote it;
 *   outcome_deliveries  one row per payment-outcome event and endpoint.
 */
static const char *const migration_2[] = {
    "CREATE TABLE platform_outbox ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " account_id TEXT NOT NULL,"
    " op TEXT NOT NULL"
    "  CHECK (op IN ('ban','unban','set_entitlement','remove_resource_flags')),"
    " value TEXT NOT NULL DEFAULT '',"
    " idem_key TEXT NOT NULL UNIQUE,"
    " decision_id INTEGER NOT NULL DEFAULT 0,"
    " state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','sent','dead')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " last_status INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT NOT NULL DEFAULT '',"
    " not_before INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL,"
    " sent_at INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX platform_outbox_pending ON platform_outbox(account_id, id)"
    " WHERE state = 'pending'",
    "CREATE INDEX platform_outbox_state ON platform_outbox(state, id)",

    "CREATE TABLE emails_v2 ("
    " key TEXT PRIMARY KEY,"
    " account_id TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " invoice_id TEXT NOT NULL DEFAULT '',"
    " to_addr TEXT NOT NULL DEFAULT '',"
    " subject TEXT NOT NULL DEFAULT '',"
    " body TEXT NOT NULL DEFAULT '',"
    " message_id TEXT NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'pending'"
    "  CHECK (state IN ('pending','sending','sent','failed')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT NOT NULL DEFAULT '',"
    " claimed_by TEXT NOT NULL DEFAULT '',"
    " claimed_at INTEGER NOT NULL DEFAULT 0,"
    " source TEXT NOT NULL DEFAULT 'engine',"
    " created_at INTEGER NOT NULL,"
    " sent_at INTEGER NOT NULL DEFAULT 0)",
    "INSERT INTO emails_v2(key, account_id, kind, invoice_id, to_addr, subject, body,"
    " message_id, state, attempts, last_error, created_at, sent_at)"
    " SELECT key, account_id, kind, invoice_id, to_addr, subject, body, message_id, state,"
    " attempts, last_error, created_at, sent_at FROM emails",
    "DROP TABLE emails",
    "ALTER TABLE emails_v2 RENAME TO emails",
    "CREATE INDEX emails_account ON emails(account_id)",
    "CREATE INDEX emails_unsent ON emails(state) WHERE state <> 'sent'",

    "CREATE TABLE outcome_deliveries ("
    " event_id INTEGER NOT NULL,"
    " endpoint TEXT NOT NULL,"
    " account_id TEXT NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','sent','dead')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " last_status INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT NOT NULL DEFAULT '',"
    " not_before INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL,"
    " sent_at INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (event_id, endpoint))",
    "CREATE INDEX outcome_deliveries_pending ON outcome_deliveries(endpoint, account_id,"
    " event_id) WHERE state = 'pending'",
    NULL,
};

/*
 * Migration 3 — the drift scan's ordered reads (src/gather/stream.c). Each
 * index extends a one-column index it replaces, so lookups by the first
 * column still find one: the scan walks customers by (account, id) and, per
 * customer, subscriptions and invoices by id and attempts by (created, id),
 * so SQLite hands rows over in account order without sorting anything.
 */
static const char *const migration_3[] = {
    "CREATE INDEX customers_account_id ON customers(account_id, id)",
    "DROP INDEX customers_account",
    "CREATE INDEX p_subscriptions_customer_id ON p_subscriptions(customer_id, id)",
    "DROP INDEX p_subscriptions_customer",
    "CREATE INDEX p_invoices_customer_id ON p_invoices(customer_id, id)",
    "DROP INDEX p_invoices_customer",
    "CREATE INDEX p_attempts_invoice_created ON p_attempts(invoice_id, created, id)",
    "DROP INDEX p_attempts_invoice",
    NULL,
};

/*
 * Migration 4 — the delivery thread counts dead event deliveries every run
 * (a metric); without an index that count would read every delivered row.
 */
static const char *const migration_4[] = {
    "CREATE INDEX outcome_deliveries_dead ON outcome_deliveries(event_id)"
    " WHERE state = 'dead'",
    NULL,
};

/*
 * Migration 5 — the rollout: a log of every change to it (with --force and
 * the parity report that allowed it), the parity reports the gate reads,
 * and the shadow observe mode keeps of what it would have done. The shadow
 * tables mirror the engine-written fields of the real stores; a row that
 * does not exist means "untouched" (not banned, full entitlement, ...).
 */
static const char *const migration_5[] = {
    "CREATE TABLE rollout_log ("
    " id INTEGER PRIMARY KEY,"
    " at INTEGER NOT NULL,"
    " action TEXT NOT NULL,"
    " value TEXT NOT NULL,"
    " forced INTEGER NOT NULL DEFAULT 0,"
    " parity_report INTEGER NOT NULL DEFAULT 0,"
    " note TEXT NOT NULL DEFAULT '')",

    "CREATE TABLE parity_reports ("
    " id INTEGER PRIMARY KEY,"
    " created_at INTEGER NOT NULL,"
    " window_from INTEGER NOT NULL,"
    " window_to INTEGER NOT NULL,"
    " source TEXT NOT NULL,"
    " passed INTEGER NOT NULL,"
    " summary TEXT NOT NULL)",

    "CREATE TABLE shadow_dunning ("
    " account_id TEXT PRIMARY KEY,"
    " stage TEXT NOT NULL DEFAULT 'none',"
    " since INTEGER NOT NULL DEFAULT 0,"
    " episode INTEGER NOT NULL DEFAULT 0,"
    " lifting_since INTEGER NOT NULL DEFAULT 0,"
    " next_recheck_at INTEGER NOT NULL DEFAULT 0,"
    " bad_debt_episodes INTEGER NOT NULL DEFAULT 0,"
    " bad_debt_episode_open INTEGER NOT NULL DEFAULT 0,"
    " account_bad_debt INTEGER NOT NULL DEFAULT 0,"
    " customer_bad_debt INTEGER NOT NULL DEFAULT 0,"
    " provider_meta_bad_debt INTEGER NOT NULL DEFAULT 0,"
    " banned INTEGER NOT NULL DEFAULT 0,"
    " entitlement TEXT NOT NULL DEFAULT 'full',"
    " flags_removed INTEGER NOT NULL DEFAULT 0,"
    " no_successful_payment INTEGER NOT NULL DEFAULT 0,"
    " updated_at INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX shadow_dunning_recheck ON shadow_dunning(next_recheck_at)"
    " WHERE next_recheck_at > 0",

    "CREATE TABLE shadow_invoices ("
    " invoice_id TEXT PRIMARY KEY,"
    " account_id TEXT NOT NULL,"
    " uncollectible INTEGER NOT NULL DEFAULT 0,"
    " has_bad_debt_amount INTEGER NOT NULL DEFAULT 0,"
    " bad_debt_amount INTEGER NOT NULL DEFAULT 0,"
    " bad_debt_paid INTEGER NOT NULL DEFAULT 0,"
    " doc_closed INTEGER NOT NULL DEFAULT 0,"
    " paylinks_disabled INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX shadow_invoices_account ON shadow_invoices(account_id)",

    "CREATE TABLE shadow_subscriptions ("
    " subscription_id TEXT PRIMARY KEY,"
    " account_id TEXT NOT NULL,"
    " canceled INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX shadow_subscriptions_account ON shadow_subscriptions(account_id)",

    "CREATE TABLE shadow_consequences ("
    " id INTEGER PRIMARY KEY,"
    " account_id TEXT NOT NULL,"
    " key TEXT NOT NULL UNIQUE,"
    " type TEXT NOT NULL,"
    " target TEXT NOT NULL,"
    " value INTEGER NOT NULL,"
    " kind TEXT NOT NULL DEFAULT '',"
    " at INTEGER NOT NULL,"
    " decision_id INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX shadow_consequences_account ON shadow_consequences(account_id, at)",
    "CREATE INDEX shadow_consequences_at ON shadow_consequences(at)",
    NULL,
};

/*
 * Migration 6 — email goes through an outbox (src/apply/email_sender.c).
 * The applier queues a rendered email as `pending` in the transaction of
 * its decision; the email sender delivers it later, in queue order per
 * account (the new `id`), retrying with backoff (`not_before`) until it is
 * sent or given up (`dead`, a new final state) some time after it was
 * queued (`queued_at`; a requeue by hand starts that time afresh). The table is rebuilt:
 * SQLite cannot widen a CHECK, and the queue order needs an id.
 */
static const char *const migration_6[] = {
    "CREATE TABLE emails_v3 ("
    " id INTEGER PRIMARY KEY,"
    " key TEXT NOT NULL UNIQUE,"
    " account_id TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " invoice_id TEXT NOT NULL DEFAULT '',"
    " to_addr TEXT NOT NULL DEFAULT '',"
    " subject TEXT NOT NULL DEFAULT '',"
    " body TEXT NOT NULL DEFAULT '',"
    " message_id TEXT NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'pending'"
    "  CHECK (state IN ('pending','sending','sent','failed','dead')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT NOT NULL DEFAULT '',"
    " claimed_by TEXT NOT NULL DEFAULT '',"
    " claimed_at INTEGER NOT NULL DEFAULT 0,"
    " source TEXT NOT NULL DEFAULT 'engine',"
    " created_at INTEGER NOT NULL,"
    " sent_at INTEGER NOT NULL DEFAULT 0,"
    " not_before INTEGER NOT NULL DEFAULT 0,"
    " queued_at INTEGER NOT NULL DEFAULT 0)",
    "INSERT INTO emails_v3(key, account_id, kind, invoice_id, to_addr, subject, body,"
    " message_id, state, attempts, last_error, claimed_by, claimed_at, source, created_at,"
    " sent_at, queued_at) SELECT key, account_id, kind, invoice_id, to_addr, subject, body,"
    " message_id, state, attempts, last_error, claimed_by, claimed_at, source, created_at,"
    " sent_at, created_at FROM emails ORDER BY created_at, key",
    "DROP TABLE emails",
    "ALTER TABLE emails_v3 RENAME TO emails",
    "CREATE INDEX emails_account ON emails(account_id, id)",
    "CREATE INDEX emails_queue ON emails(account_id, id)"
    " WHERE state IN ('pending','sending','failed')",
    "CREATE INDEX emails_due ON emails(state, not_before) WHERE state <> 'sent'",
    NULL,
};

/*
 * Migration 7 — the support panel's record of who pressed what
 * (src/server/panel.c): sign-ins, recomputes, pay-bad-debt links, kill
 * switches with their reason, trigger retries, drift scans.
 */
static const char *const migration_7[] = {
    "CREATE TABLE panel_actions ("
    " id INTEGER PRIMARY KEY,"
    " at INTEGER NOT NULL,"
    " user_name TEXT NOT NULL,"
    " action TEXT NOT NULL,"
    " account_id TEXT NOT NULL DEFAULT '',"
    " detail TEXT NOT NULL DEFAULT '',"
    " outcome TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX panel_actions_account ON panel_actions(account_id, id)",
    NULL,
};

/*
 * Migration 8 — what operators measure (docs/operations.md, Metrics). Each
 * drift scan that could write is recorded with its count per class, so
 * /metrics, the panel and a person can see the last one and how old it is
 * without scanning again; `observe_real` counts the real stores of observe
 * accounts (information only, see src/inbox/scan.h).
 */
static const char *const migration_8[] = {
    "CREATE TABLE drift_scans ("
    " id INTEGER PRIMARY KEY,"
    " at INTEGER NOT NULL,"
    " accounts INTEGER NOT NULL,"
    " drifting INTEGER NOT NULL,"
    " observe_accounts INTEGER NOT NULL DEFAULT 0,"
    " observe_real_drifting INTEGER NOT NULL DEFAULT 0,"
    " planned INTEGER NOT NULL DEFAULT 0,"
    " enqueued INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE drift_scan_classes ("
    " scan_id INTEGER NOT NULL,"
    " class TEXT NOT NULL,"
    " accounts INTEGER NOT NULL,"
    " observe_real INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (scan_id, class))",
    NULL,
};

/*
 * Migration 9 — who owns a restriction on the local platform
 * (docs/platform-api.md): ownership is the reason, not the writer. The
 * `platform` row is the restriction for non-payment, dunning's to set and
 * lift whoever placed it (dunning, or a legacy dunning handler before
 * cutover); `placed_by` says who did ('' for rows older than this column).
 * Restrictions for any other reason (abuse, manual, compliance, ...) are
 * rows of platform_restrictions, written by other systems: dunning reads
 * them, shows them in explain, and never lifts them.
 */
static const char *const migration_9[] = {
    "ALTER TABLE platform ADD COLUMN placed_by TEXT NOT NULL DEFAULT ''",
    "CREATE TABLE platform_restrictions ("
    " account_id TEXT NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('ban','entitlement')),"
    " level TEXT NOT NULL DEFAULT ''"
    "  CHECK (kind = 'ban' OR level IN ('restricted','suspended')),"
    " reason TEXT NOT NULL CHECK (reason <> '' AND reason <> 'non_payment'),"
    " placed_by TEXT NOT NULL DEFAULT '',"
    " placed_at INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (account_id, kind, reason))",
    NULL,
};

/*
 * Migration 10: claims with fencing tokens (inbox/fence.h). One row per
 * account ever claimed: who holds it, the token of the claim (one more at
 * each new claim of the account, never reused) and until when, in wall-clock
 * milliseconds (0 once released). Every write of a recompute checks, in its
 * own transaction, that the claim it was made under is still the account's.
 */
static const char *const migration_10[] = {
    "CREATE TABLE claims ("
    " account_id TEXT PRIMARY KEY,"
    " owner TEXT NOT NULL,"
    " token INTEGER NOT NULL,"
    " expires_ms INTEGER NOT NULL)",
    NULL,
};

/*
 * Migration 11: accounts whose last recompute could not read every store
 * (the provider's refresh failed, the platform did not answer): it decided
 * nothing and is retried. The drift scan counts them as `incomplete_state`
 * and queues them; the next recompute that reads everything removes the row.
 */
static const char *const migration_11[] = {
    "CREATE TABLE incomplete_accounts ("
    " account_id TEXT PRIMARY KEY,"
    " store TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " since INTEGER NOT NULL,"
    " last_at INTEGER NOT NULL)",
    NULL,
};

/*
 * Migration 12: the provider's next automatic payment attempt of an
 * invoice (Stripe's next_payment_attempt, unix seconds; 0 when it will not
 * try again), so a policy that leaves retries to Stripe can follow them.
 */
static const char *const migration_12[] = {
    "ALTER TABLE p_invoices ADD COLUMN next_payment_attempt INTEGER NOT NULL DEFAULT 0",
    NULL,
};

/*
 * Migration 13: the products a subscription bills (its items' prices'
 * products, comma-separated, as Stripe names them), so a bad-debt episode
 * can say which products it involves (reports, metrics).
 */
static const char *const migration_13[] = {
    "ALTER TABLE p_subscriptions ADD COLUMN products TEXT NOT NULL DEFAULT ''",
    NULL,
};

/*
 * Migration 14: the provider mirror laid out for the drift scan
 * (docs/performance.md, "Layout"). The scan visits accounts in id order;
 * invoices and payment attempts were stored in the order they arrived, so
 * it read about two pages per row. Both tables now carry the account of
 * their customer (`account_id`, '' while the customer is not linked to an
 * account) and are kept in account order:
 *
 *   SQLite      the tables are rebuilt WITHOUT ROWID, keyed by
 *               (account_id, customer_id, id) and
 *               (account_id, invoice_id, created, id): the scan walks both
 *               in storage order. Lookups by id, by customer, by invoice
 *               and by payment intent keep an index each.
 *   PostgreSQL  keeps no table clustered: two covering indexes in the same
 *               order hold every column the scan reads, so its reads are
 *               index-only scans in key order, with no sort.
 *
 * An attempt not tied to an invoice has invoice_id '' (was NULL): a key
 * column cannot be NULL. Triggers keep account_id right whoever writes
 * (the mirror, the simulated provider, `dunning account`, a store copy, a
 * person with a SQL shell): an invoice takes its customer's account, an
 * attempt its invoice's, and linking, relinking or unlinking a customer
 * moves its invoices and their attempts. Writers that know the account
 * pass it, so the triggers only check. (Migration 18 drops the triggers on
 * p_invoices and p_attempts that only checked: the writers set the column.)
 *
 * On SQLite the key's columns are declared first, in the key's order: SQLite
 * 3.40's PRAGMA integrity_check reports false NOT NULL violations in a
 * WITHOUT ROWID table whose key columns are declared in another order.
 *
 * A statement prefixed "sqlite:" or "postgresql:" runs only on that backend.
 */
static const char *const migration_14[] = {
    "sqlite:CREATE TABLE p_invoices_v14 ("
    " account_id TEXT NOT NULL DEFAULT '',"
    " customer_id TEXT NOT NULL,"
    " id TEXT NOT NULL,"
    " subscription_id TEXT NOT NULL DEFAULT '',"
    " status TEXT NOT NULL,"
    " amount_due INTEGER NOT NULL DEFAULT 0,"
    " amount_paid INTEGER NOT NULL DEFAULT 0,"
    " amount_remaining INTEGER NOT NULL DEFAULT 0,"
    " currency TEXT NOT NULL DEFAULT 'usd',"
    " attempt_count INTEGER NOT NULL DEFAULT 0,"
    " billing_reason TEXT NOT NULL DEFAULT '',"
    " collection_method TEXT NOT NULL DEFAULT 'charge_automatically',"
    " created INTEGER NOT NULL DEFAULT 0,"
    " paid_at INTEGER NOT NULL DEFAULT 0,"
    " hosted_invoice_url TEXT NOT NULL DEFAULT '',"
    " payment_intent TEXT NOT NULL DEFAULT '',"
    " meta_bad_debt_amount INTEGER,"
    " meta_bad_debt_paid INTEGER NOT NULL DEFAULT 0,"
    " meta_bad_debt_invoices TEXT,"
    " metadata TEXT NOT NULL DEFAULT '{}',"
    " version INTEGER NOT NULL DEFAULT 0,"
    " next_payment_attempt INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (account_id, customer_id, id)) WITHOUT ROWID",
    /* In key order, so the new table's pages are filled one after the other. */
    "sqlite:INSERT INTO p_invoices_v14 SELECT COALESCE(c.account_id, ''), i.customer_id,"
    " i.id, i.subscription_id,"
    " i.status, i.amount_due, i.amount_paid, i.amount_remaining, i.currency,"
    " i.attempt_count, i.billing_reason, i.collection_method, i.created, i.paid_at,"
    " i.hosted_invoice_url, i.payment_intent, i.meta_bad_debt_amount, i.meta_bad_debt_paid,"
    " i.meta_bad_debt_invoices, i.metadata, i.version, i.next_payment_attempt"
    " FROM p_invoices i LEFT JOIN customers c ON c.id = i.customer_id ORDER BY 1, 2, 3",
    "sqlite:DROP TABLE p_invoices",
    "sqlite:ALTER TABLE p_invoices_v14 RENAME TO p_invoices",
    "sqlite:CREATE UNIQUE INDEX p_invoices_id ON p_invoices(id)",
    "sqlite:CREATE INDEX p_invoices_customer_id ON p_invoices(customer_id, id)",
    "sqlite:CREATE INDEX p_invoices_pi ON p_invoices(payment_intent) WHERE payment_intent <> ''",

    "sqlite:CREATE TABLE p_attempts_v14 ("
    " account_id TEXT NOT NULL DEFAULT '',"
    " invoice_id TEXT NOT NULL ON CONFLICT REPLACE DEFAULT '',"
    " created INTEGER NOT NULL DEFAULT 0,"
    " id TEXT NOT NULL,"
    " payment_intent TEXT NOT NULL DEFAULT '',"
    " status TEXT NOT NULL,"
    " payment_method TEXT NOT NULL DEFAULT '',"
    " decline_code TEXT NOT NULL DEFAULT '',"
    " advice_code TEXT NOT NULL DEFAULT '',"
    " network_advice_code TEXT NOT NULL DEFAULT '',"
    " version INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (account_id, invoice_id, created, id)) WITHOUT ROWID",
    "sqlite:INSERT INTO p_attempts_v14 SELECT COALESCE(i.account_id, ''),"
    " COALESCE(a.invoice_id, ''), a.created, a.id, a.payment_intent, a.status,"
    " a.payment_method, a.decline_code, a.advice_code, a.network_advice_code, a.version"
    " FROM p_attempts a LEFT JOIN p_invoices i ON i.id = a.invoice_id"
    " ORDER BY 1, 2, 3, 4",
    "sqlite:DROP TABLE p_attempts",
    "sqlite:ALTER TABLE p_attempts_v14 RENAME TO p_attempts",
    "sqlite:CREATE UNIQUE INDEX p_attempts_id ON p_attempts(id)",
    "sqlite:CREATE INDEX p_attempts_invoice_created ON p_attempts(invoice_id, created, id)",
    "sqlite:CREATE INDEX p_attempts_pi ON p_attempts(payment_intent) WHERE payment_intent <> ''",

    "sqlite:CREATE TRIGGER p_invoices_account_ins AFTER INSERT ON p_invoices"
    " WHEN NEW.account_id <> COALESCE((SELECT account_id FROM customers"
    " WHERE id = NEW.customer_id), '')"
    " BEGIN UPDATE p_invoices SET account_id = COALESCE((SELECT account_id FROM customers"
    " WHERE id = NEW.customer_id), '') WHERE id = NEW.id; END",
    "sqlite:CREATE TRIGGER p_invoices_account_upd AFTER UPDATE OF customer_id, account_id"
    " ON p_invoices WHEN NEW.account_id <> COALESCE((SELECT account_id FROM customers"
    " WHERE id = NEW.customer_id), '')"
    " BEGIN UPDATE p_invoices SET account_id = COALESCE((SELECT account_id FROM customers"
    " WHERE id = NEW.customer_id), '') WHERE id = NEW.id; END",
    /* Attempts that arrived before their invoice, then any later move. */
    "sqlite:CREATE TRIGGER p_invoices_attempts_ins AFTER INSERT ON p_invoices"
    " BEGIN UPDATE p_attempts SET account_id = (SELECT account_id FROM p_invoices"
    " WHERE id = NEW.id) WHERE invoice_id = NEW.id AND account_id <> (SELECT account_id"
    " FROM p_invoices WHERE id = NEW.id); END",
    "sqlite:CREATE TRIGGER p_invoices_attempts_upd AFTER UPDATE OF account_id ON p_invoices"
    " WHEN OLD.account_id <> NEW.account_id"
    " BEGIN UPDATE p_attempts SET account_id = NEW.account_id"
    " WHERE invoice_id = NEW.id AND account_id <> NEW.account_id; END",
    "sqlite:CREATE TRIGGER p_attempts_account_ins AFTER INSERT ON p_attempts"
    " WHEN NEW.account_id <> COALESCE((SELECT account_id FROM p_invoices"
    " WHERE id = NEW.invoice_id), '')"
    " BEGIN UPDATE p_attempts SET account_id = COALESCE((SELECT account_id FROM p_invoices"
    " WHERE id = NEW.invoice_id), '') WHERE id = NEW.id; END",
    "sqlite:CREATE TRIGGER p_attempts_account_upd AFTER UPDATE OF invoice_id, account_id"
    " ON p_attempts WHEN NEW.account_id <> COALESCE((SELECT account_id FROM p_invoices"
    " WHERE id = NEW.invoice_id), '')"
    " BEGIN UPDATE p_attempts SET account_id = COALESCE((SELECT account_id FROM p_invoices"
    " WHERE id = NEW.invoice_id), '') WHERE id = NEW.id; END",
    "sqlite:CREATE TRIGGER customers_invoices_ins AFTER INSERT ON customers"
    " BEGIN UPDATE p_invoices SET account_id = NEW.account_id"
    " WHERE customer_id = NEW.id AND account_id <> NEW.account_id; END",
    "sqlite:CREATE TRIGGER customers_invoices_upd AFTER UPDATE OF id, account_id ON customers"
    " BEGIN UPDATE p_invoices SET account_id = ''"
    " WHERE customer_id = OLD.id AND OLD.id <> NEW.id AND account_id <> '';"
    " UPDATE p_invoices SET account_id = NEW.account_id"
    " WHERE customer_id = NEW.id AND account_id <> NEW.account_id; END",
    "sqlite:CREATE TRIGGER customers_invoices_del AFTER DELETE ON customers"
    " BEGIN UPDATE p_invoices SET account_id = ''"
    " WHERE customer_id = OLD.id AND account_id <> ''; END",

    "postgresql:ALTER TABLE p_invoices ADD COLUMN account_id TEXT NOT NULL DEFAULT ''",
    "postgresql:UPDATE p_invoices i SET account_id = c.account_id FROM customers c"
    " WHERE c.id = i.customer_id",
    "postgresql:ALTER TABLE p_attempts ADD COLUMN account_id TEXT NOT NULL DEFAULT ''",
    "postgresql:UPDATE p_attempts SET invoice_id = '' WHERE invoice_id IS NULL",
    "postgresql:ALTER TABLE p_attempts ALTER COLUMN invoice_id SET DEFAULT '',"
    " ALTER COLUMN invoice_id SET NOT NULL",
    "postgresql:UPDATE p_attempts a SET account_id = i.account_id FROM p_invoices i"
    " WHERE i.id = a.invoice_id AND i.account_id <> ''",
    "postgresql:CREATE FUNCTION dunning_invoice_account() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN NEW.account_id := COALESCE((SELECT account_id FROM customers"
    " WHERE id = NEW.customer_id), ''); RETURN NEW; END $$",
    "postgresql:CREATE TRIGGER p_invoices_account BEFORE INSERT OR UPDATE OF customer_id,"
    " account_id ON p_invoices FOR EACH ROW EXECUTE FUNCTION dunning_invoice_account()",
    "postgresql:CREATE FUNCTION dunning_invoice_attempts() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN UPDATE p_attempts SET account_id = NEW.account_id"
    " WHERE invoice_id = NEW.id AND account_id <> NEW.account_id; RETURN NULL; END $$",
    "postgresql:CREATE TRIGGER p_invoices_attempts_ins AFTER INSERT ON p_invoices"
    " FOR EACH ROW EXECUTE FUNCTION dunning_invoice_attempts()",
    "postgresql:CREATE TRIGGER p_invoices_attempts_upd AFTER UPDATE ON p_invoices"
    " FOR EACH ROW WHEN (OLD.account_id IS DISTINCT FROM NEW.account_id)"
    " EXECUTE FUNCTION dunning_invoice_attempts()",
    "postgresql:CREATE FUNCTION dunning_attempt_account() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN NEW.account_id := COALESCE((SELECT account_id FROM p_invoices"
    " WHERE id = NEW.invoice_id), ''); RETURN NEW; END $$",
    "postgresql:CREATE TRIGGER p_attempts_account BEFORE INSERT OR UPDATE OF invoice_id,"
    " account_id ON p_attempts FOR EACH ROW EXECUTE FUNCTION dunning_attempt_account()",
    "postgresql:CREATE FUNCTION dunning_customer_invoices() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN"
    " IF TG_OP <> 'INSERT' THEN UPDATE p_invoices SET account_id = ''"
    " WHERE customer_id = OLD.id AND account_id <> ''; END IF;"
    " IF TG_OP <> 'DELETE' THEN UPDATE p_invoices SET account_id = NEW.account_id"
    " WHERE customer_id = NEW.id AND account_id <> NEW.account_id; END IF;"
    " RETURN NULL; END $$",
    "postgresql:CREATE TRIGGER customers_invoices AFTER INSERT OR UPDATE OF id, account_id"
    " OR DELETE ON customers FOR EACH ROW EXECUTE FUNCTION dunning_customer_invoices()",
    "postgresql:CREATE INDEX p_invoices_scan ON p_invoices(account_id, customer_id, id)"
    " INCLUDE (subscription_id, status, billing_reason, amount_due, amount_paid,"
    " amount_remaining, currency, attempt_count, created, paid_at, hosted_invoice_url,"
    " meta_bad_debt_amount, meta_bad_debt_paid, meta_bad_debt_invoices,"
    " next_payment_attempt)",
    "postgresql:CREATE INDEX p_attempts_scan ON p_attempts(account_id, invoice_id, created, id)"
    " INCLUDE (status, payment_method, decline_code, advice_code, network_advice_code)",
    NULL,
};

/*
 * Migration 15: the inbox's index of open triggers. The partial index of
 * migration 1 had "WHERE state IN (three states)": SQLite evaluates a list
 * of more than two constants through a temporary B-tree, built afresh on
 * every insert or update of an inbox row (every mapped webhook pays it in
 * the committer's serial transaction), and no query could use the index,
 * since SQLite only uses a partial index when the query repeats its
 * predicate. One comparison instead; the ready and idle queries name it
 * (inbox.c). Dead triggers stay in the index: they are few and are the
 * ones a person retries.
 */
static const char *const migration_15[] = {
    "DROP INDEX inbox_ready",
    "CREATE INDEX inbox_ready ON inbox(state, not_before) WHERE state <> 'done'",
    NULL,
};

/*
 * Migration 16: the outcome events not yet delivered everywhere. The
 * delivery thread used to queue the events above the highest id it had
 * queued; once recomputes of many processes commit side by side on
 * PostgreSQL, ids no longer commit in order, and an event committed after a
 * higher one was queued would have been skipped forever. It now queues
 * every event with delivered_at = 0 that an endpoint has no delivery of,
 * found through this index (events_sender.c).
 */
static const char *const migration_16[] = {
    "CREATE INDEX outcome_events_undelivered ON outcome_events(id) WHERE delivered_at = 0",
    NULL,
};

/*
 * Migration 17: the open triggers in id order. The claim walks ready
 * triggers oldest first and stops after a few rows per account it claims
 * (inbox.c); with only inbox_ready (state, not_before) it read and sorted
 * the whole backlog on every pass, 38 ms at 3,000 ready triggers on
 * PostgreSQL. Both backends use a partial index for a query that repeats
 * its predicate ("state <> 'done'").
 */
static const char *const migration_17[] = {
    "CREATE INDEX inbox_open ON inbox(id) WHERE state <> 'done'",
    NULL,
};

/*
 * Migration 18: the writers of invoices and attempts set account_id
 * themselves; migration 14's triggers on those two tables are dropped.
 * Each of them ran a lookup (of the customer, of the invoice) on every
 * invoice or attempt written, and the invoice's trigger an UPDATE of the
 * attempts as well: all of it in the webhook committer's serial
 * transaction, for a value the mirror had already computed in its INSERT.
 *
 * Who keeps account_id now:
 *
 *   the mirror (mirror.c)   an invoice takes its customer's account in its
 *                           INSERT and hands it to its attempts that
 *                           arrived first; an attempt takes its invoice's
 *                           when it is inserted or its invoice_id is set;
 *   the triggers on         linking, relinking or unlinking a customer
 *   customers (kept)        moves its invoices, and an invoice whose
 *                           account changes moves its attempts (kept:
 *                           they fire on those updates only, never on an
 *                           insert of an invoice or attempt);
 *   a store copy            copies the column with the row.
 *
 * Anyone else who writes these two tables (a person with a SQL shell, a
 * test) writes account_id too, as the mirror does.
 */
static const char *const migration_18[] = {
    "sqlite:DROP TRIGGER p_invoices_account_ins",
    "sqlite:DROP TRIGGER p_invoices_account_upd",
    "sqlite:DROP TRIGGER p_invoices_attempts_ins",
    "sqlite:DROP TRIGGER p_attempts_account_ins",
    "sqlite:DROP TRIGGER p_attempts_account_upd",
    "postgresql:DROP TRIGGER p_invoices_account ON p_invoices",
    "postgresql:DROP TRIGGER p_invoices_attempts_ins ON p_invoices",
    "postgresql:DROP TRIGGER p_attempts_account ON p_attempts",
    "postgresql:DROP FUNCTION dunning_invoice_account()",
    "postgresql:DROP FUNCTION dunning_attempt_account()",
    /* Evaluated for updates of account_id only, as on SQLite. */
    "postgresql:DROP TRIGGER p_invoices_attempts_upd ON p_invoices",
    "postgresql:CREATE TRIGGER p_invoices_attempts_upd AFTER UPDATE OF account_id ON p_invoices"
    " FOR EACH ROW WHEN (OLD.account_id IS DISTINCT FROM NEW.account_id)"
    " EXECUTE FUNCTION dunning_invoice_attempts()",
    NULL,
};

/*
 * Migration 19: invoice documents keyed by account first, as migration 14
 * keyed invoices and attempts, so the drift scan walks them beside the
 * invoices (stream.c merges them by invoice id) instead of searching
 * them, one invoice at a time, in a table stored in arrival order
 * (docs/performance.md, "The million accounts").
 *
 * Who keeps account_id: the writer of a document (apply.c) takes its
 * invoice's; an invoice whose account changes (its customer linked,
 * relinked or unlinked: migration 14's triggers) moves its documents. A
 * document of an invoice the mirror does not have has ''. Lookups by
 * invoice id (dun_gather, the writers' upserts) keep a unique index.
 */
static const char *const migration_19[] = {
    "sqlite:CREATE TABLE invoice_docs_v19 ("
    " invoice_id TEXT NOT NULL,"
    " closed INTEGER NOT NULL DEFAULT 0,"
    " paylinks_enabled INTEGER NOT NULL DEFAULT 1,"
    " updated_at INTEGER NOT NULL DEFAULT 0,"
    " account_id TEXT NOT NULL DEFAULT '',"
    " PRIMARY KEY (account_id, invoice_id)) WITHOUT ROWID",
    "sqlite:INSERT INTO invoice_docs_v19 SELECT d.invoice_id, d.closed, d.paylinks_enabled,"
    " d.updated_at, COALESCE(i.account_id, '') FROM invoice_docs d"
    " LEFT JOIN p_invoices i ON i.id = d.invoice_id WHERE d.invoice_id IS NOT NULL"
    " ORDER BY 5, 1",
    "sqlite:DROP TABLE invoice_docs",
    "sqlite:ALTER TABLE invoice_docs_v19 RENAME TO invoice_docs",
    "sqlite:CREATE UNIQUE INDEX invoice_docs_invoice ON invoice_docs(invoice_id)",
    "sqlite:CREATE TRIGGER p_invoices_docs_upd AFTER UPDATE OF account_id ON p_invoices"
    " WHEN OLD.account_id <> NEW.account_id"
    " BEGIN UPDATE invoice_docs SET account_id = NEW.account_id"
    " WHERE invoice_id = NEW.id AND account_id <> NEW.account_id; END",

    "postgresql:ALTER TABLE invoice_docs ADD COLUMN account_id TEXT NOT NULL DEFAULT ''",
    "postgresql:UPDATE invoice_docs d SET account_id = i.account_id FROM p_invoices i"
    " WHERE i.id = d.invoice_id AND i.account_id <> ''",
    "postgresql:CREATE INDEX invoice_docs_scan ON invoice_docs(account_id, invoice_id)"
    " INCLUDE (closed, paylinks_enabled)",
    "postgresql:CREATE FUNCTION dunning_invoice_docs() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN UPDATE invoice_docs SET account_id = NEW.account_id"
    " WHERE invoice_id = NEW.id AND account_id <> NEW.account_id; RETURN NULL; END $$",
    "postgresql:CREATE TRIGGER p_invoices_docs_upd AFTER UPDATE OF account_id ON p_invoices"
    " FOR EACH ROW WHEN (OLD.account_id IS DISTINCT FROM NEW.account_id)"
    " EXECUTE FUNCTION dunning_invoice_docs()",
    NULL,
};

/*
 * Migration 20: the provider's customers and subscriptions keyed by account
 * first, as migrations 14 and 19 keyed invoices, attempts and documents, so
 * the drift scan walks them in account order (stream.c merges them with
 * the account's customer) instead of searching them, account by account,
 * by customer id (docs/performance.md, "The million accounts").
 *
 * p_customers already has an account_id: the one the provider's metadata
 * names, which the webhook path reads to link a customer. The account a
 * customers row links it to (which `dunning account` may change) is a
 * column of its own, linked_account_id ('' while none); p_subscriptions
 * takes account_id, its customer's linked account, as p_invoices does.
 *
 *   SQLite      both tables are rebuilt WITHOUT ROWID, keyed by
 *               (linked_account_id, id) and (account_id, customer_id, id),
 *               the key's columns declared first (see migration 14), the
 *               rows copied in key order; lookups by id keep a unique
 *               index (the mirror's upserts conflict on it), by customer
 *               and by metadata account an index each.
 *   PostgreSQL  the columns, and two covering indexes in the scan's order.
 *
 * On both, customers' index by (account_id, id) takes bad_debt as well, so
 * the scan's customers read needs no row of the table either.
 *
 * Who keeps them: the mirror (mirror.c) sets them in its INSERTs from the
 * customers row, if there is one yet; the triggers here move them when a
 * customer is linked, relinked or unlinked (as migration 14's move
 * invoices); a store copy copies them with the rows.
 */
static const char *const migration_20[] = {
    "sqlite:CREATE TABLE p_customers_v20 ("
    " linked_account_id TEXT NOT NULL DEFAULT '',"
    " id TEXT NOT NULL,"
    " account_id TEXT,"
    " email TEXT NOT NULL DEFAULT '',"
    " name TEXT NOT NULL DEFAULT '',"
    " default_payment_method TEXT NOT NULL DEFAULT '',"
    " meta_bad_debt INTEGER NOT NULL DEFAULT 0,"
    " metadata TEXT NOT NULL DEFAULT '{}',"
    " version INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (linked_account_id, id)) WITHOUT ROWID",
    "sqlite:INSERT INTO p_customers_v20 SELECT COALESCE(c.account_id, ''), p.id, p.account_id,"
    " p.email, p.name, p.default_payment_method, p.meta_bad_debt, p.metadata, p.version"
    " FROM p_customers p LEFT JOIN customers c ON c.id = p.id WHERE p.id IS NOT NULL"
    " ORDER BY 1, 2",
    "sqlite:DROP TABLE p_customers",
    "sqlite:ALTER TABLE p_customers_v20 RENAME TO p_customers",
    "sqlite:CREATE UNIQUE INDEX p_customers_id ON p_customers(id)",
    "sqlite:CREATE INDEX p_customers_account ON p_customers(account_id)",

    "sqlite:CREATE TABLE p_subscriptions_v20 ("
    " account_id TEXT NOT NULL DEFAULT '',"
    " customer_id TEXT NOT NULL,"
    " id TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " version INTEGER NOT NULL DEFAULT 0,"
    " products TEXT NOT NULL DEFAULT '',"
    " PRIMARY KEY (account_id, customer_id, id)) WITHOUT ROWID",
    "sqlite:INSERT INTO p_subscriptions_v20 SELECT COALESCE(c.account_id, ''), s.customer_id,"
    " s.id, s.status, s.version, s.products FROM p_subscriptions s"
    " LEFT JOIN customers c ON c.id = s.customer_id WHERE s.id IS NOT NULL ORDER BY 1, 2, 3",
    "sqlite:DROP TABLE p_subscriptions",
    "sqlite:ALTER TABLE p_subscriptions_v20 RENAME TO p_subscriptions",
    "sqlite:CREATE UNIQUE INDEX p_subscriptions_id ON p_subscriptions(id)",
    "sqlite:CREATE INDEX p_subscriptions_customer_id ON p_subscriptions(customer_id, id)",

    "sqlite:CREATE TRIGGER customers_mirror_ins AFTER INSERT ON customers"
    " BEGIN UPDATE p_customers SET linked_account_id = NEW.account_id"
    " WHERE id = NEW.id AND linked_account_id <> NEW.account_id;"
    " UPDATE p_subscriptions SET account_id = NEW.account_id"
    " WHERE customer_id = NEW.id AND account_id <> NEW.account_id; END",
    "sqlite:CREATE TRIGGER customers_mirror_upd AFTER UPDATE OF id, account_id ON customers"
    " BEGIN UPDATE p_customers SET linked_account_id = ''"
    " WHERE id = OLD.id AND OLD.id <> NEW.id AND linked_account_id <> '';"
    " UPDATE p_subscriptions SET account_id = ''"
    " WHERE customer_id = OLD.id AND OLD.id <> NEW.id AND account_id <> '';"
    " UPDATE p_customers SET linked_account_id = NEW.account_id"
    " WHERE id = NEW.id AND linked_account_id <> NEW.account_id;"
    " UPDATE p_subscriptions SET account_id = NEW.account_id"
    " WHERE customer_id = NEW.id AND account_id <> NEW.account_id; END",
    "sqlite:CREATE TRIGGER customers_mirror_del AFTER DELETE ON customers"
    " BEGIN UPDATE p_customers SET linked_account_id = ''"
    " WHERE id = OLD.id AND linked_account_id <> '';"
    " UPDATE p_subscriptions SET account_id = ''"
    " WHERE customer_id = OLD.id AND account_id <> ''; END",

    "postgresql:ALTER TABLE p_customers ADD COLUMN linked_account_id TEXT NOT NULL DEFAULT ''",
    "postgresql:UPDATE p_customers p SET linked_account_id = c.account_id FROM customers c"
    " WHERE c.id = p.id",
    "postgresql:ALTER TABLE p_subscriptions ADD COLUMN account_id TEXT NOT NULL DEFAULT ''",
    "postgresql:UPDATE p_subscriptions s SET account_id = c.account_id FROM customers c"
    " WHERE c.id = s.customer_id",
    "postgresql:CREATE INDEX p_customers_scan ON p_customers(linked_account_id, id)"
    " INCLUDE (meta_bad_debt, default_payment_method, email, name)",
    "postgresql:CREATE INDEX p_subscriptions_scan ON p_subscriptions(account_id, customer_id, id)"
    " INCLUDE (status)",
    /* The scan's customers read walks this index alone (no search of the table). */
    "CREATE INDEX customers_scan ON customers(account_id, id, bad_debt)",
    "DROP INDEX customers_account_id",

    "postgresql:CREATE FUNCTION dunning_customer_mirror() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN"
    " IF TG_OP <> 'INSERT' THEN"
    " UPDATE p_customers SET linked_account_id = ''"
    " WHERE id = OLD.id AND linked_account_id <> '';"
    " UPDATE p_subscriptions SET account_id = ''"
    " WHERE customer_id = OLD.id AND account_id <> ''; END IF;"
    " IF TG_OP <> 'DELETE' THEN"
    " UPDATE p_customers SET linked_account_id = NEW.account_id"
    " WHERE id = NEW.id AND linked_account_id <> NEW.account_id;"
    " UPDATE p_subscriptions SET account_id = NEW.account_id"
    " WHERE customer_id = NEW.id AND account_id <> NEW.account_id; END IF;"
    " RETURN NULL; END $$",
    "postgresql:CREATE TRIGGER customers_mirror AFTER INSERT OR UPDATE OF id, account_id"
    " OR DELETE ON customers FOR EACH ROW EXECUTE FUNCTION dunning_customer_mirror()",
    NULL,
};

/*
 * Migration 21: the inbox's CHECK on state as comparisons. SQLite evaluates
 * "state IN (five constants)" through a temporary B-tree built afresh on
 * every insert of a row (every trigger a mapped webhook enqueues, in the
 * committer's serial transaction): about 32,000 instructions of an insert's
 * 100,000 under callgrind, where the same rule written as five comparisons
 * costs nothing measurable. The rule is unchanged; SQLite cannot alter a
 * CHECK, so the table is rebuilt (ids, AUTOINCREMENT's high-water mark and
 * the indexes kept). PostgreSQL evaluates IN without such a cost: nothing
 * changes there.
 */
static const char *const migration_21[] = {
    "sqlite:CREATE TABLE inbox_v21 ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " account_id TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " source TEXT NOT NULL DEFAULT '',"
    " event_id TEXT NOT NULL DEFAULT '',"
    " dedup_key TEXT UNIQUE,"
    " state TEXT NOT NULL DEFAULT 'received'"
    "  CHECK (state = 'received' OR state = 'processing' OR state = 'done'"
    "   OR state = 'retrying' OR state = 'dead'),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT NOT NULL DEFAULT '',"
    " not_before INTEGER NOT NULL DEFAULT 0,"
    " claimed_by TEXT NOT NULL DEFAULT '',"
    " claimed_at INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL)",
    "sqlite:INSERT INTO inbox_v21(id, account_id, kind, source, event_id, dedup_key, state,"
    " attempts, last_error, not_before, claimed_by, claimed_at, created_at, updated_at)"
    " SELECT id, account_id, kind, source, event_id, dedup_key, state, attempts, last_error,"
    " not_before, claimed_by, claimed_at, created_at, updated_at FROM inbox ORDER BY id",
    /* The old table's high-water mark, which may lie above its last row. */
    "sqlite:DELETE FROM sqlite_sequence WHERE name = 'inbox_v21'",
    "sqlite:UPDATE sqlite_sequence SET name = 'inbox_v21' WHERE name = 'inbox'",
    "sqlite:DROP TABLE inbox",
    "sqlite:ALTER TABLE inbox_v21 RENAME TO inbox",
    "sqlite:CREATE INDEX inbox_account ON inbox(account_id, state)",
    "sqlite:CREATE INDEX inbox_ready ON inbox(state, not_before) WHERE state <> 'done'",
    "sqlite:CREATE INDEX inbox_open ON inbox(id) WHERE state <> 'done'",
    NULL,
};

/*
 * Migration 22: the simulated provider learns webhooks lazily, in commit
 * order (provider/sim.c, "Learning"). sim_learnt holds how far it has
 * read events_raw: on SQLite the events' rowid, which follows commit order
 * because one writer holds the file, read through the view
 * events_raw_in_order so that no caller names it. Everything stored before
 * this migration was learnt as it was stored, so the mark starts at the
 * end. On PostgreSQL, where committers of several processes run side by
 * side and no order of ids is the order of commits, the committer still
 * learns each event with it: the table stays empty (a copy from SQLite
 * brings its row along) and the view is not made.
 */
static const char *const migration_22[] = {
    "CREATE TABLE sim_learnt ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " seq BIGINT NOT NULL)",
    "sqlite:INSERT INTO sim_learnt(id, seq) SELECT 1, COALESCE(MAX(rowid), 0) FROM events_raw",
    "sqlite:CREATE VIEW events_raw_in_order AS SELECT rowid AS seq, id, body FROM events_raw",
    NULL,
};

/*
 * Migration 23: invoices without an index by customer on SQLite. Every
 * invoice a webhook stores went into three places in customer order: the
 * table (keyed by account, customer, invoice), and p_invoices_customer_id,
 * which repeated that order for the one reader that did not know the
 * account: the triggers on customers, which move a customer's invoices when
 * it is linked, relinked or unlinked. Under a webhook load whose customers
 * arrive in no order, each of the two is a page of its own per event:
 * dropping the index took a tenth of the bytes an unmapped webhook writes
 * to the WAL (about 7.4 KB to 6.3 KB per event).
 *
 * An invoice's account_id is always its customer's, or '' while no
 * customers row names the customer (mirror.c sets it on insert, these
 * triggers on every change of a customers row). So the triggers find a
 * customer's invoices by the table's own key: (the old account, the
 * customer). Queries that joined customers to invoices by customer alone
 * join by both columns too. PostgreSQL keeps its indexes: its table is not
 * kept in key order, and its scan reads through a covering index.
 */
static const char *const migration_23[] = {
    "sqlite:DROP TRIGGER customers_invoices_ins",
    "sqlite:DROP TRIGGER customers_invoices_upd",
    "sqlite:DROP TRIGGER customers_invoices_del",
    "sqlite:DROP INDEX p_invoices_customer_id",
    "sqlite:CREATE TRIGGER customers_invoices_ins AFTER INSERT ON customers"
    " WHEN NEW.account_id <> ''"
    " BEGIN UPDATE p_invoices SET account_id = NEW.account_id"
    " WHERE account_id = '' AND customer_id = NEW.id; END",
    "sqlite:CREATE TRIGGER customers_invoices_upd AFTER UPDATE OF id, account_id ON customers"
    " WHEN OLD.id <> NEW.id OR OLD.account_id <> NEW.account_id"
    " BEGIN UPDATE p_invoices SET account_id = ''"
    " WHERE account_id = OLD.account_id AND customer_id = OLD.id AND OLD.id <> NEW.id"
    " AND OLD.account_id <> '';"
    " UPDATE p_invoices SET account_id = NEW.account_id"
    " WHERE account_id = (CASE WHEN OLD.id = NEW.id THEN OLD.account_id ELSE '' END)"
    " AND customer_id = NEW.id AND account_id <> NEW.account_id; END",
    "sqlite:CREATE TRIGGER customers_invoices_del AFTER DELETE ON customers"
    " WHEN OLD.account_id <> ''"
    " BEGIN UPDATE p_invoices SET account_id = ''"
    " WHERE account_id = OLD.account_id AND customer_id = OLD.id; END",
    NULL,
};

/*
 * Migration 24: the fleet's turns ([server] fleet_workers, inbox.c): at most
 * that many workers of all the replicas work at once. A turn is a row held
 * like a claim, by an owner until an expiry on the wall clock, so a turn of
 * a replica that died or hangs comes free after a lease.
 */
static const char *const migration_24[] = {
    "CREATE TABLE fleet_turns ("
    " turn INTEGER NOT NULL PRIMARY KEY,"
    " owner TEXT NOT NULL,"
    " expires_ms INTEGER NOT NULL)",
    NULL,
};

static const char *const *const migrations[] = {
    migration_1,  migration_2,	migration_3,  migration_4,  migration_5,  migration_6,
    migration_7,  migration_8,	migration_9,  migration_10, migration_11, migration_12,
    migration_13, migration_14, migration_15, migration_16, migration_17, migration_18,
    migration_19, migration_20, migration_21, migration_22, migration_23, migration_24,
};

int dun_schema_count(void)
{
	return (int)(sizeof migrations / sizeof migrations[0]);
}

const char *const *dun_schema_migration(int index)
{
	if (index < 0 || index >= dun_schema_count())
		return NULL;
	return migrations[index];
}

const char *dun_schema_for_backend(const char *stmt, const char *driver)
{
	static const char *const names[] = {"sqlite", "postgresql"};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		size_t n = strlen(names[i]);
		if (strncmp(stmt, names[i], n) == 0 && stmt[n] == ':')
			return strcmp(names[i], driver) == 0 ? stmt + n + 1 : NULL;
	}
	return stmt;
}
