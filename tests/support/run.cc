#include "tests/support/run.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace testsupport {

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void writeFile(const std::string& path, std::string_view text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  if (!f) {
    throw std::runtime_error("cannot write " + path);
  }
}

bool keepDirs() {
  const char* keep = std::getenv("SLUICE_KEEP_TEST_DIRS");
  return keep != nullptr && *keep != '\0' && std::string_view(keep) != "0";
}

TempDir::TempDir(std::string_view prefix) {
  std::string tmpl = "/tmp/" + std::string(prefix) + "-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (keepDirs()) {
    std::fprintf(stderr, "keeping %s\n", path_.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string RunResult::describe() const {
  return fmt::format("command: {}\nexit status: {}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                     command, status, timed_out ? " (timed out, killed)" : "",
                     out.substr(0, 6000), err.substr(0, 6000));
}

int statusOf(int wstatus) {
  if (WIFEXITED(wstatus)) {
    return WEXITSTATUS(wstatus);
  }
  if (WIFSIGNALED(wstatus)) {
    return 128 + WTERMSIG(wstatus);
  }
  return -1;
}

int waitChild(pid_t pid, int timeout_s, bool* timed_out) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  int wstatus = 0;
  for (;;) {
    const pid_t w = ::waitpid(pid, &wstatus, WNOHANG);
    if (w == pid) {
      return statusOf(wstatus);
    }
    if (w < 0 && errno != EINTR) {
      return -1;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &wstatus, 0);
      if (timed_out != nullptr) {
        *timed_out = true;
      }
      return statusOf(wstatus);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

RunResult runProgram(const std::string& exe, const std::vector<std::string>& args,
                     const std::string& dir, const RunOptions& opts) {
  static int counter = 0;
  ++counter;
  RunResult r;
  r.command = exe;
  for (const std::string& a : args) {
    r.command += " " + a;
  }
  const std::string out_path = fmt::format("{}/cmd{}.stdout", dir, counter);
  const std::string err_path = fmt::format("{}/cmd{}.stderr", dir, counter);
  const int out_fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err_fd = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out_fd < 0 || err_fd < 0) {
    r.err = std::string("cannot create output files: ") + std::strerror(errno);
    return r;
  }
  std::vector<std::string> argv_store;
  argv_store.push_back(exe);
  argv_store.insert(argv_store.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_store) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);

  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out_fd, STDOUT_FILENO);
    ::dup2(err_fd, STDERR_FILENO);
    ::unsetenv("SLUICE_SOCKET");  // only what the test says
    for (const auto& [k, v] : opts.env) {
      ::setenv(k.c_str(), v.c_str(), 1);
    }
    if (opts.as_user) {
      const gid_t gid = *opts.as_user;
      if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(*opts.as_user) != 0) {
        std::fprintf(stderr, "cannot become uid %u: %s\n", *opts.as_user, std::strerror(errno));
        ::_exit(126);
      }
    }
    ::execv(exe.c_str(), argv.data());
    std::fprintf(stderr, "exec %s: %s\n", exe.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  ::close(out_fd);
  ::close(err_fd);
  if (pid < 0) {
    r.err = std::string("fork: ") + std::strerror(errno);
    return r;
  }
  r.status = waitChild(pid, opts.timeout_s, &r.timed_out);
  r.out = readFile(out_path);
  r.err = readFile(err_path);
  std::error_code ec;
  std::filesystem::remove(out_path, ec);
  std::filesystem::remove(err_path, ec);
  return r;
}


}  // namespace testsupport
