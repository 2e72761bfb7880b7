// HealthChecker against real servers on loopback, in this process and on the checker's own event
// loop: a TCP listener (accepting and closing, accepting and holding, or never accepting), an
// evhttp server whose status is switched at runtime, and a port that refuses. The loop runs for
// bounded times only. No root: 127.0.0.2 works as a source because Linux routes all of 127/8 to lo.
#include "control/health_check.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "control/config.h"
#include "tests/support/fixtures.h"

namespace sluice {
namespace {

using Clock = std::chrono::steady_clock;
using testsupport::ip;

double msBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

std::string peerText(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(ss).sin_addr, buf, sizeof(buf));
  } else {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(ss).sin6_addr, buf, sizeof(buf));
  }
  return buf;
}

uint16_t localPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    throw std::runtime_error("getsockname");
  }
  return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in&>(ss).sin_port
                                       : reinterpret_cast<sockaddr_in6&>(ss).sin6_port);
}

/** A TCP socket bound to addr:0 (any free port); -1 when the address is not available. */
int boundSocket(const IpAddress& addr) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (addr.isV4()) {
    auto& sin = reinterpret_cast<sockaddr_in&>(ss);
    sin.sin_family = AF_INET;
    std::memcpy(&sin.sin_addr, addr.bytes.data(), 4);
    len = sizeof(sin);
  } else {
    auto& sin6 = reinterpret_cast<sockaddr_in6&>(ss);
    sin6.sin6_family = AF_INET6;
    std::memcpy(&sin6.sin6_addr, addr.bytes.data(), 16);
    len = sizeof(sin6);
  }
  const int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    return -1;
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Not "h" + std::to_string(i): GCC 12 warns about it (-Wrestrict, a false positive, PR 105329).
std::string numbered(std::string prefix, int i) {
  prefix += std::to_string(i);
  return prefix;
}

size_t openFds() {
  size_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d) != nullptr) {
      ++n;
    }
    closedir(d);
  }
  return n;
}

/** A TCP server on the test's loop. */
class TcpServer {
 public:
  enum class Mode {
    kAcceptClose,  // a healthy TCP backend
    kAcceptHold,   // accepts, reads and drops what it is sent, never answers
    kNoAccept,     // listens and never accepts: with backlog 0, later SYNs are dropped
  };

  TcpServer(event_base* base, const IpAddress& addr, Mode mode, int backlog = 64)
      : base_(base), mode_(mode) {
    fd_ = boundSocket(addr);
    if (fd_ < 0 || listen(fd_, backlog) != 0) {
      throw std::runtime_error("listen on " + addr.str());
    }
    port_ = localPort(fd_);
    if (mode_ != Mode::kNoAccept) {
      ev_ = event_new(base_, fd_, EV_READ | EV_PERSIST, &TcpServer::onAccept, this);
      event_add(ev_, nullptr);
    }
  }
  ~TcpServer() {
    for (auto& [fd, ev] : held_) {
      event_free(ev);
      close(fd);
    }
    if (ev_ != nullptr) {
      event_free(ev_);
    }
    close(fd_);
  }
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  uint16_t port() const { return port_; }
  size_t accepts() const { return peers.size(); }
  size_t held() const { return held_.size(); }

  std::vector<std::string> peers;
  std::vector<Clock::time_point> accepted_at;

 private:
  static void onAccept(evutil_socket_t fd, short, void* arg) {
    auto* self = static_cast<TcpServer*>(arg);
    for (;;) {
      sockaddr_storage ss{};
      socklen_t len = sizeof(ss);
      const int c =
          accept4(fd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0) {
        return;
      }
      self->peers.push_back(peerText(ss));
      self->accepted_at.push_back(Clock::now());
      if (self->mode_ == Mode::kAcceptClose) {
        close(c);
        continue;
      }
      event* ev = event_new(self->base_, c, EV_READ | EV_PERSIST, &TcpServer::onHeldRead, self);
      event_add(ev, nullptr);
      self->held_[c] = ev;
    }
  }
  static void onHeldRead(evutil_socket_t fd, short, void* arg) {
    auto* self = static_cast<TcpServer*>(arg);
    char buf[4096];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
      event_free(self->held_[fd]);
      self->held_.erase(fd);
      close(fd);
    }
  }

  event_base* base_;
  Mode mode_;
  int fd_ = -1;
  uint16_t port_ = 0;
  event* ev_ = nullptr;
  std::map<int, event*> held_;
};

