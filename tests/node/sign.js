#!/usr/bin/env node
// sign.js — Stripe-Signature headers made by the official `stripe` npm
// package, so tests/integration/test_serve.py checks our verifier against
// Stripe's own signing code rather than against a reimplementation.
//
//   node sign.js SECRET [TIMESTAMP] < payload
//       prints the header for the raw bytes on standard input.
//   node sign.js --batch < requests.jsonl
//       one JSON object per line, {"payload": "...", "secret": "whsec_...",
//       "timestamp": 1700000000}, one header per output line (for tests that
//       sign hundreds of events without starting node for each).
//
// TIMESTAMP defaults to now (Stripe's default). The payload is signed exactly
// as given: no re-serialisation, no trailing newline added or removed.
'use strict';

const fs = require('fs');
const stripeModule = require('stripe');
const Stripe = stripeModule.Stripe || stripeModule;
const stripe = new Stripe('sk_test_signer');

function header(payload, secret, timestamp) {
	const opts = {payload, secret};
	if (timestamp !== undefined && timestamp !== null)
		opts.timestamp = Number(timestamp);
	return stripe.webhooks.generateTestHeaderString(opts);
}

const argv = process.argv.slice(2);
if (argv[0] === '--batch' && argv.length === 1) {
	const out = [];
	for (const line of fs.readFileSync(0).toString('utf8').split('\n')) {
		if (!line.trim())
			continue;
		const r = JSON.parse(line);
		out.push(header(r.payload, r.secret, r.timestamp));
	}
	process.stdout.write(out.join('\n') + (out.length ? '\n' : ''));
} else if (argv.length >= 1 && argv.length <= 2 && argv[0].startsWith('whsec_')) {
	// Bytes in, bytes signed: decode as UTF-8 only because the library takes a string.
	process.stdout.write(header(fs.readFileSync(0).toString('utf8'), argv[0], argv[1]) + '\n');
} else {
	process.stderr.write('usage: node sign.js SECRET [TIMESTAMP] < payload\n' +
			     '       node sign.js --batch < requests.jsonl\n');
	process.exit(64);
}
