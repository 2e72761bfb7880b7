// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
// Balancer", NSDI 2016, section 3.4): each backend walks its own permutation of the M table slots
// and the backends take turns claiming the next free slot of their permutation until the table is
// full. A pure, deterministic function of its input: no random seed, no dependence on input order.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace sluice {

struct MaglevBackend {
  uint32_t id = 0;      // written into the table; non-zero (0 means "no backend")
  std::string key;      // stable identity that seeds the permutation, e.g. "10.0.0.11:8080"
  uint32_t weight = 0;  // relative share; 0 = takes no slot (drained)
};

/**
 * Build a Maglev lookup table.
 *
 * Backends take turns in rounds: every weighted backend takes one in round 0, and a backend of
 * weight w then takes w turns for every max_weight rounds (integer credit, no floating point), so
 * its share of the table is proportional to its weight and every weighted backend owns at least
 * one slot. With equal weights each backend owns floor(M / N) or ceil(M / N) slots. The
 * permutation hash is fixed forever (see maglev.cc): hosts behind ECMP must build equal tables.
 *
 * @param backends the backends in any order (they are sorted by key, then id, first); keys should
 *        be unique, but duplicates are tolerated and told apart by id
 * @param size the table size M; must be prime
 * @return M slots, each a backend id; all LB_BACKEND_NONE (0) when no backend has weight > 0
 * @throws std::invalid_argument if size is not prime, if more backends have weight > 0 than there
 *         are slots, or if a backend with weight > 0 has the reserved id 0
 */
std::vector<uint32_t> buildMaglevTable(std::span<const MaglevBackend> backends, uint32_t size);

/** True when n is prime (used to validate the configured table size). */
bool isPrime(uint32_t n);

}  // namespace sluice