/** An evhttp server answering every request with status(), switchable at runtime. */
class HttpServer {
 public:
  /** @throws std::runtime_error when addr cannot be bound (e.g. ::1 without IPv6) */
  HttpServer(event_base* base, const std::string& addr) : http_(evhttp_new(base)) {
    evhttp_bound_socket* h = evhttp_bind_socket_with_handle(http_, addr.c_str(), 0);
    if (h == nullptr) {
      evhttp_free(http_);
      throw std::runtime_error("cannot bind an HTTP server to " + addr);
    }
    port_ = localPort(evhttp_bound_socket_get_fd(h));
    evhttp_set_gencb(http_, &HttpServer::onRequest, this);
  }
  ~HttpServer() { evhttp_free(http_); }
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const { return port_; }
  void setStatus(int s) { status_ = s; }
  size_t count(const std::string& path) const {
    auto it = per_path.find(path);
    return it == per_path.end() ? 0 : it->second;
  }

  std::map<std::string, size_t> per_path;
  std::vector<std::string> hosts;
  std::vector<std::string> peers;

 private:
  static void onRequest(evhttp_request* req, void* arg) {
    auto* self = static_cast<HttpServer*>(arg);
    ++self->per_path[evhttp_request_get_uri(req)];
    const char* host = evhttp_find_header(evhttp_request_get_input_headers(req), "Host");
    self->hosts.push_back(host != nullptr ? host : "");
    char* peer = nullptr;
    uint16_t peer_port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &peer_port);
    self->peers.push_back(peer != nullptr ? peer : "");
    evbuffer* body = evbuffer_new();
    evbuffer_add_printf(body, "status %d\n", self->status_);
    evhttp_send_reply(req, self->status_, "test", body);
    evbuffer_free(body);
  }

  evhttp* http_;
  uint16_t port_ = 0;
  int status_ = 200;
};

ProbeTarget target(std::string key, HealthCheckType type, const IpAddress& addr, uint16_t port,
                   uint32_t interval_ms, uint32_t timeout_ms, uint32_t rise = 2,
                   uint32_t fall = 2) {
  ProbeTarget t;
  t.key = std::move(key);
  t.address = addr;
  t.port = port;
  t.check.type = type;
  t.check.interval_ms = interval_ms;
  t.check.timeout_ms = timeout_ms;
  t.check.rise = rise;
  t.check.fall = fall;
  return t;
}

struct Change {
  std::string key;
  ProbeStatus status;
  Clock::time_point at;
};

class HealthCheckTest : public ::testing::Test {
 protected:
  void SetUp() override { makeLoop(false); }

  /** A new loop and checker; precise: EVENT_BASE_FLAG_PRECISE_TIMER, as the daemon should. */
  void makeLoop(bool precise) {
    checker_.reset();
    if (base_ != nullptr) {
      event_base_free(base_);
    }
    event_config* cfg = event_config_new();
    if (precise) {
      event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    }
    base_ = event_base_new_with_config(cfg);
    event_config_free(cfg);
    ASSERT_NE(base_, nullptr);
    checker_ = std::make_unique<HealthChecker>(
        base_, [this](const std::string& key, const ProbeStatus& s) {
          changes_.push_back({key, s, Clock::now()});
          if (on_change_hook_) {
            on_change_hook_(key, s);
          }
        });
  }
  void TearDown() override {
    checker_.reset();
    for (int fd : refused_fds_) {
      close(fd);
    }
    event_base_free(base_);
  }

  /** Run the loop for ms milliseconds. */
  void runFor(int ms) {
    const timeval tv{ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base_, &tv);
    event_base_dispatch(base_);
  }

  /** Run the loop until done() holds (checked every 2 ms) or max_ms pass; @return done() */
  bool runUntil(const std::function<bool()>& done, int max_ms) {
    struct Poll {
      const std::function<bool()>* done;
      Clock::time_point deadline;
      event_base* base;
    } poll{&done, Clock::now() + std::chrono::milliseconds(max_ms), base_};
    // Own timers rather than event_base_loopexit: a loopexit still pending when the loop is
    // broken early would end the next run at once.
    event* ev = event_new(
        base_, -1, EV_PERSIST,
        [](evutil_socket_t, short, void* arg) {
          auto* p = static_cast<Poll*>(arg);
          if ((*p->done)() || Clock::now() >= p->deadline) {
            event_base_loopbreak(p->base);
          }
        },
        &poll);
    const timeval tick{0, 2000};
    event_add(ev, &tick);
    if (!done()) {
      event_base_dispatch(base_);
    }
    event_free(ev);
    return done();
  }

