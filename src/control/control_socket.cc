#include "control/control_socket.h"

#include <event2/buffer.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>
#include <utility>

namespace sluice {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

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

/** Read up to a newline (or EOF), at most max_bytes, waiting at most timeout_ms in all. */
bool readLine(int fd, std::string& out, size_t max_bytes, int timeout_ms, std::string& error) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[65536];
  size_t searched = 0;  // answers run to tens of MB: look for the newline in new bytes only
  for (;;) {
    if (const size_t nl = out.find('\n', searched); nl != std::string::npos) {
      out.resize(nl);
      return true;
    }
    searched = out.size();
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
    if (out.size() > max_bytes) {
      error = fmt::format("message longer than {} bytes", max_bytes);
      return false;
    }
  }
}

/** The first string of j, key or value, that is not UTF-8, and where its bad byte is. */
std::optional<std::pair<std::string, size_t>> firstInvalidString(const json& j) {
  if (j.is_string()) {
    const std::string& s = j.get_ref<const std::string&>();
    if (const auto bad = firstInvalidUtf8(s)) {
      return std::pair{s, *bad};
    }
  }
  if (j.is_object()) {
    for (const auto& [key, value] : j.items()) {
      if (const auto bad = firstInvalidUtf8(key)) {
        return std::pair{key, *bad};
      }
      if (auto found = firstInvalidString(value)) {
        return found;
      }
    }
  }
  if (j.is_array()) {
    for (const json& value : j) {
      if (auto found = firstInvalidString(value)) {
        return found;
      }
    }
  }
  return std::nullopt;
}

/** Make dir and the parents it lacks, 0700: only their owner may put a socket there. */
void makeDirectories(const fs::path& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      throw ControlSocketError(
          fmt::format("{} (on the control socket's path) is not a directory", dir.string()));
    }
    return;
  }
  if (dir.has_parent_path() && dir.parent_path() != dir) {
    makeDirectories(dir.parent_path());
  }
  if (::mkdir(dir.c_str(), 0700) != 0) {
    if (errno == EEXIST) {
      return;  // made meanwhile by someone else: checkDirectories() judges it
    }
    throw ControlSocketError(fmt::format("cannot create directory {} for the control socket: {}",
                                         dir.string(), std::strerror(errno)));
  }
  // A umask can only take bits away, yet one such as 0700 would leave the owner none.
  ::chmod(dir.c_str(), 0700);
}

/**
 * Refuse a socket directory another user could change. Whoever can write a directory can
 * replace the socket in it, or rename a directory below it and put their own in its place, then
 * answer root's sluicectl as a fake daemon; so every directory from the socket's up to / must
 * belong to us or root and be writable by no one else, but for a sticky directory (/tmp), where
 * others cannot remove or rename what is ours. The path is walked as written (its symbolic links
 * can be swapped through their parents) and as resolved (the directories they lead to).
 */
void checkDirectories(const fs::path& dir) {
  std::error_code ec;
  const fs::path resolved = fs::canonical(dir, ec);
  if (ec) {
    throw ControlSocketError(fmt::format("cannot resolve the control socket directory {}: {}",
                                         dir.string(), ec.message()));
  }
  const uid_t me = ::geteuid();
  for (fs::path p : {fs::absolute(dir), resolved}) {
    for (;; p = p.parent_path()) {
      struct stat st {};
      if (::stat(p.c_str(), &st) != 0) {
        throw ControlSocketError(fmt::format("cannot check the control socket directory {}: {}",
                                             p.string(), std::strerror(errno)));
      }
      const bool trusted_owner = st.st_uid == me || st.st_uid == 0;
      const bool others_write = (st.st_mode & (S_IWGRP | S_IWOTH)) != 0;
      if (!trusted_owner || (others_write && (st.st_mode & S_ISVTX) == 0)) {
        throw ControlSocketError(fmt::format(
            "control socket directory {} is owned by uid {}, mode {:04o}: another user could "
            "replace the socket; it and every directory above it must belong to uid {} or root "
            "and be writable by no one else (or be sticky, like /tmp)",
            p.string(), st.st_uid, st.st_mode & 07777, me));
      }
      if (p == p.parent_path()) {
        break;
      }
    }
  }
}

