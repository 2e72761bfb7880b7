#include "control/control_socket.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

namespace sluice {

namespace {

sockaddr_un socketAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    throw ControlSocketError(fmt::format("control socket path {:?} is empty or longer than {} bytes",
                                         path, sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

int connectTo(const std::string& path, int& err) {
  const sockaddr_un addr = socketAddress(path);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = errno;
    return -1;
  }
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    err = errno;
    ::close(fd);
    return -1;
  }
  return fd;
}

bool writeAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

/** Read up to a newline (or EOF), waiting at most timeout_ms in all. */
bool readLine(int fd, std::string& out, int timeout_ms, std::string& error) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[65536];
  for (;;) {
    if (const size_t nl = out.find('\n'); nl != std::string::npos) {
      out.resize(nl);
      return true;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) {
      error = "timed out";
      return false;
    }
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r <= 0) {
      error = r == 0 ? "timed out" : std::strerror(errno);
      return false;
    }
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      error = std::strerror(errno);
      return false;
    }
    if (n == 0) {
      return !out.empty();  // EOF: what came is the message
    }
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxRequestBytes) {
      error = fmt::format("message longer than {} bytes", kMaxRequestBytes);
      return false;
    }
  }
}

}  // namespace

ControlServer::ControlServer(std::string path) : path_(std::move(path)) {
  const sockaddr_un addr = socketAddress(path_);
  const std::filesystem::path dir = std::filesystem::path(path_).parent_path();
  if (!dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      throw ControlSocketError(
          fmt::format("cannot create directory {} for the control socket: {}", dir.string(),
                      ec.message()));
    }
  }
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      throw ControlSocketError(fmt::format("{} exists and is not a socket", path_));
    }
    int err = 0;
    const int probe = connectTo(path_, err);
    if (probe >= 0) {
      ::close(probe);
      throw ControlSocketError(
          fmt::format("another sluiced is already serving {}; stop it or choose another --socket",
                      path_));
    }
    ::unlink(path_.c_str());  // a stale socket from a daemon that did not exit cleanly
  }
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd_ < 0) {
    throw ControlSocketError(fmt::format("cannot create the control socket: {}", std::strerror(errno)));
  }
  // Create it with no permissions for group and others from the start: no window in which
  // another user could connect before the chmod.
  const mode_t old_mask = ::umask(0177);
  const int rc = ::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int bind_errno = errno;
  ::umask(old_mask);
  if (rc != 0) {
    ::close(fd_);
    throw ControlSocketError(fmt::format("cannot bind the control socket {}: {}", path_,
                                         std::strerror(bind_errno)));
  }
  ::chmod(path_.c_str(), 0600);
  if (::listen(fd_, 16) != 0) {
    const int e = errno;
    ::close(fd_);
    ::unlink(path_.c_str());
    throw ControlSocketError(fmt::format("cannot listen on {}: {}", path_, std::strerror(e)));
  }
}

ControlServer::~ControlServer() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
}

ControlServer::Client ControlServer::accept() {
  Client c;
  c.fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (c.fd < 0) {
    return c;
  }
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(c.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    c.uid = cred.uid;
  }
  return c;
}

bool ControlServer::readRequest(const Client& c, nlohmann::json& out, std::string& error) {
  std::string line;
  std::string why;
  if (!readLine(c.fd, line, 2000, why)) {
    error = "cannot read the request: " + why;
    return false;
  }
  try {
    out = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    error = std::string("the request is not JSON: ") + e.what();
    return false;
  }
  return true;
}

void ControlServer::writeResponse(const Client& c, const nlohmann::json& response) {
  writeAll(c.fd, response.dump() + "\n");
  ::close(c.fd);
}

nlohmann::json controlRequest(const std::string& path, const nlohmann::json& request,
                              int timeout_ms) {
  int err = 0;
  const int fd = connectTo(path, err);
  if (fd < 0) {
    switch (err) {
    case ENOENT:
      throw ControlSocketError(
          fmt::format("cannot reach sluiced at {}: no such socket (is sluiced running?)", path));
    case ECONNREFUSED:
      throw ControlSocketError(fmt::format(
          "cannot reach sluiced at {}: connection refused (is sluiced running?)", path));
    case EACCES:
    case EPERM:
      throw ControlSocketError(fmt::format(
          "cannot open {}: permission denied (the control socket is root's only)", path));
    default:
      throw ControlSocketError(fmt::format("cannot reach sluiced at {}: {}", path, std::strerror(err)));
    }
  }
  if (!writeAll(fd, request.dump() + "\n")) {
    const int e = errno;
    ::close(fd);
    throw ControlSocketError(fmt::format("cannot send to sluiced at {}: {}", path, std::strerror(e)));
  }
  ::shutdown(fd, SHUT_WR);
  std::string line;
  std::string why;
  const bool ok = readLine(fd, line, timeout_ms, why);
  ::close(fd);
  if (!ok) {
    throw ControlSocketError(fmt::format("no answer from sluiced at {}: {}", path, why));
  }
  try {
    return nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    throw ControlSocketError(fmt::format("sluiced answered something that is not JSON: {}", e.what()));
  }
}

}  // namespace sluice
