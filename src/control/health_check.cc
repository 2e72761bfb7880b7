#include "control/health_check.h"

#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>

namespace sluice {

namespace {

using Clock = std::chrono::steady_clock;
using Micros = std::chrono::microseconds;

// A health endpoint's body is read and dropped; this only bounds the memory a misbehaving
// backend can make the checker buffer. The status was already taken from the headers.
constexpr size_t kMaxBodyBytes = 1 << 20;

// libevent's timers and steady_clock disagree by up to one tick of libevent's clock (4 ms with
// CLOCK_MONOTONIC_COARSE, which libevent uses unless the base has EVENT_BASE_FLAG_PRECISE_TIMER),
// either way. A timer that fires more than this before its time is re-armed for the rest, so no
// probe starts before its slot and none times out before timeout_ms; the price is up to two
// ticks of lateness on a coarse base.
constexpr Micros kEarlyTolerance{50};

// evhttp's own timeouts are a backstop only, set past the checker's deadline so that the
// checker's timer always decides: had they been equal, a connect timeout of evhttp's would
// reach the request callback exactly as a refused connection does (no error callback).
constexpr Micros kEvhttpBackstop{1'000'000};

int64_t unixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double millis(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

timeval toTimeval(Clock::duration d) {
  const int64_t us = std::max<int64_t>(0, std::chrono::duration_cast<Micros>(d).count());
  return timeval{static_cast<time_t>(us / 1'000'000), static_cast<suseconds_t>(us % 1'000'000)};
}

/** FNV-1a: a stable hash of the key, so a target's place in the interval survives restarts. */
uint64_t fnv1a(std::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (const char c : s) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ull;
  }
  return h;
}

/** "connection refused": strerror in the lower case of the other results. */
std::string errnoText(int e) {
  std::string s = std::generic_category().message(e);
  if (!s.empty()) {
    s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
  }
  return s;
}

std::string durationText(double ms) {
  return ms < 1 ? fmt::format("{:.2f} ms", ms) : fmt::format("{:.1f} ms", ms);
}

std::string tcpSuccessText(Clock::time_point started) {
  return fmt::format("tcp connect in {}", durationText(millis(Clock::now() - started)));
}

socklen_t toSockaddr(const IpAddress& a, uint16_t port, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof(ss));
  if (a.isV4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    std::memcpy(&sin->sin_addr, a.bytes.data(), 4);
    return sizeof(sockaddr_in);
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  std::memcpy(&sin6->sin6_addr, a.bytes.data(), 16);
  return sizeof(sockaddr_in6);
}

/** Errors of a connection attempt, which errno still holds when evhttp reports EVREQ_HTTP_EOF. */
bool isConnectErrno(int e) {
  switch (e) {
    case ECONNREFUSED:
    case ECONNRESET:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
    case EHOSTDOWN:
    case ETIMEDOUT:
    case EADDRNOTAVAIL:
      return true;
    default:
      return false;
  }
}

}  // namespace

class HealthChecker::Impl {
 public:
  struct Target;

  /**
   * One HTTP probe's evhttp connection. It outlives its probe: evhttp may still call back after
   * the probe is decided (the failure path runs the error callback, then the request callback),
   * and freeing a connection from inside its own callback is unsafe, so a decided probe is
   * detached (target = nullptr) and freed later from the `after_` event.
   */
  struct HttpProbe {
    Impl* owner = nullptr;
    Target* target = nullptr;
    evhttp_connection* conn = nullptr;
    int header_status = 0;  // from the header callback, in case the body then fails
    int error = -1;         // enum evhttp_request_error, -1 = no error callback
    int error_errno = 0;
  };

  struct Target {
    Impl* owner = nullptr;
    ProbeTarget spec;
    ProbeStatus status;
    uint64_t id = 0;  // tells a reset target from its predecessor of the same key

    // The schedule: slot n is due at epoch + offset + n * interval.
    Clock::time_point epoch;
    Micros offset{0};
    Micros interval{1'000'000};
    uint64_t slot = 0;  // the slot slot_ev is armed for

    event* slot_ev = nullptr;
    event* deadline_ev = nullptr;

    bool running = false;
    Clock::time_point started;
    Clock::time_point deadline;
    int tcp_fd = -1;
    event* tcp_ev = nullptr;
    HttpProbe* http = nullptr;

    Clock::time_point due(uint64_t n) const {
      return epoch + offset + interval * static_cast<int64_t>(n);
    }

    ~Target() {
      if (running) {
        owner->closeProbe(*this);
        --owner->in_flight_;
      }
      if (slot_ev != nullptr) {
        event_free(slot_ev);
      }
      if (deadline_ev != nullptr) {
        event_free(deadline_ev);
      }
    }
  };

