// The control protocol's request handler (ControlPlane::handle, src/control/control_plane.h) on
// sequences of requests, one per line as the control socket takes them, each line first checked
// for UTF-8 as the socket checks it (firstInvalidUtf8, src/control/control_socket.h, held
// against a reference decoder of RFC 3629's table). The handler is noexcept: a crash, UB or an
// exception escaping it is a finding. Beyond that, what control_plane_test.cc asserts of every
// command, here for every request:
//   - the answer is an object with a boolean "ok", and when it is false a one-line "error";
//     "internal error" (an exception other than a refusal) counts as a finding;
//   - the answer dumps as strict UTF-8 (the socket would otherwise have to replace bytes);
//   - a success that names a "change" publishes exactly once and raises the generation by one;
//     anything else publishes nothing and leaves the generation and the running configuration
//     as they were;
//   - the running configuration stays valid, and its saved form (`save`, renderConfig) loads.
//
// Only the data path is a double (it records what is published, as control_plane_test.cc's
// FakeDataplane does): validation, the snapshot builder and the id registry are the real ones.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/dataplane_handle.h"
#include "control/config.h"
#include "control/control_plane.h"
#include "control/control_socket.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/support/fixtures.h"

namespace {

using nlohmann::json;

constexpr size_t kMaxRequests = 16;

/** The data path double: keeps the snapshot in force, counts publishes, serves zero counters. */
class RecordingDataplane final : public sluice::DataplaneHandle {
 public:
  void publish(sluice::SnapshotPtr next) override {
    FUZZ_CHECK(next != nullptr);
    current_ = std::move(next);
    ++publishes_;
  }
  const sluice::Snapshot* current() const override { return current_.get(); }
  sluice::StatsTotals totals(const sluice::Snapshot& snap) const override {
    // Shaped as the real paths shape it: one worker, a slot for every backend id.
    sluice::StatsTotals t;
    t.workers.resize(1);
    t.backends.resize(snap.backends.size());
    return t;
  }
  size_t workers() const override { return 1; }
  size_t publishes() const { return publishes_; }

 private:
  sluice::SnapshotPtr current_;
  size_t publishes_ = 0;
};

/**
 * RFC 3629 section 4, byte by byte: the offset of the first byte of the first ill-formed
 * sequence, or nullopt.
 */
std::optional<size_t> referenceFirstInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<uint8_t>(s[i]);
    size_t n = 0;
    uint8_t lo = 0x80, hi = 0xbf;  // the range of the second byte
    if (b <= 0x7f) {
      ++i;
      continue;
    } else if (b >= 0xc2 && b <= 0xdf) {
      n = 1;
    } else if (b == 0xe0) {
      n = 2, lo = 0xa0;
    } else if ((b >= 0xe1 && b <= 0xec) || b == 0xee || b == 0xef) {
      n = 2;
    } else if (b == 0xed) {
      n = 2, hi = 0x9f;
    } else if (b == 0xf0) {
      n = 3, lo = 0x90;
    } else if (b >= 0xf1 && b <= 0xf3) {
      n = 3;
    } else if (b == 0xf4) {
      n = 3, hi = 0x8f;
    } else {
      return i;
    }
    if (i + n >= s.size()) {
      return i;  // cut short
    }
    for (size_t k = 1; k <= n; ++k) {
      const auto c = static_cast<uint8_t>(s[i + k]);
      const uint8_t l = k == 1 ? lo : 0x80;
      const uint8_t h = k == 1 ? hi : 0xbf;
      if (c < l || c > h) {
        return i;
      }
    }
    i += n + 1;
  }
  return std::nullopt;
}

struct Fixture {
  sluice::Config config;
  std::string path;  // the file `reload` reads: the same configuration
};

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture x;
    x.config = testsupport::threeServices();
    for (sluice::ServiceConfig& s : x.config.services) {
      s.table_size = 13;  // the builder runs on every change: keep it quick
    }
    sluice::validateConfig(x.config, "fuzz");
    char name[] = "/tmp/control_fuzz-XXXXXX";
    const int fd = mkstemp(name);
    const std::string text = sluice::renderConfig(x.config);
    if (fd < 0 || write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      std::perror("control_fuzz: cannot write the configuration file");
      std::exit(1);
    }
    close(fd);
    x.path = name;
    return x;
  }();
  return f;
}

void checkAnswer(const json& r) {
  FUZZ_CHECK(r.is_object());
  FUZZ_CHECK(r.contains("ok") && r["ok"].is_boolean());
  if (!r["ok"].get<bool>()) {
    FUZZ_CHECK(r.contains("error") && r["error"].is_string());
    const std::string& e = r["error"].get_ref<const std::string&>();
    FUZZ_CHECK(!e.empty() && e.find('\n') == std::string::npos);
    if (e.starts_with("internal error")) {
      std::fprintf(stderr, "control_fuzz: %s\n", e.c_str());
      __builtin_trap();
    }
  }
  try {
    (void)r.dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (const json::exception& e) {
    std::fprintf(stderr, "control_fuzz: the answer is not UTF-8: %s\n", e.what());
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  FUZZ_CHECK(sluice::firstInvalidUtf8(input) == referenceFirstInvalidUtf8(input));

  const Fixture& fx = fixture();
  RecordingDataplane dp;
  sluice::ControlPlane cp(fx.config, fx.path, dp);
  cp.start();

  size_t start = 0;
  for (size_t n = 0; n < kMaxRequests && start < input.size(); ++n) {
    size_t end = input.find('\n', start);
    if (end == std::string_view::npos) {
      end = input.size();
    }
    const std::string_view line = input.substr(start, end - start);
    start = end + 1;
    if (sluice::firstInvalidUtf8(line)) {
      continue;  // refused by the socket before any parsing
    }
    const json req = json::parse(line, nullptr, false);
    if (req.is_discarded()) {
      continue;
    }
    const uint64_t generation = cp.generation();
    const size_t publishes = dp.publishes();
    const std::string running = sluice::renderConfig(cp.config());

    const json r = cp.handle(req);
    checkAnswer(r);

    if (r["ok"].get<bool>() && r.contains("change")) {
      FUZZ_CHECK(dp.publishes() == publishes + 1);
      FUZZ_CHECK(cp.generation() == generation + 1);
      FUZZ_CHECK(dp.current()->generation == cp.generation());
      try {
        sluice::validateConfig(cp.config(), "running");
        (void)sluice::parseConfig(sluice::renderConfig(cp.config()), "saved");
      } catch (const std::exception& e) {
        std::fprintf(stderr, "control_fuzz: the running configuration does not load: %s\n",
                     e.what());
        __builtin_trap();
      }
    } else {
      FUZZ_CHECK(dp.publishes() == publishes);
      FUZZ_CHECK(cp.generation() == generation);
      FUZZ_CHECK(sluice::renderConfig(cp.config()) == running);
    }
  }
  return 0;
}
