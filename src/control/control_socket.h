// The control socket: a Unix stream socket, root only (mode 0600). One request per connection:
// the client writes one JSON object and a newline, the daemon answers with one JSON object and a
// newline and closes. Requests and answers are UTF-8. Shared by sluiced (server side) and
// sluicectl (client side).
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace sluice {

inline constexpr const char* kDefaultControlSocket = "/run/sluice/sluiced.sock";
inline constexpr size_t kMaxRequestBytes = 1 << 20;

/** The socket could not be set up or reached; what() is a one-line explanation. */
class ControlSocketError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/**
 * Where text stops being UTF-8 (RFC 3629: no overlong forms, surrogates or code points past
 * U+10FFFF).
 * @return the offset of the first byte of the first ill-formed sequence, or nullopt
 */
std::optional<size_t> firstInvalidUtf8(std::string_view text);

/** The listening side, owned by sluiced. */
class ControlServer {
 public:
  /**
   * Create the socket, mode 0600, and its directory (0700) when missing. Refused when the
   * directory, or one above it, could be written by another user (a sticky one such as /tmp
   * aside), or when the socket or its lock file belongs to another user. "<path>.lock" is held
   * (flock) for the server's life, so a second daemon on the path refuses to start, even one
   * started at the same moment; a stale socket file left by a daemon that died is replaced.
   * @throws ControlSocketError
   */
  explicit ControlServer(std::string path);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

  /**
   * Accept one connection and serve it with handler (request -> response). Returns a short
   * description for the log ("uid 0: backend.add -> ok"), or "" when nothing was accepted.
   */
  template <typename Handler>
  std::string serveOne(Handler&& handler);

 private:
  struct Client {
    int fd = -1;
    unsigned uid = 0;
  };
  Client accept();
  /** Read one request; false and error set when it is not UTF-8 or not JSON. */
  bool readRequest(const Client& c, nlohmann::json& out, std::string& error);
  void writeResponse(const Client& c, const nlohmann::json& response);

  void closeAll();

  std::string path_;
  int fd_ = -1;
  int lock_fd_ = -1;
};

template <typename Handler>
std::string ControlServer::serveOne(Handler&& handler) {
  Client c = accept();
  if (c.fd < 0) {
    return "";
  }
  nlohmann::json request;
  std::string error;
  nlohmann::json response;
  std::string command = "?";
  if (readRequest(c, request, error)) {
    if (request.is_object() && request.contains("command") && request["command"].is_string()) {
      command = request["command"].get<std::string>();
    }
    response = handler(request);
  } else {
    response = {{"ok", false}, {"error", error}};
  }
  writeResponse(c, response);
  std::string summary = "uid " + std::to_string(c.uid) + ": " + command + " -> ";
  if (response.value("ok", false)) {
    summary += "ok";
    if (response.contains("change")) {
      summary += " (" + response["change"].get<std::string>() + ", generation " +
                 std::to_string(response.value("generation", 0ull)) + ")";
    }
  } else {
    summary += "error: " + response.value("error", std::string("?"));
  }
  return summary;
}

/**
 * The client side: send one request to the daemon at path and return its response.
 * @param timeout_ms how long to wait for the answer
 * @throws ControlSocketError when the daemon cannot be reached or does not answer
 */
nlohmann::json controlRequest(const std::string& path, const nlohmann::json& request,
                              int timeout_ms = 30000);

}  // namespace sluice