  struct Flip {
    std::string key;
    uint64_t id;
    ProbeStatus status;
  };

  Impl(event_base* base, OnChange on_change) : base_(base), on_change_(std::move(on_change)) {
    after_ = event_new(base_, -1, 0, &Impl::onAfter, this);
    if (after_ == nullptr) {
      throw std::runtime_error("health checker: event_new failed");
    }
  }

  ~Impl() {
    targets_.clear();  // cancels every probe: TCP sockets close, HTTP ones go to graveyard_
    for (HttpProbe* p : graveyard_) {
      evhttp_connection_free(p->conn);
      delete p;
    }
    event_free(after_);
  }

  void setTargets(std::vector<ProbeTarget> targets) {
    const Clock::time_point epoch = Clock::now();
    std::unordered_map<std::string, std::unique_ptr<Target>> next;
    next.reserve(targets.size());
    for (ProbeTarget& spec : targets) {
      if (spec.check.type == HealthCheckType::kNone || next.contains(spec.key)) {
        continue;
      }
      if (auto it = targets_.find(spec.key); it != targets_.end() && it->second->spec == spec) {
        next.emplace(spec.key, std::move(it->second));
        targets_.erase(it);
        continue;
      }
      std::string key = spec.key;
      next.emplace(std::move(key), makeTarget(std::move(spec), epoch));
    }
    targets_.swap(next);
    // `next` now holds the removed and the replaced targets; their destructors cancel them.
  }

  const ProbeStatus* status(const std::string& key) const {
    const auto it = targets_.find(key);
    return it == targets_.end() ? nullptr : &it->second->status;
  }

  LoopStats loopStats() const {
    LoopStats s;
    s.started = started_;
    s.completed = completed_;
    s.lateness_mean_ms = started_ == 0 ? 0 : lateness_sum_ms_ / static_cast<double>(started_);
    s.lateness_max_ms = lateness_max_ms_;
    s.skipped = skipped_;
    s.in_flight = in_flight_;
    s.callback_errors = callback_errors_;
    return s;
  }

 private:
  std::unique_ptr<Target> makeTarget(ProbeTarget spec, Clock::time_point epoch) {
    auto t = std::make_unique<Target>();
    t->owner = this;
    t->id = ++last_id_;
    t->interval = Micros(int64_t{std::max<uint32_t>(spec.check.interval_ms, 1)} * 1000);
    // A fixed place in the first interval per key, as keepalived spreads its checkers' first
    // runs (`warmup`) and Envoy jitters them (`initial_jitter`), but deterministic: 1,000
    // backends added at once do not all connect at once, and a restart keeps each one's phase.
    t->offset = Micros(static_cast<int64_t>(fnv1a(spec.key) %
                                            static_cast<uint64_t>(t->interval.count())));
    t->epoch = epoch;
    t->spec = std::move(spec);
    t->slot_ev = event_new(base_, -1, 0, &Impl::onSlot, t.get());
    t->deadline_ev = event_new(base_, -1, 0, &Impl::onDeadline, t.get());
    if (t->slot_ev == nullptr || t->deadline_ev == nullptr) {
      throw std::runtime_error("health checker: event_new failed");
    }
    arm(t->slot_ev, t->due(0) - Clock::now());
    return t;
  }

  static void arm(event* ev, Clock::duration in) {
    const timeval tv = toTimeval(in);
    evtimer_add(ev, &tv);
  }

  template <class F>
  static void guarded(Impl* impl, F&& f) noexcept {
    try {
      f();
    } catch (...) {
      ++impl->callback_errors_;
    }
  }

  static void onSlot(evutil_socket_t, short, void* arg) {
    auto* t = static_cast<Target*>(arg);
    guarded(t->owner, [t] { t->owner->slot(*t); });
  }

  static void onDeadline(evutil_socket_t, short, void* arg) {
    auto* t = static_cast<Target*>(arg);
    guarded(t->owner, [t] {
      if (!t->running) {
        return;
      }
      // Early by the coarse clock (see kEarlyTolerance): a probe gets all of its timeout.
      const Clock::time_point now = Clock::now();
      if (now + kEarlyTolerance < t->deadline) {
        arm(t->deadline_ev, t->deadline - now);
        return;
      }
      t->owner->expire(*t);
    });
  }

  static void onTcpWritable(evutil_socket_t fd, short, void* arg) {
    auto* t = static_cast<Target*>(arg);
    guarded(t->owner, [t, fd] {
      int err = 0;
      socklen_t len = sizeof(err);
      if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
        err = errno;
      }
      Impl& self = *t->owner;
      if (err == 0) {
        self.finish(*t, true, tcpSuccessText(t->started));
      } else {
        self.finish(*t, false, errnoText(err));
      }
    });
  }