/** Refuse path when another user owns it: in a sticky directory it may be theirs to keep. */
void checkNotOthers(const std::string& path, const struct stat& st) {
  if (st.st_uid != ::geteuid()) {
    throw ControlSocketError(fmt::format(
        "{} is owned by uid {}: not another user's to replace; remove it or choose another "
        "--socket",
        path, st.st_uid));
  }
}

/** What the daemon holding the lock wrote in it: its pid, written just after it locked. */
std::string lockHolder(int fd) {
  for (int tries = 0; tries < 100; ++tries) {
    char buf[32];
    const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
    if (n > 0) {
      std::string pid(buf, static_cast<size_t>(n));
      pid.erase(pid.find_last_not_of(" \n") + 1);
      return "pid " + pid;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return "pid unknown";
}

/**
 * Take "<socket>.lock" for the life of the returned descriptor. flock is released however the
 * daemon ends, so a lock file left behind is never stale; it is never removed either: one removed
 * while a second daemon waits on it would let a third lock a new file beside the second.
 */
int takeLock(const std::string& socket) {
  const std::string path = socket + ".lock";
  // No symbolic link: root must not create or truncate a file another user points it at.
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    throw ControlSocketError(
        fmt::format("cannot open the lock file {}: {}", path, std::strerror(errno)));
  }
  struct stat st {};
  ::fstat(fd, &st);
  try {
    checkNotOthers(path, st);  // whoever owns it could hold its lock and lock us out
  } catch (const ControlSocketError&) {
    ::close(fd);
    throw;
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    if (e == EWOULDBLOCK) {
      const std::string holder = lockHolder(fd);
      ::close(fd);
      throw ControlSocketError(fmt::format(
          "another sluiced is already serving {} ({}); stop it or choose another --socket",
          socket, holder));
    }
    ::close(fd);
    throw ControlSocketError(fmt::format("cannot lock {}: {}", path, std::strerror(e)));
  }
  const std::string pid = fmt::format("{}\n", ::getpid());
  if (::ftruncate(fd, 0) != 0 ||
      ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    const int e = errno;
    ::close(fd);
    throw ControlSocketError(fmt::format("cannot write {}: {}", path, std::strerror(e)));
  }
  return fd;
}

}  // namespace

std::optional<size_t> firstInvalidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    // RFC 3629 section 4: the lead byte gives the length, and the range of the second byte
    // excludes overlong forms (E0, F0), surrogates (ED) and what lies past U+10FFFF (F4).
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xbf;
    if (lead >= 0xc2 && lead <= 0xdf) {
      len = 2;
    } else if (lead >= 0xe0 && lead <= 0xef) {
      len = 3;
      lo = lead == 0xe0 ? 0xa0 : 0x80;
      hi = lead == 0xed ? 0x9f : 0xbf;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
      len = 4;
      lo = lead == 0xf0 ? 0x90 : 0x80;
      hi = lead == 0xf4 ? 0x8f : 0xbf;
    } else {
      return i;
    }
    if (text.size() - i < len) {
      return i;
    }
    for (size_t k = 1; k < len; ++k) {
      const auto c = static_cast<unsigned char>(text[i + k]);
      if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xbf)) {
        return i;
      }
    }
    i += len;
  }
  return std::nullopt;
}

std::string validUtf8(std::string_view text) {
  std::string out;
  while (const auto bad = firstInvalidUtf8(text)) {
    out.append(text.substr(0, *bad));
    out.append("\xef\xbf\xbd");
    text.remove_prefix(*bad + 1);
  }
  out.append(text);
  return out;
}

