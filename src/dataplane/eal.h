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
  // Receive frames for every destination MAC. Off by default: the pipeline drops frames that
  // are not for the port anyway (not_for_us), and the NIC's filter saves it the work.
  bool promiscuous = false;
  bool rss = true;  // spread over the queues by RSS where the device can (not the kernel port)
};

struct PortInfo {
  std::string name;
  std::string driver;  // "net_af_packet", "net_ixgbe", ...
  uint8_t mac[6] = {};
  bool rss = false;  // flows are spread over the queues by the NIC
};

/** Configure and start a port: queues, RSS where the device has it, promiscuous mode. */
PortInfo startPort(const PortConfig& cfg);

/**
 * Create the kernel exception port of a NIC port: a net_tap device whose kernel interface is
 * named ifname and carries the NIC's MAC, so the kernel's frames leave through the NIC as if
 * the host's own (DPDK's replacement for KNI, see its "Virtio_user as Exception Path" guide).
 * @return the new port's id (not started: startPort it with the workers' queue count)
 * @throws DpdkError
 */
uint16_t createKernelPort(uint16_t nic_port, const std::string& ifname, const uint8_t mac[6]);

/** Stop and close a port (a pcap port flushes and closes its output file here). */
void stopPort(uint16_t port_id);

}  // namespace sluice