  static int onHttpHeaders(evhttp_request* req, void* arg) {
    auto* p = static_cast<HttpProbe*>(arg);
    guarded(p->owner, [p, req] { p->header_status = evhttp_request_get_response_code(req); });
    return 0;
  }

  static void onHttpError(evhttp_request_error error, void* arg) {
    auto* p = static_cast<HttpProbe*>(arg);
    // evhttp_connection_fail_ restores errno from the failing call just before this callback.
    p->error_errno = errno;
    p->error = error;
  }

  /** evhttp's one completion callback: a response, or (req NULL or status 0) a failure. */
  static void onHttpDone(evhttp_request* req, void* arg) {
    auto* p = static_cast<HttpProbe*>(arg);
    guarded(p->owner, [p, req] {
      if (p->target == nullptr) {
        return;  // decided already (timeout) or cancelled
      }
      Target& t = *p->target;
      int code = req != nullptr ? evhttp_request_get_response_code(req) : 0;
      if (code == 0 && p->error == EVREQ_HTTP_DATA_TOO_LONG) {
        code = p->header_status;  // an oversized body does not undo the status line
      }
      Impl& self = *p->owner;
      if (code != 0) {
        const uint16_t want = t.spec.check.expect_status;
        if (code == want) {
          self.finish(t, true, fmt::format("http {} in {}", code,
                                           durationText(millis(Clock::now() - t.started))));
        } else {
          self.finish(t, false, fmt::format("http {} (want {})", code, want));
        }
        return;
      }
      self.finish(t, false, httpFailureText(*p, t));
    });
  }

  static std::string httpFailureText(const HttpProbe& p, const Target& t) {
    switch (p.error) {
      case -1:
        // No error callback: libevent 2.1's evhttp_connection_cb_cleanup, reached when the
        // connect failed with ECONNREFUSED (its own connect timeout cannot come first, see
        // kEvhttpBackstop). errno is no help here: the reset's shutdown() has overwritten it.
        return "connection refused";
      case EVREQ_HTTP_TIMEOUT:
        return fmt::format("timeout after {} ms", t.spec.check.timeout_ms);
      case EVREQ_HTTP_EOF:
        // Both "the connect failed" (errno says how) and "the peer closed before answering".
        if (isConnectErrno(p.error_errno)) {
          return errnoText(p.error_errno);
        }
        return "http: connection closed before a response";
      case EVREQ_HTTP_INVALID_HEADER:
        return "http: malformed response";
      case EVREQ_HTTP_BUFFER_ERROR:
        return "http: " + errnoText(p.error_errno);
      case EVREQ_HTTP_DATA_TOO_LONG:
        return "http: response headers too long";
      default:
        return "http: request failed";
    }
  }

  static void onAfter(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    guarded(self, [self] { self->after(); });
  }

  /** Outside every socket callback: free decided HTTP connections, then tell on_change. */
  void after() {
    std::vector<HttpProbe*> dead;
    dead.swap(graveyard_);
    for (HttpProbe* p : dead) {
      evhttp_connection_free(p->conn);
      delete p;
    }
    std::vector<Flip> flips;
    flips.swap(flips_);
    for (const Flip& f : flips) {
      // on_change may have called setTargets() for an earlier flip: report only targets that
      // are still the ones that flipped.
      const auto it = targets_.find(f.key);
      if (it == targets_.end() || it->second->id != f.id || !on_change_) {
        continue;
      }
      try {
        on_change_(f.key, f.status);
      } catch (...) {
        ++callback_errors_;
      }
    }
  }

  void wakeAfter() { event_active(after_, EV_TIMEOUT, 0); }

