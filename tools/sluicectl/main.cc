// sluicectl: manage a running sluiced over its control socket, the way ipvsadm manages IPVS.
//
//   sluicectl list                       services and backends (like ipvsadm -Ln)
//   sluicectl stats [--rate]             packets, bytes, flows per service and backend; per worker
//   sluicectl service add|edit|del ...   virtual services
//   sluicectl backend add|edit|del|drain|down|up  backends of a service (down/up: maintenance)
//   sluicectl reload | save | version
//
// Every command takes --json; a failure then prints {"ok": false, "error": ...} on stdout as
// well as its line on stderr. Exit status (docs/cli.md): 0 done, 1 refused or failed, 2 bad
// arguments, 3 sluiced could not be reached or did not answer.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "control/control_socket.h"
#include "sluice_config.h"

namespace {

using nlohmann::json;

// One rule for every command, so that a script can tell a request sluiced refused (retrying the
// same is pointless) from a daemon it never heard from (it may be restarting).
constexpr int kExitFailed = 1;       // sluiced refused the request, or sluicectl could not finish it
constexpr int kExitUsage = 2;        // bad arguments: nothing was sent
constexpr int kExitUnreachable = 3;  // no answer from sluiced: not running, no access, cut off

struct Failure {
  std::string message;
  int status = kExitFailed;
};

/**
 * Everything sluicectl prints on stdout goes through here, so that no write goes unchecked: a
 * `save > FILE` on a full disk must not exit 0 with half a configuration in FILE.
 */
class Output {
 public:
  /** what: the name of the output in the failure message ("the configuration"). */
  void setWhat(std::string what) { what_ = std::move(what); }

  void write(std::string_view text) const {
    if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size()) {
      fail();
    }
  }
  void json(const nlohmann::json& j) const { write(dumpJson(j) + "\n"); }
  /** Push out what stdio still buffers; the last chance to see that a write failed. */
  void flush() const {
    if (std::fflush(stdout) != 0 || std::ferror(stdout) != 0) {
      fail();
    }
  }

  /** A JSON text even of strings that are not UTF-8 (an error quoting a raw argument). */
  static std::string dumpJson(const nlohmann::json& j) {
    return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
  }

 private:
  [[noreturn]] void fail() const {
    throw Failure{fmt::format("cannot write {}: {}", what_, std::strerror(errno))};
  }

  std::string what_ = "the output";
};

/** The answer of a failure under --json. Best effort: when stdout is what failed, this fails too. */
void printJsonFailure(const std::string& message) {
  std::fputs((Output::dumpJson({{"ok", false}, {"error", message}}) + "\n").c_str(), stdout);
}

/** Close fd, and report whether that worked (on some file systems close is where writes fail). */
bool closeChecked(int fd) { return ::close(fd) == 0 || errno == EINTR; }

/**
 * Replace path with text so that path holds either its old content or all of text, whatever
 * happens: a temporary file in the same directory (rename is atomic only within a file system),
 * written and synced, renamed over path, and the directory synced so that the rename survives a
 * crash. The file keeps the mode of the one it replaces; a new one gets 0666 less the umask, as
 * a shell redirection would make it.
 */
