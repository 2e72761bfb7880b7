#include "tools/bench/katran_bench.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "control/maglev.h"

namespace sluice {

namespace {

// The layouts of Katran's map keys and values (katran/lib/bpf/balancer_structs.h), with the
// compiler's padding written out. The loader checks each size against the object's own map
// definitions before writing anything, so a Katran that changes one fails here, not silently.

/** struct vip_definition: the vip_map key. */
struct VipDefinition {
  uint32_t addr[4];  // union vip / vipv6[4], network byte order; IPv4 in word 0
  uint16_t port;     // network byte order (the program compares it with udp->dest)
  uint8_t proto;
  uint8_t pad;
};
static_assert(sizeof(VipDefinition) == 20);

/** struct vip_meta: the vip_map value. */
struct VipMeta {
  uint32_t flags;    // F_* of balancer_consts.h; 0: hash the 5-tuple, use the LRU
  uint32_t vip_num;  // the VIP's ring is ch_rings[vip_num * RING_SIZE ..]
};
static_assert(sizeof(VipMeta) == 8);

/** struct real_definition: the reals value. */
struct RealDefinition {
  uint32_t addr[4];  // union dst / dstv6[4]
  uint8_t flags;     // F_IPV6; 0: IPv4, IPIP encapsulation
  uint8_t pad[3];
};
static_assert(sizeof(RealDefinition) == 20);

/** struct ctl_value: the ctl_array value; index 0 is the default router's MAC. */
struct CtlValue {
  uint8_t mac[6];
  uint8_t pad[2];  // the union's __u64
};
static_assert(sizeof(CtlValue) == 8);

/** struct flow_key and struct real_pos_lru: the key and value of the per-CPU LRUs. */
constexpr uint32_t kFlowKeySize = 40;     // src[16], dst[16], ports 4, proto 1, 3 padding
constexpr uint32_t kRealPosLruSize = 16;  // pos 4, 4 padding, atime 8

/** struct lb_stats: the value of the per-CPU `stats` array. */
struct LbStats {
  uint64_t v1;
  uint64_t v2;
};

// Indices into `stats` past MAX_VIPS (balancer_consts.h).
constexpr uint32_t kLruCntrs = 0;
constexpr uint32_t kFallbackLruCntr = 3;

// The ring size the issue measures Katran with: its default RING_SIZE. The object's is compiled
// in; the loader derives it from the map sizes (ch_rings has MAX_VIPS * RING_SIZE entries) and
// refuses any other.
constexpr uint32_t kRingSize = 65537;

std::string why(int err) { return std::strerror(err < 0 ? -err : err); }

// Katran's build compiles for the host and lowers the IR to BPF with llc (Makefile-bpf), so its
// object keeps the host's unwind tables (.eh_frame, .rel.eh_frame), and libbpf prints a note for
// each as it skips them. They say nothing about the program: while the object is opened, those
// two notes are dropped and every other message goes on to the printer that was set.
libbpf_print_fn_t g_previous_print = nullptr;

int skipUnwindTableNotes(enum libbpf_print_level level, const char* format, va_list args) {
  va_list copy;
  va_copy(copy, args);
  char line[512];
  std::vsnprintf(line, sizeof(line), format, copy);
  va_end(copy);
  if (std::strstr(line, "skipping") != nullptr && std::strstr(line, ".eh_frame") != nullptr) {
    return 0;
  }
  return g_previous_print != nullptr ? g_previous_print(level, format, args) : 0;
}

bpf_map* needMap(bpf_object* obj, const char* name) {
  bpf_map* m = bpf_object__find_map_by_name(obj, name);
  if (m == nullptr) {
    throw std::runtime_error(fmt::format("not Katran's balancer: it has no map {}", name));
  }
  return m;
}

void needSizes(const bpf_map* m, uint32_t key, uint32_t value) {
  if (bpf_map__key_size(m) != key || bpf_map__value_size(m) != value) {
    throw std::runtime_error(fmt::format(
        "Katran's map {} has key/value sizes {}/{}, this loader writes {}/{} "
        "(balancer_structs.h changed?)",
        bpf_map__name(m), bpf_map__key_size(m), bpf_map__value_size(m), key, value));
  }
}

void update(int fd, const void* key, const void* value, const char* what) {
  if (bpf_map_update_elem(fd, key, value, BPF_ANY) != 0) {
    throw std::runtime_error(fmt::format("cannot write Katran's {}: {}", what, why(errno)));
  }
}

uint32_t v4Word(const IpAddress& a) {
  if (!a.isV4()) {
    throw std::runtime_error("the Katran bench programs IPv4 addresses only");
  }
  uint32_t w[4];
  a.toWords(w);
  return w[0];
}

}  // namespace

KatranBalancer::KatranBalancer(const std::string& object_path, const KatranService& service,
                               uint32_t lru_entries) {
  ncpus_ = libbpf_num_possible_cpus();
  if (ncpus_ < 1) {
    throw std::runtime_error(fmt::format("cannot count the CPUs: {}", why(ncpus_)));
  }
  g_previous_print = libbpf_set_print(skipUnwindTableNotes);
  obj_ = bpf_object__open_file(object_path.c_str(), nullptr);
  const int open_errno = errno;
  libbpf_set_print(g_previous_print);
  if (obj_ == nullptr) {
    errno = open_errno;
    throw std::runtime_error(fmt::format("cannot open {}: {}", object_path, why(errno)));
  }
  try {
    bpf_program* prog = bpf_object__find_program_by_name(obj_, "balancer_ingress");
    if (prog == nullptr || bpf_program__type(prog) != BPF_PROG_TYPE_XDP) {
      throw std::runtime_error(
          fmt::format("{} is not Katran's balancer: no XDP program balancer_ingress", object_path));
    }
    bpf_map* vip_map = needMap(obj_, "vip_map");
    bpf_map* ch_rings = needMap(obj_, "ch_rings");
    bpf_map* lru_mapping = needMap(obj_, "lru_mapping");
    needSizes(vip_map, sizeof(VipDefinition), sizeof(VipMeta));
    needSizes(needMap(obj_, "reals"), sizeof(uint32_t), sizeof(RealDefinition));
    needSizes(ch_rings, sizeof(uint32_t), sizeof(uint32_t));
    needSizes(needMap(obj_, "ctl_array"), sizeof(uint32_t), sizeof(CtlValue));
    needSizes(needMap(obj_, "stats"), sizeof(uint32_t), sizeof(LbStats));
    // fallback_cache is declared as lru_mapping's inner maps are: same key and value.
    needSizes(needMap(obj_, "fallback_cache"), kFlowKeySize, kRealPosLruSize);
    max_vips_ = bpf_map__max_entries(vip_map);
    if (max_vips_ == 0 || bpf_map__max_entries(ch_rings) != max_vips_ * kRingSize) {
      throw std::runtime_error(fmt::format(
          "Katran's ring has {} slots per VIP, the bench measures {} (RING_SIZE): rebuild "
          "with build-katran.sh",
          max_vips_ == 0 ? 0 : bpf_map__max_entries(ch_rings) / max_vips_, kRingSize));
    }
    if (bpf_map__max_entries(lru_mapping) < static_cast<uint32_t>(ncpus_)) {
      throw std::runtime_error(fmt::format("Katran supports {} CPUs (MAX_SUPPORTED_CPUS), this "
                                           "machine has {}",
                                           bpf_map__max_entries(lru_mapping), ncpus_));
    }

    // As KatranLb::initLrus: the per-CPU LRUs exist before the load, and the first one is the
    // template of lru_mapping's inner map (the kernel checks every inner map against it: type,
    // key and value sizes, flags; not max_entries, which is why the BTF template's 1,000
    // entries, DEFAULT_LRU_SIZE, do not bound them). Named as createLruMap names them. Flags 0:
    // a common LRU list, as Katran creates them (no BPF_F_NO_COMMON_LRU; no NUMA node here).
    for (int cpu = 0; cpu < ncpus_; ++cpu) {
      const std::string name = fmt::format("katran_lru{}", cpu);
      const int fd = bpf_map_create(BPF_MAP_TYPE_LRU_HASH, name.c_str(), kFlowKeySize,
                                    kRealPosLruSize, lru_entries, nullptr);
      if (fd < 0) {
        throw std::runtime_error(
            fmt::format("cannot create Katran's LRU for CPU {}: {}", cpu, why(errno)));
      }
      lru_fds_.push_back(fd);
    }
    if (int rc = bpf_map__set_inner_map_fd(lru_mapping, lru_fds_[0]); rc != 0) {
      throw std::runtime_error(fmt::format("cannot set lru_mapping's inner map: {}", why(rc)));
    }
    if (int rc = bpf_object__load(obj_); rc != 0) {
      throw std::runtime_error(fmt::format(
          "cannot load {}: {} (it needs root or CAP_BPF and CAP_NET_ADMIN)", object_path, why(rc)));
    }
    prog_fd_ = bpf_program__fd(prog);
    stats_fd_ = bpf_map__fd(needMap(obj_, "stats"));
    // As KatranLb::attachLrus: lru_mapping[cpu] = that CPU's LRU.
    const int mapping_fd = bpf_map__fd(lru_mapping);
    for (int cpu = 0; cpu < ncpus_; ++cpu) {
      const uint32_t key = static_cast<uint32_t>(cpu);
      update(mapping_fd, &key, &lru_fds_[static_cast<size_t>(cpu)], "lru_mapping");
    }
    program(service);
  } catch (...) {
    for (int fd : lru_fds_) {
      close(fd);
    }
    bpf_object__close(obj_);
    throw;
  }
}

KatranBalancer::~KatranBalancer() {
  bpf_object__close(obj_);
  for (int fd : lru_fds_) {
    close(fd);
  }
}

void KatranBalancer::program(const KatranService& service) {
  // Ids as KatranLb hands them out: reals from 1 (ch_rings value 0 means "no real",
  // balancer.bpf.c "Real ids start from 1"), VIPs from 0.
  const int reals_fd = bpf_map__fd(needMap(obj_, "reals"));
  std::vector<MaglevBackend> backends;
  for (size_t i = 0; i < service.reals.size(); ++i) {
    RealDefinition real{};
    real.addr[0] = v4Word(service.reals[i]);
    const uint32_t id = static_cast<uint32_t>(i + 1);
    update(reals_fd, &id, &real, "reals");
    reals_.push_back(real.addr[0]);
    backends.push_back({id, service.reals[i].str(), 1});
  }

  // The ring: Sluice's own Maglev builder over the reals (equal weights, keyed by address), not
  // Katran's MaglevHash. The contents only decide which real a flow goes to; the program's
  // cost is the same one ch_rings lookup whatever they are. vip_num 0: slots 0 .. RING_SIZE-1,
  // written in one batch as KatranLb::programHashRing does (bpfUpdateMapBatch).
  const std::vector<uint32_t> ring = buildMaglevTable(backends, kRingSize);
  std::vector<uint32_t> keys(ring.size());
  for (uint32_t i = 0; i < keys.size(); ++i) {
    keys[i] = i;
  }
  uint32_t count = static_cast<uint32_t>(ring.size());
  if (bpf_map_update_batch(bpf_map__fd(needMap(obj_, "ch_rings")), keys.data(), ring.data(),
                           &count, nullptr) != 0 ||
      count != ring.size()) {
    throw std::runtime_error(fmt::format("cannot write Katran's ch_rings: {}", why(errno)));
  }

  // The VIP last. KatranLb adds it first (addVip, then the reals and ring through
  // modifyRealsForVip), which leaves a VIP with an empty ring in between: its packets are
  // dropped (CH_DROP_STATS). Nothing runs here in between, but this order has no such state.
  VipDefinition vip{};
  vip.addr[0] = v4Word(service.vip);
  vip.port = htons(service.port);
  vip.proto = static_cast<uint8_t>(service.proto);
  const VipMeta meta{0, 0};
  update(bpf_map__fd(needMap(obj_, "vip_map")), &vip, &meta, "vip_map");

  CtlValue mac{};
  std::memcpy(mac.mac, service.router_mac.bytes.data(), 6);
  router_mac_ = service.router_mac.bytes;
  const uint32_t mac_pos = 0;  // kMacAddrPos
  update(bpf_map__fd(needMap(obj_, "ctl_array")), &mac_pos, &mac, "ctl_array");
}

bool KatranBalancer::isEncapsulatedToReal(std::span<const uint8_t> in,
                                          std::span<const uint8_t> out) const {
  constexpr size_t kEth = 14;
  constexpr size_t kIp = 20;
  if (in.size() < kEth || out.size() != in.size() + kIp) {
    return false;
  }
  const uint8_t* ip = out.data() + kEth;
  if (std::memcmp(out.data(), router_mac_.data(), 6) != 0 ||
      std::memcmp(out.data() + 6, in.data(), 6) != 0 || out[12] != 0x08 || out[13] != 0x00 ||
      ip[0] != 0x45 || ip[9] != 4 /* IPPROTO_IPIP */) {
    return false;
  }
  uint32_t sum = 0;  // RFC 1071: the header's one's-complement sum is 0xffff when valid
  for (size_t i = 0; i < kIp; i += 2) {
    sum += static_cast<uint32_t>(ip[i] << 8 | ip[i + 1]);
  }
  while (sum > 0xffff) {
    sum = (sum & 0xffff) + (sum >> 16);
  }
  uint32_t dst;
  std::memcpy(&dst, ip + 16, 4);
  bool to_real = false;
  for (uint32_t r : reals_) {
    to_real = to_real || r == dst;
  }
  return sum == 0xffff && to_real &&
         std::memcmp(ip + kIp, in.data() + kEth, in.size() - kEth) == 0;
}

KatranBalancer::LruCounters KatranBalancer::lruCounters() const {
  std::vector<LbStats> per_cpu(static_cast<size_t>(ncpus_));
  auto read = [&](uint32_t index) {
    const uint32_t key = max_vips_ + index;
    if (bpf_map_lookup_elem(stats_fd_, &key, per_cpu.data()) != 0) {
      throw std::runtime_error(fmt::format("cannot read Katran's stats: {}", why(errno)));
    }
    LbStats total{};
    for (const LbStats& s : per_cpu) {
      total.v1 += s.v1;
      total.v2 += s.v2;
    }
    return total;
  };
  const LbStats lru = read(kLruCntrs);
  return {lru.v1, lru.v2, read(kFallbackLruCntr).v1};
}

}  // namespace sluice
