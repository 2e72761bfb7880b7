// sluiced: the Sluice data-plane daemon. `sluiced replay` runs a capture through the pipeline.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "replay/replay.h"
#include "sluiced/daemon.h"
#include "sluice_config.h"

int main(int argc, char** argv) {
  CLI::App app{"sluiced: the Sluice L4 load balancer data plane"};
  app.set_version_flag("--version", std::string("sluiced ") + SLUICE_VERSION);
  app.require_subcommand(1);

  sluice::ReplayOptions replay;
  CLI::App* rp = app.add_subcommand(
      "replay", "Run a pcap capture through the real DPDK pipeline and report where flows went");
  rp->add_option("--config,-c", replay.config_path,
                 "Configuration file (TOML); the built-in default when omitted");
  rp->add_option("--in,-i", replay.in_pcap, "Capture to replay (Ethernet pcap)")->required();
  rp->add_option("--out,-o", replay.out_pcap, "Where to write the transmitted packets (pcap)")
      ->required();
  rp->add_flag("--json", replay.json, "Print the summary as one JSON object");
  rp->add_flag("--flows", replay.list_flows, "Also list every flow and the backend it got");
  rp->add_option("--workers,-w", replay.workers,
                 "Worker lcores (default 1); the capture is spread over them by flow hash, as RSS would");
  rp->add_option("--dataplane", replay.dataplane,
                 "dpdk (default): the DPDK pipeline on net_pcap; xdp: the XDP program through "
                 "BPF_PROG_TEST_RUN")
      ->check(CLI::IsMember({"dpdk", "xdp"}));
  rp->add_option("--eal", replay.eal_args, "Extra DPDK EAL argument (repeatable)")
      ->allow_extra_args(false);

  sluice::RunOptions run;
  CLI::App* rn = app.add_subcommand(
      "run", "Run the load balancer: workers on the DPDK ports, control socket for sluicectl");
  rn->add_option("--config,-c", run.config_path, "Configuration file (TOML)")->required();
  rn->add_option("--socket,-s", run.socket_path, "Control socket path")
      ->capture_default_str();
  rn->add_option("--dataplane", run.dataplane,
                 "dpdk or xdp (overrides [dataplane] mode)")
      ->check(CLI::IsMember({"dpdk", "xdp"}));
  rn->add_option("--interface,-i", run.interfaces,
                 "XDP: interface to attach to (repeatable; overrides [dataplane] interfaces)");
  rn->add_option("eal", run.eal_args,
                 "DPDK EAL arguments after --, e.g. -- -l 0,1 -a 0000:03:00.0");
  rn->footer("Example: sluiced run --config /etc/sluice/sluice.toml -- -l 0-2 -a 0000:03:00.0");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (rp->parsed()) {
    return sluice::runReplay(replay);
  }
  if (rn->parsed()) {
    return sluice::runDaemon(run);
  }
  return 0;
}