void writeAtomically(const std::string& path, std::string_view text) {
  auto failure = [&path](std::string_view why) {
    return Failure{fmt::format("cannot save the configuration to {}: {}", path, why)};
  };
  const std::filesystem::path target(path);
  const std::string dir =
      target.has_parent_path() ? target.parent_path().string() : std::string(".");

  mode_t mode = 0;
  struct stat old {};
  if (::stat(path.c_str(), &old) == 0) {
    mode = old.st_mode & 07777;
  } else {
    const mode_t mask = ::umask(0);
    ::umask(mask);
    mode = 0666 & ~mask;
  }

  std::string tmp = dir + "/." + target.filename().string() + ".XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) {
    throw failure(fmt::format("cannot create a temporary file in {}: {}", dir, std::strerror(errno)));
  }
  auto abandon = [&](std::string_view step) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return failure(fmt::format("{}: {}", step, std::strerror(err)));
  };
  if (::fchmod(fd, mode) != 0) {
    const Failure f = abandon("cannot set the mode of the temporary file");
    ::close(fd);
    throw f;
  }
  for (size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      if (n == 0) {
        errno = ENOSPC;  // a write that makes no progress: the file system has no room
      }
      const Failure f = abandon(fmt::format("cannot write the temporary file ({} of {} bytes written)",
                                            done, text.size()));
      ::close(fd);
      throw f;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const Failure f = abandon("cannot sync the temporary file");
    ::close(fd);
    throw f;
  }
  if (!closeChecked(fd)) {
    throw abandon("cannot close the temporary file");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    throw abandon("cannot rename the temporary file over it");
  }
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0 || ::fsync(dir_fd) != 0) {
    const int err = errno;
    if (dir_fd >= 0) {
      ::close(dir_fd);
    }
    throw failure(fmt::format("written, but the directory {} cannot be synced (the new file may "
                              "not survive a crash): {}",
                              dir, std::strerror(err)));
  }
  ::close(dir_fd);
}

std::string endpoint(const std::string& address, uint64_t port) {
  return address.find(':') != std::string::npos ? fmt::format("[{}]:{}", address, port)
                                                 : fmt::format("{}:{}", address, port);
}

