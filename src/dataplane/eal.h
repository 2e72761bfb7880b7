// Bringing DPDK up and down: the EAL, the mbuf pool and the ports.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

struct rte_mempool;

namespace sluice {

/** A DPDK set-up step failed; what() says which and why (rte_strerror). */
class DpdkError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/** The EAL for the life of the object. Only one may exist per process. */
class Eal {
 public:
  /** @param args argv for rte_eal_init, program name first @throws DpdkError */
  explicit Eal(const std::vector<std::string>& args);
  ~Eal();
  Eal(const Eal&) = delete;
  Eal& operator=(const Eal&) = delete;
};

/** rte_pktmbuf_pool_create with a clear error. @throws DpdkError */
rte_mempool* createMbufPool(const std::string& name, uint32_t mbufs, int socket);

struct PortConfig {
  uint16_t port_id = 0;
  uint16_t queues = 1;     // one RX and one TX queue per worker
  uint16_t rx_desc = 1024;
  uint16_t tx_desc = 1024;
  rte_mempool* pool = nullptr;
};

struct PortInfo {
  std::string name;
  uint8_t mac[6] = {};
  bool rss = false;  // flows are spread over the queues by the NIC
};

/** Configure and start a port: queues, RSS where the device has it, promiscuous mode. */
PortInfo startPort(const PortConfig& cfg);

/** Stop and close a port (a pcap port flushes and closes its output file here). */
void stopPort(uint16_t port_id);

}  // namespace sluice
