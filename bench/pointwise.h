/*
 * pointwise.h — the drift scan as it was before the streaming GATHER: page
 * through account ids, dun_gather() each account (ten point queries) and
 * EVALUATE and DECIDE it. The equivalence test checks the streaming scan
 * against it; the benchmark times it for comparison. Like the scan, it reads
 * the mirror only and never asks the provider.
 */
#ifndef DUN_BENCH_POINTWISE_H
#define DUN_BENCH_POINTWISE_H

#include "inbox/scan.h"

/*
 * Count accounts, drift per class and planned consequences at now into out
 * (examples stays NULL; nothing is queued). Uses en's snapshot and buffers.
 */
enum dun_err dun_bench_pointwise_scan(struct dun_engine *en, int64_t now,
				      struct dun_scan_result *out);

#endif