ControlServer::ControlServer(std::string path, Limits limits)
    : path_(std::move(path)), limits_(limits) {
  const sockaddr_un addr = socketAddress(path_);
  const fs::path parent = fs::path(path_).parent_path();
  const fs::path dir = parent.empty() ? fs::path(".") : parent;
  makeDirectories(dir);
  checkDirectories(dir);
  lock_fd_ = takeLock(path_);
  try {
    // From here on the path is ours alone: no other daemon gets past takeLock() until we exit.
    struct stat st {};
    if (::lstat(path_.c_str(), &st) == 0) {
      checkNotOthers(path_, st);
      if (!S_ISSOCK(st.st_mode)) {
        throw ControlSocketError(fmt::format("{} exists and is not a socket", path_));
      }
      ::unlink(path_.c_str());  // a stale socket from a daemon that did not exit cleanly
    }
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) {
      throw ControlSocketError(
          fmt::format("cannot create the control socket: {}", std::strerror(errno)));
    }
    // Create it with no permissions for group and others from the start: no window in which
    // another user could connect before the chmod.
    const mode_t old_mask = ::umask(0177);
    const int rc = ::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
    const int bind_errno = errno;
    ::umask(old_mask);
    if (rc != 0) {
      throw ControlSocketError(fmt::format("cannot bind the control socket {}: {}", path_,
                                           std::strerror(bind_errno)));
    }
    ::chmod(path_.c_str(), 0600);
    // A deep backlog: connections wait there only while the loop is busy with another event;
    // the loop accepts them as fast as they come.
    if (::listen(fd_, SOMAXCONN) != 0) {
      const int e = errno;
      ::unlink(path_.c_str());
      throw ControlSocketError(fmt::format("cannot listen on {}: {}", path_, std::strerror(e)));
    }
  } catch (const ControlSocketError&) {
    closeAll();
    throw;
  }
}

ControlServer::~ControlServer() {
  detach();
  if (fd_ >= 0) {
    ::unlink(path_.c_str());
  }
  closeAll();
}

void ControlServer::closeAll() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  // Last: the socket is gone before the next daemon may take the path.
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
}

struct ControlServer::Client {
  ControlServer* server = nullptr;
  std::list<std::unique_ptr<Client>>::iterator self;
  bufferevent* bev = nullptr;
  event* deadline = nullptr;
  unsigned uid = 0;
  bool answering = false;
  size_t searched = 0;  // bytes of the input known to hold no newline
  ~Client() {
    if (deadline != nullptr) {
      event_free(deadline);
    }
    if (bev != nullptr) {
      bufferevent_free(bev);  // closes the socket (BEV_OPT_CLOSE_ON_FREE)
    }
  }
};

namespace {

timeval timevalOf(int ms) { return timeval{ms / 1000, (ms % 1000) * 1000}; }

/** The log line of one request: who, what, and what came of it. */
std::string summary(unsigned uid, const json& request, const json& response) {
  std::string command = "?";
  if (request.is_object() && request.contains("command") && request["command"].is_string()) {
    command = request["command"].get<std::string>();
  }
  std::string out = fmt::format("uid {}: {} -> ", uid, command);
  if (response.value("ok", false)) {
    out += "ok";
    if (response.contains("change") && response["change"].is_string()) {
      out += fmt::format(" ({}, generation {})", response["change"].get<std::string>(),
                         response.value("generation", 0ull));
    }
  } else {
    out += "error: " + response.value("error", std::string("?"));
  }
  return out;
}

}  // namespace

void ControlServer::serve(event_base* base, Handler handler, Logger log) {
  detach();
  base_ = base;
  handler_ = std::move(handler);
  log_ = std::move(log);
  accept_event_ = event_new(base_, fd_, EV_READ | EV_PERSIST, onAccept, this);
  if (accept_event_ == nullptr || event_add(accept_event_, nullptr) != 0) {
    throw ControlSocketError("cannot watch the control socket in the event loop");
  }
}

