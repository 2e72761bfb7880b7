// Churn test: steady traffic through a running sluiced while the real sluicectl makes 1,000
// backend changes; no packet may be dropped or sent to a removed or wrong backend, and an
// established flow may only move off a backend that was removed.
//
// Set-up (root only; skipped otherwise). The test makes two network namespaces of its own,
// sluice-churn-lb-<pid> and sluice-churn-gen-<pid>, joined by a veth pair with IPv6 off and no IP
// address (the kernel stays silent on it). sluiced runs in the lb namespace on that veth through
// DPDK's net_af_packet (no hugepages, no PCI) with one worker; its control socket is a file, so
// sluicectl, run from the test's own namespace, reaches it. The test's traffic socket (AF_PACKET)
// lives in the gen namespace: a sender thread sends UDP frames to the DR service at a steady rate
// over a changing set of flows (each payload carries the flow index and a global sequence
// number), and a receiver thread records every frame sluiced sends back (DR hairpins on the same
// port): sequence number, destination MAC (= the backend) and arrival time.
//
// Meanwhile the main thread runs 1,000 changes through sluicectl, one process per change: a
// seeded random mix of backend add, del, drain, edit --weight and re-add on a pool of 20
// backends; two anchor backends are never touched, so the service always has a backend.
//
// Timing is made exact, not guessed. For each change the test notes the next sequence number
// and the time before starting sluicectl (start_seq, t0) and after it returned (end_seq, t1).
// sluicectl returns only after the new snapshot is published and every worker has left the old
// one (RCU), and a sequence number is handed out before its frame is sent, so:
//   - a packet with seq >= end_seq was processed with the change in effect;
//   - a packet that arrived back before t0 was processed without it.
// Between those bounds either state is allowed. Every check below is a consequence of correct
// behaviour whatever the scheduling, so it cannot fail by bad luck:
//   1. every packet sent comes back exactly once, intact apart from its MACs, and sluiced's own
//      counters agree (none of its packets dropped, nothing else forwarded, no flow evicted or
//      expired); the test's frames are addressed to the daemon's port, whose MAC is the veth's
//      (sluiced takes no frame for another MAC: not_for_us);
//   2. every packet goes to a backend of the service that may have been present when it was
//      processed; the first packet of a flow, and a flow that moves, only go to a backend that
//      may have had weight > 0 (a drained backend gets no new flows);
//   3. a flow only moves from backend X when a removal of X may have been published between its
//      last packet on X and its first packet elsewhere: drains, weight edits and adds never
//      move a flow;
//   4. afterwards, sluicectl list shows the backends and weights the changes made, and each
//      backend's active flows (list) and packets (stats) are its own since it was last added,
//      not those of an earlier backend that had the same internal id.
//
// The test's threads and the sluicectl processes run off the CPU of sluiced's worker. The report
// (stdout) gives the figures: packets, flows, changes by kind, flow moves, sluicectl round trips
// and the latency through sluiced. A loss is reported as ranges of sequence numbers with the
// veth, socket and sluiced counters, which tell where the packets went.
//
// SLUICE_CHURN_SEED=N picks another sequence of changes; SLUICE_KEEP_TEST_DIRS=1 keeps the
// temporary directory (configuration, daemon log).
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/prctl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/net.h"
#include "tools/pktgen/packet_builder.h"

#ifndef SLUICED_PATH
#error "SLUICED_PATH must name the sluiced binary under test"
#endif
#ifndef SLUICECTL_PATH
#error "SLUICECTL_PATH must name the sluicectl binary under test"
#endif

extern char** environ;

namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using sluice::IpAddress;
using sluice::MacAddress;

// ---------------------------------------------------------------------------------------------
// Parameters

constexpr int kChanges = 1000;
constexpr int kAnchors = 2;          // never changed: the service always has a backend
constexpr int kPool = 20;            // the backends the changes play with
constexpr int kInitialPool = 10;     // pool members in the configuration at start
constexpr double kRatePps = 20000;   // steady send rate
constexpr uint32_t kActiveFlows = 512;      // flows in use at any time, sent to round robin
constexpr uint32_t kLongLivedFlows = 128;   // of which these live for the whole test
constexpr uint32_t kNewFlowEvery = 97;      // every 97th packet replaces a short-lived flow
constexpr auto kWarmup = 1000ms;     // traffic before the first change
constexpr auto kTail = 500ms;        // traffic after the last change
constexpr uint32_t kDefaultSeed = 20241122;
constexpr const char* kService = "churn";
constexpr const char* kVip = "192.0.2.10";
constexpr uint16_t kVipPort = 80;
constexpr const char* kLbMac = "02:5c:00:00:00:01";      // the daemon's port (veth, lb side)
constexpr const char* kClientMac = "02:5c:00:00:00:02";  // the test's side
constexpr char kMagic[8] = {'S', 'L', 'C', 'H', 'U', 'R', 'N', '1'};

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

uint64_t mac64(const uint8_t* m) {
  uint64_t v = 0;
  for (int i = 0; i < 6; ++i) {
    v = v << 8 | m[i];
  }
  return v;
}
uint64_t mac64(const MacAddress& m) { return mac64(m.bytes.data()); }

std::string macText(uint64_t v) {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", (v >> 40) & 0xff,
                     (v >> 32) & 0xff, (v >> 24) & 0xff, (v >> 16) & 0xff, (v >> 8) & 0xff,
                     v & 0xff);
}

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string tail(const std::string& s, size_t n = 4000) {
  return s.size() <= n ? s : "..." + s.substr(s.size() - n);
}

bool executable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

std::string findIp() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (executable(p)) {
      return p;
    }
  }
  return {};
}

// ---------------------------------------------------------------------------------------------
// Running programs

struct CmdResult {
  int status = -1;  // exit status; 128 + signal; -1: could not run
  bool timed_out = false;
  std::string output;  // stdout and stderr together
  int64_t t0_ns = 0;   // just before the process was started
  int64_t t1_ns = 0;   // just after it was reaped

  bool ok() const { return status == 0; }
};

/** Run args[0] (a path) with args, stdin from /dev/null, stdout and stderr captured together. */
CmdResult runCommand(const std::vector<std::string>& args, int timeout_ms = 30000) {
  CmdResult r;
  int pfd[2];
  if (::pipe2(pfd, O_CLOEXEC) != 0) {
    r.output = fmt::format("pipe: {}", std::strerror(errno));
    return r;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, pfd[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, pfd[1], STDERR_FILENO);
  std::vector<std::string> store = args;
  std::vector<char*> argv;
  for (std::string& a : store) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);

  r.t0_ns = nowNs();
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(pfd[1]);
  if (rc != 0) {
    ::close(pfd[0]);
    r.output = fmt::format("cannot run {}: {}", args[0], std::strerror(rc));
    r.t1_ns = nowNs();
    return r;
  }
  const int64_t deadline = r.t0_ns + int64_t{timeout_ms} * 1'000'000;
  char buf[4096];
  for (;;) {
    const int64_t left_ms = (deadline - nowNs()) / 1'000'000;
    if (left_ms <= 0) {
      ::kill(pid, SIGKILL);  // the child this function started
      r.timed_out = true;
      break;
    }
    pollfd p{pfd[0], POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left_ms));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      continue;  // timeout is checked above
    }
    const ssize_t got = ::read(pfd[0], buf, sizeof(buf));
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got <= 0) {
      break;  // EOF: the child closed its output (it exits)
    }
    r.output.append(buf, static_cast<size_t>(got));
  }
  ::close(pfd[0]);
  int ws = 0;
  while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  r.t1_ns = nowNs();
  if (WIFEXITED(ws)) {
    r.status = WEXITSTATUS(ws);
  } else if (WIFSIGNALED(ws)) {
    r.status = 128 + WTERMSIG(ws);
  }
  return r;
}

