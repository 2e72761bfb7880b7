#include "xdp/xdp_dataplane.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <fstream>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "bpf/xdp_lb.skel.h"

namespace sluice {

static_assert(kXdpAborted == XDP_ABORTED && kXdpDrop == XDP_DROP && kXdpPass == XDP_PASS &&
              kXdpTx == XDP_TX);

namespace {

std::string why(int err) { return std::strerror(err < 0 ? -err : err); }

// The kernel's ENOTSUPP (not in the userspace headers): a map type without batch operations.
constexpr int kEnotsupp = 524;

// The value of a local_addrs entry: the key's presence is what the program looks at.
constexpr uint32_t kLocalAddress = 1;

bool keyLess(const lb_endpoint_key& a, const lb_endpoint_key& b) {
  return std::memcmp(&a, &b, sizeof(a)) < 0;
}

using KeySet = std::set<lb_endpoint_key, decltype(&keyLess)>;

/** An fd that is closed when it goes out of scope, unless released. */
class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) {
      close(fd_);
    }
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

/**
 * The map writes of one publish, each recorded before it is made so that the publish can be
 * taken back whole: a key's previous value or its absence, and for a Maglev table an fd that
 * holds the inner map it replaces (a userspace lookup of an ARRAY_OF_MAPS entry gives the inner
 * map's id; bpf_map_get_fd_by_id keeps it alive). rollback() replays the log in reverse, which
 * walks back through the same consistent states the writes went through. The destructor closes
 * the held fds: on commit the replaced tables are freed once no program run uses them.
 */
class MapTxn {
 public:
  /** @param fail_after fault injection: writes made before the next one fails (< 0: none) */
  explicit MapTxn(int fail_after) : fail_after_(fail_after) {}
  ~MapTxn() {
    for (const Undo& u : log_) {
      if (u.inner_fd >= 0) {
        close(u.inner_fd);
      }
    }
  }
  MapTxn(const MapTxn&) = delete;
  MapTxn& operator=(const MapTxn&) = delete;

  /** map[key] = value, unless it holds that already. @throws XdpError */
  template <class K, class V>
  void put(int fd, const K& key, const V& value, const char* what) {
    Undo u = previous<K, V>(fd, key, what);
    if (u.prev == Prev::kValue && std::memcmp(u.value.data(), &value, sizeof(V)) == 0) {
      return;
    }
    log_.push_back(u);
    if (fault() || bpf_map_update_elem(fd, &key, &value, BPF_ANY) != 0) {
      const int e = errno;
      throw XdpError(fmt::format("cannot write the {} map: {}", what, why(e)));
    }
  }

  /** Delete map[key]; a key that is gone already (ENOENT) is not a failure. @throws XdpError */
  template <class V, class K>
  void erase(int fd, const K& key, const char* what) {
    Undo u = previous<K, V>(fd, key, what);
    if (u.prev == Prev::kAbsent) {
      return;
    }
    log_.push_back(u);
    if (fault() || (bpf_map_delete_elem(fd, &key) != 0 && errno != ENOENT)) {
      const int e = errno;
      throw XdpError(fmt::format("cannot delete from the {} map: {}", what, why(e)));
    }
  }

  /** outer[sid] = the inner map inner, holding the one it replaces. @throws XdpError */
  void putInner(int outer, uint32_t sid, int inner, const std::string& service) {
    holdInner(outer, sid, service);
    if (fault() || bpf_map_update_elem(outer, &sid, &inner, BPF_ANY) != 0) {
      const int e = errno;
      throw XdpError(fmt::format("cannot install the Maglev table of {:?}: {}", service, why(e)));
    }
  }

  /** Remove outer[sid], holding the inner map it had. @throws XdpError */
  void eraseInner(int outer, uint32_t sid) {
    const std::string service = fmt::format("service {}", sid);
    if (!holdInner(outer, sid, service)) {
      return;
    }
    if (fault() || (bpf_map_delete_elem(outer, &sid) != 0 && errno != ENOENT)) {
      const int e = errno;
      throw XdpError(fmt::format("cannot remove the Maglev table of {}: {}", service, why(e)));
    }
  }

  /** Fill a new inner map that no program sees yet: counted, nothing to undo. @throws XdpError */
  void fill(int inner, const MaglevSlots& slots) {
    const uint32_t n = static_cast<uint32_t>(slots.size());
    if (n == 0) {
      return;
    }
    std::vector<uint32_t> keys(n);
    for (uint32_t i = 0; i < n; ++i) {
      keys[i] = i;
    }
    uint32_t count = n;
    if (fault()) {
      throw XdpError(fmt::format("cannot fill a Maglev table map: {}", why(errno)));
    }
    if (bpf_map_update_batch(inner, keys.data(), slots.begin(), &count, nullptr) == 0) {
      return;
    }
    if (errno != EINVAL && errno != EOPNOTSUPP && errno != kEnotsupp) {
      throw XdpError(fmt::format("cannot fill a Maglev table map: {}", why(errno)));
    }
    for (uint32_t i = 0; i < n; ++i) {  // kernels without batch ops
      if (fault() || bpf_map_update_elem(inner, &keys[i], slots.begin() + i, BPF_ANY) != 0) {
        throw XdpError(fmt::format("cannot fill a Maglev table map: {}", why(errno)));
      }
    }
  }