  const ProbeStatus& st(const std::string& key) {
    const ProbeStatus* s = checker_->status(key);
    if (s == nullptr) {
      throw std::runtime_error("no status for " + key);
    }
    return *s;
  }

  /** A port on 127.0.0.1 that refuses: bound, never listening, held for the whole test. */
  uint16_t refusedPort() {
    const int fd = boundSocket(ip("127.0.0.1"));
    if (fd < 0) {
      throw std::runtime_error("cannot bind a socket");
    }
    refused_fds_.push_back(fd);
    return localPort(fd);
  }

  event_base* base_ = nullptr;
  std::unique_ptr<HealthChecker> checker_;
  std::vector<Change> changes_;
  std::function<void(const std::string&, const ProbeStatus&)> on_change_hook_;
  std::vector<int> refused_fds_;
};

TEST_F(HealthCheckTest, TcpUpAgainstAListeningPort) {
  TcpServer server(base_, ip("127.0.0.1"), TcpServer::Mode::kAcceptClose);
  checker_->setTargets(
      {target("t", HealthCheckType::kTcp, ip("127.0.0.1"), server.port(), 50, 40)});
  ASSERT_TRUE(runUntil([&] { return st("t").probes >= 3 && server.accepts() >= 3; }, 2000));
  const ProbeStatus& s = st("t");
  EXPECT_TRUE(s.up);
  EXPECT_TRUE(s.last_ok);
  EXPECT_EQ(s.failures, 0u);
  EXPECT_EQ(s.streak, 0u);
  EXPECT_EQ(s.last_result.rfind("tcp connect in ", 0), 0u) << s.last_result;
  EXPECT_GT(s.last_probe_unix_ms, 0);
  EXPECT_EQ(s.last_change_unix_ms, 0);
  EXPECT_TRUE(changes_.empty());
}

TEST_F(HealthCheckTest, TcpDownAgainstARefusingPort) {
  const uint16_t port = refusedPort();
  checker_->setTargets({target("t", HealthCheckType::kTcp, ip("127.0.0.1"), port, 50, 40, 2, 2)});
  ASSERT_TRUE(runUntil([&] { return !changes_.empty(); }, 2000));
  runFor(150);  // more failures while down: no more on_change
  ASSERT_EQ(changes_.size(), 1u);
  EXPECT_EQ(changes_[0].key, "t");
  EXPECT_FALSE(changes_[0].status.up);
  EXPECT_EQ(changes_[0].status.failures, 2u);
  EXPECT_GT(changes_[0].status.last_change_unix_ms, 0);
  const ProbeStatus& s = st("t");
  EXPECT_FALSE(s.up);
  EXPECT_FALSE(s.last_ok);
  EXPECT_GE(s.failures, 3u);
  EXPECT_EQ(s.streak, 0u);  // down and failing: nothing disagrees with `up`
  EXPECT_EQ(s.last_result, "connection refused");
}

TEST_F(HealthCheckTest, TcpTimeoutAgainstAFullBacklog) {
  // backlog 0 holds one connection; the filler takes it and every later SYN is dropped.
  TcpServer server(base_, ip("127.0.0.1"), TcpServer::Mode::kNoAccept, 0);
  std::vector<int> fillers;
  for (int i = 0; i < 2; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(server.port());
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    (void)connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
    fillers.push_back(fd);
  }
  runFor(20);
  checker_->setTargets(
      {target("t", HealthCheckType::kTcp, ip("127.0.0.1"), server.port(), 400, 150, 1, 1)});
  ASSERT_TRUE(runUntil([&] { return !changes_.empty(); }, 2000));
  const ProbeStatus& s = st("t");
  EXPECT_EQ(s.last_result, "timeout after 150 ms");
  EXPECT_GE(s.last_duration_ms, 145);
  EXPECT_LT(s.last_duration_ms, 150 + 30);
  for (int fd : fillers) {
    close(fd);
  }
}