std::string joinArgs(const std::vector<std::string>& args) {
  std::string s;
  for (const std::string& a : args) {
    s += (s.empty() ? "" : " ") + a;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Network namespaces

/** Run f on a fresh thread that has entered network namespace ns; rethrows what f throws. */
void inNetns(const std::string& ns, const std::function<void()>& f) {
  std::exception_ptr error;
  std::thread t([&] {
    try {
      const std::string path = "/run/netns/" + ns;
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        throw std::runtime_error(fmt::format("open {}: {}", path, std::strerror(errno)));
      }
      const int rc = ::setns(fd, CLONE_NEWNET);  // this thread only
      const int err = errno;
      ::close(fd);
      if (rc != 0) {
        throw std::runtime_error(fmt::format("setns {}: {}", ns, std::strerror(err)));
      }
      f();
    } catch (...) {
      error = std::current_exception();
    }
  });
  t.join();
  if (error) {
    std::rethrow_exception(error);
  }
}

/** Two namespaces of this test and a veth pair between them; removed again by remove(). */
class NetnsPair {
 public:
  NetnsPair(std::string ip, int id)
      : ip_(std::move(ip)),
        lb_ns_(fmt::format("sluice-churn-lb-{}", id)),
        gen_ns_(fmt::format("sluice-churn-gen-{}", id)),
        lb_if_(fmt::format("slcl{}", id)),
        gen_if_(fmt::format("slcg{}", id)) {}
  ~NetnsPair() { remove(); }
  NetnsPair(const NetnsPair&) = delete;
  NetnsPair& operator=(const NetnsPair&) = delete;

  /** Empty on success, else what failed (with the command's output). */
  std::string create() {
    for (const std::string& ns : {lb_ns_, gen_ns_}) {
      if (std::string e = ip({"netns", "add", ns}); !e.empty()) {
        return e;
      }
      created_.push_back(ns);
    }
    const std::vector<std::vector<std::string>> steps = {
        {"link", "add", lb_if_, "netns", lb_ns_, "type", "veth", "peer", "name", gen_if_, "netns",
         gen_ns_},
        {"-n", lb_ns_, "link", "set", "dev", lb_if_, "address", kLbMac},
        {"-n", gen_ns_, "link", "set", "dev", gen_if_, "address", kClientMac},
    };
    for (const auto& s : steps) {
      if (std::string e = ip(s); !e.empty()) {
        return e;
      }
    }
    // IPv6 off before the links come up: no router solicitation, DAD or MLD frames. With no IPv4
    // address either, the kernel sends nothing on the link.
    try {
      disableIpv6(lb_ns_, lb_if_);
      disableIpv6(gen_ns_, gen_if_);
    } catch (const std::exception& e) {
      return e.what();
    }
    for (const auto& s : std::vector<std::vector<std::string>>{
             {"-n", lb_ns_, "link", "set", "dev", lb_if_, "up"},
             {"-n", gen_ns_, "link", "set", "dev", gen_if_, "up"}}) {
      if (std::string e = ip(s); !e.empty()) {
        return e;
      }
    }
    return {};
  }

  void remove() {
    for (const std::string& ns : created_) {
      runCommand({ip_, "netns", "del", ns});
    }
    created_.clear();
  }

  /** Namespaces (and EAL runtime directories) left by runs of this test whose process is gone. */
  static void removeStale(const std::string& ip) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
      const std::string name = entry.path().filename().string();
      for (const std::string prefix : {"sluice-churn-lb-", "sluice-churn-gen-"}) {
        if (name.rfind(prefix, 0) != 0) {
          continue;
        }
        const std::string pid = name.substr(prefix.size());
        if (!pid.empty() && pid.find_first_not_of("0123456789") == std::string::npos &&
            !std::filesystem::exists("/proc/" + pid) && pid != std::to_string(::getpid())) {
          runCommand({ip, "netns", "del", name});
          std::filesystem::remove_all("/var/run/dpdk/churn" + pid, ec);  // its EAL runtime dir
        }
      }
    }
  }

  std::string vethStats() {
    std::string out;
    for (const auto& [ns, dev] : {std::pair{lb_ns_, lb_if_}, std::pair{gen_ns_, gen_if_}}) {
      out += runCommand({ip_, "-s", "-s", "-n", ns, "link", "show", "dev", dev}).output;
    }
    return out;
  }

  const std::string& lbNs() const { return lb_ns_; }
  const std::string& genNs() const { return gen_ns_; }
  const std::string& lbIf() const { return lb_if_; }
  const std::string& genIf() const { return gen_if_; }

 private:
  std::string ip(const std::vector<std::string>& args) {
    std::vector<std::string> full = {ip_};
    full.insert(full.end(), args.begin(), args.end());
    const CmdResult r = runCommand(full);
    return r.ok() ? std::string() : fmt::format("{} failed ({}): {}", joinArgs(full), r.status, r.output);
  }

  static void disableIpv6(const std::string& ns, const std::string& dev) {
    inNetns(ns, [&] {
      // /proc/sys/net shows the namespace of the thread that opens it.
      const std::string path = fmt::format("/proc/sys/net/ipv6/conf/{}/disable_ipv6", dev);
      if (!std::filesystem::exists("/proc/sys/net/ipv6")) {
        return;  // a kernel without IPv6 (ipv6.disable=1): nothing to silence
      }
      {
        std::ofstream f(path);
        f << "1\n";
        if (!f.flush()) {
          throw std::runtime_error("cannot write " + path);
        }
      }
      if (readFile(path).rfind('1', 0) != 0) {
        throw std::runtime_error(path + " did not take 1");
      }
    });
  }

  std::string ip_;
  std::string lb_ns_, gen_ns_, lb_if_, gen_if_;
  std::vector<std::string> created_;
};

// ---------------------------------------------------------------------------------------------
// Traffic

struct FlowAddr {
  IpAddress src;
  uint16_t sport;
};

FlowAddr flowAddr(uint32_t flow) {
  // One client address per flow (198.18.0.0/15, the benchmarking range), ports spread out.
  return {IpAddress::v4(0xC6120000u + 1 + flow), static_cast<uint16_t>(1024 + (flow * 7919u) % 60000)};
}

/** The frame the test sends for (flow, seq); DR must return it unchanged but for the MACs. */
pktgen::Bytes frameFor(uint32_t flow, uint64_t seq, uint32_t nonce) {
  static const IpAddress vip = *IpAddress::parse(kVip);
  static const MacAddress lb = *MacAddress::parse(kLbMac);
  static const MacAddress client = *MacAddress::parse(kClientMac);
  const FlowAddr a = flowAddr(flow);
  pktgen::PacketSpec spec;
  spec.src_mac = client;
  spec.dst_mac = lb;
  spec.src = a.src;
  spec.dst = vip;
  spec.proto = LB_PROTO_UDP;
  spec.sport = a.sport;
  spec.dport = kVipPort;
  spec.ip_id = static_cast<uint16_t>(seq);
  spec.payload.resize(24);
  std::memcpy(spec.payload.data(), kMagic, 8);
  std::memcpy(spec.payload.data() + 8, &nonce, 4);
  std::memcpy(spec.payload.data() + 12, &flow, 4);
  std::memcpy(spec.payload.data() + 16, &seq, 8);
  return pktgen::build(spec);
}

struct RxRecord {
  uint64_t seq = 0;
  uint32_t flow = 0;
  bool intact = false;  // the frame is the one sent, but for its MACs
  bool src_ok = false;  // source MAC is the daemon's port
  uint64_t dst_mac = 0;
  int64_t t_ns = 0;     // when the receiver got it (after the daemon processed it)
};

/**
 * A sender and a receiver on one AF_PACKET socket in the gen namespace. The sender hands out
 * sequence numbers (next_seq) before it sends the frames that carry them.
 */
class Traffic {
 public:
  Traffic(int fd, uint32_t nonce) : fd_(fd), nonce_(nonce) {}
  ~Traffic() { stop(); }