  void slot(Target& t) {
    const Clock::time_point now = Clock::now();
    const Clock::time_point due = t.due(t.slot);
    if (now + kEarlyTolerance < due) {
      arm(t.slot_ev, due - now);
      return;
    }
    // Both timers can be due in one pass of the loop; end the old probe before judging overlap.
    // The same early tolerance as onDeadline's: a slot that fires a few microseconds early by
    // the coarse clock finds the probe it ends (deadline == due) still running otherwise, and
    // gave up a slot it should have probed.
    if (t.running && now + kEarlyTolerance >= t.deadline) {
      expire(t);
    }
    // The next slot is always on the grid: slot n runs at epoch + offset + n * interval however
    // long the probes take (keepalived re-arms delay_loop after each check, so its period is
    // delay_loop plus the check's time). If the loop stalled past whole slots, they are
    // skipped rather than run back to back.
    uint64_t next = t.slot + 1;
    if (t.due(next) <= now) {
      next = static_cast<uint64_t>((now - t.epoch - t.offset) / t.interval) + 1;
      const uint64_t missed = next - t.slot - 1;
      t.status.skipped += missed;
      skipped_ += missed;
    }
    t.slot = next;
    arm(t.slot_ev, t.due(next) - now);

    if (t.running) {
      // Never two probes of one target at once: this slot is given up, not queued.
      ++t.status.skipped;
      ++skipped_;
      return;
    }
    const double late_ms = std::max(0.0, millis(now - due));
    lateness_sum_ms_ += late_ms;
    lateness_max_ms_ = std::max(lateness_max_ms_, late_ms);
    start(t, now, t.due(next));
  }

  void start(Target& t, Clock::time_point now, Clock::time_point next_due) {
    const HealthCheckConfig& c = t.spec.check;
    t.running = true;
    t.started = now;
    t.deadline = now + std::chrono::milliseconds(c.timeout_ms);
    // With timeout <= interval (what config validation allows) a probe that started late still
    // ends by the next slot, so a silent backend is probed in every slot, not every other one.
    if (c.timeout_ms <= c.interval_ms) {
      t.deadline = std::min(t.deadline, next_due);
    }
    ++started_;
    ++in_flight_;
    arm(t.deadline_ev, t.deadline - now);

    if (t.spec.port == 0) {
      finish(t, false, "no port to probe");
      return;
    }
    if (t.spec.source && t.spec.source->family != t.spec.address.family) {
      finish(t, false,
             fmt::format("source {} is not of the backend's family", t.spec.source->str()));
      return;
    }
    if (c.type == HealthCheckType::kHttp) {
      startHttp(t);
    } else {
      startTcp(t);
    }
  }