TEST_F(HealthCheckTest, HttpStatusMatchAndMismatch) {
  HttpServer server(base_, "127.0.0.1");
  ProbeTarget t = target("h", HealthCheckType::kHttp, ip("127.0.0.1"), server.port(), 50, 40);
  t.check.path = "/healthz";
  checker_->setTargets({t});
  ASSERT_TRUE(runUntil([&] { return st("h").probes >= 3; }, 2000));
  EXPECT_TRUE(st("h").up);
  EXPECT_EQ(st("h").failures, 0u);
  EXPECT_EQ(st("h").last_result.rfind("http 200 in ", 0), 0u) << st("h").last_result;
  ASSERT_FALSE(server.hosts.empty());
  EXPECT_EQ(server.hosts.back(), "127.0.0.1:" + std::to_string(server.port()));
  EXPECT_EQ(server.count("/healthz"), server.hosts.size());

  server.setStatus(503);
  ASSERT_TRUE(runUntil([&] { return changes_.size() == 1; }, 2000));
  EXPECT_FALSE(changes_[0].status.up);
  EXPECT_EQ(st("h").last_result, "http 503 (want 200)");

  server.setStatus(200);
  ASSERT_TRUE(runUntil([&] { return changes_.size() == 2; }, 2000));
  EXPECT_TRUE(changes_[1].status.up);
  EXPECT_TRUE(st("h").up);
}

TEST_F(HealthCheckTest, HttpExpectsTheConfiguredStatus) {
  HttpServer server(base_, "127.0.0.1");
  server.setStatus(204);
  ProbeTarget t = target("h", HealthCheckType::kHttp, ip("127.0.0.1"), server.port(), 50, 40);
  t.check.expect_status = 204;
  ProbeTarget refused = target("r", HealthCheckType::kHttp, ip("127.0.0.1"), refusedPort(), 50, 40);
  TcpServer closer(base_, ip("127.0.0.1"), TcpServer::Mode::kAcceptClose);
  ProbeTarget eof = target("eof", HealthCheckType::kHttp, ip("127.0.0.1"), closer.port(), 50, 40);
  checker_->setTargets({t, refused, eof});
  ASSERT_TRUE(runUntil([&] { return st("h").probes >= 2 && !st("r").up && !st("eof").up; }, 2000));
  EXPECT_TRUE(st("h").up);
  EXPECT_EQ(st("h").last_result.rfind("http 204 in ", 0), 0u) << st("h").last_result;
  EXPECT_EQ(st("r").last_result, "connection refused");
  // Closed before answering: an EOF, or a reset when the request was still unread at close().
  const std::string& e = st("eof").last_result;
  EXPECT_TRUE(e == "http: connection closed before a response" || e == "connection reset by peer")
      << e;
}

TEST_F(HealthCheckTest, HttpTimeoutIsEnforcedByTheChecker) {
  // Accepts and reads the request, never answers; the kernel would wait forever.
  TcpServer silent(base_, ip("127.0.0.1"), TcpServer::Mode::kAcceptHold);
  checker_->setTargets(
      {target("h", HealthCheckType::kHttp, ip("127.0.0.1"), silent.port(), 400, 200, 1, 1)});
  ASSERT_TRUE(runUntil([&] { return !changes_.empty(); }, 2000));
  const ProbeStatus& s = st("h");
  EXPECT_FALSE(s.up);
  EXPECT_EQ(s.last_result, "timeout after 200 ms");
  EXPECT_GE(s.last_duration_ms, 195);
  EXPECT_LT(s.last_duration_ms, 200 + 30);
  // Measured from outside too: from the server's accept to on_change (which adds one loop pass).
  ASSERT_EQ(silent.accepted_at.size(), 1u);
  const double seen = msBetween(silent.accepted_at[0], changes_[0].at);
  EXPECT_GE(seen, 180);
  EXPECT_LT(seen, 200 + 50);
  runFor(30);
  EXPECT_EQ(silent.held(), 0u) << "the timed-out connection was closed";
}