void ControlServer::detach() {
  clients_.clear();
  if (accept_event_ != nullptr) {
    event_free(accept_event_);
    accept_event_ = nullptr;
  }
  base_ = nullptr;
}

void ControlServer::onAccept(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ControlServer*>(arg);
  // A bounded batch per wake-up: a storm of connections must not keep the loop from its other
  // events (signals, probes, the clients already accepted).
  for (int i = 0; i < 64; ++i) {
    const int fd = ::accept4(self->fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        // EMFILE and the like: say so once per wake-up; the listener stays, and the next
        // connection is tried when a descriptor is free again.
        self->log_(true, fmt::format("control socket: cannot accept: {}", std::strerror(errno)));
      }
      return;
    }
    self->accepted(fd);
  }
}

void ControlServer::accepted(int fd) {
  if (clients_.size() >= limits_.max_clients) {
    // Make room by closing the oldest client still to send its request (it has had the longest
    // to send one); when every client is waiting for its answer to be read, the oldest of those.
    Client* victim = nullptr;
    for (const auto& c : clients_) {
      if (!c->answering) {
        victim = c.get();
        break;
      }
    }
    if (victim == nullptr) {
      victim = clients_.front().get();
    }
    drop(*victim, fmt::format("uid {}: closed: {} clients at once is the bound, and it was the "
                              "oldest {}",
                              victim->uid, limits_.max_clients,
                              victim->answering ? "not reading its answer" : "yet to send a request"));
  }
  auto client = std::make_unique<Client>();
  Client& c = *client;
  c.server = this;
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    c.uid = cred.uid;
  }
  c.bev = bufferevent_socket_new(base_, fd, BEV_OPT_CLOSE_ON_FREE);
  c.deadline = evtimer_new(base_, onDeadline, &c);
  if (c.bev == nullptr || c.deadline == nullptr) {
    if (c.bev == nullptr) {
      ::close(fd);
    }
    log_(true, "control socket: out of memory for a client");
    return;
  }
  bufferevent_setcb(c.bev, onRead, onWritten, onEvent, &c);
  // Stop reading past the bound; onRead refuses what is longer.
  bufferevent_setwatermark(c.bev, EV_READ, 0, kMaxRequestBytes + 1);
  bufferevent_enable(c.bev, EV_READ);
  const timeval request = timevalOf(limits_.request_ms);
  evtimer_add(c.deadline, &request);
  clients_.push_back(std::move(client));
  c.self = std::prev(clients_.end());
}

void ControlServer::onRead(bufferevent* bev, void* arg) {
  auto& c = *static_cast<Client*>(arg);
  evbuffer* in = bufferevent_get_input(bev);
  // From where the last search stopped: a megabyte sent a byte at a time is searched once.
  evbuffer_ptr from;
  evbuffer_ptr_set(in, &from, c.searched, EVBUFFER_PTR_SET);
  const evbuffer_ptr eol = evbuffer_search(in, "\n", 1, &from);
  c.searched = evbuffer_get_length(in);
  if (eol.pos >= 0) {
    std::string line(static_cast<size_t>(eol.pos), '\0');
    evbuffer_remove(in, line.data(), line.size());
    c.server->answer(c, std::move(line));
    return;
  }
  if (evbuffer_get_length(in) > kMaxRequestBytes) {
    c.server->answer(c, {});  // with the error below rather than the request
  }
}