  void start() {
    flow_of_seq_.reserve(static_cast<size_t>(kRatePps * 60));
    sent_at_.reserve(static_cast<size_t>(kRatePps * 60));
    rx_.reserve(static_cast<size_t>(kRatePps * 60));
    receiver_ = std::thread([this] { receive(); });
    sender_ = std::thread([this] { send(); });
  }
  void stopSending() {
    stop_send_.store(true);
    if (sender_.joinable()) {
      sender_.join();
    }
  }
  void stopReceiving() {
    stop_recv_.store(true);
    if (receiver_.joinable()) {
      receiver_.join();
    }
  }
  void stop() {
    stopSending();
    stopReceiving();
  }

  uint64_t nextSeq() const { return next_seq_.load(std::memory_order_seq_cst); }
  uint64_t received() const { return received_.load(); }
  uint64_t sendError() const { return send_errno_.load(); }

  // Read after stop():
  const std::vector<uint32_t>& flowOfSeq() const { return flow_of_seq_; }
  const std::vector<int64_t>& sentAt() const { return sent_at_; }
  const std::vector<RxRecord>& rx() const { return rx_; }
  uint32_t flowsOpened() const { return flows_opened_; }
  uint64_t foreignFrames() const { return foreign_; }
  uint64_t sendRetries() const { return send_retries_; }
  uint64_t maxBurst() const { return max_burst_; }
  const std::vector<std::string>& foreignSamples() const { return foreign_samples_; }

 private:
  static constexpr size_t kBatch = 32;

  void send() {
    std::array<pktgen::Bytes, kBatch> frames;
    std::array<iovec, kBatch> iov{};
    std::array<mmsghdr, kBatch> msgs{};
    std::vector<uint32_t> slots(kActiveFlows);
    for (uint32_t i = 0; i < kActiveFlows; ++i) {
      slots[i] = i;
    }
    uint32_t next_flow = kActiveFlows;
    uint32_t rr = 0;
    uint64_t packets = 0;
    const int64_t start = nowNs();
    double credit_base = 0;  // packets accounted for by the pacing
    while (!stop_send_.load(std::memory_order_relaxed)) {
      const double due = static_cast<double>(nowNs() - start) * 1e-9 * kRatePps;
      // After a stall, do not burst more than ~10 ms worth to catch up.
      credit_base = std::max(credit_base, due - kRatePps * 0.01);
      const size_t n = static_cast<size_t>(std::min<double>(due - credit_base, kBatch));
      if (n == 0) {
        std::this_thread::sleep_for(200us);
        continue;
      }
      credit_base += static_cast<double>(n);
      max_burst_ = std::max<uint64_t>(max_burst_, n);
      const uint64_t first = next_seq_.load(std::memory_order_relaxed);  // the only writer
      for (size_t i = 0; i < n; ++i) {
        const uint32_t slot = rr;
        rr = (rr + 1) % kActiveFlows;
        if (slot >= kLongLivedFlows && packets % kNewFlowEvery == kNewFlowEvery - 1) {
          slots[slot] = next_flow++;  // a short-lived flow ends, a new one starts
        }
        ++packets;
        const uint32_t flow = slots[slot];
        frames[i] = frameFor(flow, first + i, nonce_);
        flow_of_seq_.push_back(flow);
        iov[i] = {frames[i].data(), frames[i].size()};
        msgs[i] = {};
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
      }
      flows_opened_ = next_flow;
      // Published before the frames are sent: a change that read next_seq <= s finished before
      // the frame carrying s was sent.
      next_seq_.store(first + n, std::memory_order_seq_cst);
      const int64_t t_send = nowNs();
      sent_at_.insert(sent_at_.end(), n, t_send);
      size_t done = 0;
      while (done < n) {
        const int r = ::sendmmsg(fd_, msgs.data() + done, static_cast<unsigned>(n - done), 0);
        if (r > 0) {
          done += static_cast<size_t>(r);
          continue;
        }
        if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == ENOBUFS)) {
          ++send_retries_;  // that frame was not sent: send it again, order is kept
          std::this_thread::sleep_for(100us);
          continue;
        }
        send_errno_.store(r < 0 ? errno : EIO);
        return;
      }
    }
  }

  void receive() {
    static constexpr size_t kRxBatch = 64;
    static constexpr size_t kBuf = 2048;
    std::vector<uint8_t> bufs(kRxBatch * kBuf);
    std::array<iovec, kRxBatch> iov{};
    std::array<sockaddr_ll, kRxBatch> from{};
    std::array<mmsghdr, kRxBatch> msgs{};
    const uint64_t lb_mac = mac64(*MacAddress::parse(kLbMac));
    for (;;) {
      for (size_t i = 0; i < kRxBatch; ++i) {
        iov[i] = {bufs.data() + i * kBuf, kBuf};
        msgs[i] = {};
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_ll);
      }
      const int r = ::recvmmsg(fd_, msgs.data(), kRxBatch, MSG_DONTWAIT, nullptr);
      const int64_t t = nowNs();
      if (r <= 0) {
        if (stop_recv_.load()) {
          return;  // stopped and drained
        }
        pollfd p{fd_, POLLIN, 0};
        ::poll(&p, 1, 20);
        continue;
      }
      for (int i = 0; i < r; ++i) {
        if (from[i].sll_pkttype == PACKET_OUTGOING) {
          continue;  // our own sends, should the kernel loop them back
        }
        const uint8_t* f = bufs.data() + static_cast<size_t>(i) * kBuf;
        const size_t len = std::min<size_t>(msgs[i].msg_len, kBuf);
        std::optional<RxRecord> rec = parse(f, len, t, lb_mac);
        if (!rec) {
          ++foreign_;
          if (foreign_samples_.size() < 5) {
            std::string hex;
            for (size_t k = 0; k < std::min<size_t>(len, 48); ++k) {
              hex += fmt::format("{:02x}", f[k]);
            }
            foreign_samples_.push_back(fmt::format("{} bytes: {}", len, hex));
          }
          continue;
        }
        rx_.push_back(*rec);
        received_.fetch_add(1);
      }
    }
  }

  std::optional<RxRecord> parse(const uint8_t* f, size_t len, int64_t t, uint64_t lb_mac) const {
    // Ethernet, IPv4 (20 bytes), UDP to the VIP port, then our payload.
    constexpr size_t kPayload = 14 + 20 + 8;
    if (len < kPayload + 24 || f[12] != 0x08 || f[13] != 0x00 || f[14] != 0x45 || f[23] != 17 ||
        std::memcmp(f + kPayload, kMagic, 8) != 0) {
      return std::nullopt;
    }
    uint32_t nonce = 0;
    std::memcpy(&nonce, f + kPayload + 8, 4);
    if (nonce != nonce_) {
      return std::nullopt;
    }
    RxRecord rec;
    std::memcpy(&rec.flow, f + kPayload + 12, 4);
    std::memcpy(&rec.seq, f + kPayload + 16, 8);
    rec.dst_mac = mac64(f);
    rec.src_ok = mac64(f + 6) == lb_mac;
    rec.t_ns = t;
    const pktgen::Bytes expect = frameFor(rec.flow, rec.seq, nonce_);
    rec.intact = expect.size() == len && std::memcmp(expect.data() + 12, f + 12, len - 12) == 0;
    return rec;
  }

  int fd_;
  uint32_t nonce_;
  std::thread sender_, receiver_;
  std::atomic<bool> stop_send_{false}, stop_recv_{false};
  std::atomic<uint64_t> next_seq_{0};
  std::atomic<uint64_t> received_{0};
  std::atomic<int> send_errno_{0};
  // Sender only (read after it stopped):
  std::vector<uint32_t> flow_of_seq_;
  std::vector<int64_t> sent_at_;  // when each packet's batch was handed to the kernel
  uint32_t flows_opened_ = 0;
  uint64_t send_retries_ = 0;
  uint64_t max_burst_ = 0;
  // Receiver only (read after it stopped):
  std::vector<RxRecord> rx_;
  uint64_t foreign_ = 0;
  std::vector<std::string> foreign_samples_;
};

// ---------------------------------------------------------------------------------------------
// Backends and changes

struct BackendDef {
  std::string address;
  MacAddress mac;
  bool anchor = false;
};