  /**
   * Put back what the logged writes replaced, newest first.
   * @return how many entries could not be put back (0: the maps are as before)
   */
  size_t rollback() noexcept {
    size_t lost = 0;
    for (auto it = log_.rbegin(); it != log_.rend(); ++it) {
      const Undo& u = *it;
      int rc = 0;
      switch (u.prev) {
        case Prev::kValue:
          rc = bpf_map_update_elem(u.fd, u.key.data(), u.value.data(), BPF_ANY);
          break;
        case Prev::kInner:
          rc = bpf_map_update_elem(u.fd, u.key.data(), &u.inner_fd, BPF_ANY);
          break;
        case Prev::kAbsent:
          rc = bpf_map_delete_elem(u.fd, u.key.data()) != 0 && errno != ENOENT ? -1 : 0;
          break;
      }
      lost += rc != 0 ? 1 : 0;
    }
    return lost;
  }

 private:
  static constexpr size_t kMaxKey = sizeof(lb_endpoint_key);
  static constexpr size_t kMaxValue = std::max({sizeof(lb_backend), sizeof(lb_service),
                                                sizeof(lb_nat_reply), sizeof(uint32_t)});
  enum class Prev : uint8_t { kValue, kAbsent, kInner };
  struct Undo {
    int fd = -1;
    Prev prev = Prev::kAbsent;
    std::array<uint8_t, kMaxKey> key{};
    std::array<uint8_t, kMaxValue> value{};
    int inner_fd = -1;  // kInner: holds the replaced inner map until commit or rollback
  };

  /** What map[key] holds now. @throws XdpError when it cannot be read */
  template <class K, class V>
  Undo previous(int fd, const K& key, const char* what) {
    static_assert(sizeof(K) <= kMaxKey && sizeof(V) <= kMaxValue);
    Undo u;
    u.fd = fd;
    std::memcpy(u.key.data(), &key, sizeof(K));
    if (bpf_map_lookup_elem(fd, &key, u.value.data()) == 0) {
      u.prev = Prev::kValue;
    } else if (errno != ENOENT) {
      const int e = errno;
      throw XdpError(fmt::format("cannot read the {} map: {}", what, why(e)));
    }
    return u;
  }

  /** Log outer[sid] with an fd on its inner map. @return false when the entry is empty */
  bool holdInner(int outer, uint32_t sid, const std::string& service) {
    Undo u;
    u.fd = outer;
    std::memcpy(u.key.data(), &sid, sizeof(sid));
    uint32_t id = 0;
    if (bpf_map_lookup_elem(outer, &sid, &id) != 0) {
      if (errno != ENOENT) {
        const int e = errno;
        throw XdpError(fmt::format("cannot read the Maglev table of {}: {}", service, why(e)));
      }
      log_.push_back(u);
      return false;
    }
    UniqueFd held(bpf_map_get_fd_by_id(id));
    if (held.get() < 0) {
      const int e = errno;
      throw XdpError(fmt::format("cannot hold the Maglev table of {} (map id {}): {}", service, id,
                                 why(e)));
    }
    u.prev = Prev::kInner;
    log_.push_back(u);
    log_.back().inner_fd = held.release();
    return true;
  }

  /** Every write passes here just before its syscall: the injected fault fails it with EIO. */
  bool fault() {
    const bool hit = writes_++ == fail_after_;
    if (hit) {
      errno = EIO;
    }
    return hit;
  }

  std::vector<Undo> log_;
  int fail_after_;
  int writes_ = 0;
};

/** Delete every key of a hash map (values V) that is not in keep. @throws XdpError */
template <class V>
void pruneHash(MapTxn& txn, int fd, const KeySet& keep, const char* what) {
  lb_endpoint_key key{};
  lb_endpoint_key next{};
  std::vector<lb_endpoint_key> gone;
  const lb_endpoint_key* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    if (!keep.contains(next)) {
      gone.push_back(next);
    }
    key = next;
    prev = &key;
  }
  if (errno != ENOENT) {
    const int e = errno;
    throw XdpError(fmt::format("cannot list the {} map: {}", what, why(e)));
  }
  for (const lb_endpoint_key& k : gone) {
    txn.erase<V>(fd, k, what);
  }
}

/**
 * A bitmap the program reads as a filter in front of a lookup (nat_reply_ports before
 * nat_replies, addr_filter before services and local_addrs; bpf/lib/maps.h). It must cover the
 * keys behind it at every moment, so a publish sets the next snapshot's bits beside the ones
 * programmed before any key is written (widen), and keeps only the next snapshot's once the keys
 * are pruned (narrow). Only changed words are written.
 */
