// The contract between the control plane and both data paths: the immutable tables a worker reads
// on every packet (services, backends, Maglev tables and the lookup maps). The control plane
// builds a Snapshot (src/control/snapshot_builder.h); the DPDK path publishes it with one atomic
// store and frees the old one only after every worker has passed a quiescent point
// (src/dataplane/snapshot_slot.h); the XDP path writes it into its BPF maps (src/xdp/). Nothing in
// a published Snapshot is ever written again.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/lb_abi.h"
#include "common/net.h"

namespace sluice {

/** How a service forwards: LVS direct routing (MACs only) or NAT (addresses, ports, checksums). */
enum class Forwarding : uint8_t { kDr, kNat };
const char* forwardingName(Forwarding f);

/** Backend ids are below this (id 0 is reserved for "none"); the XDP path's backends map size. */
inline constexpr uint32_t kMaxBackendIds = LB_MAX_BACKENDS;

/**
 * (address, port, protocol) of a VIP or a backend: the ABI's key, the same bytes the XDP path's
 * maps are keyed by. Port in network order.
 */
using EndpointKey = lb_endpoint_key;

inline bool sameEndpoint(const EndpointKey& a, const EndpointKey& b) noexcept {
  return a.addr[0] == b.addr[0] && a.addr[1] == b.addr[1] && a.addr[2] == b.addr[2] &&
         a.addr[3] == b.addr[3] && a.port == b.port && a.proto == b.proto &&
         a.family == b.family;
}

/**
 * A read-only open-addressing map from EndpointKey to two 32-bit values, built once by the
 * control plane. Linear probing at a load factor of at most 1/2; a lookup touches one or two
 * cache lines and allocates nothing.
 */
class EndpointMap {
 public:
  struct Value {
    uint32_t service_id = 0;
    uint32_t backend_id = 0;
  };