struct BackendState {
  bool present = false;
  uint32_t weight = 0;
};

enum class Kind { kAdd, kReAdd, kDel, kDrain, kEdit };

const char* kindName(Kind k) {
  switch (k) {
    case Kind::kAdd: return "add";
    case Kind::kReAdd: return "re-add";
    case Kind::kDel: return "del";
    case Kind::kDrain: return "drain";
    case Kind::kEdit: return "edit --weight";
  }
  return "?";
}

struct Change {
  int index = 0;
  Kind kind = Kind::kAdd;
  int backend = 0;
  BackendState after;
  std::vector<std::string> args;
  uint64_t start_seq = 0;  // next_seq before sluicectl started
  uint64_t end_seq = 0;    // next_seq after it returned
  int64_t t0_ns = 0, t1_ns = 0;
  CmdResult result;
};

std::vector<BackendDef> backendDefs() {
  std::vector<BackendDef> defs;
  for (int i = 0; i < kAnchors + kPool; ++i) {
    BackendDef d;
    d.anchor = i < kAnchors;
    d.address = fmt::format("10.1.{}.{}", d.anchor ? 0 : 1, 10 + i);
    d.mac = *MacAddress::parse(fmt::format("02:00:00:00:{:02x}:{:02x}", d.anchor ? 1 : 2, 10 + i));
    defs.push_back(d);
  }
  return defs;
}

std::string configText(const std::vector<BackendDef>& defs, const std::vector<BackendState>& st) {
  std::string s = fmt::format(
      "[dataplane]\nflow_table_size = 262144\n\n[timeouts]\nudp = 3600\n\n"
      "[[service]]\nname = \"{}\"\nvip = \"{}\"\nport = {}\nprotocol = \"udp\"\n"
      "forwarding = \"dr\"\n",
      kService, kVip, kVipPort);
  for (size_t i = 0; i < defs.size(); ++i) {
    if (st[i].present) {
      s += fmt::format("\n[[service.backend]]\naddress = \"{}\"\nmac = \"{}\"\nweight = {}\n",
                       defs[i].address, defs[i].mac.str(), st[i].weight);
    }
  }
  return s;
}