struct BitmapUpdate {
  int fd;
  const char* what;
  const std::vector<uint64_t>& programmed;
  std::vector<uint64_t> next;

  void set(uint32_t bit) { next[bit >> 6] |= uint64_t{1} << (bit & 63); }
  void widen(MapTxn& txn) const {
    for (uint32_t w = 0; w < next.size(); ++w) {
      if ((programmed[w] | next[w]) != programmed[w]) {
        txn.put(fd, w, programmed[w] | next[w], what);
      }
    }
  }
  void narrow(MapTxn& txn) const {
    for (uint32_t w = 0; w < next.size(); ++w) {
      if ((programmed[w] | next[w]) != next[w]) {
        txn.put(fd, w, next[w], what);
      }
    }
  }
};

/** Whether the maps can hold snap at all: checked before any write. @throws XdpError */
void checkFits(const Snapshot& snap, uint32_t max_local_addresses) {
  if (snap.backends.size() > LB_MAX_BACKENDS) {
    throw XdpError("more backend ids than the XDP path holds");
  }
  if (snap.local_addresses.size() > max_local_addresses) {
    throw XdpError(fmt::format("{} local addresses are more than the XDP path's {}",
                               snap.local_addresses.size(), max_local_addresses));
  }
  for (const ServiceEntry& s : snap.services) {
    if (!s.present) {
      continue;
    }
    if (s.id >= LB_MAX_SERVICES) {
      throw XdpError(fmt::format("service id {} is beyond the XDP path's {} services", s.id,
                                 LB_MAX_SERVICES));
    }
    if (s.maglev.size() > LB_MAX_MAGLEV) {
      throw XdpError(fmt::format("service {:?}: table_size {} is larger than the XDP path's {}",
                                 s.name, s.maglev.size(), LB_MAX_MAGLEV));
    }
  }
}

/** Possible CPUs (the per-CPU maps' and bpf_get_smp_processor_id()'s range), at least 1. */
int possibleCpus() { return std::max(1, libbpf_num_possible_cpus()); }

}  // namespace

uint32_t XdpDataplane::flowBuckets(uint32_t flow_capacity) {
  return lb_flow_buckets_for(flow_capacity);  // as the DPDK table's FlowTable::bucketsFor
}

uint64_t XdpDataplane::flowTableBytes(uint32_t flow_capacity, FlowTableScope scope,
                                      std::string& how) {
  const uint64_t copies = scope == FlowTableScope::kPerCpu ? static_cast<uint64_t>(possibleCpus()) : 1;
  const uint64_t buckets = flowBuckets(flow_capacity);
  const uint64_t bucket = sizeof(lb_flow_sigs) + sizeof(lb_flow_bucket);
  how = fmt::format("{} cop{} x {} buckets x {} B (8 entries each)", copies,
                    copies == 1 ? "y" : "ies", buckets, bucket);
  return copies * buckets * bucket;
}

namespace {

/** An mmapable array of n values of size bytes, and its read-only mapping. */
int createFlowArray(const char* name, uint32_t size, uint32_t n, const void** view) {
  LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = BPF_F_MMAPABLE);
  const int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, name, sizeof(uint32_t), size, n, &opts);
  if (fd < 0) {
    return -errno;
  }
  void* p = mmap(nullptr, size_t{size} * n, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    close(fd);
    return -err;
  }
  *view = p;
  return fd;
}

}  // namespace

