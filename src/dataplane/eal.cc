#include "dataplane/eal.h"

#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>

#include <fmt/format.h>

#include <cstring>

namespace sluice {

Eal::Eal(const std::vector<std::string>& args) {
  std::vector<std::string> copy = args;  // rte_eal_init may permute argv
  std::vector<char*> argv;
  argv.reserve(copy.size() + 1);
  for (std::string& a : copy) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  if (rte_eal_init(static_cast<int>(copy.size()), argv.data()) < 0) {
    throw DpdkError(fmt::format("cannot initialise DPDK's EAL: {}", rte_strerror(rte_errno)));
  }
}

Eal::~Eal() { rte_eal_cleanup(); }

rte_mempool* createMbufPool(const std::string& name, uint32_t mbufs, int socket) {
  rte_mempool* pool =
      rte_pktmbuf_pool_create(name.c_str(), mbufs, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, socket);
  if (pool == nullptr) {
    throw DpdkError(fmt::format("cannot create mbuf pool {} ({} mbufs): {}", name, mbufs,
                                rte_strerror(rte_errno)));
  }
  return pool;
}

PortInfo startPort(const PortConfig& cfg) {
  const uint16_t port = cfg.port_id;
  PortInfo info;
  char name[RTE_ETH_NAME_MAX_LEN] = {};
  rte_eth_dev_get_name_by_port(port, name);
  info.name = name;

  rte_eth_dev_info dev{};
  if (int rc = rte_eth_dev_info_get(port, &dev); rc != 0) {
    throw DpdkError(fmt::format("port {}: cannot read device info: {}", info.name, rte_strerror(-rc)));
  }
  info.driver = dev.driver_name != nullptr ? dev.driver_name : "";
  if (cfg.queues > dev.max_rx_queues || cfg.queues > dev.max_tx_queues) {
    throw DpdkError(fmt::format("port {}: {} workers need {} queues but the device has {} RX/{} TX",
                                info.name, cfg.queues, cfg.queues, dev.max_rx_queues,
                                dev.max_tx_queues));
  }
  rte_eth_conf conf{};
  // RSS over addresses and ports spreads flows over the workers' queues. Each worker keeps its
  // own flow table, so a flow must always reach the same queue: the NIC's hash guarantees it.
  const uint64_t want_rss = RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP;
  if (cfg.rss && cfg.queues > 1 && (dev.flow_type_rss_offloads & want_rss) != 0) {
    conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
    conf.rx_adv_conf.rss_conf.rss_hf = want_rss & dev.flow_type_rss_offloads;
    info.rss = true;
  }
  if (int rc = rte_eth_dev_configure(port, cfg.queues, cfg.queues, &conf); rc != 0) {
    throw DpdkError(fmt::format("port {}: cannot configure: {}", info.name, rte_strerror(-rc)));
  }
  uint16_t rxd = cfg.rx_desc;
  uint16_t txd = cfg.tx_desc;
  if (int rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd); rc != 0) {
    throw DpdkError(fmt::format("port {}: cannot size rings: {}", info.name, rte_strerror(-rc)));
  }
  const int socket = rte_eth_dev_socket_id(port);
  for (uint16_t q = 0; q < cfg.queues; ++q) {
    if (int rc = rte_eth_rx_queue_setup(port, q, rxd, socket, nullptr, cfg.pool); rc != 0) {
      throw DpdkError(fmt::format("port {}: RX queue {}: {}", info.name, q, rte_strerror(-rc)));
    }
    if (int rc = rte_eth_tx_queue_setup(port, q, txd, socket, nullptr); rc != 0) {
      throw DpdkError(fmt::format("port {}: TX queue {}: {}", info.name, q, rte_strerror(-rc)));
    }
  }
  if (int rc = rte_eth_dev_start(port); rc != 0) {
    throw DpdkError(fmt::format("port {}: cannot start: {}", info.name, rte_strerror(-rc)));
  }
  // Not every virtual device has these; neither is fatal. All-multicast lets the solicited-node
  // groups of Neighbour Solicitations in without programming each one.
  if (cfg.promiscuous) {
    rte_eth_promiscuous_enable(port);
  } else {
    rte_eth_promiscuous_disable(port);
    rte_eth_allmulticast_enable(port);
  }
  rte_ether_addr mac{};
  rte_eth_macaddr_get(port, &mac);
  std::memcpy(info.mac, mac.addr_bytes, 6);
  return info;
}

uint16_t createKernelPort(uint16_t nic_port, const std::string& ifname, const uint8_t mac[6]) {
  const std::string name = fmt::format("net_tap_sluice{}", nic_port);
  const std::string args = fmt::format(
      "{},iface={},mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", name, ifname, mac[0], mac[1],
      mac[2], mac[3], mac[4], mac[5]);
  if (int rc = rte_dev_probe(args.c_str()); rc != 0) {
    throw DpdkError(fmt::format("cannot create the kernel exception interface {} ({}): {}",
                                ifname, args, rte_strerror(-rc)));
  }
  uint16_t port = 0;
  if (int rc = rte_eth_dev_get_port_by_name(name.c_str(), &port); rc != 0) {
    throw DpdkError(fmt::format("kernel exception interface {}: no port {}: {}", ifname, name,
                                rte_strerror(-rc)));
  }
  return port;
}

void stopPort(uint16_t port_id) {
  rte_eth_dev_stop(port_id);
  rte_eth_dev_close(port_id);
}

}  // namespace sluice
