/*
 * sim.h — the built-in simulated payment provider.
 *
 * It plays Stripe for the embedded default: customers with cards that
 * succeed or fail with given decline codes, subscriptions, invoices, payment
 * attempts that really succeed or fail, consolidated invoices. Its objects
 * are Stripe-format JSON kept in the sim_* tables of the same SQLite file,
 * and every change it makes is also queued as a Stripe-format event
 * (sim_events) — the simulated webhooks, which `dunning demo` feeds through
 * the same ingest path real webhooks take.
 *
 * Card behaviour of a customer is a string:
 *   "ok"                      every charge succeeds
 *   "<decline_code>"          every charge fails with that code
 *   "<decline_code>@<pct>"    fails with that code, succeeds pct% of the time
 *                             (deterministic per invoice and attempt)
 * Optional suffixes ",advice=<advice_code>" and ",network=<code>".
 *   "ok,upgrades=<code>"      succeeds, except upgrade (subscription_update)
 *                             invoices, which fail with that code
 */
#ifndef DUN_SIM_H
#define DUN_SIM_H

#include <stdbool.h>
#include <stdint.h>

#include "provider/provider.h"
#include "store/db.h"

struct dun_sim;

/* A simulated provider over db (borrowed; must outlive the sim). */
struct dun_sim *dun_sim_new(struct dun_db *db, uint64_t seed);
void dun_sim_destroy(struct dun_sim *sim);
/* The provider interface over sim (sim stays owned by the caller). */
struct dun_provider dun_sim_provider(struct dun_sim *sim);

/* World operations (the demo, tests and `dunning sim ...` use these). */
enum dun_err dun_sim_create_customer(struct dun_sim *sim, const char *account_id, const char *email,
				     const char *name, const char *behavior, char *customer_id_out);
enum dun_err dun_sim_create_subscription(struct dun_sim *sim, const char *customer_id,
					 char *subscription_id_out);
/*
 * Create an invoice for customer (on subscription, may be "") and attempt
 * to charge it once, as the provider does when a billing period starts.
 */
enum dun_err dun_sim_bill(struct dun_sim *sim, const char *customer_id, const char *subscription_id,
			  int64_t amount_minor, const char *billing_reason, char *invoice_id_out);
/* The customer puts a new card on file with this behaviour. */
enum dun_err dun_sim_update_card(struct dun_sim *sim, const char *customer_id,
				 const char *behavior);
/* The customer pays an open invoice out of band (e.g. the hosted page). */
enum dun_err dun_sim_pay_out_of_band(struct dun_sim *sim, const char *invoice_id);

/*
 * Learn an object from an ingested provider event (`dunning ingest` on the
 * embedded default), so the simulated provider can act on accounts it did
 * not create: customers, subscriptions, invoices and charges are stored as
 * the event shows them, and a customer's card behaves like its last charge
 * (it keeps failing with the same decline code until a new card appears in
 * a customer update, which works). The simulator's own objects (ids with
 * "_sim") are never overwritten. Borrows obj. Each statement commits on its
 * own unless the simulator's connection is inside a transaction.
 */
void dun_sim_observe(struct dun_sim *sim, json_t *obj);
/*
 * The same learning, written through db (any connection to the database,
 * typically inside the caller's transaction, so the object is learnt
 * exactly when the event that shows it is stored). With event_id (the id
 * of the event carrying obj, stored in events_raw in the same transaction)
 * the object is kept as a reference to that event rather than as a second
 * copy: nothing is serialised and half the bytes are written. NULL stores
 * a copy. Borrows both. DUN_OK, or the store's error (the caller rolls the
 * event back).
 */
enum dun_err dun_sim_observe_in_tx(struct dun_db *db, const char *event_id, json_t *obj);

/*
 * Whether the simulator on db learns stored webhooks lazily, in commit
 * order (SQLite), rather than being taught each one in the transaction
 * that stores it (dun_sim_observe_in_tx, where commits run side by side:
 * PostgreSQL). See sim.c, "Learning".
 */
bool dun_sim_learns_lazily(const struct dun_db *db);
/*
 * Learn the events stored since the simulator last learnt, oldest first,
 * in transactions of a few hundred events (or inside db's open
 * transaction, if one is open). stop (may be NULL) is asked between
 * transactions whether to leave the rest for later. *learnt (may be NULL)
 * counts the events read. A no-op where learning is not lazy. Every
 * operation of the simulator that reads its objects does this first.
 */
enum dun_err dun_sim_learn_pending(struct dun_db *db, bool (*stop)(void *), void *stop_arg,
				   int64_t *learnt);

/*
 * Pop up to max queued events (oldest first) into a JSON array (new
 * reference, caller decrefs); marks them delivered.
 */
json_t *dun_sim_take_events(struct dun_sim *sim, int max);
/*
 * The same inside the caller's open transaction on the simulator's
 * connection, so that the events are marked delivered only if what the
 * caller does with them commits too: *out gets the array (never NULL), and
 * the statement's error is returned.
 */
enum dun_err dun_sim_take_events_in_tx(struct dun_sim *sim, int max, json_t **out);
/* Whether any event is queued, by a read that takes no write lock. */
enum dun_err dun_sim_has_events(struct dun_sim *sim, bool *queued);

#endif
