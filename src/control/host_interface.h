// Sluice's view of one kernel network interface: its addresses, the kernel's neighbour table for it
// (ARP, RFC 826, and IPv6 Neighbour Discovery, RFC 4861) and the announcements Sluice sends for its
// VIPs. The same on both data paths: on XDP it is the interface the program is attached to, on
// DPDK the net_tap exception interface that stands in for the NIC. The kernel does the neighbour
// resolution (its NUD state machine retries, refreshes and expires entries); this class asks it to
// and mirrors the result from rtnetlink events. docs/neighbours.md has the whole story.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/net.h"

struct nl_sock;
struct nl_msg;

namespace sluice {

/** A HostInterface operation failed; what() names the interface and the reason. */
class HostInterfaceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/**
 * One kernel interface, opened over rtnetlink. Every call returns without waiting on the network
 * (rtnetlink requests are answered synchronously inside the kernel), so it is meant for the
 * daemon's single event-loop thread; it is not thread-safe.
 */
class HostInterface {
 public:
  /**
   * Opens rtnetlink (a request socket and a socket subscribed to RTNLGRP_NEIGH), an AF_PACKET
   * socket for announcements, and loads the interface's neighbour table. The sockets belong to the
   * network namespace of the calling thread.
   * @throws HostInterfaceError naming the interface and the reason (no such interface, not
   *         Ethernet, no permission, ...)
   */
  explicit HostInterface(std::string ifname);
  /** Removes the addresses this object added (not ones that were already there). */
  ~HostInterface();
  HostInterface(const HostInterface&) = delete;
  HostInterface& operator=(const HostInterface&) = delete;

  const std::string& name() const { return ifname_; }
  int ifindex() const { return ifindex_; }
  /**
   * The interface's current MAC, read from the kernel (one rtnetlink round trip).
   * @throws HostInterfaceError
   */
  MacAddress mac() const;

  /** Bring the link up. @throws HostInterfaceError */
  void setUp();

  /**
   * Make sure each prefix is configured on the interface (idempotent; IPv6 with IFA_F_NODAD so it
   * is usable at once). Addresses this call adds are removed again by the destructor.
   * @throws HostInterfaceError when the kernel refuses one, or when the address is already there
   *         with another prefix length (a configuration conflict, not something to guess about)
   */
  void ensureAddresses(const std::vector<IpPrefix>& prefixes);

  /**
   * Give the host's own traffic a way back to off-link peers: a default route via each gateway on
   * this interface (main table, metric kDefaultRouteMetric, so a default route an operator already
   * has, e.g. on a management interface, keeps precedence). Idempotent; routes this call adds are
   * removed again by the destructor, before the addresses.
   * @throws HostInterfaceError when the kernel refuses one (for instance a gateway that is not
   *         on-link of an address of the interface)
   */
  void ensureDefaultRoutes(const std::vector<IpAddress>& gateways);
  static constexpr uint32_t kDefaultRouteMetric = 20000;

  // Neighbours (the kernel's table for this interface)

  /**
   * Ask the kernel to resolve, or re-validate, addr on this interface:
   * - no entry, or incomplete/failed/delay/probe: RTM_NEWNEIGH with NTF_USE and NLM_F_CREATE
   *   (`ip neigh replace ADDR dev IF use`), which creates the entry and starts broadcast
   *   solicitation (a no-op while the kernel is already resolving);
   * - reachable/stale: the entry is set to NUD_PROBE, so the kernel unicasts a probe to the MAC it
   *   has now (one frame) and ends in reachable, or in failed when the host stopped answering at
   *   that MAC (moved, replaced) so that the next call resolves it afresh by broadcast;
   * - permanent/noarp: nothing (NTF_USE would turn a static entry into a dynamic one).
   * Changes it causes are returned by the next processEvents().
   * @throws HostInterfaceError when addr is not an IP address or the kernel refuses the request
   */
  void resolve(const IpAddress& addr);

