#include "sluiced/daemon.h"

#include <event2/event.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <vector>

#include "control/backend_monitor.h"
#include "control/config.h"
#include "control/control_plane.h"
#include "control/control_socket.h"
#include "control/memory_budget.h"
#include "dataplane/dpdk_dataplane.h"
#include "dataplane/flow_table.h"
#include "dataplane/eal.h"
#include "dataplane/worker.h"
#include "sluice_config.h"
#ifdef SLUICE_HAS_XDP
#include "common/lb_abi.h"
#include "xdp/xdp_dataplane.h"
#endif

namespace sluice {

namespace {

#ifdef SLUICE_HAS_XDP
XdpAttachMode attachMode(XdpAttach a) {
  switch (a) {
    case XdpAttach::kNative: return XdpAttachMode::kNative;
    case XdpAttach::kGeneric: return XdpAttachMode::kGeneric;
    case XdpAttach::kAuto: break;
  }
  return XdpAttachMode::kAuto;
}
#endif

std::shared_ptr<spdlog::logger> makeLogger() {
  auto log = spdlog::stderr_logger_st("sluiced");
  // Plain and greppable: time, program[pid], level, message. No colours.
  log->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z sluiced[%P] %l: %v");
  log->flush_on(spdlog::level::info);
  return log;
}

std::string macString(const uint8_t* m) {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
}

/**
 * The control plane's event loop (libevent): control socket requests, signals, and what the
 * backend monitor watches (health probes, the kernel's neighbour table), until SIGINT or SIGTERM.
 */
class DaemonLoop {
 public:
  DaemonLoop(spdlog::logger& log, int sig_fd, ControlServer& server, const std::string& config_path)
      : log_(log), sig_fd_(sig_fd), server_(server), config_path_(config_path),
        base_(makeBase()) {
    if (base_ == nullptr) {
      throw std::runtime_error("cannot create the event loop");
    }
  }
  ~DaemonLoop() {
    monitor_.reset();
    host_.reset();
    server_.detach();
    if (sig_event_ != nullptr) {
      event_free(sig_event_);
    }
    event_base_free(base_);
  }

  event_base* base() { return base_; }

  /**
   * The loop with the precise monotonic clock: with libevent's default (the coarse clock, 4 ms
   * ticks) health probes would start 2-3 ms after their slots (docs/health-checks.md).
   */
  static event_base* makeBase() {
    event_config* cfg = event_config_new();
    if (cfg == nullptr) {
      return nullptr;
    }
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    event_base* base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
  }

  /**
   * The kernel interface that carries Sluice's addresses, configured with them: the DPDK
   * exception port or the XDP interface. @throws HostInterfaceError
   */
  HostInterface* openHost(const std::string& ifname, const DataplaneConfig& dp) {
    host_ = std::make_unique<HostInterface>(ifname);
    host_->setUp();
    host_->ensureAddresses(dp.addresses);
    // The host's own answers (SSH, BGP, ping, health probes to off-link backends) to off-link
    // peers leave through the gateway, like the data plane's NAT replies.
    host_->ensureDefaultRoutes(dp.gateways);
    std::string list;
    for (const IpPrefix& a : dp.addresses) {
      list += (list.empty() ? "" : ", ") + a.str();
    }
    for (const IpAddress& g : dp.gateways) {
      list += fmt::format(", default via {}", g.str());
    }
    log_.info("host interface {} (mac {}): {}", ifname, host_->mac().str(),
              list.empty() ? "no addresses" : list);
    return host_.get();
  }

  /** Serve until a stop signal. */
  void run(ControlPlane& control) {
    control_ = &control;
    monitor_ = std::make_unique<BackendMonitor>(
        base_, control, host_.get(), [this](bool warning, const std::string& m) {
          if (warning) {
            log_.warn("{}", m);
          } else {
            log_.info("{}", m);
          }
        });
    monitor_->start();
    sig_event_ = event_new(base_, sig_fd_, EV_READ | EV_PERSIST, onSignal, this);
    event_add(sig_event_, nullptr);
    server_.serve(
        base_, [this](const nlohmann::json& req) { return control_->handle(req); },
        [this](bool warning, const std::string& m) {
          if (warning) {
            log_.warn("{}", m);
          } else {
            log_.info("{}", m);
          }
        });
    event_base_dispatch(base_);
    server_.detach();
    monitor_.reset();
  }

