// The configuration loader (src/control/config.h) on arbitrary text. A file is accepted whole or
// rejected with a ConfigError; anything else escaping parseConfig (a toml++ or std exception, a
// crash, UB) is a finding. What it accepts must hold up later too:
//   - validateConfig passes on it again (the control plane re-validates every edit),
//   - renderConfig of it (`sluicectl save`) loads again and renders to the same text,
//   - the snapshot builder builds it (when its Maglev tables are small enough to fuzz quickly).
// A ConfigError reads "SOURCE:LINE: problem" or "SOURCE: problem", on one line: it is a line of
// the log and of sluicectl's answer (corpus/config_fuzz/finding-error-message-spans-lines.toml).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "control/config.h"
#include "control/snapshot_builder.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

constexpr std::string_view kSource = "fuzz.toml";
// Maglev tables are built only up to this many slots in all: a table of the default 65,537 slots
// takes a few ms under ASan, which would cost the fuzzer most of its speed.
constexpr uint64_t kMaxSlotsToBuild = 5000;


[[noreturn]] void escaped(const char* what, const std::exception& e) {
  std::fprintf(stderr, "config_fuzz: %s: %s\n", what, e.what());
  __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  sluice::Config c;
  try {
    c = sluice::parseConfig(text, kSource);
  } catch (const sluice::ConfigError& e) {
    const std::string_view msg = e.what();
    if (!msg.starts_with(std::string(kSource) + ":")) {
      escaped("a ConfigError that does not start with \"SOURCE:\"", e);
    }
    if (msg.find('\n') != std::string_view::npos || msg.find('\r') != std::string_view::npos) {
      escaped("a ConfigError of more than one line", e);
    }
    return 0;
  } catch (const std::exception& e) {
    escaped("parseConfig threw something other than a ConfigError", e);
  }

  std::string rendered;
  try {
    sluice::validateConfig(c, "again");
    rendered = sluice::renderConfig(c);
  } catch (const std::exception& e) {
    escaped("an accepted configuration fails validateConfig or renderConfig", e);
  }
  try {
    const sluice::Config again = sluice::parseConfig(rendered, "rendered");
    FUZZ_CHECK(sluice::renderConfig(again) == rendered);
  } catch (const std::exception& e) {
    escaped("renderConfig's text of an accepted configuration does not load", e);
  }

  uint64_t slots = 0;
  for (const sluice::ServiceConfig& s : c.services) {
    slots += s.table_size;
  }
  if (slots <= kMaxSlotsToBuild) {
    try {
      sluice::IdRegistry ids;
      const sluice::SnapshotPtr snap = sluice::buildSnapshot(c, ids, 1);
      FUZZ_CHECK(snap != nullptr && snap->generation == 1);
    } catch (const std::exception& e) {
      escaped("an accepted configuration does not build", e);
    }
  }
  return 0;
}
