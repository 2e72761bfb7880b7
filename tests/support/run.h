// Helpers shared by the test suites that run Sluice's programs: temporary directories, files,
// and fork/exec with captured output, exit status and a time limit.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace testsupport {

std::string readFile(const std::string& path);
/** @throws std::runtime_error when the file cannot be written */
void writeFile(const std::string& path, std::string_view text);

/** True when $SLUICE_KEEP_TEST_DIRS asks to keep test directories for inspection. */
bool keepDirs();

/** A fresh directory under /tmp, removed with everything in it at the end (unless keepDirs()). */
class TempDir {
 public:
  explicit TempDir(std::string_view prefix = "sluice-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct RunResult {
  int status = -1;  // exit status; 128 + signal when killed; -1 when it could not be run
  bool timed_out = false;
  std::string out;
  std::string err;
  std::string command;

  /** The command, its status and (the start of) its output, for failure messages. */
  std::string describe() const;
};

struct RunOptions {
  std::optional<uid_t> as_user;                          // setgid/setuid before exec
  std::vector<std::pair<std::string, std::string>> env;  // set in the child
  int timeout_s = 60;
};

/** The exit status of a waitpid() status: code, 128 + signal, or -1. */
int statusOf(int wstatus);

/**
 * Wait for pid (a child of this process) to exit, at most timeout_s; kill that pid (only it) when
 * it does not. Returns the exit status, or -1 when waitpid failed.
 */
int waitChild(pid_t pid, int timeout_s, bool* timed_out = nullptr);

/**
 * fork + exec exe with args; stdout and stderr go to files in dir, which are read back and
 * removed. $SLUICE_SOCKET is cleared in the child: only what the test sets reaches it.
 */
RunResult runProgram(const std::string& exe, const std::vector<std::string>& args,
                     const std::string& dir, const RunOptions& opts = {});

}  // namespace testsupport
