// The one JSON form of statistics, shared by `sluicectl list/stats --json` (the control socket's
// list and stats replies) and `sluiced replay --json`: the same service, backend, worker and flow
// objects with the same field names wherever they appear. docs/json.md describes them; a change
// that renames or removes a field bumps kJsonSchema.
#pragma once

#include <nlohmann/json.hpp>

#include "common/snapshot.h"
#include "common/stats.h"

namespace sluice {

/** The version of the objects below, carried as "schema" in every document that holds them. */
inline constexpr int kJsonSchema = 1;

/** A backend: address, port, mac, weight, state and its counters. */
nlohmann::json backendJson(const BackendEntry& b, const BackendTotals& c);

/** Every present service of snap, each with its counters and its backends, in service-id order. */
nlohmann::json servicesJson(const Snapshot& snap, const StatsTotals& t);

/** A worker's counters; with_index: also "worker" (the total over all workers has none). */
nlohmann::json workerJson(const WorkerTotals& w, bool with_index);

/** One worker object per worker, in worker order. */
nlohmann::json workersJson(const StatsTotals& t);

/** A flow of a flow table; null when it names a service or backend snap does not have. */
nlohmann::json flowJson(const Snapshot& snap, const FlowRow& f);

}  // namespace sluice