/** The seeded sequence of changes (their effect on the model; run times are filled in later). */
std::vector<Change> planChanges(uint32_t seed, const std::vector<BackendDef>& defs,
                                std::vector<BackendState> st, const std::string& socket) {
  std::mt19937 rng(seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<bool> ever(defs.size(), false);
  for (size_t i = 0; i < defs.size(); ++i) {
    ever[i] = st[i].present;
  }
  std::vector<Change> plan;
  for (int c = 0; c < kChanges; ++c) {
    std::vector<int> absent, present, active;
    for (int i = kAnchors; i < kAnchors + kPool; ++i) {
      (st[i].present ? present : absent).push_back(i);
      if (st[i].present && st[i].weight > 0) {
        active.push_back(i);
      }
    }
    // add 25, del 25, drain 20, edit 30 (when possible).
    std::vector<std::pair<Kind, int>> options;
    if (!absent.empty()) options.push_back({Kind::kAdd, 25});
    if (!present.empty()) options.push_back({Kind::kDel, 25});
    if (!active.empty()) options.push_back({Kind::kDrain, 20});
    if (!present.empty()) options.push_back({Kind::kEdit, 30});
    int total = 0;
    for (const auto& o : options) total += o.second;
    int roll = uniform(0, total - 1);
    Kind kind = options.front().first;
    for (const auto& o : options) {
      if (roll < o.second) {
        kind = o.first;
        break;
      }
      roll -= o.second;
    }
    auto pickFrom = [&](const std::vector<int>& v) { return v[static_cast<size_t>(uniform(0, static_cast<int>(v.size()) - 1))]; };
    Change ch;
    ch.index = c;
    ch.args = {SLUICECTL_PATH, "--socket", socket, "backend"};
    if (kind == Kind::kAdd) {
      const int b = pickFrom(absent);
      // Now and then a backend is added drained.
      const uint32_t w = uniform(0, 9) == 0 ? 0 : static_cast<uint32_t>(uniform(1, 8));
      ch.kind = ever[b] ? Kind::kReAdd : Kind::kAdd;
      ch.backend = b;
      ch.after = {true, w};
      ever[b] = true;
      ch.args.insert(ch.args.end(), {"add", kService, defs[b].address, "--mac", defs[b].mac.str(),
                                     "--weight", std::to_string(w)});
    } else if (kind == Kind::kDel) {
      const int b = pickFrom(present);
      ch.kind = kind;
      ch.backend = b;
      ch.after = {false, 0};
      ch.args.insert(ch.args.end(), {"del", kService, defs[b].address});
    } else if (kind == Kind::kDrain) {
      const int b = pickFrom(active);
      ch.kind = kind;
      ch.backend = b;
      ch.after = {true, 0};
      ch.args.insert(ch.args.end(), {"drain", kService, defs[b].address});
    } else {
      const int b = pickFrom(present);
      uint32_t w = static_cast<uint32_t>(uniform(1, 8));
      if (w == st[b].weight) {
        w = w % 8 + 1;  // a real change
      }
      ch.kind = kind;
      ch.backend = b;
      ch.after = {true, w};
      ch.args.insert(ch.args.end(), {"edit", kService, defs[b].address, "--weight", std::to_string(w)});
    }
    st[ch.backend] = ch.after;
    plan.push_back(std::move(ch));
  }
  return plan;
}

// ---------------------------------------------------------------------------------------------
// What a backend may have been when a packet was processed

/**
 * The changes of one backend in order, and what it was before them. A packet with sequence s
 * that came back at time tr was processed after every change with end_seq <= s was published and
 * before any change with t0 >= tr was: the backend was in the state after one of the changes in
 * between (or its initial state).
 */
struct BackendHistory {
  BackendState initial;
  std::vector<const Change*> changes;

  template <typename Pred>
  bool mayHaveBeen(uint64_t s, int64_t tr, Pred pred) const {
    size_t d = 0;  // changes certainly in effect
    while (d < changes.size() && changes[d]->end_seq <= s) ++d;
    size_t k = d;  // changes possibly in effect
    while (k < changes.size() && changes[k]->t0_ns < tr) ++k;
    if (pred(d == 0 ? initial : changes[d - 1]->after)) return true;
    for (size_t i = d; i < k; ++i) {
      if (pred(changes[i]->after)) return true;
    }
    return false;
  }

  std::string describe(uint64_t s, int64_t tr, int64_t origin) const {
    std::string out = fmt::format("initially {}", initial.present ? fmt::format("weight {}", initial.weight) : std::string("absent"));
    for (const Change* c : changes) {
      if (c->t0_ns > tr + 50'000'000 || c->end_seq + 4000 < s) {
        continue;
      }
      out += fmt::format("; change #{} {} -> {} (seq {}..{}, t {:.3f}..{:.3f} ms)", c->index,
                         kindName(c->kind),
                         c->after.present ? fmt::format("weight {}", c->after.weight) : std::string("absent"),
                         c->start_seq, c->end_seq, (c->t0_ns - origin) / 1e6, (c->t1_ns - origin) / 1e6);
    }
    return out;
  }
};

// ---------------------------------------------------------------------------------------------
// The test

class ChurnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) {
      GTEST_SKIP() << "needs root: it creates network namespaces, a veth pair and raw sockets";
    }
    ip_ = findIp();
    if (ip_.empty()) {
      GTEST_SKIP() << "needs the ip command (iproute2) to create network namespaces";
    }
    if (!executable(SLUICED_PATH) || !executable(SLUICECTL_PATH)) {
      GTEST_FAIL() << "missing " << SLUICED_PATH << " or " << SLUICECTL_PATH;
    }
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    if (::sched_getaffinity(0, sizeof(cpus), &cpus) == 0) {
      for (int c = 0; c < CPU_SETSIZE; ++c) {
        if (CPU_ISSET(c, &cpus)) allowed_cpus_.push_back(c);
      }
    }
    if (allowed_cpus_.size() < 2) {
      GTEST_SKIP() << "needs 2 CPUs: one for sluiced's control plane and one for its worker";
    }
    // The test's own threads and the sluicectl processes stay off the worker's CPU (the last
    // one), so that the test does not compete with the data plane it measures.
    all_cpus_ = cpus;
    cpu_set_t others = cpus;
    CPU_CLR(allowed_cpus_.back(), &others);
    pinned_ = ::sched_setaffinity(0, sizeof(others), &others) == 0;
    char tmpl[] = "/tmp/sluice-churn-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    NetnsPair::removeStale(ip_);
    net_ = std::make_unique<NetnsPair>(ip_, static_cast<int>(::getpid()));
    if (std::string e = net_->create(); !e.empty()) {
      net_.reset();
      GTEST_SKIP() << "cannot create network namespaces and a veth pair here: " << e;
    }
  }

  void TearDown() override {
    if (traffic_) {
      traffic_->stop();
      traffic_.reset();
    }
    if (pinned_) {
      ::sched_setaffinity(0, sizeof(all_cpus_), &all_cpus_);
      pinned_ = false;
    }
    if (daemon_pid_ > 0) {
      ::kill(daemon_pid_, SIGKILL);  // the daemon this test started, left running by a failure
      ::waitpid(daemon_pid_, nullptr, 0);
      daemon_pid_ = -1;
    }
    if (sock_ >= 0) {
      ::close(sock_);
      sock_ = -1;
    }
    net_.reset();  // deletes the namespaces, and the veth pair with them
    if (daemon_started_) {
      // The EAL's runtime directory (empty with --no-shconf), named after our --file-prefix.
      std::error_code ec;
      std::filesystem::remove_all(fmt::format("/var/run/dpdk/churn{}", ::getpid()), ec);
    }
    if (!dir_.empty()) {
      const char* keep = std::getenv("SLUICE_KEEP_TEST_DIRS");
      if (keep != nullptr && *keep != '\0' && std::string_view(keep) != "0") {
        std::fprintf(stderr, "keeping %s\n", dir_.c_str());
      } else {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
      }
    }
  }

  std::string socketPath() const { return dir_ + "/s.sock"; }
  std::string daemonLog() const { return tail(readFile(dir_ + "/sluiced.stderr")); }

  /** Start sluiced in the lb namespace; empty on success. */
  std::string startDaemon(const std::string& config_path) {
    const int worker_cpu = allowed_cpus_.back();
    const int main_cpu = allowed_cpus_.front();
    const std::vector<std::string> args = {
        SLUICED_PATH, "run", "--config", config_path, "--socket", socketPath(), "--",
        "-l", fmt::format("{},{}", main_cpu, worker_cpu), "--no-huge", "--no-pci", "--no-shconf",
        fmt::format("--file-prefix=churn{}", ::getpid()), "-m", "512", "--log-level", "*:error",
        // 16384-frame rings (0.8 s at the test's rate): a worker descheduled for a while on a
        // busy host loses nothing. Stalls show in the latency figures of the report.
        fmt::format("--vdev=net_af_packet0,iface={},framecnt=16384", net_->lbIf())};
    daemon_cmd_ = "ip netns exec " + net_->lbNs() + " " + joinArgs(args);
    std::vector<std::string> store = args;
    std::vector<char*> argv;
    for (std::string& a : store) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string ns_path = "/run/netns/" + net_->lbNs();
    const std::string out_path = dir_ + "/sluiced.stdout";
    const std::string err_path = dir_ + "/sluiced.stderr";
    const int ns_fd = ::open(ns_path.c_str(), O_RDONLY | O_CLOEXEC);
    const int out_fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int err_fd = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (ns_fd < 0 || out_fd < 0 || err_fd < 0 || null_fd < 0) {
      return fmt::format("cannot open {} or the log files: {}", ns_path, std::strerror(errno));
    }
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      // Only async-signal-safe calls between fork and exec. Should the test be killed, the
      // daemon (a busy-polling worker) goes with it.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(125);
      ::sched_setaffinity(0, sizeof(all_cpus_), &all_cpus_);  // the EAL pins its own lcores
      if (::setns(ns_fd, CLONE_NEWNET) != 0) ::_exit(126);
      ::dup2(null_fd, STDIN_FILENO);
      ::dup2(out_fd, STDOUT_FILENO);
      ::dup2(err_fd, STDERR_FILENO);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    for (int fd : {ns_fd, out_fd, err_fd, null_fd}) ::close(fd);
    if (pid < 0) {
      return fmt::format("fork: {}", std::strerror(errno));
    }
    daemon_pid_ = pid;
    daemon_started_ = true;
    // Ready when sluicectl gets an answer.
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    for (;;) {
      int ws = 0;
      if (::waitpid(pid, &ws, WNOHANG) == pid) {
        daemon_pid_ = -1;
        return fmt::format("sluiced exited at start (status {})\ncommand: {}\n{}", ws, daemon_cmd_, daemonLog());
      }
      const CmdResult r = runCommand({SLUICECTL_PATH, "--socket", socketPath(), "list", "--json"}, 5000);
      if (r.ok()) {
        return {};
      }
      if (std::chrono::steady_clock::now() > deadline) {
        return fmt::format("sluiced did not answer within 60 s: {}\ncommand: {}\n{}", r.output, daemon_cmd_, daemonLog());
      }
      std::this_thread::sleep_for(100ms);
    }
  }

  /** SIGTERM the daemon and wait for it; its exit status (128 + signal; -1 on timeout). */
  int stopDaemon() {
    ::kill(daemon_pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    for (;;) {
      int ws = 0;
      const pid_t w = ::waitpid(daemon_pid_, &ws, WNOHANG);
      if (w == daemon_pid_) {
        daemon_pid_ = -1;
        return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
      }
      if (std::chrono::steady_clock::now() > deadline) {
        return -1;  // TearDown kills it
      }
      std::this_thread::sleep_for(10ms);
    }
  }

  /** The AF_PACKET socket of the test's traffic, in the gen namespace. */
  void openTrafficSocket() {
    inNetns(net_->genNs(), [&] {
      const int fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
      if (fd < 0) throw std::runtime_error(fmt::format("AF_PACKET socket: {}", std::strerror(errno)));
      sock_ = fd;
      const unsigned ifindex = ::if_nametoindex(net_->genIf().c_str());
      if (ifindex == 0) throw std::runtime_error("no interface " + net_->genIf());
      const int rcvbuf = 64 << 20;
      const int sndbuf = 8 << 20;
      // FORCE: above net.core.rmem_max; root may.
      if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) != 0 ||
          ::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) != 0) {
        throw std::runtime_error(fmt::format("socket buffers: {}", std::strerror(errno)));
      }
      const int one = 1;
      ::setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one));  // best effort
      sockaddr_ll sll{};
      sll.sll_family = AF_PACKET;
      sll.sll_protocol = htons(ETH_P_ALL);
      sll.sll_ifindex = static_cast<int>(ifindex);
      if (::bind(fd, reinterpret_cast<sockaddr*>(&sll), sizeof(sll)) != 0) {
        throw std::runtime_error(fmt::format("bind to {}: {}", net_->genIf(), std::strerror(errno)));
      }
      // Reset the drop counter (reading it does).
      tpacket_stats st{};
      socklen_t len = sizeof(st);
      ::getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len);
    });
  }

  json ctlJson(const std::string& what) {
    const CmdResult r = runCommand({SLUICECTL_PATH, "--socket", socketPath(), what, "--json"});
    if (!r.ok()) {
      ADD_FAILURE() << "sluicectl " << what << " --json failed (" << r.status << "): " << r.output;
      return json::object();
    }
    try {
      return json::parse(r.output);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "sluicectl " << what << " --json: not JSON (" << e.what() << "): " << r.output;
      return json::object();
    }
  }

  std::string ip_;
  std::vector<int> allowed_cpus_;
  cpu_set_t all_cpus_{};
  bool pinned_ = false;
  std::string dir_;
  std::unique_ptr<NetnsPair> net_;
  pid_t daemon_pid_ = -1;
  bool daemon_started_ = false;
  std::string daemon_cmd_;
  int sock_ = -1;
  std::unique_ptr<Traffic> traffic_;
};