std::string upper(std::string s) {
  for (char& c : s) {
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return s;
}

uint64_t u(const json& j, const char* key) { return j.at(key).get<uint64_t>(); }

json call(const std::string& socket, const json& request) {
  json r;
  try {
    r = sluice::controlRequest(socket, request);
  } catch (const sluice::InvalidRequestError& e) {
    throw Failure{e.what(), kExitUsage};
  } catch (const sluice::ControlSocketError& e) {
    throw Failure{e.what(), kExitUnreachable};
  }
  if (!r.value("ok", false)) {
    throw Failure{r.value("error", std::string("sluiced refused the request"))};
  }
  return r;
}

/** The health column of list: the check's last result and since when, or why it is unresolved. */
std::string healthText(const json& b) {
  std::string out;
  if (b.contains("health")) {
    const json& h = b.at("health");
    if (h.value("maintenance", false)) {
      out = "maintenance; ";
    }
    if (h.value("check", std::string("none")) == "none") {
      out += "no check";
    } else {
      const std::string last = h.value("last_result", std::string());
      out += last.empty() ? std::string("not probed yet") : last;
      if (h.contains("last_change") && h.at("last_change").is_string()) {
        out += ", since " + h.at("last_change").get<std::string>();
      }
    }
  }
  if (b.contains("unresolved_because")) {
    out += (out.empty() ? "" : "; ") + b.at("unresolved_because").get<std::string>();
  }
  return out.empty() ? "-" : out;
}

std::string listText(const json& r) {
  std::string out = fmt::format("Sluice {} (generation {}, {} worker{})\n",
                                r.value("version", std::string("?")), u(r, "generation"),
                                u(r, "worker_count"), u(r, "worker_count") == 1 ? "" : "s");
  out += "Prot LocalAddress:Port Scheduler Forward Name\n";
  out += fmt::format("  -> {:<40} {:>6} {:<11} {:>11}  {}\n", "RemoteAddress:Port", "Weight",
                     "State", "ActiveFlows", "Health (last result, since)");
  for (const json& s : r.at("services")) {
    out += fmt::format("{:<4} {} {} {} {}\n", upper(s.at("protocol").get<std::string>()),
                       endpoint(s.at("vip").get<std::string>(), u(s, "port")),
                       s.at("scheduler").get<std::string>(), s.at("forwarding").get<std::string>(),
                       s.at("name").get<std::string>());
    for (const json& b : s.at("backends")) {
      out += fmt::format("  -> {:<40} {:>6} {:<11} {:>11}  {}\n",
                         endpoint(b.at("address").get<std::string>(), u(b, "port")),
                         u(b, "weight"), b.at("state").get<std::string>(), u(b, "active_flows"),
                         healthText(b));
    }
  }
  return out;
}

std::string dropsText(const json& drops) {
  std::string s;
  for (const auto& [reason, n] : drops.items()) {
    if (n.get<uint64_t>() != 0) {
      s += fmt::format("{}{}={}", s.empty() ? "" : " ", reason, n.get<uint64_t>());
    }
  }
  return s.empty() ? "-" : s;
}

std::string statsText(const json& r) {
  std::string out = fmt::format("{:<44} {:>12} {:>14} {:>10} {:>10} {:>10}\n",
                                "Prot LocalAddress:Port", "Packets", "Bytes", "NewFlows",
                                "ActFlows", "Replies");
  out += "  -> RemoteAddress:Port\n";
  for (const json& s : r.at("services")) {
    out += fmt::format("{:<44} {:>12} {:>14} {:>10} {:>10} {:>10}\n",
                       fmt::format("{:<4} {}", upper(s.at("protocol").get<std::string>()),
                                   endpoint(s.at("vip").get<std::string>(), u(s, "port"))),
                       u(s, "packets"), u(s, "bytes"), u(s, "new_flows"), u(s, "active_flows"),
                       u(s, "reply_packets"));
    for (const json& b : s.at("backends")) {
      out += fmt::format("  -> {:<40} {:>12} {:>14} {:>10} {:>10} {:>10}\n",
                         endpoint(b.at("address").get<std::string>(), u(b, "port")),
                         u(b, "packets"), u(b, "bytes"), u(b, "new_flows"), u(b, "active_flows"),
                         u(b, "reply_packets"));
    }
  }
  out += fmt::format("\n{:<8} {:>12} {:>12} {:>10}  {}\n", "Worker", "PacketsIn", "PacketsOut",
                     "Dropped", "Drops by reason");
  auto row = [&](const std::string& name, const json& w) {
    out += fmt::format("{:<8} {:>12} {:>12} {:>10}  {}\n", name, u(w, "packets_in"),
                       u(w, "packets_out"), u(w, "dropped"), dropsText(w.at("drops")));
  };
  for (const json& w : r.at("workers")) {
    row(std::to_string(u(w, "worker")), w);
  }
  row("total", r.at("total"));

  // The flow table's churn: what a SYN flood does shows here first (SynExpired and SynEvicted are
  // the unestablished part of Expired and Evicted; Unpinned counts new flows the rate guard or a
  // full table forwarded without an entry).
  out += fmt::format("\n{:<8} {:>11} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}\n",
                     "Worker", "FlowsActive", "Created", "Expired", "SynExpired", "Evicted",
                     "SynEvicted", "Unpinned", "Rescheduled");
  auto flows = [&](const std::string& name, const json& w) {
    out += fmt::format("{:<8} {:>11} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}\n", name,
                       u(w, "flows_active"), u(w, "flows_created"), u(w, "flows_expired"),
                       u(w, "flows_syn_expired"), u(w, "flows_evicted"),
                       u(w, "flows_syn_evicted"), u(w, "new_flows_unpinned"),
                       u(w, "flows_rescheduled"));
  };
  for (const json& w : r.at("workers")) {
    flows(std::to_string(u(w, "worker")), w);
  }
  flows("total", r.at("total"));
  return out;
}

/** Per-second rates between two stats samples taken `seconds` apart. */
json rates(const json& a, const json& b, double seconds) {
  auto rate = [&](const json& x, const json& y, const char* key) {
    const uint64_t before = x.contains(key) ? u(x, key) : 0;
    const uint64_t after = u(y, key);
    return after >= before ? static_cast<double>(after - before) / seconds : 0.0;
  };
  json out = {{"ok", true}, {"schema", b.at("schema")}, {"interval_s", seconds}};
  json services = json::array();
  for (const json& sb : b.at("services")) {
    json sa = json::object();
    for (const json& x : a.at("services")) {
      if (x.at("name") == sb.at("name")) {
        sa = x;
      }
    }
    json backends = json::array();
    for (const json& bb : sb.at("backends")) {
      json ba = json::object();
      if (sa.contains("backends")) {
        for (const json& x : sa.at("backends")) {
          if (x.at("address") == bb.at("address") && x.at("port") == bb.at("port")) {
            ba = x;
          }
        }
      }
      backends.push_back({{"address", bb.at("address")},
                          {"port", bb.at("port")},
                          {"packets_per_s", rate(ba, bb, "packets")},
                          {"bytes_per_s", rate(ba, bb, "bytes")},
                          {"new_flows_per_s", rate(ba, bb, "new_flows")},
                          {"active_flows", bb.at("active_flows")},
                          {"replies_per_s", rate(ba, bb, "reply_packets")}});
    }
    services.push_back({{"name", sb.at("name")},
                        {"vip", sb.at("vip")},
                        {"port", sb.at("port")},
                        {"protocol", sb.at("protocol")},
                        {"packets_per_s", rate(sa, sb, "packets")},
                        {"bytes_per_s", rate(sa, sb, "bytes")},
                        {"new_flows_per_s", rate(sa, sb, "new_flows")},
                        {"active_flows", sb.at("active_flows")},
                        {"replies_per_s", rate(sa, sb, "reply_packets")},
                        {"backends", backends}});
  }
  out["services"] = services;
  json workers = json::array();
  const json& wa = a.at("workers");
  const json& wb = b.at("workers");
  for (size_t i = 0; i < wb.size(); ++i) {
    const json& x = i < wa.size() ? wa[i] : json::object();
    workers.push_back({{"worker", wb[i].at("worker")},
                       {"packets_in_per_s", rate(x, wb[i], "packets_in")},
                       {"packets_out_per_s", rate(x, wb[i], "packets_out")},
                       {"dropped_per_s", rate(x, wb[i], "dropped")}});
  }
  out["workers"] = workers;
  return out;
}

std::string ratesText(const json& r) {
  std::string out = fmt::format("rates over {:.1f} s\n", r.at("interval_s").get<double>());
  out += fmt::format("{:<44} {:>12} {:>14} {:>10} {:>10} {:>10}\n", "Prot LocalAddress:Port",
                     "Pkts/s", "Bytes/s", "Flows/s", "ActFlows", "Replies/s");
  out += "  -> RemoteAddress:Port\n";
  for (const json& s : r.at("services")) {
    out += fmt::format("{:<44} {:>12.0f} {:>14.0f} {:>10.0f} {:>10} {:>10.0f}\n",
                       fmt::format("{:<4} {}", upper(s.at("protocol").get<std::string>()),
                                   endpoint(s.at("vip").get<std::string>(), u(s, "port"))),
                       s.at("packets_per_s").get<double>(), s.at("bytes_per_s").get<double>(),
                       s.at("new_flows_per_s").get<double>(), u(s, "active_flows"),
                       s.at("replies_per_s").get<double>());
    for (const json& b : s.at("backends")) {
      out += fmt::format("  -> {:<40} {:>12.0f} {:>14.0f} {:>10.0f} {:>10} {:>10.0f}\n",
                         endpoint(b.at("address").get<std::string>(), u(b, "port")),
                         b.at("packets_per_s").get<double>(), b.at("bytes_per_s").get<double>(),
                         b.at("new_flows_per_s").get<double>(), u(b, "active_flows"),
                         b.at("replies_per_s").get<double>());
    }
  }
  out += fmt::format("\n{:<8} {:>14} {:>14} {:>12}\n", "Worker", "PktsIn/s", "PktsOut/s",
                     "Dropped/s");
  for (const json& w : r.at("workers")) {
    out += fmt::format("{:<8} {:>14.0f} {:>14.0f} {:>12.0f}\n", u(w, "worker"),
                       w.at("packets_in_per_s").get<double>(),
                       w.at("packets_out_per_s").get<double>(), w.at("dropped_per_s").get<double>());
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sluicectl: manage the services and backends of a running sluiced"};
  app.set_version_flag("--version", std::string("sluicectl ") + SLUICE_VERSION);
  std::string socket = sluice::kDefaultControlSocket;
  if (const char* env = std::getenv("SLUICE_SOCKET"); env != nullptr && *env != '\0') {
    socket = env;
  }
  bool as_json = false;
  app.add_option("--socket,-s", socket, "Control socket of sluiced (or $SLUICE_SOCKET)")
      ->capture_default_str();
  app.add_flag("--json", as_json, "Print the daemon's answer as JSON (read commands)");

  // list / stats
  CLI::App* list = app.add_subcommand("list", "Services and backends, like ipvsadm -Ln");
  list->add_flag("--json", as_json, "JSON output");
  CLI::App* stats = app.add_subcommand("stats", "Packets, bytes and flows per service, backend, worker");
  bool rate = false;
  double interval = 1.0;
  stats->add_flag("--rate", rate, "Per-second rates measured over --interval");
  stats->add_option("--interval", interval, "Seconds between the two samples of --rate")
      ->check(CLI::Range(0.1, 60.0));
  stats->add_flag("--json", as_json, "JSON output");

  // service add|edit|del
  CLI::App* service = app.add_subcommand("service", "Add, edit or delete a virtual service");
  struct ServiceArgs {
    std::string name, vip, protocol, forwarding, scheduler, new_name;
    std::optional<uint16_t> port;
    std::optional<uint32_t> table_size;
  } sa;
  auto serviceFields = [&sa](CLI::App* c, bool required) {
    c->add_option("NAME", sa.name, "Service name")->required();
    auto* vip = c->add_option("--vip", sa.vip, "Virtual IP address (IPv4 or IPv6)");
    auto* port = c->add_option("--port", sa.port, "Virtual port")->check(CLI::Range(1, 65535));
    auto* proto = c->add_option("--protocol", sa.protocol, "tcp or udp")
                      ->check(CLI::IsMember({"tcp", "udp"}));
    auto* fwd = c->add_option("--forwarding", sa.forwarding, "dr or nat")
                    ->check(CLI::IsMember({"dr", "nat"}));
    c->add_option("--scheduler", sa.scheduler, "maglev")->check(CLI::IsMember({"maglev"}));
    c->add_option("--table-size", sa.table_size, "Maglev table size (prime)");
    if (required) {
      vip->required();
      port->required();
      proto->required();
      fwd->required();
    }
  };
  CLI::App* service_add = service->add_subcommand("add", "Add a service (ipvsadm -A)");
  serviceFields(service_add, true);
  CLI::App* service_edit = service->add_subcommand("edit", "Change a service (ipvsadm -E)");
  serviceFields(service_edit, false);
  service_edit->add_option("--name", sa.new_name, "Rename the service");
  CLI::App* service_del = service->add_subcommand("del", "Delete a service and its backends (ipvsadm -D)");
  service_del->add_option("NAME", sa.name, "Service name")->required();

  // backend add|edit|del|drain
  CLI::App* backend = app.add_subcommand("backend", "Add, edit, delete or drain a backend");
  struct BackendArgs {
    std::string service, address, mac;
    std::optional<uint16_t> port;
    std::optional<uint32_t> weight;
  } ba;
  auto backendKey = [&ba](CLI::App* c) {
    c->add_option("SERVICE", ba.service, "Service name")->required();
    c->add_option("ADDRESS", ba.address, "Backend address")->required();
    c->add_option("--port", ba.port, "Backend port (NAT; default: the service port)")
        ->check(CLI::Range(1, 65535));
  };
  CLI::App* backend_add = backend->add_subcommand("add", "Add a backend (ipvsadm -a)");
  backendKey(backend_add);
  backend_add->add_option("--mac", ba.mac,
                          "Next-hop MAC of the backend (default: resolved by ARP/ND)");
  backend_add->add_option("--weight", ba.weight, "Weight 0..65535 (default 1)");
  CLI::App* backend_edit = backend->add_subcommand("edit", "Change a backend (ipvsadm -e)");
  backendKey(backend_edit);
  backend_edit->add_option("--mac", ba.mac, "New next-hop MAC");
  backend_edit->add_option("--weight", ba.weight, "New weight 0..65535");
  CLI::App* backend_del = backend->add_subcommand("del", "Delete a backend (ipvsadm -d)");
  backendKey(backend_del);
  CLI::App* backend_drain = backend->add_subcommand(
      "drain", "Weight 0: no new flows, existing flows stay until they end");
  backendKey(backend_drain);
  CLI::App* backend_down = backend->add_subcommand(
      "down", "Maintenance: take it out whatever its health check says (flows: on_backend_down)");
  backendKey(backend_down);
  CLI::App* backend_up = backend->add_subcommand(
      "up", "End maintenance: it follows its health check again");
  backendKey(backend_up);

  CLI::App* reload = app.add_subcommand(
      "reload", "Re-read the configuration file; refused when it would undo sluicectl changes");
  bool reload_force = false;
  reload->add_flag("--force", reload_force,
                   "Reload even if it undoes changes made with sluicectl since the file was read "
                   "(as SIGHUP does)");
  CLI::App* save = app.add_subcommand("save", "Print the running configuration as a config file");
  std::string save_out;
  save->add_option("--out,-o", save_out,
                   "Write it to FILE atomically (temporary file, fsync, rename) instead of stdout");
  CLI::App* version = app.add_subcommand("version", "Print the versions of sluicectl and sluiced");

  for (CLI::App* leaf : {service_add, service_edit, service_del, backend_add, backend_edit,
                         backend_del, backend_drain, backend_down, backend_up, reload, save,
                         version}) {
    leaf->add_flag("--json", as_json, "Print the daemon's answer as JSON");
  }

  // Scanned before parsing, so that a parse error is answered in JSON as well.
  as_json = std::any_of(argv + 1, argv + argc, [](const char* a) { return std::strcmp(a, "--json") == 0; });
  auto refuse = [&as_json](const std::string& message, int status) {
    std::fprintf(stderr, "sluicectl: %s\n", message.c_str());
    if (as_json) {
      printJsonFailure(message);
    }
    return status;
  };

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {  // --help, --version
      return app.exit(e);
    }
    if (as_json) {
      printJsonFailure(e.what());
    }
    app.exit(e);  // CLI11's message and the hint at --help, on stderr
    return kExitUsage;
  }
  // A command group without its command: say what is missing (CLI11 names stray words itself).
  for (CLI::App* group : {&app, service, backend}) {
    if ((group == &app || group->parsed()) && group->get_subcommands().empty()) {
      const std::string missing = group == &app
                                      ? std::string("a command is required")
                                      : "a " + group->get_name() + " command is required";
      refuse(missing, kExitUsage);
      std::fputs(group->help().c_str(), stderr);
      return kExitUsage;
    }
  }

  Output out;
  try {
    if (list->parsed()) {
      const json r = call(socket, {{"command", "list"}});
      as_json ? out.json(r) : out.write(listText(r));
    } else if (stats->parsed()) {
      json r = call(socket, {{"command", "stats"}});
      if (rate) {
        const auto t0 = std::chrono::steady_clock::now();
        std::this_thread::sleep_for(std::chrono::duration<double>(interval));
        const json r2 = call(socket, {{"command", "stats"}});
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        r = rates(r, r2, secs);
        as_json ? out.json(r) : out.write(ratesText(r));
      } else {
        as_json ? out.json(r) : out.write(statsText(r));
      }
    } else if (service_add->parsed() || service_edit->parsed()) {
      json fields = json::object();
      if (!sa.vip.empty()) fields["vip"] = sa.vip;
      if (sa.port) fields["port"] = *sa.port;
      if (!sa.protocol.empty()) fields["protocol"] = sa.protocol;
      if (!sa.forwarding.empty()) fields["forwarding"] = sa.forwarding;
      if (!sa.scheduler.empty()) fields["scheduler"] = sa.scheduler;
      if (sa.table_size) fields["table_size"] = *sa.table_size;
      json r;
      if (service_add->parsed()) {
        fields["name"] = sa.name;
        r = call(socket, {{"command", "service.add"}, {"service", fields}});
      } else {
        if (!sa.new_name.empty()) fields["name"] = sa.new_name;
        if (fields.empty()) {
          throw Failure{"service edit: nothing to change (give --vip, --port, --protocol, "
                        "--forwarding, --scheduler, --table-size or --name)"};
        }
        r = call(socket, {{"command", "service.edit"}, {"name", sa.name}, {"set", fields}});
      }
      if (as_json) out.json(r);
    } else if (service_del->parsed()) {
      const json r = call(socket, {{"command", "service.del"}, {"name", sa.name}});
      if (as_json) out.json(r);
    } else if (backend_add->parsed()) {
      json b = {{"address", ba.address}};
      if (!ba.mac.empty()) b["mac"] = ba.mac;
      if (ba.port) b["port"] = *ba.port;
      if (ba.weight) b["weight"] = *ba.weight;
      const json r = call(socket, {{"command", "backend.add"}, {"service", ba.service}, {"backend", b}});
      if (as_json) out.json(r);
    } else if (backend_edit->parsed() || backend_del->parsed() || backend_drain->parsed() ||
               backend_down->parsed() || backend_up->parsed()) {
      json req = {{"service", ba.service}, {"address", ba.address}};
      if (ba.port) req["port"] = *ba.port;
      if (backend_edit->parsed()) {
        json set = json::object();
        if (!ba.mac.empty()) set["mac"] = ba.mac;
        if (ba.weight) set["weight"] = *ba.weight;
        if (set.empty()) {
          throw Failure{"backend edit: nothing to change (give --mac or --weight)"};
        }
        req["command"] = "backend.edit";
        req["set"] = set;
      } else {
        req["command"] = backend_del->parsed()     ? "backend.del"
                         : backend_drain->parsed() ? "backend.drain"
                         : backend_down->parsed()  ? "backend.down"
                                                   : "backend.up";
      }
      const json r = call(socket, req);
      if (as_json) out.json(r);
    } else if (reload->parsed()) {
      json req = {{"command", "reload"}};
      if (reload_force) {
        req["force"] = true;
      }
      const json r = call(socket, req);
      if (as_json) {
        out.json(r);
      } else if (r.contains("undone")) {
        std::string undone;
        for (const json& what : r.at("undone")) {
          undone += fmt::format("\n  {}", what.get<std::string>());
        }
        std::fprintf(stderr, "sluicectl: reload dropped %zu change(s) made with sluicectl:%s\n",
                     r.at("undone").size(), undone.c_str());
      }
    } else if (save->parsed()) {
      json r = call(socket, {{"command", "save"}});
      const std::string config = r.at("config").get<std::string>();
      if (!save_out.empty()) {
        writeAtomically(save_out, config);
        r["out"] = save_out;
        if (as_json) out.json(r);
      } else {
        out.setWhat("the configuration");
        as_json ? out.json(r) : out.write(config);
      }
    } else if (version->parsed()) {
      if (as_json) {
        json r = call(socket, {{"command", "version"}});
        r["sluicectl"] = SLUICE_VERSION;
        out.json(r);
      } else {
        out.write(fmt::format("sluicectl {}\n", SLUICE_VERSION));  // even when the daemon is unreachable
        out.flush();
        const json r = call(socket, {{"command", "version"}});
        out.write(fmt::format("sluiced {} (generation {})\n", r.at("version").get<std::string>(),
                              u(r, "generation")));
      }
    }
    out.flush();
  } catch (const Failure& f) {
    return refuse(f.message, f.status);
  } catch (const std::exception& e) {
    return refuse(std::string("unexpected answer from sluiced: ") + e.what(), kExitFailed);
  }
  return 0;
}