void ControlServer::answer(Client& c, std::string line) {
  if (c.answering) {
    return;
  }
  c.answering = true;
  bufferevent_disable(c.bev, EV_READ);
  json request;
  json response;
  const size_t pending = evbuffer_get_length(bufferevent_get_input(c.bev));
  if (line.empty() && pending > kMaxRequestBytes) {
    response = {{"ok", false},
                {"error", fmt::format("cannot read the request: longer than {} bytes",
                                      kMaxRequestBytes)}};
  } else if (const auto bad = firstInvalidUtf8(line)) {
    // Checked before parsing: the parser's own message would quote the bad byte.
    response = {{"ok", false},
                {"error", fmt::format("the request is not valid UTF-8 (byte at offset {})", *bad)}};
  } else {
    try {
      request = json::parse(line);
      response = handler_(request);
    } catch (const json::exception& e) {
      response = {{"ok", false}, {"error", std::string("the request is not JSON: ") + e.what()}};
    }
  }
  log_(false, "request " + validUtf8(summary(c.uid, request, response)));
  // Every string a request brings is UTF-8, but an answer also quotes what came from elsewhere
  // (the configuration's path, a file's contents): a bad byte there is replaced by U+FFFD rather
  // than throwing out of the event loop.
  const std::string text = response.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  if (bufferevent_write(c.bev, text.data(), text.size()) != 0) {
    drop(c, fmt::format("uid {}: out of memory for an answer of {} bytes", c.uid, text.size()));
    return;
  }
  const timeval deadline = timevalOf(limits_.answer_ms);
  evtimer_add(c.deadline, &deadline);
  // onWritten runs when the answer has gone into the socket (the output buffer is empty).
}

void ControlServer::onWritten(bufferevent* bev, void* arg) {
  auto& c = *static_cast<Client*>(arg);
  if (c.answering && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
    c.server->drop(c, "");
  }
}

void ControlServer::onEvent(bufferevent*, short what, void* arg) {
  auto& c = *static_cast<Client*>(arg);
  if ((what & BEV_EVENT_EOF) != 0 && !c.answering) {
    // The client closed its side: what it sent without a newline is its request (sluicectl
    // shuts down writing after the newline, so this is only for hand-made clients).
    evbuffer* in = bufferevent_get_input(c.bev);
    const size_t n = evbuffer_get_length(in);
    if (n > 0 && n <= kMaxRequestBytes) {
      std::string line(n, '\0');
      evbuffer_remove(in, line.data(), n);
      c.server->answer(c, std::move(line));
      return;
    }
  }
  c.server->drop(c, "");  // EOF before a request, or a socket error: nothing to answer
}

void ControlServer::onDeadline(evutil_socket_t, short, void* arg) {
  auto& c = *static_cast<Client*>(arg);
  const ControlServer& s = *c.server;
  c.server->drop(c, c.answering
                        ? fmt::format("uid {}: closed: the answer was not read within {} ms",
                                      c.uid, s.limits_.answer_ms)
                        : fmt::format("uid {}: closed: no request within {} ms", c.uid,
                                      s.limits_.request_ms));
}

void ControlServer::drop(Client& c, const std::string& why) {
  if (!why.empty()) {
    log_(true, "control socket: " + why);
  }
  clients_.erase(c.self);  // frees c: its buffers, timer and socket
}

nlohmann::json controlRequest(const std::string& path, const nlohmann::json& request,
                              int timeout_ms) {
  // Refused here, with the culprit named, rather than sent with its bytes replaced (a service
  // added under a name that is not the one asked for) or dumped with a type_error.
  if (const auto bad = firstInvalidString(request)) {
    throw InvalidRequestError(
        fmt::format("{:?} is not valid UTF-8 (byte at offset {}); nothing was sent to sluiced",
                    bad->first, bad->second));
  }
  int err = 0;
  const int fd = connectTo(path, err);
  if (fd < 0) {
    switch (err) {
    case ENOENT:
      throw ControlSocketError(
          fmt::format("cannot reach sluiced at {}: no such socket (is sluiced running?)", path));
    case ECONNREFUSED: {
      struct stat st {};
      if (::stat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
        throw ControlSocketError(fmt::format(
            "cannot reach sluiced at {}: it is not a socket (is --socket the control socket's "
            "path? the default is {})",
            path, kDefaultControlSocket));
      }
      throw ControlSocketError(fmt::format(
          "cannot reach sluiced at {}: connection refused (is sluiced running?)", path));
    }
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
  const bool ok = readLine(fd, line, kMaxAnswerBytes, timeout_ms, why);
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