  struct Neighbour {
    std::optional<MacAddress> mac;  // set when the kernel has a usable link-layer address
                                    // (REACHABLE, STALE, DELAY, PROBE, PERMANENT, NOARP)
    std::string state;  // "reachable", "stale", "delay", "probe", "incomplete", "failed",
                        // "permanent", "noarp", "none" (no entry)
  };
  /** From this object's cache, kept current by processEvents(); no syscall. */
  Neighbour neighbour(const IpAddress& addr) const;
  /** Every cached entry of the interface (for reports). */
  const std::map<IpAddress, Neighbour>& neighbours() const { return neighbours_; }

  /** The fd to watch for readability (the event subscription socket). */
  int eventFd() const;
  /**
   * Read every pending neighbour event (non-blocking) and update the cache. Malformed messages,
   * messages not sent by the kernel and entries of other interfaces are skipped; an overrun
   * (ENOBUFS) reloads the table. Never throws.
   * @return each address whose MAC or usability changed, or whose resolution failed, since the
   *         last call (including changes seen by resolve() and refreshAll()), each once, in the
   *         order first seen
   */
  std::vector<IpAddress> processEvents() noexcept;
  /**
   * Reload the interface's neighbour table (done at construction, and by processEvents() after an
   * event-socket overrun). @throws HostInterfaceError when the dump fails
   */
  void refreshAll();

  // Announcements

  /**
   * Send a gratuitous ARP (IPv4: ARP request with sender = target = vip from mac(), broadcast;
   * RFC 5227 section 3 "ARP announcement") or an unsolicited Neighbour Advertisement (IPv6: to
   * ff02::1, override flag set, target vip, target link-layer address option = mac(); RFC 4861
   * section 7.2.6) out of this interface through an AF_PACKET socket. The frame is written here:
   * the VIP is not configured on the interface, so the kernel would not send either.
   * @throws HostInterfaceError on a send failure (link down, queue full, ...)
   */
  void announce(const IpAddress& vip);

 private:
  struct NlSockFree {
    void operator()(nl_sock* sk) const;
  };
  using NlSockPtr = std::unique_ptr<nl_sock, NlSockFree>;
  struct Decoded;
  struct RequestContext;

  [[noreturn]] void fail(const std::string& what) const;
  /**
   * Send msg (consumed) on the request socket and read up to its ACK, error or dump end; neighbour
   * messages in the answer go to replies when it is not null.
   * @return 0, or a negative errno (kernel_text: the kernel's extended ACK message, if any)
   */
  int request(nl_msg* msg, std::string& kernel_text, std::vector<Decoded>* replies);
  /** A neighbour message of this interface's table; nullopt for anything else or malformed. */
  static std::optional<Decoded> decode(nl_msg* msg, int ifindex);
  std::vector<std::pair<IpAddress, uint8_t>> kernelAddresses() const;
  /** RTM_NEWROUTE (NLM_F_EXCL) or RTM_DELROUTE of the default route via gateway; 0 or -errno. */
  int defaultRouteRequest(const IpAddress& gateway, bool add, std::string& kernel_text);
  int sendNeighbour(const IpAddress& addr, uint16_t state, uint8_t flags, int nl_flags,
                    std::string& kernel_text);
  void fetchNeighbour(const IpAddress& addr);
  void setNeighbour(const IpAddress& addr, std::optional<Neighbour> next);
  /** Apply every queued event to the cache; false when the socket overran. */
  bool drainEvents() noexcept;
  void discardEvents() noexcept;
  void onEvent(nl_msg* msg) noexcept;

  std::string ifname_;
  int ifindex_ = 0;
  NlSockPtr request_;
  NlSockPtr events_;
  int packet_fd_ = -1;
  std::map<IpAddress, Neighbour> neighbours_;
  std::vector<IpAddress> changed_;  // reported by the next processEvents()
  std::vector<IpPrefix> added_;     // removed by the destructor
  std::vector<IpAddress> routes_;   // gateways of the default routes added; removed likewise
};

}  // namespace sluice
