// sluicectl: the Sluice control CLI. It talks to a running sluiced over its control socket;
// for now it only reports its version (the socket arrives with the control-plane issue).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "sluice_config.h"

int main(int argc, char** argv) {
  CLI::App app{"sluicectl: manage Sluice services and backends"};
  app.set_version_flag("--version", std::string("sluicectl ") + SLUICE_VERSION);
  CLI::App* version = app.add_subcommand("version", "Print the version");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (version->parsed() || argc == 1) {
    std::printf("sluicectl %s\n", SLUICE_VERSION);
  }
  return 0;
}