TEST_F(HealthCheckTest, RiseAndFallCountExactly) {
  HttpServer server(base_, "127.0.0.1");
  checker_->setTargets(
      {target("h", HealthCheckType::kHttp, ip("127.0.0.1"), server.port(), 80, 60, 2, 3)});
  ASSERT_TRUE(runUntil([&] { return st("h").probes >= 2; }, 2000));
  ASSERT_EQ(st("h").failures, 0u);

  server.setStatus(500);
  ASSERT_TRUE(runUntil([&] { return st("h").failures >= 2; }, 2000));
  ASSERT_EQ(st("h").failures, 2u) << "polled every 2 ms, probes 80 ms apart";
  EXPECT_TRUE(st("h").up);
  EXPECT_EQ(st("h").streak, 2u);
  EXPECT_TRUE(changes_.empty());

  ASSERT_TRUE(runUntil([&] { return !changes_.empty(); }, 2000));
  const ProbeStatus down = changes_[0].status;
  EXPECT_FALSE(down.up);
  EXPECT_EQ(down.failures, 3u) << "down on the third consecutive failure";
  EXPECT_EQ(down.streak, 0u);

  server.setStatus(200);
  ASSERT_TRUE(runUntil([&] { return st("h").probes > down.probes && st("h").last_ok; }, 2000));
  EXPECT_FALSE(st("h").up) << "one success of rise=2 is not enough";
  EXPECT_EQ(st("h").streak, 1u);
  ASSERT_TRUE(runUntil([&] { return changes_.size() == 2; }, 2000));
  const ProbeStatus up = changes_[1].status;
  EXPECT_TRUE(up.up);
  EXPECT_EQ(up.failures, down.failures) << "no failure between the flips";
  EXPECT_EQ(up.probes - down.probes, 2u) << "up on the second consecutive success";
  runFor(250);
  EXPECT_EQ(changes_.size(), 2u) << "on_change only on flips";
}

TEST_F(HealthCheckTest, StateSurvivesAnUnchangedTargetAndResetsAChangedOne) {
  HttpServer server(base_, "127.0.0.1");
  const ProbeTarget a =
      target("a", HealthCheckType::kTcp, ip("127.0.0.1"), refusedPort(), 50, 40, 1, 1);
  ProbeTarget b = target("b", HealthCheckType::kHttp, ip("127.0.0.1"), server.port(), 50, 40);
  checker_->setTargets({a, b});
  ASSERT_TRUE(runUntil([&] { return !st("a").up && st("b").probes >= 2; }, 2000));
  const ProbeStatus a_before = st("a");
  const ProbeStatus* a_ptr = checker_->status("a");

  b.check.timeout_ms = 45;  // a changed check: b starts over
  checker_->setTargets({a, b});
  EXPECT_EQ(checker_->status("a"), a_ptr);
  EXPECT_FALSE(st("a").up);
  EXPECT_EQ(st("a").probes, a_before.probes);
  EXPECT_EQ(st("a").last_change_unix_ms, a_before.last_change_unix_ms);
  EXPECT_TRUE(st("b").up);
  EXPECT_EQ(st("b").probes, 0u);
  EXPECT_EQ(st("b").last_result, "");

  // a keeps its schedule: its next probe comes on its old grid, not a fresh offset.
  const auto t0 = Clock::now();
  ASSERT_TRUE(runUntil([&] { return st("a").probes > a_before.probes; }, 1000));
  EXPECT_LT(msBetween(t0, Clock::now()), 50 + 10);
  ASSERT_TRUE(runUntil([&] { return st("b").probes >= 1; }, 1000));
  runFor(100);
  EXPECT_EQ(changes_.size(), 1u) << "only a's flip; keeping or resetting is not a flip";

  // A changed address resets too.
  ProbeTarget a2 = a;
  a2.port = server.port();
  a2.check.type = HealthCheckType::kTcp;
  checker_->setTargets({a2, b});
  EXPECT_TRUE(st("a").up);
  EXPECT_EQ(st("a").probes, 0u);
}

TEST_F(HealthCheckTest, ARemovedTargetIsNoLongerProbed) {
  HttpServer server(base_, "127.0.0.1");
  ProbeTarget x = target("x", HealthCheckType::kHttp, ip("127.0.0.1"), server.port(), 30, 25);
  x.check.path = "/x";
  ProbeTarget y = x;
  y.key = "y";
  y.check.path = "/y";
  checker_->setTargets({x, y});
  ASSERT_TRUE(runUntil([&] { return server.count("/x") >= 3 && server.count("/y") >= 3; }, 2000));
  checker_->setTargets({y});
  EXPECT_EQ(checker_->status("x"), nullptr);
  runFor(40);  // a request already on the wire may still arrive
  const size_t x_count = server.count("/x");
  const size_t y_count = server.count("/y");
  runFor(300);
  EXPECT_EQ(server.count("/x"), x_count);
  EXPECT_GE(server.count("/y"), y_count + 8);
  EXPECT_LE(checker_->loopStats().in_flight, 1u) << "y's at most";
  checker_->setTargets({});
  EXPECT_EQ(checker_->loopStats().in_flight, 0u);
}

