#include "control/host_interface.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_arp.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>
#include <unistd.h>

#include <netlink/attr.h>
#include <netlink/cache.h>
#include <netlink/errno.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/neighbour.h>
#include <netlink/route/nexthop.h>
#include <netlink/route/route.h>
#include <netlink/socket.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <set>
#include <utility>

namespace sluice {

struct HostInterface::Decoded {
  IpAddress addr;
  bool present = false;  // false: RTM_DELNEIGH, the entry is gone
  Neighbour neighbour;
};

struct HostInterface::RequestContext {
  uint32_t seq = 0;
  bool done = false;
  int error = 0;     // negative errno from the kernel's NLMSG_ERROR, 0 = ACK or dump end
  std::string text;  // the kernel's extended ACK message (NLMSGERR_ATTR_MSG), when it gave one
  std::vector<Decoded>* replies = nullptr;
  int ifindex = 0;
};

namespace {

// Kernel notifications are one message of a few hundred bytes, and a dump chunk is at most 32 KiB
// (netlink_recvmsg caps max_recvmsg_len there). With a buffer this size libnl needs no MSG_PEEK
// to size it (its default: two syscalls per datagram), and every recvmsg consumes exactly one
// datagram whatever it holds, so a loop over them always makes progress.
constexpr size_t kNetlinkReadBuffer = 64 * 1024;
// Room for bursts of neighbour events (each costs about 1 KiB of receive buffer): a table of a few
// hundred backends flapping at once, before the event loop gets to read them.
constexpr int kEventBufferBytes = 1 << 20;
// Bounds every read loop, so a flood of datagrams cannot keep the event loop in one call.
constexpr int kMaxDatagramsPerCall = 4096;

// The kernel's NUD_VALID (include/net/neighbour.h, not exported): states with a usable MAC.
constexpr unsigned kUsableStates =
    NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY;

constexpr std::array<uint8_t, 6> kBroadcastMac = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
// ff02::1 (all nodes) on Ethernet: 33:33 + its low 32 bits (RFC 2464 section 7).
constexpr std::array<uint8_t, 6> kAllNodesMac = {0x33, 0x33, 0x00, 0x00, 0x00, 0x01};
constexpr std::array<uint8_t, 16> kAllNodes = {0xff, 0x02, 0, 0, 0, 0, 0, 0,
                                               0,    0,    0, 0, 0, 0, 0, 1};

const char* stateName(unsigned state) {
  // The kernel keeps one NUD bit set at a time; test the "dummy" states first all the same.
  if (state & NUD_PERMANENT) {
    return "permanent";
  }
  if (state & NUD_NOARP) {
    return "noarp";
  }
  if (state & NUD_REACHABLE) {
    return "reachable";
  }
  if (state & NUD_STALE) {
    return "stale";
  }
  if (state & NUD_DELAY) {
    return "delay";
  }
  if (state & NUD_PROBE) {
    return "probe";
  }
  if (state & NUD_INCOMPLETE) {
    return "incomplete";
  }
  if (state & NUD_FAILED) {
    return "failed";
  }
  return "none";
}

int addressFamily(const IpAddress& a) { return a.isV4() ? AF_INET : AF_INET6; }
size_t addressLength(const IpAddress& a) { return a.isV4() ? 4 : 16; }

std::optional<IpAddress> fromBinary(int family, const void* data, size_t len) {
  IpAddress a;
  if (family == AF_INET && len == 4) {
    a.family = LB_FAMILY_IPV4;
  } else if (family == AF_INET6 && len == 16) {
    a.family = LB_FAMILY_IPV6;
  } else {
    return std::nullopt;
  }
  std::memcpy(a.bytes.data(), data, len);
  return a;
}

std::string errnoText(int negative_errno, const std::string& kernel_text) {
  std::string s = std::strerror(-negative_errno);
  if (!kernel_text.empty()) {
    s += " (kernel: " + kernel_text + ")";
  }
  return s;
}

int setCloexec(int fd) {
  const int flags = ::fcntl(fd, F_GETFD);
  return flags < 0 ? -1 : ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

/** Ones' complement sum of data as 16-bit big-endian words (RFC 1071), not yet folded. */
uint32_t sum16(const uint8_t* data, size_t len, uint32_t sum) {
  for (size_t i = 0; i + 1 < len; i += 2) {
    sum += static_cast<uint32_t>(data[i] << 8 | data[i + 1]);
  }
  if (len % 2 != 0) {
    sum += static_cast<uint32_t>(data[len - 1] << 8);
  }
  return sum;
}

uint16_t fold(uint32_t sum) {
  while (sum >> 16 != 0) {
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return static_cast<uint16_t>(~sum & 0xffff);
}

void putEthernet(uint8_t* f, const std::array<uint8_t, 6>& dst, const MacAddress& src,
                 uint16_t ethertype) {
  std::memcpy(f, dst.data(), 6);
  std::memcpy(f + 6, src.bytes.data(), 6);
  f[12] = static_cast<uint8_t>(ethertype >> 8);
  f[13] = static_cast<uint8_t>(ethertype & 0xff);
}

/**
 * RFC 5227 section 3 ARP Announcement: an ARP request (RFC 826) whose sender and target protocol
 * addresses are both the VIP, target hardware address zero, broadcast. Receivers that already have
 * an entry for the VIP update it (Linux arp_process: is_garp overrides locktime); hosts without
 * one do not create it unless net.ipv4.conf.*.arp_accept is set.
 */
size_t arpAnnouncement(uint8_t* f, const MacAddress& src, const IpAddress& vip) {
  putEthernet(f, kBroadcastMac, src, ETH_P_ARP);
  uint8_t* a = f + 14;
  a[0] = 0;
  a[1] = ARPHRD_ETHER;  // htype
  a[2] = ETH_P_IP >> 8;
  a[3] = ETH_P_IP & 0xff;  // ptype
  a[4] = 6;                // hlen
  a[5] = 4;                // plen
  a[6] = 0;
  a[7] = ARPOP_REQUEST;
  std::memcpy(a + 8, src.bytes.data(), 6);   // sha
  std::memcpy(a + 14, vip.bytes.data(), 4);  // spa
  std::memset(a + 18, 0, 6);                 // tha: "SHOULD be set to all zeroes" (RFC 5227 2.1.1)
  std::memcpy(a + 24, vip.bytes.data(), 4);  // tpa
  // 42 bytes are below the Ethernet minimum; veth and many PMDs send short frames as they are,
  // so pad here rather than rely on the driver.
  std::memset(f + 42, 0, ETH_ZLEN - 42);
  return ETH_ZLEN;
}

/**
 * RFC 4861 section 7.2.6 unsolicited Neighbour Advertisement: to ff02::1, Solicited clear (it must
 * be for a multicast destination, 7.1.2), Override set so that receivers replace the MAC they
 * have, Router clear (a VIP is not a router; R set would put it in default router lists), with the
 * Target Link-Layer Address option. Hop limit 255 so receivers know it came from the link (7.1.2).
 * The source is the VIP itself: RFC 4861 asks for an address of the sending interface, and the VIP
 * is the one Sluice owns on this link (it is not configured in the kernel, which checks only the
 * target); keepalived and ndsend do the same.
 */
size_t unsolicitedAdvertisement(uint8_t* f, const MacAddress& src, const IpAddress& vip) {
  constexpr size_t kIcmpLen = 24 + 8;  // NA + one TLLA option
  putEthernet(f, kAllNodesMac, src, ETH_P_IPV6);
  uint8_t* ip6 = f + 14;
  std::memset(ip6, 0, 40);
  ip6[0] = 0x60;  // version 6, traffic class 0, flow label 0
  ip6[4] = 0;
  ip6[5] = kIcmpLen;
  ip6[6] = IPPROTO_ICMPV6;
  ip6[7] = 255;
  std::memcpy(ip6 + 8, vip.bytes.data(), 16);
  std::memcpy(ip6 + 24, kAllNodes.data(), 16);
  uint8_t* icmp = ip6 + 40;
  std::memset(icmp, 0, kIcmpLen);
  icmp[0] = 136;   // Neighbor Advertisement
  icmp[1] = 0;     // code
  icmp[4] = 0x20;  // R=0 S=0 O=1
  std::memcpy(icmp + 8, vip.bytes.data(), 16);
  icmp[24] = 2;  // Target Link-Layer Address
  icmp[25] = 1;  // in units of 8 octets
  std::memcpy(icmp + 26, src.bytes.data(), 6);
  // Checksum over the pseudo-header of RFC 8200 section 8.1 and the message.
  uint32_t sum = sum16(ip6 + 8, 32, 0);
  sum += kIcmpLen;
  sum += IPPROTO_ICMPV6;
  sum = sum16(icmp, kIcmpLen, sum);
  const uint16_t csum = fold(sum);
  icmp[2] = static_cast<uint8_t>(csum >> 8);
  icmp[3] = static_cast<uint8_t>(csum & 0xff);
  return 14 + 40 + kIcmpLen;
}

/** Read and drop every queued datagram. */
void discardQueued(int fd) {
  std::array<char, 256> buf;
  for (int i = 0; i < kMaxDatagramsPerCall; ++i) {
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0 && errno != EINTR && errno != ENOBUFS) {
      return;  // EAGAIN: empty
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void HostInterface::NlSockFree::operator()(nl_sock* sk) const { nl_socket_free(sk); }

void HostInterface::fail(const std::string& what) const {
  throw HostInterfaceError(fmt::format("host interface {}: {}", ifname_, what));
}

HostInterface::HostInterface(std::string ifname) : ifname_(std::move(ifname)) {
  if (ifname_.empty() || ifname_.size() >= IFNAMSIZ) {
    fail(fmt::format("not a valid interface name (1 to {} characters)", IFNAMSIZ - 1));
  }
  auto openSocket = [&](bool events) {
    NlSockPtr sk(nl_socket_alloc());
    if (!sk) {
      fail("cannot allocate a netlink socket");
    }
    if (events) {
      // Notifications carry sequence number 0; libnl's default check would drop them all.
      nl_socket_disable_seq_check(sk.get());
    }
    if (const int err = nl_connect(sk.get(), NETLINK_ROUTE); err < 0) {
      fail(fmt::format("cannot open rtnetlink: {}", nl_geterror(err)));
    }
    const int fd = nl_socket_get_fd(sk.get());
    // libnl 3.7 opens with SOCK_CLOEXEC; older ones did not, and the daemon execs helpers.
    if (setCloexec(fd) < 0 || nl_socket_set_nonblocking(sk.get()) < 0) {
      fail(fmt::format("cannot configure the rtnetlink socket: {}", std::strerror(errno)));
    }
    nl_socket_disable_msg_peek(sk.get());
    nl_socket_set_msg_buf_size(sk.get(), kNetlinkReadBuffer);
    const int one = 1;
    if (events) {
      if (const int err = nl_socket_add_membership(sk.get(), RTNLGRP_NEIGH); err < 0) {
        fail(fmt::format("cannot subscribe to neighbour events: {}", nl_geterror(err)));
      }
      // SO_RCVBUFFORCE goes past net.core.rmem_max (we are CAP_NET_ADMIN); fall back when not.
      if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &kEventBufferBytes,
                       sizeof(kEventBufferBytes)) != 0) {
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kEventBufferBytes, sizeof(kEventBufferBytes));
      }
    } else {
      // Ask for the kernel's reason with each error ("IPv6 is disabled on this device"), and not
      // for a copy of our request in it (NETLINK_CAP_ACK). Both exist since Linux 4.12 / 4.3;
      // without them errors are only an errno.
      ::setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
      ::setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
    }
    return sk;
  };
  request_ = openSocket(false);
  // Subscribe before the table is loaded, so that no change can fall between the dump and the
  // first event.
  events_ = openSocket(true);
  nl_socket_modify_cb(
      events_.get(), NL_CB_VALID, NL_CB_CUSTOM,
      [](nl_msg* msg, void* arg) {
        static_cast<HostInterface*>(arg)->onEvent(msg);
        return static_cast<int>(NL_OK);
      },
      this);

  rtnl_link* link = nullptr;
  if (const int err = rtnl_link_get_kernel(request_.get(), 0, ifname_.c_str(), &link); err < 0) {
    fail(err == -NLE_OBJ_NOTFOUND || err == -NLE_NODEV
             ? std::string("no such interface in this network namespace")
             : fmt::format("cannot read the link: {}", nl_geterror(err)));
  }
  ifindex_ = rtnl_link_get_ifindex(link);
  const unsigned arptype = rtnl_link_get_arptype(link);
  nl_addr* lladdr = rtnl_link_get_addr(link);
  const bool ethernet =
      arptype == ARPHRD_ETHER && lladdr != nullptr && nl_addr_get_len(lladdr) == 6;
  rtnl_link_put(link);
  if (!ethernet) {
    // ARP and ND as written here need Ethernet framing; an L3 device (tun, wireguard) has no
    // neighbours to resolve and nothing to announce.
    fail(fmt::format("not an Ethernet interface (link type {})", arptype));
  }

  refreshAll();

  // Protocol 0: this socket only sends, so the kernel queues no received frame on it.
  packet_fd_ = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (packet_fd_ < 0) {
    fail(fmt::format("cannot open a packet socket for announcements: {}", std::strerror(errno)));
  }
}

HostInterface::~HostInterface() {
  for (auto it = routes_.rbegin(); it != routes_.rend(); ++it) {
    std::string text;
    defaultRouteRequest(*it, false, text);  // gone with the interface or an operator is fine
  }
  // Newest first: the reverse of how they were added. Removing a primary IPv4 address also
  // removes the secondaries of its subnet unless net.ipv4.conf.IF.promote_secondaries is set, so
  // an address an operator added later in the subnet of one of ours goes with it (the kernel's
  // rule, not ours to work around).
  for (auto it = added_.rbegin(); it != added_.rend(); ++it) {
    rtnl_addr* a = rtnl_addr_alloc();
    nl_addr* local = nl_addr_build(addressFamily(it->address), it->address.bytes.data(),
                                   addressLength(it->address));
    nl_msg* msg = nullptr;
    if (a != nullptr && local != nullptr) {
      nl_addr_set_prefixlen(local, it->length);
      rtnl_addr_set_ifindex(a, ifindex_);
      rtnl_addr_set_local(a, local);
      rtnl_addr_set_prefixlen(a, it->length);
      if (rtnl_addr_build_delete_request(a, 0, &msg) == 0) {
        std::string text;
        request(msg, text, nullptr);  // gone already (the interface, or an operator) is fine
      }
    }
    if (local != nullptr) {
      nl_addr_put(local);
    }
    if (a != nullptr) {
      rtnl_addr_put(a);
    }
  }
  if (packet_fd_ >= 0) {
    ::close(packet_fd_);
  }
}

int HostInterface::request(nl_msg* msg, std::string& kernel_text, std::vector<Decoded>* replies) {
  nl_sock* sk = request_.get();
  // Left over from a request abandoned half-way (a dump that failed): not ours to read now.
  discardQueued(nl_socket_get_fd(sk));
  RequestContext ctx;
  ctx.replies = replies;
  ctx.ifindex = ifindex_;
  const int sent = nl_send_auto(sk, msg);  // adds NLM_F_ACK: every request ends in an ACK or error
  ctx.seq = nlmsg_hdr(msg)->nlmsg_seq;
  nlmsg_free(msg);
  if (sent < 0) {
    kernel_text = nl_geterror(sent);
    return -EIO;
  }
  nl_cb* cb = nl_cb_alloc(NL_CB_CUSTOM);
  if (cb == nullptr) {
    return -ENOMEM;
  }
  // Replies are taken only from the kernel (port id 0) and only with this request's sequence
  // number, so a late answer to an earlier request, or a datagram another local process sent to
  // this port, is skipped instead of being taken for the answer.
  nl_cb_set(
      cb, NL_CB_SEQ_CHECK, NL_CB_CUSTOM,
      [](nl_msg* m, void* arg) {
        const auto* c = static_cast<const RequestContext*>(arg);
        const bool ours = nlmsg_get_src(m)->nl_pid == 0 && nlmsg_hdr(m)->nlmsg_seq == c->seq;
        return static_cast<int>(ours ? NL_OK : NL_SKIP);
      },
      &ctx);
  nl_cb_set(
      cb, NL_CB_VALID, NL_CB_CUSTOM,
      [](nl_msg* m, void* arg) {
        auto* c = static_cast<RequestContext*>(arg);
        if (c->replies != nullptr) {
          if (auto d = decode(m, c->ifindex)) {
            c->replies->push_back(std::move(*d));
          }
        }
        return static_cast<int>(NL_OK);
      },
      &ctx);
  auto finish = [](nl_msg*, void* arg) {
    static_cast<RequestContext*>(arg)->done = true;
    return static_cast<int>(NL_STOP);
  };
  nl_cb_set(cb, NL_CB_FINISH, NL_CB_CUSTOM, finish, &ctx);
  nl_cb_set(cb, NL_CB_ACK, NL_CB_CUSTOM, finish, &ctx);
  nl_cb_err(
      cb, NL_CB_CUSTOM,
      [](sockaddr_nl* nla, nlmsgerr* e, void* arg) {
        auto* c = static_cast<RequestContext*>(arg);
        if (nla->nl_pid != 0 || e->msg.nlmsg_seq != c->seq) {
          return static_cast<int>(NL_SKIP);
        }
        c->done = true;
        c->error = e->error;
        // Extended ACK attributes follow the (capped, or whole) copy of our request.
        const auto* h =
            reinterpret_cast<const nlmsghdr*>(reinterpret_cast<const char*>(e) - NLMSG_HDRLEN);
        if ((h->nlmsg_flags & NLM_F_ACK_TLVS) != 0) {
          size_t off = NLMSG_HDRLEN + sizeof(nlmsgerr);
          if ((h->nlmsg_flags & NLM_F_CAPPED) == 0) {
            off += NLMSG_ALIGN(e->msg.nlmsg_len) - NLMSG_HDRLEN;
          }
          if (off < h->nlmsg_len) {
            nlattr* tb[NLMSGERR_ATTR_MAX + 1] = {};
            auto* attrs = reinterpret_cast<nlattr*>(
                const_cast<char*>(reinterpret_cast<const char*>(h) + off));
            if (nla_parse(tb, NLMSGERR_ATTR_MAX, attrs, static_cast<int>(h->nlmsg_len - off),
                          nullptr) == 0 &&
                tb[NLMSGERR_ATTR_MSG] != nullptr) {
              const char* s = static_cast<const char*>(nla_data(tb[NLMSGERR_ATTR_MSG]));
              c->text.assign(s, strnlen(s, static_cast<size_t>(nla_len(tb[NLMSGERR_ATTR_MSG]))));
            }
          }
        }
        return static_cast<int>(NL_STOP);
      },
      &ctx);
  // The kernel handles an rtnetlink request inside sendmsg() and queues the answer before it
  // returns; a dump's next chunk is built inside the recvmsg() that drains the previous one. So on
  // this non-blocking socket every reply is there when we read, and EAGAIN means none is coming.
  int result = 0;
  for (int i = 0; !ctx.done && i < (1 << 20); ++i) {
    const int r = nl_recvmsgs(sk, cb);
    if (ctx.done) {
      break;
    }
    if (r == -NLE_AGAIN) {
      ctx.text = "no answer from the kernel";
      result = -ETIMEDOUT;
      break;
    }
  }
  nl_cb_put(cb);
  if (!ctx.done && result == 0) {
    result = -EIO;
  }
  kernel_text = ctx.text;
  return ctx.done ? ctx.error : result;
}

MacAddress HostInterface::mac() const {
  rtnl_link* link = nullptr;
  if (const int err = rtnl_link_get_kernel(request_.get(), ifindex_, nullptr, &link); err < 0) {
    fail(fmt::format("cannot read the link: {}", nl_geterror(err)));
  }
  MacAddress m;
  nl_addr* lladdr = rtnl_link_get_addr(link);
  const bool ok = lladdr != nullptr && nl_addr_get_len(lladdr) == 6;
  if (ok) {
    std::memcpy(m.bytes.data(), nl_addr_get_binary_addr(lladdr), 6);
  }
  rtnl_link_put(link);
  if (!ok) {
    fail("the link has no Ethernet address");
  }
  return m;
}

void HostInterface::setUp() {
  rtnl_link* orig = rtnl_link_alloc();
  rtnl_link* change = rtnl_link_alloc();
  nl_msg* msg = nullptr;
  int err = -NLE_NOMEM;
  if (orig != nullptr && change != nullptr) {
    rtnl_link_set_ifindex(orig, ifindex_);
    rtnl_link_set_flags(change, IFF_UP);
    err = rtnl_link_build_change_request(orig, change, 0, &msg);
  }
  if (orig != nullptr) {
    rtnl_link_put(orig);
  }
  if (change != nullptr) {
    rtnl_link_put(change);
  }
  if (err < 0) {
    fail(fmt::format("cannot build the link-up request: {}", nl_geterror(err)));
  }
  std::string text;
  if (const int e = request(msg, text, nullptr); e != 0) {
    fail("cannot bring the link up: " + errnoText(e, text));
  }
}

std::vector<std::pair<IpAddress, uint8_t>> HostInterface::kernelAddresses() const {
  nl_cache* cache = nullptr;
  if (const int err = rtnl_addr_alloc_cache(request_.get(), &cache); err < 0) {
    fail(fmt::format("cannot list addresses: {}", nl_geterror(err)));
  }
  std::vector<std::pair<IpAddress, uint8_t>> out;
  for (nl_object* o = nl_cache_get_first(cache); o != nullptr; o = nl_cache_get_next(o)) {
    auto* a = reinterpret_cast<rtnl_addr*>(o);
    nl_addr* local = rtnl_addr_get_local(a);
    if (rtnl_addr_get_ifindex(a) != ifindex_ || local == nullptr) {
      continue;
    }
    if (const auto ip = fromBinary(rtnl_addr_get_family(a), nl_addr_get_binary_addr(local),
                                   nl_addr_get_len(local))) {
      out.emplace_back(*ip, static_cast<uint8_t>(rtnl_addr_get_prefixlen(a)));
    }
  }
  nl_cache_free(cache);
  return out;
}

void HostInterface::ensureAddresses(const std::vector<IpPrefix>& prefixes) {
  std::vector<std::pair<IpAddress, uint8_t>> present = kernelAddresses();
  for (const IpPrefix& p : prefixes) {
    if (!p.address.isV4() && !p.address.isV6()) {
      fail("cannot configure an unset address");
    }
    const auto same = std::find_if(present.begin(), present.end(),
                                   [&](const auto& e) { return e.first == p.address; });
    if (same != present.end()) {
      if (same->second == p.length) {
        continue;
      }
      fail(fmt::format("{} is already configured as /{}, not /{}", p.address.str(), same->second,
                       p.length));
    }
    rtnl_addr* a = rtnl_addr_alloc();
    nl_addr* local =
        nl_addr_build(addressFamily(p.address), p.address.bytes.data(), addressLength(p.address));
    nl_msg* msg = nullptr;
    int err = -NLE_NOMEM;
    if (a != nullptr && local != nullptr) {
      nl_addr_set_prefixlen(local, p.length);
      rtnl_addr_set_ifindex(a, ifindex_);
      rtnl_addr_set_local(a, local);
      rtnl_addr_set_prefixlen(a, p.length);
      if (p.address.isV6()) {
        // Without it the address is "tentative" for DAD (about a second) and the kernel will not
        // use it as the source of its Neighbour Solicitations meanwhile. Sluice's addresses are
        // its own by configuration; a duplicate is an operator error DAD would not fix.
        rtnl_addr_set_flags(a, IFA_F_NODAD);
      }
      err = rtnl_addr_build_add_request(a, NLM_F_EXCL, &msg);
    }
    if (local != nullptr) {
      nl_addr_put(local);
    }
    if (a != nullptr) {
      rtnl_addr_put(a);
    }
    if (err < 0) {
      fail(fmt::format("cannot build the request for {}: {}", p.str(), nl_geterror(err)));
    }
    std::string text;
    const int e = request(msg, text, nullptr);
    if (e == -EEXIST) {
      continue;  // added by someone else since we listed them: theirs, not ours to remove
    }
    if (e != 0) {
      fail(fmt::format("cannot add {}: {}", p.str(), errnoText(e, text)));
    }
    added_.push_back(p);
    present.emplace_back(p.address, p.length);
  }
}

int HostInterface::defaultRouteRequest(const IpAddress& gateway, bool add,
                                       std::string& kernel_text) {
  rtnl_route* r = rtnl_route_alloc();
  rtnl_nexthop* nh = rtnl_route_nh_alloc();
  const std::array<uint8_t, 16> any{};
  nl_addr* dst = nl_addr_build(addressFamily(gateway), any.data(), addressLength(gateway));
  nl_addr* via = nl_addr_build(addressFamily(gateway), gateway.bytes.data(), addressLength(gateway));
  nl_msg* msg = nullptr;
  int err = -NLE_NOMEM;
  if (r != nullptr && nh != nullptr && dst != nullptr && via != nullptr) {
    nl_addr_set_prefixlen(dst, 0);
    rtnl_route_set_family(r, static_cast<uint8_t>(addressFamily(gateway)));
    rtnl_route_set_dst(r, dst);
    rtnl_route_set_table(r, RT_TABLE_MAIN);
    rtnl_route_set_priority(r, kDefaultRouteMetric);
    rtnl_route_set_protocol(r, RTPROT_STATIC);
    rtnl_route_set_scope(r, RT_SCOPE_UNIVERSE);
    rtnl_route_set_type(r, RTN_UNICAST);
    rtnl_route_nh_set_ifindex(nh, ifindex_);
    rtnl_route_nh_set_gateway(nh, via);
    rtnl_route_add_nexthop(r, nh);  // the route owns it from here
    nh = nullptr;
    err = add ? rtnl_route_build_add_request(r, NLM_F_EXCL, &msg)
              : rtnl_route_build_del_request(r, 0, &msg);
  }
  if (nh != nullptr) {
    rtnl_route_nh_free(nh);
  }
  for (nl_addr* a : {dst, via}) {
    if (a != nullptr) {
      nl_addr_put(a);
    }
  }
  if (r != nullptr) {
    rtnl_route_put(r);
  }
  if (err < 0) {
    kernel_text = nl_geterror(err);
    return -ENOMEM;
  }
  return request(msg, kernel_text, nullptr);
}

void HostInterface::ensureDefaultRoutes(const std::vector<IpAddress>& gateways) {
  for (const IpAddress& gw : gateways) {
    if (!gw.isV4() && !gw.isV6()) {
      fail("cannot route through an unset gateway");
    }
    if (std::find(routes_.begin(), routes_.end(), gw) != routes_.end()) {
      continue;
    }
    std::string text;
    const int e = defaultRouteRequest(gw, true, text);
    if (e == -EEXIST) {
      continue;  // the same route is there already: someone else's, not ours to remove
    }
    if (e != 0) {
      fail(fmt::format("cannot add a default route via {}: {}", gw.str(), errnoText(e, text)));
    }
    routes_.push_back(gw);
  }
}

int HostInterface::sendNeighbour(const IpAddress& addr, uint16_t state, uint8_t flags, int nl_flags,
                                 std::string& kernel_text) {
  rtnl_neigh* n = rtnl_neigh_alloc();
  nl_addr* dst = nl_addr_build(addressFamily(addr), addr.bytes.data(), addressLength(addr));
  nl_msg* msg = nullptr;
  int err = -NLE_NOMEM;
  if (n != nullptr && dst != nullptr) {
    rtnl_neigh_set_ifindex(n, ifindex_);
    rtnl_neigh_set_dst(n, dst);
    // libnl sends NUD_PERMANENT when no state is set (as iproute2 does for `ip neigh replace ...
    // use`), and neigh_add() creates an entry asked for as permanent exempt from garbage
    // collection (exempt_from_gc) even though NTF_USE then makes it dynamic. Say NUD_NONE (or
    // NUD_PROBE) explicitly; NTF_USE ignores the state otherwise.
    rtnl_neigh_set_state(n, state);
    if (flags != 0) {
      rtnl_neigh_set_flags(n, flags);
    }
    err = rtnl_neigh_build_add_request(n, nl_flags, &msg);
  }
  if (dst != nullptr) {
    nl_addr_put(dst);
  }
  if (n != nullptr) {
    rtnl_neigh_put(n);
  }
  if (err < 0) {
    kernel_text = nl_geterror(err);
    return -ENOMEM;
  }
  return request(msg, kernel_text, nullptr);
}

void HostInterface::fetchNeighbour(const IpAddress& addr) {
  nl_msg* msg = nlmsg_alloc_simple(RTM_GETNEIGH, 0);
  if (msg == nullptr) {
    return;
  }
  ndmsg ndm{};
  ndm.ndm_family = static_cast<uint8_t>(addressFamily(addr));
  ndm.ndm_ifindex = ifindex_;
  if (nlmsg_append(msg, &ndm, sizeof(ndm), NLMSG_ALIGNTO) < 0 ||
      nla_put(msg, NDA_DST, static_cast<int>(addressLength(addr)), addr.bytes.data()) < 0) {
    nlmsg_free(msg);
    return;
  }
  std::vector<Decoded> replies;
  std::string text;
  const int err = request(msg, text, &replies);
  if (err == -ENOENT) {
    setNeighbour(addr, std::nullopt);
  }
  for (const Decoded& d : replies) {
    setNeighbour(d.addr, d.present ? std::optional<Neighbour>(d.neighbour) : std::nullopt);
  }
}

void HostInterface::resolve(const IpAddress& addr) {
  if (!addr.isV4() && !addr.isV6()) {
    fail("cannot resolve an unset address");
  }
  // Decide on the newest state we can know, and keep events and our own reads in kernel order.
  if (!drainEvents()) {
    refreshAll();
  }
  const std::string state = neighbour(addr).state;
  if (state == "permanent" || state == "noarp") {
    // NTF_USE would make a static entry dynamic: since Linux 5.16 (3dc20f4762c6 "net, neigh:
    // Enable state migration between NUD_PERMANENT and NTF_USE") it clears NUD_PERMANENT and starts
    // resolution. Seen on a test kernel: PERMANENT -> INCOMPLETE.
    return;
  }
  std::string text;
  if (state == "reachable" || state == "stale") {
    // Re-validate now instead of waiting for the kernel: with no traffic of its own to the
    // address (the data plane sends it), a STALE entry would stay STALE for ever, and NTF_USE only
    // moves it to DELAY, probing after delay_first_probe_time (5 s). NUD_PROBE set by an
    // administrator starts unicast probes at once (neigh_timer_handler, ucast_solicit of them
    // retrans_time apart); the entry keeps its MAC meanwhile. The kernel notifies this change.
    // No NLM_F_CREATE: when the entry is gone since the last event (ENOENT), or lost its MAC
    // (EINVAL, "No link layer address given"), resolve from scratch below.
    if (sendNeighbour(addr, NUD_PROBE, 0, NLM_F_REPLACE, text) == 0) {
      return;
    }
  }
  // NTF_USE makes neigh_add() call neigh_event_send(): NONE or FAILED -> INCOMPLETE with a
  // broadcast solicitation (mcast_solicit of them, retrans_time apart), nothing while INCOMPLETE,
  // DELAY or PROBE. With NLM_F_CREATE, neigh_add() first creates the entry when there is none; that
  // is older than 5.16, where NTF_USE started going through __neigh_update(NEIGH_UPDATE_F_USE),
  // and is what 6.1 does. Checked by experiment (on the 6.18 kernel the tests ran on): an address
  // with no entry goes NONE -> INCOMPLETE -> REACHABLE in under a millisecond on a veth, or
  // -> FAILED after mcast_solicit x retrans_time = 3 s when nobody answers. So no other trigger (a
  // datagram to the discard port) is needed. The kernel does not notify the move to INCOMPLETE
  // (__neigh_event_send() does not call neigh_update_notify()), hence the read-back.
  if (const int err = sendNeighbour(addr, NUD_NONE, NTF_USE, NLM_F_CREATE | NLM_F_REPLACE, text);
      err != 0) {
    fail(fmt::format("cannot resolve {}: {}", addr.str(), errnoText(err, text)));
  }
  fetchNeighbour(addr);
}

HostInterface::Neighbour HostInterface::neighbour(const IpAddress& addr) const {
  if (const auto it = neighbours_.find(addr); it != neighbours_.end()) {
    return it->second;
  }
  return Neighbour{std::nullopt, "none"};
}

void HostInterface::setNeighbour(const IpAddress& addr, std::optional<Neighbour> next) {
  const auto it = neighbours_.find(addr);
  const std::optional<MacAddress> old_mac = it == neighbours_.end() ? std::nullopt : it->second.mac;
  const bool old_failed = it != neighbours_.end() && it->second.state == "failed";
  const std::optional<MacAddress> new_mac = next ? next->mac : std::nullopt;
  const bool new_failed = next && next->state == "failed";
  // The data plane cares about the MAC (and whether there is one); a new failure is reported too,
  // so the daemon learns that a backend or gateway does not answer. Moves among reachable, stale,
  // delay and probe with the same MAC are the kernel's routine and not worth a wake-up.
  if (old_mac != new_mac || (new_failed && !old_failed)) {
    changed_.push_back(addr);
  }
  if (next) {
    neighbours_[addr] = std::move(*next);
  } else if (it != neighbours_.end()) {
    neighbours_.erase(it);
  }
}

void HostInterface::refreshAll() {
  // Events queued now are older than the dump below; applying them after it would roll entries
  // back. Events that arrive from here on are as new as the dump or newer.
  discardEvents();
  std::vector<Decoded> rows;
  for (const int family : {AF_INET, AF_INET6}) {
    // One dump per family: an AF_UNSPEC dump also runs the bridge FDB dump (PF_BRIDGE), which
    // reads the request differently. NDA_IFINDEX makes the kernel filter (neigh_valid_dump_req).
    nl_msg* msg = nlmsg_alloc_simple(RTM_GETNEIGH, NLM_F_DUMP);
    if (msg == nullptr) {
      fail("out of memory");
    }
    ndmsg ndm{};
    ndm.ndm_family = static_cast<uint8_t>(family);
    if (nlmsg_append(msg, &ndm, sizeof(ndm), NLMSG_ALIGNTO) < 0 ||
        nla_put_u32(msg, NDA_IFINDEX, static_cast<uint32_t>(ifindex_)) < 0) {
      nlmsg_free(msg);
      fail("out of memory");
    }
    std::string text;
    if (const int err = request(msg, text, &rows); err != 0) {
      fail("cannot read the neighbour table: " + errnoText(err, text));
    }
  }
  std::map<IpAddress, Neighbour> fresh;
  for (Decoded& d : rows) {
    if (d.present) {
      fresh[d.addr] = std::move(d.neighbour);
    }
  }
  std::vector<IpAddress> gone;
  for (const auto& [addr, n] : neighbours_) {
    if (!fresh.contains(addr)) {
      gone.push_back(addr);
    }
  }
  for (const IpAddress& addr : gone) {
    setNeighbour(addr, std::nullopt);
  }
  for (auto& [addr, n] : fresh) {
    setNeighbour(addr, std::move(n));
  }
}

int HostInterface::eventFd() const { return nl_socket_get_fd(events_.get()); }

void HostInterface::onEvent(nl_msg* msg) noexcept {
  // Only the kernel's notifications: a local process can send to this socket's port too.
  if (nlmsg_get_src(msg)->nl_pid != 0) {
    return;
  }
  if (auto d = decode(msg, ifindex_)) {
    setNeighbour(d->addr,
                 d->present ? std::optional<Neighbour>(std::move(d->neighbour)) : std::nullopt);
  }
}

std::optional<HostInterface::Decoded> HostInterface::decode(nl_msg* msg, int ifindex) {
  nlmsghdr* h = nlmsg_hdr(msg);
  if ((h->nlmsg_type != RTM_NEWNEIGH && h->nlmsg_type != RTM_DELNEIGH) ||
      !nlmsg_valid_hdr(h, sizeof(ndmsg))) {
    return std::nullopt;
  }
  const auto* ndm = static_cast<const ndmsg*>(nlmsg_data(h));
  // RTNLGRP_NEIGH carries every interface's entries, bridge FDB entries (AF_BRIDGE, dropped by
  // fromBinary) and proxy entries (answered for others, not resolved).
  if (ndm->ndm_ifindex != ifindex || (ndm->ndm_flags & NTF_PROXY) != 0) {
    return std::nullopt;
  }
  nlattr* tb[NDA_MAX + 1] = {};
  if (nlmsg_parse(h, sizeof(ndmsg), tb, NDA_MAX, nullptr) < 0 || tb[NDA_DST] == nullptr) {
    return std::nullopt;
  }
  const auto addr =
      fromBinary(ndm->ndm_family, nla_data(tb[NDA_DST]), static_cast<size_t>(nla_len(tb[NDA_DST])));
  if (!addr) {
    return std::nullopt;
  }
  Decoded d;
  d.addr = *addr;
  d.present = h->nlmsg_type == RTM_NEWNEIGH;
  d.neighbour.state = d.present ? stateName(ndm->ndm_state) : "none";
  nlattr* lladdr = tb[NDA_LLADDR];
  if (d.present && (ndm->ndm_state & kUsableStates) != 0 && lladdr != nullptr &&
      nla_len(lladdr) == 6) {
    MacAddress m;
    std::memcpy(m.bytes.data(), nla_data(lladdr), 6);
    d.neighbour.mac = m;
  }
  return d;
}

bool HostInterface::drainEvents() noexcept {
  // Every nl_recvmsgs() here consumes one datagram (no MSG_PEEK), whatever it returns.
  for (int i = 0; i < kMaxDatagramsPerCall; ++i) {
    const int r = nl_recvmsgs_default(events_.get());
    if (r == -NLE_AGAIN) {
      return true;
    }
    if (r == -NLE_NOMEM) {
      return false;  // ENOBUFS: the receive buffer overran and the kernel dropped events
    }
    // Other errors are one malformed datagram, already read; go on with the next.
  }
  return true;
}

void HostInterface::discardEvents() noexcept { discardQueued(eventFd()); }

std::vector<IpAddress> HostInterface::processEvents() noexcept {
  for (int attempt = 0; attempt < 3 && !drainEvents(); ++attempt) {
    try {
      refreshAll();
    } catch (const HostInterfaceError&) {
      break;  // the cache stays as it was; the next overrun or refreshAll() tries again
    }
  }
  std::vector<IpAddress> out;
  std::set<IpAddress> seen;
  for (const IpAddress& a : changed_) {
    if (seen.insert(a).second) {
      out.push_back(a);
    }
  }
  changed_.clear();
  return out;
}

void HostInterface::announce(const IpAddress& vip) {
  if (!vip.isV4() && !vip.isV6()) {
    fail("cannot announce an unset address");
  }
  const MacAddress src = mac();
  std::array<uint8_t, 128> frame{};
  const size_t len = vip.isV4() ? arpAnnouncement(frame.data(), src, vip)
                                : unsolicitedAdvertisement(frame.data(), src, vip);
  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_ifindex = ifindex_;
  to.sll_protocol = htons(vip.isV4() ? ETH_P_ARP : ETH_P_IPV6);
  to.sll_halen = 6;
  std::memcpy(to.sll_addr, frame.data(), 6);  // SOCK_RAW: the header is in the frame already
  const ssize_t n =
      ::sendto(packet_fd_, frame.data(), len, 0, reinterpret_cast<sockaddr*>(&to), sizeof(to));
  if (n < 0) {
    fail(fmt::format("cannot announce {}: {}", vip.str(), std::strerror(errno)));
  }
  if (static_cast<size_t>(n) != len) {
    fail(fmt::format("cannot announce {}: sent {} of {} bytes", vip.str(), n, len));
  }
}

}  // namespace sluice