  EndpointMap() = default;
  /** Reserve room for n keys (call before insert). */
  void reserve(size_t n);
  /** Insert or overwrite. Control plane only. */
  void insert(const EndpointKey& key, Value value);
  /** nullptr when absent. */
  const Value* find(const EndpointKey& key) const noexcept {
    if (slots_.empty()) {
      return nullptr;
    }
    for (size_t i = hashKey(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (!s.used) {
        return nullptr;
      }
      if (sameEndpoint(s.key, key)) {
        return &s.value;
      }
    }
  }
  size_t size() const { return count_; }
  /** Call f(key, value) for every entry, in slot order (control plane and loaders). */
  template <class F>
  void forEach(F&& f) const {
    for (const Slot& s : slots_) {
      if (s.used) {
        f(s.key, s.value);
      }
    }
  }

 private:
  struct Slot {
    EndpointKey key{};
    Value value{};
    bool used = false;
  };
  static uint32_t hashKey(const EndpointKey& k) noexcept {
    // Only this process builds and reads the map, so any well-mixing hash does; this one costs
    // three multiplies (the flow hash, which must be stable across hosts, is lb_flow_hash).
    uint64_t a;
    uint64_t b;
    std::memcpy(&a, &k.addr[0], 8);
    std::memcpy(&b, &k.addr[2], 8);
    const uint64_t c = uint64_t{k.port} << 16 | uint64_t{k.proto} << 8 | k.family;
    uint64_t h = a * 0x9e3779b97f4a7c15ull ^ b * 0xc2b2ae3d27d4eb4full ^ c * 0x165667b19e3779f9ull;
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    return static_cast<uint32_t>(h >> 32);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t count_ = 0;
};

/**
 * A built Maglev table, immutable and shared: a snapshot that changes one service shares the
 * tables of all the others with its predecessor, so a publish costs O(changed services).
 */
class MaglevSlots {
 public:
  MaglevSlots() = default;
  explicit MaglevSlots(std::vector<uint32_t> slots)
      : table_(std::make_shared<const std::vector<uint32_t>>(std::move(slots))),
        data_(table_->data()),
        size_(static_cast<uint32_t>(table_->size())),
        fastmod_(size_ == 0 ? 0 : UINT64_MAX / size_ + 1) {}

  size_t size() const { return size_; }
  uint32_t operator[](size_t i) const { return data_[i]; }
  const uint32_t* begin() const { return data_; }
  const uint32_t* end() const { return data_ + size_; }

  /**
   * slots[hash % M] without a division: Lemire, Kaser and Kurz, "Faster remainder by direct
   * computation" (2019): with c = ceil(2^64 / M), hash % M = ((c * hash mod 2^64) * M) >> 64,
   * exact for 32-bit hashes.
   */
  uint32_t pick(uint32_t hash) const noexcept {
    const uint64_t low = fastmod_ * hash;
    return data_[static_cast<uint32_t>((static_cast<unsigned __int128>(low) * size_) >> 64)];
  }

 private:
  std::shared_ptr<const std::vector<uint32_t>> table_;
  const uint32_t* data_ = nullptr;
  uint32_t size_ = 0;
  uint64_t fastmod_ = 0;
};

/** Why a backend does or does not take new flows; what `sluicectl list` shows. */
enum class BackendState : uint8_t {
  kUp,           // in the Maglev table
  kDrained,      // weight 0: keeps its flows, gets no new ones
  kDown,         // its health check failed
  kMaintenance,  // forced down by the operator (sluicectl backend down)
  kUnresolved,   // no MAC yet: neither in the configuration nor resolved by ARP/ND
};
const char* backendStateName(BackendState s);

struct BackendEntry {
  bool present = false;    // false: the id is free; flows pinned to it are rescheduled
  uint32_t service_id = 0;
  uint32_t epoch = 0;      // bumped when the id is given to another backend
  uint32_t weight = 0;     // configured; 0 = drained: keeps its flows, gets no new ones
  BackendState state = BackendState::kUp;  // only kUp backends are in the Maglev table
  uint32_t flags = 0;      // LB_BACKEND_F_RESCHEDULE: its flows leave it on their next packet
  uint32_t addr[4] = {};   // wire layout
  uint16_t port_be = 0;
  uint8_t mac[6] = {};
  IpAddress address;       // for reports
  uint16_t port = 0;
};

struct ServiceEntry {
  bool present = false;
  uint32_t id = 0;
  std::string name;
  EndpointKey key{};
  IpAddress vip;
  uint16_t port = 0;
  Protocol protocol = Protocol::kTcp;
  Forwarding forwarding = Forwarding::kDr;
  MaglevSlots maglev;                  // M slots of backend ids (LB_BACKEND_NONE when empty)
  std::vector<uint64_t> maglev_inputs;  // what the table was built from: (id, epoch, weight), M

  /** The backend id of the Maglev slot for a flow hash: maglev[hash % M]. */
  uint32_t pick(uint32_t hash) const noexcept { return maglev.pick(hash); }
  std::vector<uint32_t> backend_ids;  // this service's backends, in canonical order
};

struct Snapshot {
  uint64_t generation = 0;
  std::vector<ServiceEntry> services;  // indexed by service id
  std::vector<BackendEntry> backends;  // indexed by backend id; [0] is never present
  EndpointMap service_map;             // VIP:port/proto -> service
  EndpointMap nat_reply_map;           // NAT backend addr:port/proto -> service, backend
  EndpointMap vip_addresses;           // VIP address alone (port 0, proto 0): fragments, ARP/ND, echo
  EndpointMap local_addresses;         // Sluice's own addresses (port 0, proto 0): to the kernel
  uint64_t tcp_timeout_ns = 0;
  uint64_t tcp_fin_timeout_ns = 0;
  uint64_t udp_timeout_ns = 0;
  uint64_t tcp_syn_timeout_ns = 0;  // a TCP flow whose handshake has not completed
  // New flows per second per worker (per CPU on XDP) above which a new flow is forwarded by its
  // Maglev pick alone, without an entry (Katran's LRU bypass); 0 = no limit.
  uint64_t new_flow_rate_limit = 0;
  // NAT replies' next hop per family (configured gateway_mac, or the resolved gateway); when
  // unknown, the port's learned router MAC.
  bool has_gateway_mac = false;  // IPv4
  uint8_t gateway_mac[6] = {};
  bool has_gateway_mac6 = false;
  uint8_t gateway_mac6[6] = {};
};

using SnapshotPtr = std::unique_ptr<Snapshot>;

/** EndpointKey of an address, port (host order) and protocol. */
EndpointKey makeEndpointKey(const IpAddress& addr, uint16_t port, uint8_t proto);

}  // namespace sluice