XdpDataplane::XdpDataplane(uint32_t flow_capacity, FlowTableScope scope) : scope_(scope) {
  skel_ = xdp_lb__open();
  if (skel_ == nullptr) {
    throw XdpError(fmt::format("cannot open the XDP program: {}", why(errno)));
  }
  ncpus_ = possibleCpus();
  // A slot per possible CPU in the outer maps. The verifier checks the program's lookups against
  // each outer map's inner template, which must be as large as the tables it will hold: the first
  // table is made before load and given as that template (libbpf 1.1 cannot resize the one
  // declared in the program: bpf_map__set_max_entries() of an inner map crashes).
  const uint32_t buckets = flowBuckets(flow_capacity);
  const int copies = scope == FlowTableScope::kShared ? 1 : ncpus_;
  flow_buckets_ = buckets;
  for (int c = 0; c < copies; ++c) {
    FlowTableCopy t;
    const void* sigs = nullptr;
    const void* entries = nullptr;
    t.sigs_fd = createFlowArray("flow_sigs", sizeof(lb_flow_sigs), buckets, &sigs);
    t.entries_fd = t.sigs_fd < 0 ? -1
                                 : createFlowArray("flows", sizeof(lb_flow_bucket), buckets,
                                                   &entries);
    if (t.sigs_fd < 0 || t.entries_fd < 0) {
      const int err = t.sigs_fd < 0 ? t.sigs_fd : t.entries_fd;
      if (t.sigs_fd >= 0) {
        munmap(const_cast<void*>(sigs), size_t{buckets} * sizeof(lb_flow_sigs));
        close(t.sigs_fd);
      }
      release();
      throw XdpError(fmt::format("cannot create a flow table of {} entries ({} buckets): {}",
                                 flow_capacity, buckets, why(err)));
    }
    t.sigs = static_cast<const lb_flow_sigs*>(sigs);
    t.entries = static_cast<const lb_flow_bucket*>(entries);
    flow_tables_.push_back(t);
  }
  bpf_map__set_max_entries(skel_->maps.flow_sigs, static_cast<uint32_t>(ncpus_));
  bpf_map__set_max_entries(skel_->maps.flows, static_cast<uint32_t>(ncpus_));
  if (int rc = bpf_map__set_inner_map_fd(skel_->maps.flow_sigs, flow_tables_[0].sigs_fd);
      rc != 0 || (rc = bpf_map__set_inner_map_fd(skel_->maps.flows, flow_tables_[0].entries_fd)) != 0) {
    release();
    throw XdpError(fmt::format("cannot give the flow table's template: {}", why(rc)));
  }
  skel_->bss->flow_buckets = buckets;
  if (int rc = xdp_lb__load(skel_); rc != 0) {
    release();
    throw XdpError(fmt::format(
        "cannot load the XDP program: {} (it needs root or CAP_BPF and CAP_NET_ADMIN)", why(rc)));
  }
  for (uint32_t cpu = 0; cpu < static_cast<uint32_t>(ncpus_); ++cpu) {
    const FlowTableCopy& t = flow_tables_[copies == 1 ? 0 : cpu];
    if (bpf_map_update_elem(bpf_map__fd(skel_->maps.flow_sigs), &cpu, &t.sigs_fd, BPF_ANY) != 0 ||
        bpf_map_update_elem(bpf_map__fd(skel_->maps.flows), &cpu, &t.entries_fd, BPF_ANY) != 0) {
      const int err = errno;
      release();
      throw XdpError(fmt::format("cannot install the flow table of CPU {}: {}", cpu, why(err)));
    }
  }
  programmed_nat_ports_.assign(LB_NAT_PORT_WORDS, 0);
  programmed_addr_filter_.assign(LB_ADDR_FILTER_WORDS, 0);
}

XdpDataplane::~XdpDataplane() {
  detach();
  release();
}

void XdpDataplane::release() {
  for (const FlowTableCopy& t : flow_tables_) {
    munmap(const_cast<lb_flow_sigs*>(t.sigs), size_t{flow_buckets_} * sizeof(lb_flow_sigs));
    munmap(const_cast<lb_flow_bucket*>(t.entries), size_t{flow_buckets_} * sizeof(lb_flow_bucket));
    close(t.sigs_fd);
    close(t.entries_fd);
  }
  flow_tables_.clear();
  if (skel_ != nullptr) {
    xdp_lb__destroy(skel_);
    skel_ = nullptr;
  }
}

int XdpDataplane::programFd() const { return bpf_program__fd(skel_->progs.xdp_lb); }

FlowTableScope XdpDataplane::flowTableScopeFor(const std::string& ifname) {
  return access(("/sys/class/net/" + ifname + "/device").c_str(), F_OK) != 0
             ? FlowTableScope::kShared
             : FlowTableScope::kPerCpu;
}

std::string XdpDataplane::attach(const std::string& ifname, XdpAttachMode how) {
  const unsigned idx = if_nametoindex(ifname.c_str());
  if (idx == 0) {
    throw XdpError(fmt::format("interface {}: {}", ifname, why(errno)));
  }
  std::ifstream addr("/sys/class/net/" + ifname + "/address");
  std::string text;
  addr >> text;
  const auto mac = MacAddress::parse(text);
  if (!mac) {
    throw XdpError(fmt::format("interface {} has no Ethernet address", ifname));
  }
  setPortMac(mac->bytes.data());
  std::string mode;
  int rc = -1;
  // A virtual interface (veth, bridge, tun: no /sys/class/net/IF/device) gets generic XDP in auto
  // mode: a veth in native mode drops what XDP_TX sends unless its peer runs XDP too.
  const bool is_virtual = access(("/sys/class/net/" + ifname + "/device").c_str(), F_OK) != 0;
  // Whether checksums may be partial follows the mode, and is set before the program can see
  // a frame: native XDP gets a NIC's frames, whose checksums are complete; generic XDP gets
  // skbs, and a local sender's (veth peer, container) keep CHECKSUM_PARTIAL through XDP_TX.
  if (how == XdpAttachMode::kNative || (how == XdpAttachMode::kAuto && !is_virtual)) {
    setPartialChecksumsPossible(false);
    rc = bpf_xdp_attach(static_cast<int>(idx), programFd(), XDP_FLAGS_DRV_MODE, nullptr);
    if (rc == 0) {
      attach_flags_ = XDP_FLAGS_DRV_MODE;
      mode = "native";
    } else if (how == XdpAttachMode::kNative) {
      throw XdpError(fmt::format("interface {}: native XDP attach failed: {}", ifname, why(rc)));
    }
  }
  if (rc != 0) {
    setPartialChecksumsPossible(true);
    rc = bpf_xdp_attach(static_cast<int>(idx), programFd(), XDP_FLAGS_SKB_MODE, nullptr);
    if (rc != 0) {
      setPartialChecksumsPossible(false);
      throw XdpError(fmt::format("interface {}: XDP attach failed: {}", ifname, why(rc)));
    }
    attach_flags_ = XDP_FLAGS_SKB_MODE;
    mode = "generic";
  }
  ifindex_ = static_cast<int>(idx);
  return mode;
}