uint32_t seedFromEnv() {
  const char* s = std::getenv("SLUICE_CHURN_SEED");
  return s != nullptr && *s != '\0' ? static_cast<uint32_t>(std::strtoul(s, nullptr, 0)) : kDefaultSeed;
}

TEST_F(ChurnTest, ThousandBackendChangesUnderTraffic) {
  const uint32_t seed = seedFromEnv();
  const std::vector<BackendDef> defs = backendDefs();
  std::mt19937 init_rng(seed ^ 0x5eedu);
  std::vector<BackendState> initial(defs.size());
  for (size_t i = 0; i < defs.size(); ++i) {
    if (defs[i].anchor) {
      initial[i] = {true, 2};
    } else if (static_cast<int>(i) < kAnchors + kInitialPool) {
      initial[i] = {true, static_cast<uint32_t>(std::uniform_int_distribution<int>(1, 5)(init_rng))};
    }
  }
  const std::string config_path = dir_ + "/churn.toml";
  {
    std::ofstream f(config_path);
    f << configText(defs, initial);
    ASSERT_TRUE(f.flush()) << "cannot write " << config_path;
  }
  std::vector<Change> plan = planChanges(seed, defs, initial, socketPath());

  const std::string start_error = startDaemon(config_path);
  ASSERT_TRUE(start_error.empty()) << start_error;
  // The af_packet port has the veth's MAC, which the test's frames are sent to.
  const std::string port_line = fmt::format("port 0 (net_af_packet0): mac {},", kLbMac);
  ASSERT_NE(readFile(dir_ + "/sluiced.stderr").find(port_line), std::string::npos)
      << "expected \"" << port_line << "\" in the log\n" << daemonLog();
  // ... and it is not promiscuous: sluiced run leaves that to [dataplane] promiscuous = true.
  const CmdResult link = runCommand({ip_, "-n", net_->lbNs(), "link", "show", "dev", net_->lbIf()});
  ASSERT_TRUE(link.ok()) << link.output;
  EXPECT_EQ(link.output.find("PROMISC"), std::string::npos) << link.output;
  ASSERT_NO_THROW(openTrafficSocket());

  // --- Traffic, then the changes under it.
  const uint32_t nonce = static_cast<uint32_t>(::getpid()) ^ static_cast<uint32_t>(nowNs());
  traffic_ = std::make_unique<Traffic>(sock_, nonce);
  const int64_t origin = nowNs();
  traffic_->start();
  std::this_thread::sleep_for(kWarmup);
  ASSERT_GT(traffic_->received(), 0u) << "no packet came back from sluiced during the warm-up\n"
                                      << net_->vethStats() << daemonLog();

  const int64_t changes_start = nowNs();
  int failed_change = -1;
  for (Change& ch : plan) {
    ch.start_seq = traffic_->nextSeq();
    ch.result = runCommand(ch.args);
    ch.end_seq = traffic_->nextSeq();
    ch.t0_ns = ch.result.t0_ns;
    ch.t1_ns = ch.result.t1_ns;
    if (!ch.result.ok() || !ch.result.output.empty() || traffic_->sendError() != 0) {
      failed_change = ch.index;
      break;
    }
  }
  const int64_t changes_end = nowNs();
  std::this_thread::sleep_for(kTail);
  traffic_->stopSending();
  const int64_t send_end = nowNs();
  const uint64_t sent = traffic_->nextSeq();
  // Wait until everything came back, or nothing more comes for a second.
  {
    uint64_t last = traffic_->received();
    auto quiet_since = std::chrono::steady_clock::now();
    while (traffic_->received() < sent && std::chrono::steady_clock::now() - quiet_since < 1s) {
      std::this_thread::sleep_for(10ms);
      if (const uint64_t now = traffic_->received(); now != last) {
        last = now;
        quiet_since = std::chrono::steady_clock::now();
      }
    }
    std::this_thread::sleep_for(50ms);  // anything late (a duplicate) would come now
  }
  traffic_->stopReceiving();
  const int64_t traffic_end = nowNs();
  tpacket_stats sock_stats{};
  socklen_t sock_stats_len = sizeof(sock_stats);
  ::getsockopt(sock_, SOL_PACKET, PACKET_STATISTICS, &sock_stats, &sock_stats_len);

  if (failed_change >= 0) {
    const Change& ch = plan[static_cast<size_t>(failed_change)];
    ADD_FAILURE() << "change #" << ch.index << " (" << kindName(ch.kind) << ") failed: `"
                  << joinArgs(ch.args) << "` exited " << ch.result.status
                  << (ch.result.timed_out ? " (timed out)" : "") << ", output: " << ch.result.output
                  << (traffic_->sendError() != 0 ? fmt::format("; sender error: {}", std::strerror(static_cast<int>(traffic_->sendError()))) : "");
    plan.resize(static_cast<size_t>(failed_change) + (ch.result.ok() ? 1 : 0));
  }

  const json stats = ctlJson("stats");
  const json list = ctlJson("list");
  const std::string veth_stats = net_->vethStats();
  const int daemon_status = stopDaemon();
  EXPECT_EQ(daemon_status, 0) << "sluiced did not exit 0 on SIGTERM\n" << daemonLog();

  // --- Analysis
  const std::vector<uint32_t>& flow_of_seq = traffic_->flowOfSeq();
  const std::vector<RxRecord>& rx = traffic_->rx();
  ASSERT_EQ(flow_of_seq.size(), sent);

  std::map<uint64_t, int> backend_of_mac;
  for (size_t i = 0; i < defs.size(); ++i) backend_of_mac[mac64(defs[i].mac)] = static_cast<int>(i);
  std::vector<BackendHistory> history(defs.size());
  for (size_t i = 0; i < defs.size(); ++i) history[i].initial = initial[i];
  std::map<Kind, int> kinds;
  for (const Change& ch : plan) {
    history[static_cast<size_t>(ch.backend)].changes.push_back(&ch);
    ++kinds[ch.kind];
  }

  // 1. Every packet back exactly once, intact.
  std::vector<int64_t> at(sent, -1);  // index into rx
  uint64_t duplicates = 0, unknown = 0, corrupt = 0, bad_src = 0, wrong_flow = 0;
  std::string first_bad;
  for (size_t i = 0; i < rx.size(); ++i) {
    const RxRecord& r = rx[i];
    if (r.seq >= sent) {
      ++unknown;
      continue;
    }
    if (at[r.seq] >= 0) {
      ++duplicates;
      if (first_bad.empty()) first_bad = fmt::format("seq {} came back twice", r.seq);
      continue;
    }
    at[r.seq] = static_cast<int64_t>(i);
    if (!r.intact) ++corrupt;
    if (!r.src_ok) ++bad_src;
    if (r.flow != flow_of_seq[r.seq]) ++wrong_flow;
  }
  std::vector<uint64_t> missing;
  for (uint64_t s = 0; s < sent; ++s) {
    if (at[s] < 0) missing.push_back(s);
  }
  // Lost packets as ranges, with when they were sent: a contiguous range means the daemon's
  // receive ring overflowed (its worker did not run for a while), scattered ones something else.
  std::string missing_text;
  {
    const std::vector<int64_t>& sent_at = traffic_->sentAt();
    size_t ranges = 0;
    for (size_t i = 0; i < missing.size() && ranges < 10;) {
      size_t j = i;
      while (j + 1 < missing.size() && missing[j + 1] == missing[j] + 1) ++j;
      missing_text += fmt::format("{}{}..{} ({} packets, sent {:.1f}..{:.1f} ms)", ranges ? ", " : "",
                                  missing[i], missing[j], j - i + 1, (sent_at[missing[i]] - origin) / 1e6,
                                  (sent_at[missing[j]] - origin) / 1e6);
      ++ranges;
      i = j + 1;
    }
  }
  const std::string loss_context = fmt::format(
      "test socket: {} frames dropped by the kernel (rcvbuf), {} foreign frames; sender retries {}\n"
      "veth counters:\n{}\nsluiced stats: {}\n",
      sock_stats.tp_drops, traffic_->foreignFrames(), traffic_->sendRetries(), veth_stats,
      stats.contains("total") ? stats.at("total").dump() : std::string("?"));
  EXPECT_EQ(missing.size(), 0u) << missing.size() << " of " << sent
                                << " packets never came back: " << missing_text << "\n"
                                << loss_context;
  EXPECT_EQ(duplicates, 0u) << first_bad;
  EXPECT_EQ(unknown, 0u) << "frames with a sequence number never sent";
  EXPECT_EQ(corrupt, 0u) << "frames changed beyond their MACs (DR rewrites only the MACs)";
  EXPECT_EQ(bad_src, 0u) << "frames whose source MAC is not the daemon's port " << kLbMac;
  EXPECT_EQ(wrong_flow, 0u) << "payload flow index disagrees with what was sent";
  // Frames the test did not send (the kernel's, should it ever speak on the link) are not
  // judged; they are reported below. Anything sluiced forwarded is counted by packets_out.

  // 2 and 3, per flow in sequence order.
  struct FlowSeen {
    bool any = false;
    uint64_t last_seq = 0;
    int backend = -1;
  };
  std::vector<FlowSeen> flows(traffic_->flowsOpened() + 1);
  uint64_t unknown_mac = 0, to_absent = 0, new_to_drained = 0, moves = 0, unjustified_moves = 0,
           picks = 0, move_to_drained = 0;
  std::vector<std::string> examples;
  auto example = [&](std::string s) {
    if (examples.size() < 12) examples.push_back(std::move(s));
  };
  std::vector<uint64_t> per_backend(defs.size(), 0);
  // For the per-backend counters of the present backends: the packets (and the flows whose last
  // packet it was) certainly of its current incarnation (since its last add) and those that may
  // be either (processed before its last removal or after its re-add).
  struct Incarnation {
    const Change* last_del = nullptr;
    const Change* last_add = nullptr;
  };
  std::vector<Incarnation> incarnation(defs.size());
  for (size_t i = 0; i < defs.size(); ++i) {
    for (const Change* c : history[i].changes) {
      if (c->kind == Kind::kDel) incarnation[i].last_del = c;
      if (c->kind == Kind::kAdd || c->kind == Kind::kReAdd) incarnation[i].last_add = c;
    }
  }
  enum class Era { kCurrent, kOld, kEither };
  auto eraOf = [&](int b, uint64_t s, int64_t tr) {
    const Incarnation& inc = incarnation[static_cast<size_t>(b)];
    if (inc.last_del == nullptr) {
      return Era::kCurrent;  // never removed: one incarnation
    }
    if (inc.last_add == nullptr || inc.last_add->index < inc.last_del->index) {
      return Era::kOld;  // removed for good (not listed at the end)
    }
    if (s >= inc.last_add->end_seq) return Era::kCurrent;  // processed after the re-add
    if (tr < inc.last_del->t0_ns) return Era::kOld;         // processed before the removal
    return Era::kEither;
  };
  std::vector<uint64_t> cur_packets(defs.size(), 0), either_packets(defs.size(), 0);
  for (uint64_t s = 0; s < sent; ++s) {
    if (at[s] < 0) continue;
    const RxRecord& r = rx[static_cast<size_t>(at[s])];
    const uint32_t flow = flow_of_seq[s];
    auto found = backend_of_mac.find(r.dst_mac);
    if (found == backend_of_mac.end()) {
      ++unknown_mac;
      example(fmt::format("seq {} (flow {}) went to {}, not a backend MAC", s, flow, macText(r.dst_mac)));
      continue;
    }
    const int b = found->second;
    ++per_backend[static_cast<size_t>(b)];
    switch (eraOf(b, s, r.t_ns)) {
      case Era::kCurrent: ++cur_packets[static_cast<size_t>(b)]; break;
      case Era::kEither: ++either_packets[static_cast<size_t>(b)]; break;
      case Era::kOld: break;
    }
    const BackendHistory& h = history[static_cast<size_t>(b)];
    if (!h.mayHaveBeen(s, r.t_ns, [](const BackendState& x) { return x.present; })) {
      ++to_absent;
      example(fmt::format("seq {} (flow {}, back at {:.3f} ms) went to {} ({}) while it was not a "
                          "backend: {}",
                          s, flow, (r.t_ns - origin) / 1e6, defs[b].address, defs[b].mac.str(),
                          h.describe(s, r.t_ns, origin)));
    }
    FlowSeen& f = flows[flow];
    const bool pick = !f.any || f.backend != b;
    if (pick) {
      ++picks;
      if (!h.mayHaveBeen(s, r.t_ns, [](const BackendState& x) { return x.present && x.weight > 0; })) {
        ++(f.any ? move_to_drained : new_to_drained);
        example(fmt::format("seq {} ({} of flow {}, back at {:.3f} ms) was given to {} which had weight "
                            "0 or was absent: {}",
                            s, f.any ? "a moved packet" : "first packet", flow, (r.t_ns - origin) / 1e6,
                            defs[b].address, h.describe(s, r.t_ns, origin)));
      }
    }
    if (f.any && f.backend != b) {
      ++moves;
      // Justified only by a removal of the old backend published after the flow's previous
      // packet was processed (so before end_seq of the del) and before this one (after its t0).
      const BackendHistory& old = history[static_cast<size_t>(f.backend)];
      bool justified = false;
      for (const Change* c : old.changes) {
        if (c->kind == Kind::kDel && f.last_seq < c->end_seq && c->t0_ns < r.t_ns) {
          justified = true;
          break;
        }
      }
      if (!justified) {
        ++unjustified_moves;
        example(fmt::format("flow {} moved from {} (seq {}) to {} (seq {}, back at {:.3f} ms) without "
                            "a removal of {} in between; {}: {}",
                            flow, defs[f.backend].address, f.last_seq, defs[b].address, s,
                            (r.t_ns - origin) / 1e6, defs[f.backend].address,
                            defs[f.backend].address, old.describe(s, r.t_ns, origin)));
      }
    }
    f.any = true;
    f.last_seq = s;
    f.backend = b;
  }
  uint64_t flows_seen = 0;
  for (const FlowSeen& f : flows) flows_seen += f.any ? 1 : 0;
  const std::string examples_text = fmt::format("{}", fmt::join(examples, "\n"));
  EXPECT_EQ(unknown_mac, 0u) << "packets sent to a MAC that is no backend\n" << examples_text;
  EXPECT_EQ(to_absent, 0u) << "packets sent to a backend that was not (or no longer) in the service\n" << examples_text;
  EXPECT_EQ(new_to_drained, 0u) << "new flows given to a drained (weight 0) backend\n" << examples_text;
  EXPECT_EQ(move_to_drained, 0u) << "rescheduled flows given to a drained (weight 0) backend\n" << examples_text;
  EXPECT_EQ(unjustified_moves, 0u) << "established flows moved although their backend was not removed\n" << examples_text;

  // The daemon's own counters agree.
  if (stats.contains("total")) {
    const json& t = stats.at("total");
    const json& drops = t.at("drops");
    // Every test packet forwarded, nothing else; the only drops allowed are of frames that are
    // not the service's (non-IP, for no service or for another MAC: a kernel's frames on the
    // link). Those for no service or non-IP are handed to the kernel too (passed; freed there,
    // as there is no exception interface); nothing is the host's own or answered (no addresses).
    const uint64_t for_kernel = drops.at("non_ip").get<uint64_t>() + drops.at("no_service").get<uint64_t>();
    const uint64_t foreign_in = for_kernel + drops.at("not_for_us").get<uint64_t>();
    EXPECT_EQ(t.at("passed").get<uint64_t>(), for_kernel) << t.dump();
    EXPECT_EQ(t.at("answered").get<uint64_t>(), 0u) << t.dump();
    EXPECT_EQ(t.at("packets_out").get<uint64_t>(), sent) << t.dump();
    EXPECT_EQ(t.at("packets_in").get<uint64_t>(), sent + foreign_in) << t.dump();
    EXPECT_EQ(t.at("dropped").get<uint64_t>(), foreign_in) << "service traffic dropped: " << t.dump();
    EXPECT_EQ(drops.at("no_backend").get<uint64_t>(), 0u) << t.dump();
    EXPECT_EQ(drops.at("tx_full").get<uint64_t>(), 0u) << t.dump();
    EXPECT_EQ(t.at("flows_created").get<uint64_t>(), flows_seen) << t.dump();
    EXPECT_EQ(t.at("flows_evicted").get<uint64_t>(), 0u) << t.dump();
    EXPECT_EQ(t.at("flows_expired").get<uint64_t>(), 0u) << t.dump();
    // Every observed move is a reschedule; a rescheduled flow may land on its old backend again
    // (re-added), which is not a move.
    EXPECT_GE(t.at("flows_rescheduled").get<uint64_t>(), moves) << t.dump();
  }

  // The daemon's backends are the model's after the last change.
  std::vector<BackendState> model = initial;
  for (const Change& ch : plan) model[static_cast<size_t>(ch.backend)] = ch.after;
  if (list.contains("services")) {
    std::map<std::string, uint32_t> listed;
    ASSERT_EQ(list.at("services").size(), 1u) << list.dump();
    for (const json& b : list.at("services")[0].at("backends")) {
      listed[b.at("address").get<std::string>()] = b.at("weight").get<uint32_t>();
    }
    std::map<std::string, uint32_t> expected;
    for (size_t i = 0; i < defs.size(); ++i) {
      if (model[i].present) expected[defs[i].address] = model[i].weight;
    }
    EXPECT_EQ(listed, expected) << "sluicectl list disagrees with the changes made";

    // Per-backend counters count the backend as it is now, since it was last added: not the
    // flows and packets of an earlier backend that had the same id, nor its own from before it
    // was last removed. (Ids are reused with a new epoch; up to commit 80b1d3b the per-id
    // counters ignored the epoch, so a backend added after a del showed the deleted one's flows
    // and packets, e.g. "10.1.1.13: list says 46 active flows, the test saw 2"; c4817f9 fixed it.)
    std::vector<uint64_t> cur_active(defs.size(), 0), either_active(defs.size(), 0);
    for (const FlowSeen& f : flows) {
      if (!f.any) continue;
      const RxRecord& r = rx[static_cast<size_t>(at[f.last_seq])];
      switch (eraOf(f.backend, f.last_seq, r.t_ns)) {
        case Era::kCurrent: ++cur_active[static_cast<size_t>(f.backend)]; break;
        case Era::kEither: ++either_active[static_cast<size_t>(f.backend)]; break;
        case Era::kOld: break;
      }
    }
    std::map<std::string, uint64_t> stats_packets;
    if (stats.contains("services") && stats.at("services").size() == 1) {
      for (const json& b : stats.at("services")[0].at("backends")) {
        stats_packets[b.at("address").get<std::string>()] = b.at("packets").get<uint64_t>();
      }
    }
    std::string counter_errors;
    for (const json& b : list.at("services")[0].at("backends")) {
      const std::string addr = b.at("address").get<std::string>();
      size_t i = 0;
      while (i < defs.size() && defs[i].address != addr) ++i;
      if (i == defs.size()) continue;  // reported above
      const uint64_t active = b.at("active_flows").get<uint64_t>();
      if (active < cur_active[i] || active > cur_active[i] + either_active[i]) {
        counter_errors += fmt::format("  {}: list says {} active flows, the test saw {}{}\n", addr, active,
                                      cur_active[i], either_active[i] ? fmt::format("..{}", cur_active[i] + either_active[i]) : std::string());
      }
      if (auto it = stats_packets.find(addr); it != stats_packets.end()) {
        const uint64_t pk = it->second;
        if (pk < cur_packets[i] || pk > cur_packets[i] + either_packets[i]) {
          counter_errors += fmt::format("  {}: stats says {} packets, the test saw {}{} since it was last added\n", addr, pk,
                                        cur_packets[i], either_packets[i] ? fmt::format("..{}", cur_packets[i] + either_packets[i]) : std::string());
        }
      }
    }
    EXPECT_TRUE(counter_errors.empty())
        << "per-backend counters of sluicectl list/stats disagree with the traffic seen:\n" << counter_errors;
  }

  // --- Report
  std::vector<double> latency_ms;
  latency_ms.reserve(rx.size());
  for (const RxRecord& r : rx) {
    if (r.seq < sent) latency_ms.push_back((r.t_ns - traffic_->sentAt()[r.seq]) / 1e6);
  }
  std::sort(latency_ms.begin(), latency_ms.end());
  auto lat = [&](double p) { return latency_ms.empty() ? 0.0 : latency_ms[std::min(latency_ms.size() - 1, static_cast<size_t>(p * latency_ms.size()))]; };
  std::vector<double> rtt;
  for (const Change& ch : plan) rtt.push_back((ch.t1_ns - ch.t0_ns) / 1e6);
  std::sort(rtt.begin(), rtt.end());
  auto pct = [&](double p) { return rtt.empty() ? 0.0 : rtt[std::min(rtt.size() - 1, static_cast<size_t>(p * rtt.size()))]; };
  std::string kinds_text;
  for (const auto& [k, n] : kinds) kinds_text += fmt::format("{}{} {}", kinds_text.empty() ? "" : ", ", n, kindName(k));
  std::string per_backend_text;
  for (size_t i = 0; i < defs.size(); ++i) per_backend_text += fmt::format(" {}", per_backend[i]);
  const double traffic_s = (traffic_end - origin) / 1e9;
  const std::string report = fmt::format(
      "churn report (seed {}):\n"
      "  changes: {} in {:.2f} s ({})\n"
      "  sluicectl round trip per change: min {:.2f} ms, median {:.2f} ms, p99 {:.2f} ms, max {:.2f} ms\n"
      "  packets: {} sent, {} received ({} missing, {} duplicated) in {:.2f} s, sent at {:.0f} packets/s, "
      "largest send burst {}\n"
      "  latency through sluiced (send to receive): median {:.3f} ms, p99 {:.3f} ms, max {:.3f} ms\n"
      "  flows: {} ({} long-lived, {} opened during the run); {} backend picks checked\n"
      "  flow moves: {} observed, {} justified by a removal of the old backend\n"
      "  packets per backend (anchors first):{}\n"
      "  frames on the link the test did not send: {}{}\n"
      "  sluiced: {}\n",
      seed, plan.size(), (changes_end - changes_start) / 1e9, kinds_text, pct(0), pct(0.5), pct(0.99),
      rtt.empty() ? 0.0 : rtt.back(), sent, rx.size(), missing.size(), duplicates, traffic_s,
      static_cast<double>(sent) / ((send_end - origin) / 1e9),
      traffic_->maxBurst(), lat(0.5), lat(0.99), latency_ms.empty() ? 0.0 : latency_ms.back(), flows_seen, kLongLivedFlows, flows_seen - std::min<uint64_t>(flows_seen, kActiveFlows),
      picks, moves, moves - unjustified_moves, per_backend_text, traffic_->foreignFrames(),
      traffic_->foreignSamples().empty() ? std::string() : fmt::format(" ({})", fmt::join(traffic_->foreignSamples(), "; ")),
      stats.contains("total") ? stats.at("total").dump() : std::string("?"));
  std::fputs(report.c_str(), stdout);
  RecordProperty("packets_sent", static_cast<int>(sent));
  RecordProperty("flow_moves", static_cast<int>(moves));
  RecordProperty("rtt_median_us", static_cast<int>(pct(0.5) * 1000));
  EXPECT_EQ(plan.size(), static_cast<size_t>(kChanges));
}

}  // namespace