 private:
  static void onSignal(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<DaemonLoop*>(arg);
    signalfd_siginfo si{};
    while (::read(self->sig_fd_, &si, sizeof(si)) == sizeof(si)) {
      if (si.ssi_signo == SIGHUP) {
        // The signal is the operator's word that the file is to run as it is: changes made
        // with sluicectl since it was read are dropped, and the log says which.
        const nlohmann::json r = self->control_->reload(true);
        if (r.value("ok", false)) {
          self->log_.info("SIGHUP: configuration reloaded from {} (generation {}, published in "
                          "{:.0f} us)",
                          validUtf8(self->config_path_), self->control_->generation(),
                          self->control_->lastPublishMicros());
          if (r.contains("undone")) {
            std::string undone;
            for (const auto& what : r.at("undone")) {
              undone += (undone.empty() ? "" : "; ") + what.get<std::string>();
            }
            self->log_.warn("SIGHUP: the file dropped {} change(s) made with sluicectl: {}",
                            r.at("undone").size(), validUtf8(undone));
          }
        } else {
          self->log_.error("SIGHUP: {}", r.value("error", std::string("reload failed")));
        }
      } else {
        self->log_.info("{}: shutting down", strsignal(static_cast<int>(si.ssi_signo)));
        event_base_loopbreak(self->base_);
      }
    }
  }

  spdlog::logger& log_;
  int sig_fd_;
  ControlServer& server_;
  const std::string& config_path_;
  event_base* base_;
  ControlPlane* control_ = nullptr;
  std::unique_ptr<HostInterface> host_;
  std::unique_ptr<BackendMonitor> monitor_;
  event* sig_event_ = nullptr;
};

#ifdef SLUICE_HAS_XDP
/** `sluiced run` on the XDP path: one program per interface, no DPDK. */
int runXdp(spdlog::logger& log, const RunOptions& opts, const Config& config, int sig_fd,
           ControlServer& server) {
  try {
    // The kernel allocates every flow map whole when the program loads: checked before.
    FlowTableMemory flow_memory;
    const uint32_t entries = config.dataplane.flow_table_size;
    for (const std::string& ifname : config.dataplane.interfaces) {
      std::string how;
      flow_memory.bytes += XdpDataplane::flowTableBytes(
          entries, XdpDataplane::flowTableScopeFor(ifname), how);
      flow_memory.how += fmt::format("{}{}: {}", flow_memory.how.empty() ? "" : ", ", ifname, how);
    }
    checkMemoryBudget(config, flow_memory, 0, true);

    std::vector<std::unique_ptr<XdpDataplane>> programs;
    for (const std::string& ifname : config.dataplane.interfaces) {
      const FlowTableScope scope = XdpDataplane::flowTableScopeFor(ifname);
      auto p = std::make_unique<XdpDataplane>(config.dataplane.flow_table_size, scope);
      const std::string how = p->attach(ifname, attachMode(config.dataplane.xdp_attach));
      p->setAcceptAnyMac(config.dataplane.promiscuous);
      log.info("XDP program attached to {} ({} mode, {} flow table)", ifname, how,
               scope == FlowTableScope::kShared ? "one shared" : "per-CPU");
      programs.push_back(std::move(p));
    }
    XdpDataplaneHandle handle(std::move(programs));
    DaemonLoop loop(log, sig_fd, server, opts.config_path);
    if (!config.dataplane.addresses.empty()) {
      // The one-port form: Sluice's addresses live on the first interface, whose kernel answers
      // what the program passes (XDP_PASS) and resolves the neighbours.
      loop.openHost(config.dataplane.interfaces.front(), config.dataplane);
    }
    ControlPlane control(config, opts.config_path, handle);
    control.setFlowTableMemory(flow_memory);
    control.start();
    log.info("sluiced {} running on the XDP path: {} service(s), {} interface(s), flow table {} "
             "entries per CPU, control socket {}",
             SLUICE_VERSION, config.services.size(), config.dataplane.interfaces.size(),
             config.dataplane.flow_table_size, server.path());
    loop.run(control);
    const nlohmann::json s = control.handle({{"command", "stats"}});
    const auto& total = s.at("total");
    log.info("stopped: {} packets in, {} out, {} dropped; XDP programs detached",
             total.at("packets_in").get<uint64_t>(), total.at("packets_out").get<uint64_t>(),
             total.at("dropped").get<uint64_t>());
    return 0;  // the programs detach as the handle goes
  } catch (const XdpError& e) {
    log.error("{}", e.what());
    return 1;
  } catch (const HostInterfaceError& e) {
    log.error("{}", e.what());
    return 1;
  } catch (const ConfigError& e) {
    log.error("bad configuration: {}", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    log.error("out of memory setting up the XDP data path; nothing was left attached");
    return 1;
  }
}
#endif

}  // namespace

int runDaemon(const RunOptions& opts) {
  auto log = makeLogger();

  Config config;
  try {
    config = loadConfigFile(opts.config_path);
  } catch (const ConfigError& e) {
    log->error("bad configuration: {}", e.what());
    return 2;
  }

  // Signals are taken from a signalfd by the control loop. Block them before the EAL starts its
  // threads, so that every thread inherits the mask and none is interrupted by them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  const int sig_fd = signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sig_fd < 0) {
    log->error("cannot create a signalfd: {}", std::strerror(errno));
    return 1;
  }