  // keepalived's TCP_CHECK: a non-blocking connect, success once it completes, then close
  // without sending anything.
  void startTcp(Target& t) {
    sockaddr_storage dst;
    const socklen_t dst_len = toSockaddr(t.spec.address, t.spec.port, dst);
    const int fd = ::socket(dst.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) {
      finish(t, false, "socket: " + errnoText(errno));
      return;
    }
    t.tcp_fd = fd;
    if (t.spec.source) {
      // Without it, bind() takes an ephemeral port for itself alone, and 1,000 backends probed
      // every second would hold (in TIME_WAIT) more ports than the range has; with it the port
      // is chosen at connect, unique per destination only. Linux >= 4.2; older ones ignore it.
      const int one = 1;
      (void)::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
      sockaddr_storage src;
      const socklen_t src_len = toSockaddr(*t.spec.source, 0, src);
      if (::bind(fd, reinterpret_cast<const sockaddr*>(&src), src_len) != 0) {
        finish(t, false, fmt::format("bind {}: {}", t.spec.source->str(), errnoText(errno)));
        return;
      }
    }
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&dst), dst_len) == 0) {
      finish(t, true, tcpSuccessText(t.started));
      return;
    }
    if (errno != EINPROGRESS) {
      finish(t, false, errnoText(errno));
      return;
    }
    t.tcp_ev = event_new(base_, fd, EV_WRITE, &Impl::onTcpWritable, &t);
    if (t.tcp_ev == nullptr || event_add(t.tcp_ev, nullptr) != 0) {
      finish(t, false, "event_add failed");
    }
  }

  // keepalived's HTTP_GET: one connection per probe, "GET path HTTP/1.1", "Host: addr:port"
  // ("[addr]:port" for IPv6, RFC 2732), "Connection: close"; healthy when the status matches.
  // The backend closes first after its answer, so TIME_WAIT stays on its side, not ours.
  void startHttp(Target& t) {
    const HealthCheckConfig& c = t.spec.check;
    const std::string host = t.spec.address.str();
    // No evdns_base: the host is always a numeric literal, which evutil_getaddrinfo parses on
    // the spot without a lookup, so nothing here can block.
    evhttp_connection* conn =
        evhttp_connection_base_new(base_, nullptr, host.c_str(), t.spec.port);
    if (conn == nullptr) {
      finish(t, false, "http: cannot create a connection");
      return;
    }
    auto* p = new HttpProbe{this, &t, conn};
    t.http = p;
    evhttp_connection_set_family(conn, t.spec.address.isV4() ? AF_INET : AF_INET6);
    if (t.spec.source) {
      evhttp_connection_set_local_address(conn, t.spec.source->str().c_str());
    }
    const timeval backstop =
        toTimeval(std::chrono::milliseconds(c.timeout_ms) + kEvhttpBackstop);
    evhttp_connection_set_timeout_tv(conn, &backstop);
    evhttp_connection_set_retries(conn, 0);
    evhttp_connection_set_max_body_size(conn, kMaxBodyBytes);

    evhttp_request* req = evhttp_request_new(&Impl::onHttpDone, p);
    if (req == nullptr) {
      finish(t, false, "http: cannot create a request");
      return;
    }
    evhttp_request_set_header_cb(req, &Impl::onHttpHeaders);
    evhttp_request_set_error_cb(req, &Impl::onHttpError);
    evkeyvalq* headers = evhttp_request_get_output_headers(req);
    evhttp_add_header(headers, "Host", formatEndpoint(t.spec.address, t.spec.port).c_str());
    evhttp_add_header(headers, "User-Agent", "sluice-health-check");
    evhttp_add_header(headers, "Connection", "close");
    // A refused connect can call onHttpDone before this returns; t is still alive then (no
    // user code runs inside finish()), and the probe is already decided.
    if (evhttp_make_request(conn, req, EVHTTP_REQ_GET, c.path.c_str()) != 0) {
      // libevent 2.1 returns -1 before any callback when the source bind fails, and leaves
      // the request to us.
      const int e = errno;
      evhttp_request_free(req);
      if (t.http == p) {
        finish(t, false,
               t.spec.source ? fmt::format("bind {}: {}", t.spec.source->str(), errnoText(e))
                             : std::string("http: cannot start the request"));
      }
    }
  }

  void expire(Target& t) {
    finish(t, false, fmt::format("timeout after {} ms", t.spec.check.timeout_ms));
  }

  void closeProbe(Target& t) {
    if (t.tcp_ev != nullptr) {
      event_free(t.tcp_ev);
      t.tcp_ev = nullptr;
    }
    if (t.tcp_fd >= 0) {
      ::close(t.tcp_fd);
      t.tcp_fd = -1;
    }
    if (t.http != nullptr) {
      t.http->target = nullptr;
      graveyard_.push_back(t.http);
      t.http = nullptr;
      wakeAfter();
    }
    if (t.deadline_ev != nullptr) {
      event_del(t.deadline_ev);
    }
  }

  /** A probe's result, damped: fall failures take it down, rise successes bring it up. */
  void finish(Target& t, bool ok, std::string text) {
    const Clock::time_point now = Clock::now();
    closeProbe(t);
    t.running = false;
    --in_flight_;
    ++completed_;

    ProbeStatus& s = t.status;
    ++s.probes;
    if (!ok) {
      ++s.failures;
    }
    s.last_ok = ok;
    s.last_result = std::move(text);
    s.last_probe_unix_ms = unixMs();
    s.last_duration_ms = millis(now - t.started);
    if (ok == s.up) {
      s.streak = 0;
      return;
    }
    ++s.streak;
    const uint32_t needed = std::max<uint32_t>(1, s.up ? t.spec.check.fall : t.spec.check.rise);
    if (s.streak < needed) {
      return;
    }
    s.up = ok;
    s.streak = 0;
    s.last_change_unix_ms = s.last_probe_unix_ms;
    // Reported from after_, not from here: finish() runs inside socket callbacks and inside
    // slot() and start(), which still use `t` afterwards, and on_change may call setTargets(),
    // which can free it.
    flips_.push_back(Flip{t.spec.key, t.id, s});
    wakeAfter();
  }

  event_base* base_;
  OnChange on_change_;
  event* after_ = nullptr;
  std::unordered_map<std::string, std::unique_ptr<Target>> targets_;
  std::vector<HttpProbe*> graveyard_;
  std::vector<Flip> flips_;
  uint64_t last_id_ = 0;

  uint64_t started_ = 0;
  uint64_t completed_ = 0;
  uint64_t skipped_ = 0;
  uint64_t in_flight_ = 0;
  uint64_t callback_errors_ = 0;
  double lateness_sum_ms_ = 0;
  double lateness_max_ms_ = 0;
};

HealthChecker::HealthChecker(event_base* base, OnChange on_change)
    : impl_(std::make_unique<Impl>(base, std::move(on_change))) {}

HealthChecker::~HealthChecker() = default;

void HealthChecker::setTargets(std::vector<ProbeTarget> targets) {
  impl_->setTargets(std::move(targets));
}

const ProbeStatus* HealthChecker::status(const std::string& key) const {
  return impl_->status(key);
}

HealthChecker::LoopStats HealthChecker::loopStats() const { return impl_->loopStats(); }

}  // namespace sluice