TEST_F(HealthCheckTest, ProbesBindTheSourceAddress) {
  TcpServer tcp(base_, ip("127.0.0.1"), TcpServer::Mode::kAcceptClose);
  HttpServer http(base_, "127.0.0.1");
  ProbeTarget t = target("t", HealthCheckType::kTcp, ip("127.0.0.1"), tcp.port(), 50, 40);
  t.source = ip("127.0.0.2");
  ProbeTarget h = target("h", HealthCheckType::kHttp, ip("127.0.0.1"), http.port(), 50, 40);
  h.source = ip("127.0.0.2");
  // A source that is not local fails its own target only.
  ProbeTarget bad = target("bad", HealthCheckType::kTcp, ip("127.0.0.1"), tcp.port(), 50, 40);
  bad.source = ip("192.0.2.1");
  ProbeTarget bad_http = bad;
  bad_http.key = "bad-http";
  bad_http.check.type = HealthCheckType::kHttp;
  bad_http.port = http.port();
  checker_->setTargets({t, h, bad, bad_http});
  ASSERT_TRUE(runUntil([&] {
    return tcp.accepts() >= 2 && http.peers.size() >= 2 && !st("bad").up && !st("bad-http").up;
  }, 2000));
  for (const std::string& p : tcp.peers) {
    EXPECT_EQ(p, "127.0.0.2");
  }
  for (const std::string& p : http.peers) {
    EXPECT_EQ(p, "127.0.0.2");
  }
  EXPECT_TRUE(st("t").up);
  EXPECT_TRUE(st("h").up);
  EXPECT_EQ(st("t").failures, 0u);
  EXPECT_EQ(st("h").failures, 0u);
  EXPECT_EQ(st("bad").last_result, "bind 192.0.2.1: cannot assign requested address");
  EXPECT_EQ(st("bad-http").last_result.rfind("bind 192.0.2.1: ", 0), 0u)
      << st("bad-http").last_result;
}

TEST_F(HealthCheckTest, Ipv6Loopback) {
  std::unique_ptr<HttpServer> http;
  try {
    http = std::make_unique<HttpServer>(base_, "::1");
  } catch (const std::runtime_error&) {
    GTEST_SKIP() << "::1 is not available";
  }
  TcpServer tcp(base_, ip("::1"), TcpServer::Mode::kAcceptClose);
  checker_->setTargets({target("h6", HealthCheckType::kHttp, ip("::1"), http->port(), 50, 40),
                        target("t6", HealthCheckType::kTcp, ip("::1"), tcp.port(), 50, 40)});
  ASSERT_TRUE(runUntil([&] { return st("h6").probes >= 2 && st("t6").probes >= 2; }, 2000));
  EXPECT_EQ(st("h6").failures, 0u) << st("h6").last_result;
  EXPECT_EQ(st("t6").failures, 0u) << st("t6").last_result;
  EXPECT_EQ(st("h6").last_result.rfind("http 200 in ", 0), 0u);
  ASSERT_FALSE(http->hosts.empty());
  EXPECT_EQ(http->hosts.back(), "[::1]:" + std::to_string(http->port()));
  EXPECT_EQ(tcp.peers.back(), "::1");
}

TEST_F(HealthCheckTest, NoneTargetsAndDuplicateKeysAreLeftOut) {
  const uint16_t port = refusedPort();
  ProbeTarget none = target("none", HealthCheckType::kNone, ip("127.0.0.1"), port, 50, 40);
  ProbeTarget first = target("dup", HealthCheckType::kTcp, ip("127.0.0.1"), port, 50, 40);
  ProbeTarget second = first;
  second.check.type = HealthCheckType::kHttp;
  checker_->setTargets({none, first, second});
  EXPECT_EQ(checker_->status("none"), nullptr);
  runFor(120);
  const uint64_t probes = st("dup").probes;
  EXPECT_GE(probes, 1u);
  checker_->setTargets({first});
  EXPECT_EQ(st("dup").probes, probes) << "the first of the two was the one kept";
  checker_->setTargets({second});
  EXPECT_EQ(st("dup").probes, 0u);
}