  std::unique_ptr<ControlServer> server;
  try {
    server = std::make_unique<ControlServer>(opts.socket_path);
  } catch (const ControlSocketError& e) {
    log->error("{}", e.what());
    return 1;
  }

  if (!opts.dataplane.empty()) {
    config.dataplane.mode = opts.dataplane == "xdp" ? DataplaneMode::kXdp : DataplaneMode::kDpdk;
  }
  if (!opts.interfaces.empty()) {
    config.dataplane.interfaces = opts.interfaces;
  }
  if (config.dataplane.mode == DataplaneMode::kXdp) {
    if (config.dataplane.interfaces.empty()) {
      log->error("the XDP data path needs interfaces: [dataplane] interfaces or --interface");
      return 2;
    }
#ifdef SLUICE_HAS_XDP
    const int rc = runXdp(*log, opts, config, sig_fd, *server);
    server.reset();
    ::close(sig_fd);
    return rc;
#else
    log->error("this sluiced was built without the XDP data path");
    return 2;
#endif
  }

  std::vector<std::string> eal = {"sluiced"};
  eal.insert(eal.end(), opts.eal_args.begin(), opts.eal_args.end());
  try {
    Eal env(eal);
    DaemonLoop loop(*log, sig_fd, *server, opts.config_path);
    const uint16_t nports = rte_eth_dev_count_avail();
    if (nports == 0) {
      throw DpdkError("no ports: give DPDK a NIC (-a PCI address) or a virtual device (--vdev)");
    }
    const unsigned nworkers = rte_lcore_count() - 1;
    if (nworkers == 0) {
      throw DpdkError(
          "no worker lcore: give DPDK at least two (e.g. -l 0,1): lcore 0 runs the control "
          "plane, the others run workers");
    }
    // Enough mbufs to fill every RX and TX ring of every queue, plus what is in flight.
    // The kernel exception ports double the rings when there are some.
    const uint32_t rings = config.dataplane.exception_interface.empty() ? 1 : 2;
    const uint32_t mbufs =
        std::max<uint32_t>(8191, rings * nports * nworkers * (1024 + 1024 + 64) + 4095);
    rte_mempool* pool = createMbufPool("sluiced_mbufs", mbufs, static_cast<int>(rte_socket_id()));

    std::vector<uint16_t> ports;
    std::vector<uint16_t> kernel_ports;  // parallel to ports: its exception port, or kNoPort
    std::vector<std::unique_ptr<PortContext>> port_ctx;
    std::vector<uint16_t> nics;
    uint16_t port_id = 0;
    RTE_ETH_FOREACH_DEV(port_id) {
      nics.push_back(port_id);  // before the exception ports join the list
    }
    for (const uint16_t nic : nics) {
      PortConfig pc;
      pc.port_id = nic;
      pc.queues = static_cast<uint16_t>(nworkers);
      pc.pool = pool;
      pc.promiscuous = config.dataplane.promiscuous;
      const PortInfo info = startPort(pc);
      auto ctx = std::make_unique<PortContext>();
      std::memcpy(ctx->mac, info.mac, 6);
      // A packet socket on a kernel interface passes on the partial checksums of local senders.
      ctx->complete_partial_checksums = info.driver == "net_af_packet";
      // Promiscuous: every frame is taken as the port's (a tap on a mirror port, a bump in the
      // wire); otherwise frames for other MACs are not_for_us.
      ctx->accept_any_mac = config.dataplane.promiscuous;
      log->info("port {} ({}): mac {}, {} queue pair(s), {}{}", nic, info.name,
                macString(info.mac), nworkers,
                nworkers > 1 ? (info.rss ? "RSS on" : "no RSS: all traffic reaches queue 0")
                             : "single queue",
                config.dataplane.promiscuous ? ", promiscuous" : "");
      uint16_t kernel = kNoPort;
      if (!config.dataplane.exception_interface.empty()) {
        // One exception interface per NIC port: the configured name for the first, with the
        // port's index appended for the others.
        const std::string ifname =
            nic == nics.front() ? config.dataplane.exception_interface
                                : fmt::format("{}p{}", config.dataplane.exception_interface, nic);
        kernel = createKernelPort(nic, ifname, info.mac);
        PortConfig kc;
        kc.port_id = kernel;
        kc.queues = static_cast<uint16_t>(nworkers);
        kc.pool = pool;
        kc.rss = false;  // the kernel picks the queue it sends on; any worker may carry it
        startPort(kc);
        log->info("port {}: kernel exception interface {} (port {})", nic, ifname, kernel);
        if (nic == nics.front()) {
          loop.openHost(ifname, config.dataplane);
        }
      }
      ports.push_back(nic);
      kernel_ports.push_back(kernel);
      port_ctx.push_back(std::move(ctx));
    }

    // Every worker's flow table and the Maglev tables, checked before any is allocated.
    const FlowTableMemory flow_memory{
        nworkers * FlowTable::bytesFor(config.dataplane.flow_table_size),
        fmt::format("{} worker{} x {} entries x {} B", nworkers, nworkers == 1 ? "" : "s",
                    config.dataplane.flow_table_size,
                    FlowTable::bytesFor(config.dataplane.flow_table_size) /
                        std::max<uint64_t>(1, config.dataplane.flow_table_size))};
    checkMemoryBudget(config, flow_memory, 0, true);

    std::atomic<bool> stop{false};
    SnapshotSlot slot(nworkers);
    WorkerOptions wo;
    wo.flow_capacity = config.dataplane.flow_table_size;
    wo.max_backend_ids = kMaxBackendIds;
    std::vector<std::unique_ptr<Worker>> workers;
    std::vector<const Pipeline*> pipelines;
    for (uint32_t w = 0; w < nworkers; ++w) {
      std::vector<RxQueueRef> queues;
      for (size_t p = 0; p < ports.size(); ++p) {
        queues.push_back({ports[p], static_cast<uint16_t>(w), port_ctx[p].get(), kernel_ports[p]});
      }
      workers.push_back(std::make_unique<Worker>(w, wo, std::move(queues), slot, stop));
      pipelines.push_back(&workers.back()->pipeline());
    }

    DpdkDataplaneHandle handle(slot, pipelines);
    ControlPlane control(config, opts.config_path, handle);
    control.setFlowTableMemory(flow_memory);
    control.start();

    unsigned lcore = rte_get_next_lcore(-1, 1, 0);
    for (uint32_t w = 0; w < nworkers; ++w, lcore = rte_get_next_lcore(lcore, 1, 0)) {
      if (rte_eal_remote_launch(Worker::launch, workers[w].get(), lcore) != 0) {
        stop.store(true);
        rte_eal_mp_wait_lcore();
        throw DpdkError(fmt::format("cannot start worker {} on lcore {}", w, lcore));
      }
      log->info("worker {} on lcore {}", w, lcore);
    }
    log->info("sluiced {} running: {} service(s), {} port(s), {} worker(s), flow table {} "
              "entries per worker, control socket {}",
              SLUICE_VERSION, config.services.size(), ports.size(), nworkers,
              wo.flow_capacity, server->path());

    loop.run(control);

    stop.store(true);
    rte_eal_mp_wait_lcore();
    for (size_t p = 0; p < ports.size(); ++p) {
      stopPort(ports[p]);
      if (kernel_ports[p] != kNoPort) {
        stopPort(kernel_ports[p]);
      }
    }
    const nlohmann::json s = control.handle({{"command", "stats"}});
    const auto& total = s.at("total");
    log->info("stopped: {} packets in, {} out, {} dropped", total.at("packets_in").get<uint64_t>(),
              total.at("packets_out").get<uint64_t>(), total.at("dropped").get<uint64_t>());
    workers.clear();
    rte_mempool_free(pool);
    ::close(sig_fd);
    return 0;  // the server goes after the loop that serves it (~DaemonLoop detaches it)
  } catch (const DpdkError& e) {
    log->error("{}", e.what());
    return 1;
  } catch (const HostInterfaceError& e) {
    log->error("{}", e.what());
    return 1;
  } catch (const ConfigError& e) {
    log->error("bad configuration: {}", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    // The memory budget was checked before the tables were made: what ran out is something
    // else (DPDK's own memory, a kernel refusal); the daemon still stops cleanly.
    log->error("out of memory setting up the data path");
    return 1;
  }
}

}  // namespace sluice