void XdpDataplane::detach() {
  if (ifindex_ != 0) {
    bpf_xdp_detach(ifindex_, attach_flags_, nullptr);
    ifindex_ = 0;
    setPartialChecksumsPossible(false);  // BPF_PROG_TEST_RUN frames are complete
  }
}

void XdpDataplaneHandle::publish(SnapshotPtr next) {
  for (size_t k = 0; k < programs_.size(); ++k) {
    try {
      programs_[k]->apply(*next);
    } catch (const std::exception& e) {
      // Program k rolled itself back; 0..k-1 took next already: give them the snapshot in force
      // again (before the first publish, an empty one: the maps as loaded).
      const Snapshot none;
      const Snapshot& in_force = current_ ? *current_ : none;
      std::string lost;
      for (size_t j = 0; j < k; ++j) {
        try {
          programs_[j]->apply(in_force);
        } catch (const std::exception& again) {
          lost += fmt::format("; program {} keeps the new snapshot: {}", j, again.what());
        }
      }
      if (!lost.empty()) {
        throw XdpError(fmt::format("program {}: {}{}", k, e.what(), lost));
      }
      throw;
    }
  }
  current_ = std::move(next);  // the programs read only the maps: nothing refers to the old one
}

StatsTotals XdpDataplaneHandle::totals(const Snapshot& snap) const {
  StatsTotals t;
  t.backends.resize(snap.backends.size());
  for (const auto& p : programs_) {
    const StatsTotals one = p->totals(snap);
    for (size_t i = 0; i < one.backends.size() && i < t.backends.size(); ++i) {
      addTotals(t.backends[i], one.backends[i]);
    }
    for (WorkerTotals w : one.workers) {
      w.worker = static_cast<uint32_t>(t.workers.size());
      t.workers.push_back(w);
    }
    addTotals(t.all, one.all);
  }
  return t;
}

void XdpDataplane::setPortMac(const uint8_t mac[6]) { std::memcpy(skel_->bss->port_mac, mac, 6); }

void XdpDataplane::setClock(uint64_t now_ns) { skel_->bss->clock_override_ns = now_ns; }

void XdpDataplane::setAcceptAnyMac(bool on) { skel_->bss->accept_any_mac = on ? 1 : 0; }

void XdpDataplane::setPartialChecksumsPossible(bool on) {
  skel_->bss->csum_partial_possible = on ? 1 : 0;
}

bool XdpDataplane::partialChecksumsPossible() const {
  return skel_->bss->csum_partial_possible != 0;
}

