#include "xdp/xdp_dataplane.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <unistd.h>

#include <fstream>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "bpf/xdp_lb.skel.h"

namespace sluice {

static_assert(kXdpAborted == XDP_ABORTED && kXdpDrop == XDP_DROP && kXdpPass == XDP_PASS &&
              kXdpTx == XDP_TX);

namespace {

std::string why(int err) { return std::strerror(err < 0 ? -err : err); }

bool keyLess(const lb_endpoint_key& a, const lb_endpoint_key& b) {
  return std::memcmp(&a, &b, sizeof(a)) < 0;
}

using KeySet = std::set<lb_endpoint_key, decltype(&keyLess)>;

/** Delete every key of a hash map that is not in keep. */
void pruneHash(int fd, const KeySet& keep) {
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
  for (const lb_endpoint_key& k : gone) {
    bpf_map_delete_elem(fd, &k);
  }
}

void update(int fd, const void* key, const void* value, const char* what) {
  if (int rc = bpf_map_update_elem(fd, key, value, BPF_ANY); rc != 0) {
    throw XdpError(fmt::format("cannot write the {} map: {}", what, why(errno)));
  }
}

}  // namespace

XdpDataplane::XdpDataplane(uint32_t flow_capacity) {
  skel_ = xdp_lb__open();
  if (skel_ == nullptr) {
    throw XdpError(fmt::format("cannot open the XDP program: {}", why(errno)));
  }
  bpf_map__set_max_entries(skel_->maps.flows, flow_capacity);
  if (int rc = xdp_lb__load(skel_); rc != 0) {
    xdp_lb__destroy(skel_);
    skel_ = nullptr;
    throw XdpError(fmt::format(
        "cannot load the XDP program: {} (it needs root or CAP_BPF and CAP_NET_ADMIN)", why(rc)));
  }
  ncpus_ = libbpf_num_possible_cpus();
  if (ncpus_ < 1) {
    ncpus_ = 1;
  }
}

XdpDataplane::~XdpDataplane() {
  detach();
  if (skel_ != nullptr) {
    xdp_lb__destroy(skel_);
  }
}

int XdpDataplane::programFd() const { return bpf_program__fd(skel_->progs.xdp_lb); }

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
  if (how == XdpAttachMode::kNative || (how == XdpAttachMode::kAuto && !is_virtual)) {
    rc = bpf_xdp_attach(static_cast<int>(idx), programFd(), XDP_FLAGS_DRV_MODE, nullptr);
    if (rc == 0) {
      attach_flags_ = XDP_FLAGS_DRV_MODE;
      mode = "native";
    } else if (how == XdpAttachMode::kNative) {
      throw XdpError(fmt::format("interface {}: native XDP attach failed: {}", ifname, why(rc)));
    }
  }
  if (rc != 0) {
    rc = bpf_xdp_attach(static_cast<int>(idx), programFd(), XDP_FLAGS_SKB_MODE, nullptr);
    if (rc != 0) {
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
  }
}

void XdpDataplaneHandle::publish(SnapshotPtr next) {
  for (const auto& p : programs_) {
    p->apply(*next);
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

void XdpDataplane::apply(const Snapshot& snap) {
  const int backends_fd = bpf_map__fd(skel_->maps.backends);
  const int maglev_fd = bpf_map__fd(skel_->maps.maglev);
  const int services_fd = bpf_map__fd(skel_->maps.services);
  const int vips_fd = bpf_map__fd(skel_->maps.vip_addrs);
  const int replies_fd = bpf_map__fd(skel_->maps.nat_replies);
  const int by_id_fd = bpf_map__fd(skel_->maps.service_by_id);

  skel_->bss->tcp_timeout_ns = snap.tcp_timeout_ns;
  skel_->bss->tcp_fin_timeout_ns = snap.tcp_fin_timeout_ns;
  skel_->bss->udp_timeout_ns = snap.udp_timeout_ns;
  skel_->bss->has_gateway = snap.has_gateway_mac ? 1 : 0;
  std::memcpy(skel_->bss->gateway_mac, snap.gateway_mac, 6);

  // 1. Backends that exist (new ids and epochs first, so no table names an unwritten one).
  if (snap.backends.size() > LB_MAX_BACKENDS) {
    throw XdpError("more backend ids than the XDP path holds");
  }
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
    update(backends_fd, &id, &v, "backends");
  }

  // 2. Maglev tables: a fresh inner array per changed service, swapped in with one update.
  std::set<uint32_t> live_services;
  KeySet service_keys(&keyLess);
  KeySet vip_keys(&keyLess);
  KeySet reply_keys(&keyLess);
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
    live_services.insert(s.id);
    if (programmed_services_.size() <= s.id) {
      programmed_services_.resize(s.id + 1, 0);
    }
    const uint32_t sid = s.id;
    if (programmed_tables_.size() <= sid) {
      programmed_tables_.resize(sid + 1);
    }
    if (programmed_services_[sid] == 0 || programmed_tables_[sid].begin() != s.maglev.begin()) {
      const int inner = bpf_map_create(BPF_MAP_TYPE_ARRAY, "maglev_table", sizeof(uint32_t),
                                       sizeof(uint32_t), LB_MAX_MAGLEV, nullptr);
      if (inner < 0) {
        throw XdpError(fmt::format("cannot create a Maglev table map: {}", why(errno)));
      }
      std::vector<uint32_t> keys(s.maglev.size());
      for (uint32_t i = 0; i < keys.size(); ++i) {
        keys[i] = i;
      }
      uint32_t count = static_cast<uint32_t>(keys.size());
      if (count > 0 &&
          bpf_map_update_batch(inner, keys.data(), s.maglev.begin(), &count, nullptr) != 0) {
        for (uint32_t i = 0; i < keys.size(); ++i) {  // kernels without batch ops
          update(inner, &keys[i], s.maglev.begin() + i, "maglev table");
        }
      }
      if (bpf_map_update_elem(maglev_fd, &sid, &inner, BPF_ANY) != 0) {
        const int e = errno;
        close(inner);
        throw XdpError(fmt::format("cannot install the Maglev table of {:?}: {}", s.name, why(e)));
      }
      close(inner);  // the outer map holds it now
      programmed_tables_[sid] = s.maglev;
    }
    programmed_services_[s.id] = 1;

    // 3. The lookup maps.
    const lb_endpoint_key sk = s.key;
    lb_service sv{};
    sv.id = s.id;
    sv.forwarding = s.forwarding == Forwarding::kNat ? LB_FWD_NAT : LB_FWD_DR;
    sv.table_size = static_cast<uint32_t>(s.maglev.size());
    std::memcpy(sv.addr, s.key.addr, sizeof(sv.addr));
    sv.port = s.key.port;
    update(by_id_fd, &sid, &sv, "service_by_id");
    update(services_fd, &sk, &sv, "services");
    service_keys.insert(sk);
    lb_endpoint_key vk = sk;
    vk.port = 0;
    vk.proto = 0;
    update(vips_fd, &vk, &sid, "vip_addrs");
    vip_keys.insert(vk);
    if (s.forwarding == Forwarding::kNat) {
      for (uint32_t bid : s.backend_ids) {
        const BackendEntry& b = snap.backends[bid];
        const lb_endpoint_key rk =
            makeEndpointKey(b.address, b.port, static_cast<uint8_t>(s.protocol));
        const lb_nat_reply rv{s.id, bid};
        update(replies_fd, &rk, &rv, "nat_replies");
        reply_keys.insert(rk);
      }
    }
  }

  // 4. Remove what is gone: lookups first, then tables, then backends.
  pruneHash(services_fd, service_keys);
  pruneHash(vips_fd, vip_keys);
  pruneHash(replies_fd, reply_keys);
  for (uint32_t sid = 0; sid < programmed_services_.size(); ++sid) {
    if (programmed_services_[sid] != 0 && !live_services.contains(sid)) {
      const lb_service none{};
      update(by_id_fd, &sid, &none, "service_by_id");
      bpf_map_delete_elem(maglev_fd, &sid);
      programmed_tables_[sid] = MaglevSlots();
      programmed_services_[sid] = 0;
    }
  }
  const lb_backend empty{};
  for (uint32_t id = 1; id < LB_MAX_BACKENDS; ++id) {
    if (id < snap.backends.size() && snap.backends[id].present) {
      continue;
    }
    lb_backend cur{};
    if (bpf_map_lookup_elem(backends_fd, &id, &cur) == 0 && cur.epoch != 0) {
      update(backends_fd, &id, &empty, "backends");
    }
    if (id >= snap.backends.size() && id > 4096) {
      break;  // ids are handed out densely from 1: nothing beyond was ever written
    }
  }
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
  std::vector<FlowRow> rows = flows();
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
    w.flows_rescheduled = c.flows_rescheduled;
    for (const FlowRow& f : rows) {
      w.flows_active += f.worker == static_cast<uint32_t>(cpu) ? 1 : 0;
    }
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

std::vector<FlowRow> XdpDataplane::flows() const {
  std::vector<FlowRow> rows;
  const int fd = bpf_map__fd(skel_->maps.flows);
  std::vector<lb_flow> per_cpu(static_cast<size_t>(ncpus_));
  lb_flow_key key{};
  lb_flow_key next{};
  const lb_flow_key* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    if (bpf_map_lookup_elem(fd, &next, per_cpu.data()) == 0) {
      for (int cpu = 0; cpu < ncpus_; ++cpu) {
        const lb_flow& f = per_cpu[static_cast<size_t>(cpu)];
        if (f.backend_id != 0) {
          rows.push_back({next, f.service_id, f.backend_id, static_cast<uint32_t>(cpu)});
        }
      }
    }
    key = next;
    prev = &key;
  }
  return rows;
}

}  // namespace sluice