/** 50 targets at 100 ms for 2 s: each gets its 20 slots (offset < 100 ms), none more, none late. */
class NoDriftTest : public HealthCheckTest, public ::testing::WithParamInterface<bool> {};

/**
 * The loop's own lateness, for comparison: a bare timer re-armed on a 10 ms grid. Whatever delays
 * it (this machine busy with other work, libevent's clock) delays the checker alike; what the
 * checker adds on top is what the test bounds.
 */
struct Canary {
  static constexpr auto kPeriod = std::chrono::milliseconds(10);
  event* ev = nullptr;
  Clock::time_point next;
  double sum_ms = 0;
  double max_ms = 0;
  uint64_t fires = 0;

  explicit Canary(event_base* base) {
    ev = evtimer_new(base, &Canary::onFire, this);
    next = Clock::now() + kPeriod;
    arm(Clock::now());
  }
  ~Canary() { event_free(ev); }
  double meanMs() const { return fires == 0 ? 0 : sum_ms / static_cast<double>(fires); }
  void arm(Clock::time_point now) {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(next - now).count();
    const timeval tv{0, static_cast<suseconds_t>(std::max<int64_t>(0, us))};
    evtimer_add(ev, &tv);
  }
  static void onFire(evutil_socket_t, short, void* arg) {
    auto* c = static_cast<Canary*>(arg);
    const Clock::time_point now = Clock::now();
    const double late = std::max(0.0, msBetween(c->next, now));
    c->sum_ms += late;
    c->max_ms = std::max(c->max_ms, late);
    ++c->fires;
    while (c->next <= now) {
      c->next += kPeriod;
    }
    c->arm(now);
  }
};

TEST_P(NoDriftTest, FiftyTargetsAt100Ms) {
  const bool precise = GetParam();
  makeLoop(precise);
  TcpServer server(base_, ip("127.0.0.1"), TcpServer::Mode::kAcceptClose, 512);
  std::vector<ProbeTarget> targets;
  for (int i = 0; i < 50; ++i) {
    targets.push_back(target(numbered("backend-", i), HealthCheckType::kTcp, ip("127.0.0.1"),
                             server.port(), 100, 80));
  }
  Canary canary(base_);
  checker_->setTargets(targets);
  runFor(2000);
  for (const ProbeTarget& t : targets) {
    const ProbeStatus& s = st(t.key);
    EXPECT_GE(s.probes, 19u) << t.key;
    EXPECT_LE(s.probes, 21u) << t.key;
    EXPECT_EQ(s.failures, 0u) << t.key << ": " << s.last_result;
    EXPECT_EQ(s.skipped, 0u) << t.key;
  }
  const HealthChecker::LoopStats ls = checker_->loopStats();
  EXPECT_EQ(ls.skipped, 0u);
  EXPECT_GE(ls.started, 50u * 19);
  EXPECT_LE(ls.started, 50u * 21);
  std::cout << (precise ? "precise" : "default") << " timer: checker lateness mean "
            << ls.lateness_mean_ms << " ms, max " << ls.lateness_max_ms << " ms over "
            << ls.started << " probes; the bare loop's mean " << canary.meanMs() << " ms, max "
            << canary.max_ms << " ms\n";
  // The checker re-arms a timer that fired early by the coarse clock (CLOCK_MONOTONIC_COARSE,
  // 4 ms ticks), which the canary does not: up to one tick more on the default timer. A stall of
  // the loop can fall between two of the canary's fires: one period more.
  const double tick_ms = precise ? 0.5 : 4.5;
  EXPECT_LT(ls.lateness_mean_ms, canary.meanMs() + (precise ? 1.0 : 3.0));
  EXPECT_LT(ls.lateness_max_ms, canary.max_ms + tick_ms + 10.0);
  EXPECT_LT(ls.lateness_mean_ms, precise ? 10.0 : 15.0) << "far beyond a busy machine";
}

INSTANTIATE_TEST_SUITE_P(Timers, NoDriftTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "PreciseTimer" : "DefaultTimer";
                         });