void XdpDataplane::apply(const Snapshot& snap) {
  const int fail_after = std::exchange(fail_after_writes_, -1);  // armed for this call only
  // A snapshot the maps cannot hold is refused before anything is written.
  checkFits(snap, bpf_map__max_entries(skel_->maps.local_addrs));
  const int backends_fd = bpf_map__fd(skel_->maps.backends);
  const int maglev_fd = bpf_map__fd(skel_->maps.maglev);
  const int services_fd = bpf_map__fd(skel_->maps.services);
  const int vips_fd = bpf_map__fd(skel_->maps.vip_addrs);
  const int replies_fd = bpf_map__fd(skel_->maps.nat_replies);
  const int by_id_fd = bpf_map__fd(skel_->maps.service_by_id);
  const int locals_fd = bpf_map__fd(skel_->maps.local_addrs);

  // Everything is written through txn, and this object's own record of what the maps hold is
  // built on copies, taken over only when every write has succeeded.
  MapTxn txn(fail_after);
  std::vector<uint32_t> services_next = programmed_services_;
  std::vector<MaglevSlots> tables_next = programmed_tables_;
  std::vector<uint32_t> backends_next;
  auto* bss = skel_->bss;
  const auto globals = *bss;  // the .bss globals as they were (only this thread writes them)
  auto restoreGlobals = [bss, &globals] {
    bss->tcp_timeout_ns = globals.tcp_timeout_ns;
    bss->tcp_fin_timeout_ns = globals.tcp_fin_timeout_ns;
    bss->udp_timeout_ns = globals.udp_timeout_ns;
    bss->tcp_syn_timeout_ns = globals.tcp_syn_timeout_ns;
    bss->new_flow_rate_limit = globals.new_flow_rate_limit;
    bss->has_gateway = globals.has_gateway;
    std::memcpy(bss->gateway_mac, globals.gateway_mac, 6);
    bss->has_gateway6 = globals.has_gateway6;
    std::memcpy(bss->gateway_mac6, globals.gateway_mac6, 6);
  };

  BitmapUpdate ports{bpf_map__fd(skel_->maps.nat_reply_ports), "nat_reply_ports",
                     programmed_nat_ports_, std::vector<uint64_t>(LB_NAT_PORT_WORDS, 0)};
  BitmapUpdate addresses{bpf_map__fd(skel_->maps.addr_filter), "addr_filter",
                         programmed_addr_filter_, std::vector<uint64_t>(LB_ADDR_FILTER_WORDS, 0)};
  try {
    bss->tcp_timeout_ns = snap.tcp_timeout_ns;
    bss->tcp_fin_timeout_ns = snap.tcp_fin_timeout_ns;
    bss->udp_timeout_ns = snap.udp_timeout_ns;
    bss->tcp_syn_timeout_ns = snap.tcp_syn_timeout_ns;
    bss->new_flow_rate_limit = snap.new_flow_rate_limit;
    bss->has_gateway = snap.has_gateway_mac ? 1 : 0;
    std::memcpy(bss->gateway_mac, snap.gateway_mac, 6);
    bss->has_gateway6 = snap.has_gateway_mac6 ? 1 : 0;
    std::memcpy(bss->gateway_mac6, snap.gateway_mac6, 6);

    // 1. Backends that exist (new ids and epochs first, so no table names an unwritten one).
    for (uint32_t id = 1; id < snap.backends.size(); ++id) {
      const BackendEntry& b = snap.backends[id];
      if (!b.present) {
        continue;
      }
      lb_backend v{};
      std::memcpy(v.addr, b.addr, sizeof(v.addr));
      v.port = b.port_be;
      std::memcpy(v.mac, b.mac, 6);
      v.epoch = b.epoch;
      v.service_id = b.service_id;
      v.weight = b.weight;
      v.flags = b.flags;
      txn.put(backends_fd, id, v, "backends");
      backends_next.push_back(id);
    }

    // The filters in front of lookups (BitmapUpdate): widened now, narrowed in step 4.
    for (const ServiceEntry& s : snap.services) {
      if (!s.present) {
        continue;
      }
      addresses.set(lb_addr_filter_bit(s.key.addr));
      if (s.forwarding == Forwarding::kNat) {
        for (uint32_t bid : s.backend_ids) {
          const BackendEntry& b = snap.backends[bid];
          ports.set(makeEndpointKey(b.address, b.port, static_cast<uint8_t>(s.protocol)).port);
        }
      }
    }
    snap.local_addresses.forEach([&](const EndpointKey& lk, const EndpointMap::Value&) {
      addresses.set(lb_addr_filter_bit(lk.addr));
    });
    ports.widen(txn);
    addresses.widen(txn);

    // 2. Maglev tables: a fresh inner array per changed service, swapped in with one update.
    std::set<uint32_t> live_services;
    KeySet service_keys(&keyLess);
    KeySet vip_keys(&keyLess);
    KeySet reply_keys(&keyLess);
    for (const ServiceEntry& s : snap.services) {
      if (!s.present) {
        continue;
      }
      const uint32_t sid = s.id;
      live_services.insert(sid);
      if (services_next.size() <= sid) {
        services_next.resize(sid + 1, 0);
      }
      if (tables_next.size() <= sid) {
        tables_next.resize(sid + 1);
      }
      if (services_next[sid] == 0 || tables_next[sid].begin() != s.maglev.begin()) {
        UniqueFd inner(bpf_map_create(BPF_MAP_TYPE_ARRAY, "maglev_table", sizeof(uint32_t),
                                      sizeof(uint32_t), LB_MAX_MAGLEV, nullptr));
        if (inner.get() < 0) {
          throw XdpError(fmt::format("cannot create a Maglev table map: {}", why(errno)));
        }
        txn.fill(inner.get(), s.maglev);
        txn.putInner(maglev_fd, sid, inner.get(), s.name);
        tables_next[sid] = s.maglev;
      }  // inner closes here: the outer map holds the table now
      services_next[sid] = 1;

      // 3. The lookup maps.
      const lb_endpoint_key sk = s.key;
      lb_service sv{};
      sv.id = sid;
      sv.forwarding = s.forwarding == Forwarding::kNat ? LB_FWD_NAT : LB_FWD_DR;
      sv.table_size = static_cast<uint32_t>(s.maglev.size());
      std::memcpy(sv.addr, s.key.addr, sizeof(sv.addr));
      sv.port = s.key.port;
      sv.proto = s.key.proto;
      sv.family = s.key.family;
      txn.put(by_id_fd, sid, sv, "service_by_id");
      txn.put(services_fd, sk, sv, "services");
      service_keys.insert(sk);
      lb_endpoint_key vk = sk;
      vk.port = 0;
      vk.proto = 0;
      txn.put(vips_fd, vk, sid, "vip_addrs");
      vip_keys.insert(vk);
      if (s.forwarding == Forwarding::kNat) {
        for (uint32_t bid : s.backend_ids) {
          const BackendEntry& b = snap.backends[bid];
          const lb_endpoint_key rk =
              makeEndpointKey(b.address, b.port, static_cast<uint8_t>(s.protocol));
          const lb_nat_reply rv{sid, bid};
          txn.put(replies_fd, rk, rv, "nat_replies");
          reply_keys.insert(rk);
        }
      }
    }

    // The host's own addresses (port 0, proto 0, as the snapshot keys them).
    KeySet local_keys(&keyLess);
    snap.local_addresses.forEach([&](const EndpointKey& lk, const EndpointMap::Value&) {
      txn.put(locals_fd, lk, kLocalAddress, "local_addrs");
      local_keys.insert(lk);
    });

    // 4. Remove what is gone: lookups first, then tables, then backends. A removed service's
    // service_by_id entry before its `services` key: the program finds an established flow's
    // service through the entry's id first (lb_to_service), and with the id cleared first it
    // falls back to the `services` lookup, as the DPDK order would have it, instead of
    // forwarding by the stale entry while the key is already gone.
    for (uint32_t sid = 0; sid < services_next.size(); ++sid) {
      if (services_next[sid] != 0 && !live_services.contains(sid)) {
        const lb_service none{};
        txn.put(by_id_fd, sid, none, "service_by_id");
      }
    }
    pruneHash<lb_service>(txn, services_fd, service_keys, "services");
    pruneHash<uint32_t>(txn, vips_fd, vip_keys, "vip_addrs");
    pruneHash<lb_nat_reply>(txn, replies_fd, reply_keys, "nat_replies");
    pruneHash<uint32_t>(txn, locals_fd, local_keys, "local_addrs");
    ports.narrow(txn);
    addresses.narrow(txn);
    for (uint32_t sid = 0; sid < services_next.size(); ++sid) {
      if (services_next[sid] != 0 && !live_services.contains(sid)) {
        txn.eraseInner(maglev_fd, sid);
        tables_next[sid] = MaglevSlots();
        services_next[sid] = 0;
      }
    }
    // Exactly the ids that were programmed and are gone, wherever they are in the id space:
    // O(removed) map calls.
    const lb_backend empty{};
    for (uint32_t id : programmed_backends_) {
      if (id >= snap.backends.size() || !snap.backends[id].present) {
        txn.put(backends_fd, id, empty, "backends");
      }
    }
  } catch (const std::exception& e) {
    const size_t lost = txn.rollback();
    restoreGlobals();
    if (lost != 0) {
      throw XdpError(fmt::format("{}; and {} map entries could not be put back", e.what(), lost));
    }
    throw;
  } catch (...) {
    txn.rollback();
    restoreGlobals();
    throw;
  }
  // Commit. txn's destructor then closes the fds held on replaced Maglev tables.
  programmed_services_ = std::move(services_next);
  programmed_tables_ = std::move(tables_next);
  programmed_backends_ = std::move(backends_next);
  programmed_nat_ports_ = std::move(ports.next);
  programmed_addr_filter_ = std::move(addresses.next);
}

