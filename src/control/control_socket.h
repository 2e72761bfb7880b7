// The control socket: a Unix stream socket, root only (mode 0600). One request per connection:
// the client writes one JSON object and a newline (at most kMaxRequestBytes), the daemon answers
// with one JSON object and a newline and closes. Requests and answers are UTF-8. Shared by sluiced (server side) and
// sluicectl (client side).
#pragma once

#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nlohmann/json.hpp>

namespace sluice {

inline constexpr const char* kDefaultControlSocket = "/run/sluice/sluiced.sock";
inline constexpr size_t kMaxRequestBytes = 1 << 20;
/**
 * What sluicectl reads at most: well above the answers of the largest configuration the daemon
 * accepts (list, stats and save of 10,000 services with their backends are tens of MB).
 */
inline constexpr size_t kMaxAnswerBytes = size_t{1} << 30;

/** The socket could not be set up or reached; what() is a one-line explanation. */
class ControlSocketError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/** A request that cannot be sent as it is (nothing was sent); what() names the culprit. */
class InvalidRequestError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/**
 * Where text stops being UTF-8 (RFC 3629: no overlong forms, surrogates or code points past
 * U+10FFFF).
 * @return the offset of the first byte of the first ill-formed sequence, or nullopt
 */
std::optional<size_t> firstInvalidUtf8(std::string_view text);

/** text with each ill-formed byte replaced by U+FFFD: for the log, which must stay UTF-8. */
std::string validUtf8(std::string_view text);

/**
 * The listening side, owned by sluiced and served from its event loop (libevent). Every client is
 * non-blocking with its own buffers and deadlines, so no client can hold the loop: one that sends
 * nothing is closed when its request deadline passes, one that does not read its answer when its
 * answer deadline passes, and past max_clients the oldest is closed to make room for the newest.
 * A legitimate sluicectl (connect, one request, read the answer) and the loop's other events
 * (signals, health probes) are therefore served within milliseconds whatever other clients do.
 */
class ControlServer {
 public:
  struct Limits {
    size_t max_clients = 64;
    /** From accept to the request's newline. sluicectl sends it at once. */
    int request_ms = 2000;
    /** From the answer being ready to its last byte read by the client. */
    int answer_ms = 10000;
  };
  /** Carries out one request: request -> response. Called in the loop; must not throw. */
  using Handler = std::function<nlohmann::json(const nlohmann::json&)>;
  /** What the server has to say for the log: (warning, one line). */
  using Logger = std::function<void(bool, const std::string&)>;

  /**
   * Create the socket, mode 0600, and its directory (0700) when missing. Refused when the
   * directory, or one above it, could be written by another user (a sticky one such as /tmp
   * aside), or when the socket or its lock file belongs to another user. "<path>.lock" is held
   * (flock) for the server's life, so a second daemon on the path refuses to start, even one
   * started at the same moment; a stale socket file left by a daemon that died is replaced.
   * @throws ControlSocketError
   */
  explicit ControlServer(std::string path, Limits limits);
  explicit ControlServer(std::string path) : ControlServer(std::move(path), Limits{}) {}
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

  /**
   * Serve requests from base's loop until detach(). Each request is logged as one line
   * ("uid 0: backend.add -> ok"), as is each client closed for a reason of the server's.
   */
  void serve(event_base* base, Handler handler, Logger log);
  /** Stop serving and close every client; call before base is freed. */
  void detach();
  /** Clients connected now (for tests and the log). */
  size_t clients() const { return clients_.size(); }

 private:
  struct Client;
  static void onAccept(evutil_socket_t, short, void* arg);
  static void onRead(bufferevent* bev, void* arg);
  static void onWritten(bufferevent* bev, void* arg);
  static void onEvent(bufferevent* bev, short what, void* arg);
  static void onDeadline(evutil_socket_t, short, void* arg);
  void accepted(int fd);
  /** The request line is complete (or the client closed its side after it): answer it. */
  void answer(Client& c, std::string line);
  /** Close a client, saying why in the log when why is not empty. */
  void drop(Client& c, const std::string& why);
  void closeAll();

  std::string path_;
  Limits limits_;
  int fd_ = -1;
  int lock_fd_ = -1;
  event_base* base_ = nullptr;
  event* accept_event_ = nullptr;
  Handler handler_;
  Logger log_;
  /** Oldest first: the one closed when the bound is reached. */
  std::list<std::unique_ptr<Client>> clients_;
};

/**
 * The client side: send one request to the daemon at path and return its response.
 * @param timeout_ms how long to wait for the answer
 * @throws InvalidRequestError when a string of request is not UTF-8 (nothing is sent)
 * @throws ControlSocketError when the daemon cannot be reached or does not answer
 */
nlohmann::json controlRequest(const std::string& path, const nlohmann::json& request,
                              int timeout_ms = 30000);

}  // namespace sluice