TEST_F(HealthCheckTest, AProbeStillRunningSkipsItsNextSlots) {
  // timeout > interval (config forbids it; the checker copes): every probe overruns two slots.
  TcpServer silent(base_, ip("127.0.0.1"), TcpServer::Mode::kAcceptHold);
  checker_->setTargets(
      {target("h", HealthCheckType::kHttp, ip("127.0.0.1"), silent.port(), 100, 250, 1, 5)});
  size_t max_held = 0;
  runUntil([&] {
    max_held = std::max(max_held, silent.held());
    return false;
  }, 1050);
  const ProbeStatus& s = st("h");
  EXPECT_EQ(max_held, 1u) << "never two probes of one target at once";
  const HealthChecker::LoopStats ls = checker_->loopStats();
  // About 10 slots: each probe takes one and gives up the next two.
  EXPECT_GE(s.skipped, 5u);
  EXPECT_GE(ls.started + ls.skipped, 9u);
  EXPECT_LE(ls.started + ls.skipped, 11u);
  EXPECT_EQ(ls.started, s.probes + ls.in_flight);
  EXPECT_EQ(s.last_result, "timeout after 250 ms");
}

TEST_F(HealthCheckTest, TimeoutEqualToTheIntervalProbesEverySlot) {
  // A probe that started late ends by the next slot at the latest, so none is skipped.
  TcpServer silent(base_, ip("127.0.0.1"), TcpServer::Mode::kAcceptHold);
  checker_->setTargets(
      {target("h", HealthCheckType::kHttp, ip("127.0.0.1"), silent.port(), 100, 100, 1, 50)});
  runFor(1050);
  const ProbeStatus& s = st("h");
  EXPECT_EQ(s.skipped, 0u);
  EXPECT_GE(s.probes, 8u);
  EXPECT_EQ(s.failures, s.probes);
  EXPECT_EQ(s.last_result, "timeout after 100 ms");
}

TEST_F(HealthCheckTest, DestroyingTheCheckerClosesEverySocket) {
  TcpServer silent(base_, ip("127.0.0.1"), TcpServer::Mode::kAcceptHold, 512);
  TcpServer full(base_, ip("127.0.0.1"), TcpServer::Mode::kNoAccept, 0);
  const size_t fds_before = openFds();
  std::vector<ProbeTarget> targets;
  for (int i = 0; i < 20; ++i) {
    targets.push_back(target(numbered("h", i), HealthCheckType::kHttp, ip("127.0.0.1"),
                             silent.port(), 200, 190));
    targets.push_back(target(numbered("t", i), HealthCheckType::kTcp, ip("127.0.0.1"),
                             full.port(), 200, 190));
  }
  checker_->setTargets(targets);
  ASSERT_TRUE(runUntil([&] { return checker_->loopStats().started >= 40; }, 1000));
  EXPECT_GT(checker_->loopStats().in_flight, 20u);
  checker_.reset();
  runFor(50);  // the silent server sees its connections close
  EXPECT_EQ(silent.held(), 0u);
  EXPECT_EQ(openFds(), fds_before);
}

TEST_F(HealthCheckTest, OnChangeMayThrowOrReplaceTheTargets) {
  HttpServer server(base_, "127.0.0.1");
  const ProbeTarget doomed =
      target("doomed", HealthCheckType::kTcp, ip("127.0.0.1"), refusedPort(), 30, 25, 1, 1);
  const ProbeTarget other =
      target("other", HealthCheckType::kHttp, ip("127.0.0.1"), server.port(), 30, 25);
  on_change_hook_ = [&](const std::string& key, const ProbeStatus&) {
    if (key == "doomed") {
      checker_->setTargets({other});
      throw std::runtime_error("from on_change");
    }
  };
  checker_->setTargets({doomed, other});
  ASSERT_TRUE(runUntil([&] { return !changes_.empty(); }, 2000));
  EXPECT_EQ(checker_->status("doomed"), nullptr);
  const uint64_t probes = st("other").probes;
  runFor(200);
  EXPECT_GE(st("other").probes, probes + 4);
  EXPECT_EQ(st("other").failures, 0u);
  EXPECT_EQ(checker_->loopStats().callback_errors, 1u);
}

}  // namespace
}  // namespace sluice