int XdpDataplane::run(std::span<const uint8_t> in, std::vector<uint8_t>& out) {
  if (in.size() < 14) {
    ++runts_;
    out.clear();
    return kXdpDrop;
  }
  out.resize(in.size() + 256);
  LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = in.data(),
              .data_out = out.data(), .data_size_in = static_cast<uint32_t>(in.size()),
              .data_size_out = static_cast<uint32_t>(out.size()), .repeat = 1);
  if (int rc = bpf_prog_test_run_opts(programFd(), &opts); rc != 0) {
    throw XdpError(fmt::format("BPF_PROG_TEST_RUN failed: {}", why(errno)));
  }
  out.resize(opts.data_size_out);
  return static_cast<int>(opts.retval);
}

StatsTotals XdpDataplane::totals(const Snapshot& snap) const {
  StatsTotals t;
  t.backends.resize(snap.backends.size());
  std::vector<lb_cpu_counters> cpus(static_cast<size_t>(ncpus_));
  const uint32_t zero = 0;
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.cpu_counters), &zero, cpus.data()) != 0) {
    throw XdpError(fmt::format("cannot read the counters: {}", why(errno)));
  }
  // Attached, live entries only: the table keeps an expired entry until a lookup or an insert
  // meets it, where the DPDK workers also sweep theirs. A replay counts every entry, as the DPDK replay's table
  // holds every flow the capture made until the sweep reaches it.
  uint64_t live_at = 0;
  if (ifindex_ != 0) {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);  // bpf_ktime_get_ns()'s clock
    live_at =
        static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
  }
  const std::vector<FlowRow> rows = flows(live_at);
  // A shared table is no CPU's: its evictions are summed (one CPU's insert may evict another's
  // flow) and reported on the first CPU listed, as its active flows are.
  const bool shared = scope_ == FlowTableScope::kShared;
  uint64_t shared_evicted = 0;
  uint64_t shared_syn_evicted = 0;
  for (const lb_cpu_counters& c : cpus) {
    shared_evicted += c.flows_evicted;
    shared_syn_evicted += c.flows_syn_evicted;
  }
  bool first_worker = true;
  for (int cpu = 0; cpu < ncpus_; ++cpu) {
    const lb_cpu_counters& c = cpus[static_cast<size_t>(cpu)];
    if (c.rx_packets == 0) {
      continue;
    }
    WorkerTotals w;
    w.worker = static_cast<uint32_t>(cpu);
    w.rx_packets = c.rx_packets;
    w.tx_packets = c.tx_packets;
    for (int r = 0; r < LB_DROP__COUNT; ++r) {
      w.drops[r] = c.drops[r];
      w.dropped += c.drops[r];
    }
    w.flows_created = c.flows_created;
    w.flows_expired = c.flows_expired;
    w.flows_syn_expired = c.flows_syn_expired;
    w.new_flows_unpinned = c.new_flows_unpinned;
    if (!shared) {
      w.flows_evicted = c.flows_evicted;
      w.flows_syn_evicted = c.flows_syn_evicted;
    } else if (first_worker) {
      w.flows_evicted = shared_evicted;
      w.flows_syn_evicted = shared_syn_evicted;
    }
    w.flows_rescheduled = c.flows_rescheduled;
    w.passed = c.passed;
    w.answered = c.answered;
    w.icmp_forwarded = c.icmp_forwarded;
    for (const FlowRow& f : rows) {
      // A shared table is no CPU's: its flows are counted once, on the first CPU listed.
      const bool mine = shared ? first_worker : f.worker == static_cast<uint32_t>(cpu);
      w.flows_active += mine ? 1 : 0;
    }
    first_worker = false;
    t.workers.push_back(w);
  }
  std::vector<lb_backend_counters> per_cpu(static_cast<size_t>(ncpus_));
  const int bc_fd = bpf_map__fd(skel_->maps.backend_counters);
  for (uint32_t id = 1; id < snap.backends.size(); ++id) {
    const BackendEntry& b = snap.backends[id];
    if (!b.present || bpf_map_lookup_elem(bc_fd, &id, per_cpu.data()) != 0) {
      continue;
    }
    BackendTotals& bt = t.backends[id];
    for (int cpu = 0; cpu < ncpus_; ++cpu) {
      const lb_backend_counters& c = per_cpu[static_cast<size_t>(cpu)];
      if (c.epoch != b.epoch) {
        continue;
      }
      bt.packets += c.packets;
      bt.bytes += c.bytes;
      bt.flows += c.flows;
      bt.reply_packets += c.reply_packets;
      bt.reply_bytes += c.reply_bytes;
      for (WorkerTotals& w : t.workers) {
        if (w.worker == static_cast<uint32_t>(cpu)) {
          w.reply_packets += c.reply_packets;
        }
      }
    }
  }
  for (const FlowRow& f : rows) {
    if (f.backend_id < t.backends.size()) {
      ++t.backends[f.backend_id].active;
    }
  }
  if (runts_ != 0) {
    if (t.workers.empty()) {
      t.workers.push_back(WorkerTotals{});
    }
    t.workers[0].rx_packets += runts_;
    t.workers[0].drops[LB_DROP_TRUNCATED] += runts_;
    t.workers[0].dropped += runts_;
  }
  for (const WorkerTotals& w : t.workers) {
    addTotals(t.all, w);
  }
  return t;
}

