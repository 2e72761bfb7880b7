// The control plane of a running sluiced: the running configuration, the commands that change it
// (sluicectl's service/backend add, edit, del, drain; reload; save) and the ones that read it
// (list, stats). Every change is made to a copy of the configuration, validated whole, built into
// a new Snapshot off the hot path and published to the workers without stopping them; a change
// that fails validation changes nothing.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/config.h"
#include "control/memory_budget.h"
#include "common/dataplane_handle.h"
#include "control/snapshot_builder.h"

namespace sluice {

class ControlPlane {
 public:
  /**
   * @param config the validated configuration to start with
   * @param config_path the file `reload` reads again ("" when there is none)
   * @param dataplane where snapshots are published and counters read (DPDK or XDP)
   */
  ControlPlane(Config config, std::string config_path, DataplaneHandle& dataplane);

  /** Build and publish the snapshot of the initial configuration. @throws ConfigError */
  void start();

  /**
   * Carry out one request ({"command": ..., ...}) and return the response: {"ok": true, ...} or
   * {"ok": false, "error": "one line"}. Never throws.
   */
  nlohmann::json handle(const nlohmann::json& request) noexcept;

  /**
   * Read the configuration file again and apply it (SIGHUP, `sluicectl reload`). Refused, unless
   * force, when the file would undo changes made with sluicectl since it was read (the reply's
   * "undone" lists them); with force they are dropped and "undone" says which.
   */
  nlohmann::json reload(bool force = false) noexcept;

  /**
   * Rebuild the running configuration with the current runtime state (health verdicts, resolved
   * MACs) and publish it, through the same path as a CLI change. Never throws.
   */
  nlohmann::json republish(const std::string& why) noexcept;

  /** The data plane's flow tables, counted in the memory budget of every change. */
  void setFlowTableMemory(FlowTableMemory m) { flow_tables_ = std::move(m); }

  /** What the daemon learned at run time; call republish() after changing it. */
  RuntimeState& runtime() { return runtime_; }

  /**
   * Called after every successful publish that changed the configuration (not after one of
   * run-time state only: republish(), maintenance), with the configuration now running.
   */
  void onApplied(std::function<void(const Config&)> f) { on_applied_ = std::move(f); }

  /** Adds run-time fields (health results) to each backend of `list` and `stats`. */
  using BackendAnnotator = std::function<void(const BackendRef&, nlohmann::json&)>;
  void setBackendAnnotator(BackendAnnotator f) { annotate_ = std::move(f); }

  const Config& config() const { return config_; }
  uint64_t generation() const { return generation_; }
  /** How long the last publish took (build + swap + grace period), in microseconds. */
  double lastPublishMicros() const { return last_publish_us_; }
  /** Of that, building the snapshot (validation, Maglev tables, maps), in microseconds. */
  double lastBuildMicros() const { return last_build_us_; }

 private:
  /** What a publish changes: the configuration, or only the run-time state beside it. */
  enum class Change { kConfig, kRuntime };
  /**
   * Validate next (kConfig; kRuntime republishes the running one as it is), build and publish
   * it; on success it becomes the running configuration.
   */
  nlohmann::json apply(Config next, const std::string& what, Change change = Change::kConfig);
  /** apply() of a sluicectl change, remembered (with the services it touches) for reload. */
  nlohmann::json applyCli(Config next, const std::string& what, std::vector<std::string> services);
  /** The sluicectl changes since the file was read that next would undo. */
  std::vector<std::string> undoneBy(const Config& next) const;
  nlohmann::json list() const;
  nlohmann::json stats() const;
  /** servicesJson of the snapshot, with each backend annotated. */
  nlohmann::json services(const Snapshot& snap, const StatsTotals& totals) const;
  /** backend.down / backend.up: maintenance on or off. */
  nlohmann::json setMaintenance(const nlohmann::json& req, bool down);

  Config config_;
  std::string config_path_;
  DataplaneHandle& dataplane_;
  IdRegistry ids_;
  RuntimeState runtime_;
  std::function<void(const Config&)> on_applied_;
  BackendAnnotator annotate_;
  struct CliChange {
    std::string what;                   // "backend add web 10.0.0.3:80"
    std::vector<std::string> services;  // the names it touched
  };
  /** Since the file was last read (start, reload). */
  std::vector<CliChange> cli_changes_;
  /** Each service as the file was last read, rendered (renderService), by name. */
  std::map<std::string, std::string> file_services_;
  FlowTableMemory flow_tables_;
  uint64_t generation_ = 0;
  double last_publish_us_ = 0;
  double last_build_us_ = 0;
};

/** A request could not be carried out; what() is the one-line reason for the client. */
class RequestError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace sluice
