#include "common/snapshot.h"

#include <arpa/inet.h>

#include <bit>
#include <cstring>

namespace sluice {

const char* forwardingName(Forwarding f) { return f == Forwarding::kNat ? "nat" : "dr"; }

void EndpointMap::reserve(size_t n) {
  const size_t want = std::bit_ceil(std::max<size_t>(8, n * 2));
  if (want <= slots_.size()) {
    return;
  }
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(want, Slot{});
  mask_ = want - 1;
  count_ = 0;
  for (const Slot& s : old) {
    if (s.used) {
      insert(s.key, s.value);
    }
  }
}

void EndpointMap::insert(const EndpointKey& key, Value value) {
  if ((count_ + 1) * 2 > slots_.size()) {
    reserve(count_ + 1);
  }
  for (size_t i = hashKey(key) & mask_;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (!s.used) {
      s = Slot{key, value, true};
      ++count_;
      return;
    }
    if (sameEndpoint(s.key, key)) {
      s.value = value;
      return;
    }
  }
}

EndpointKey makeEndpointKey(const IpAddress& addr, uint16_t port, uint8_t proto) {
  EndpointKey k{};
  addr.toWords(k.addr);
  k.port = htons(port);
  k.proto = proto;
  k.family = addr.family;
  return k;
}

const char* backendStateName(BackendState s) {
  switch (s) {
    case BackendState::kUp: return "up";
    case BackendState::kDrained: return "drained";
    case BackendState::kDown: return "down";
    case BackendState::kMaintenance: return "maintenance";
    case BackendState::kUnresolved: return "unresolved";
  }
  return "unknown";
}

}  // namespace sluice