void XdpDataplane::clearFlows() {
  const lb_flow_sigs none{};
  for (const FlowTableCopy& t : flow_tables_) {
    for (uint32_t b = 0; b < flow_buckets_; ++b) {
      // Only the buckets that hold something: a table is mostly empty between a test's inputs.
      if (std::memcmp(&t.sigs[b], &none, sizeof(none)) != 0 &&
          bpf_map_update_elem(t.sigs_fd, &b, &none, BPF_ANY) != 0) {
        throw XdpError(fmt::format("cannot clear the flow table: {}", why(errno)));
      }
    }
  }
}

std::vector<FlowRow> XdpDataplane::flows(uint64_t live_at) const {
  // Every entry with a signature, read through each copy's mapping.
  std::vector<FlowRow> rows;
  for (size_t copy = 0; copy < flow_tables_.size(); ++copy) {
    const FlowTableCopy& t = flow_tables_[copy];
    for (uint32_t b = 0; b < flow_buckets_; ++b) {
      for (uint32_t i = 0; i < LB_FLOW_BUCKET_ENTRIES; ++i) {
        const lb_flow_entry& e = t.entries[b].entry[i];
        if (t.sigs[b].sig[i] != 0 && e.expires_ns > live_at) {
          rows.push_back({e.key, e.service_id, e.backend_id, static_cast<uint32_t>(copy)});
        }
      }
    }
  }
  return rows;
}

}  // namespace sluice
