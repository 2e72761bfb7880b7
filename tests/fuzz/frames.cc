#include "tests/fuzz/frames.h"

#include <algorithm>

#include "tests/support/fixtures.h"

namespace fuzz {

using testsupport::ip;
using testsupport::mac;
using testsupport::makeBackend;
using testsupport::makeService;

const sluice::MacAddress kPortMac = mac("02:00:00:00:00:bb");

Input decode(const uint8_t* data, size_t size, size_t max_frames, size_t max_len) {
  Input in;
  if (size == 0) {
    return in;
  }
  in.flags = data[0];
  size_t off = 1;
  uint64_t now = kT0;
  while (off + 3 <= size && in.frames.size() < max_frames) {
    const size_t len = static_cast<size_t>(data[off]) << 8 | data[off + 1];
    const uint8_t step = data[off + 2];
    off += 3;
    now += step < 200 ? step * 100'000'000ull : (step - 199ull) * 100'000'000'000ull;
    const size_t n = std::min({len, size - off, max_len});
    in.frames.push_back({std::vector<uint8_t>(data + off, data + off + n), now});
    off += std::min(len, size - off);
  }
  return in;
}

void appendFrame(std::vector<uint8_t>& input, uint8_t clock_step, const std::vector<uint8_t>& f) {
  input.push_back(static_cast<uint8_t>(f.size() >> 8));
  input.push_back(static_cast<uint8_t>(f.size()));
  input.push_back(clock_step);
  input.insert(input.end(), f.begin(), f.end());
}

sluice::Config config() {
  using sluice::Forwarding;
  using sluice::Protocol;
  sluice::Config c = testsupport::threeServices();
  c.dataplane.flow_table_size = 1u << 12;
  c.dataplane.gateway_mac.reset();
  c.dataplane.addresses = {*sluice::IpPrefix::parse("198.51.100.2/24"),
                           *sluice::IpPrefix::parse("2001:db8:b::2/64")};
  c.dataplane.gateways = {ip("198.51.100.1"), ip("2001:db8:b::1")};
  c.timeouts.tcp_s = 900;
  c.timeouts.tcp_fin_s = 10;
  c.timeouts.udp_s = 300;
  testsupport::service(c, "web").on_backend_down = sluice::DownPolicy::kReschedule;
  c.services.push_back(makeService("api", "192.0.2.20", 443, Protocol::kTcp, Forwarding::kNat,
                                   {makeBackend("10.0.2.1", 8443, "02:00:00:00:03:01"),
                                    makeBackend("10.0.2.2", 8443, "02:00:00:00:03:02", 3)}));
  c.services.push_back(makeService("dns6", "2001:db8::53", 53, Protocol::kUdp, Forwarding::kNat,
                                   {makeBackend("2001:db8:2::1", 53, "02:00:00:00:05:01"),
                                    makeBackend("2001:db8:2::2", 5300, "02:00:00:00:05:02")}));
  c.services.push_back(makeService("web6dr", "2001:db8::10", 80, Protocol::kTcp, Forwarding::kDr,
                                   {makeBackend("2001:db8:3::1", 80, "02:00:00:00:06:01"),
                                    makeBackend("2001:db8:3::2", 80, "02:00:00:00:06:02")}));
  c.services.push_back(makeService("drained", "192.0.2.30", 80, Protocol::kTcp, Forwarding::kDr,
                                   {makeBackend("10.0.3.1", 80, "02:00:00:00:07:01", 0),
                                    makeBackend("10.0.3.2", 80, "02:00:00:00:07:02", 0)}));
  c.services.push_back(
      makeService("empty", "192.0.2.31", 80, Protocol::kUdp, Forwarding::kNat, {}));
  for (sluice::ServiceConfig& s : c.services) {
    s.table_size = 251;
  }
  sluice::validateConfig(c, "fuzz");
  return c;
}

sluice::SnapshotPtr snapshot(sluice::IdRegistry& ids) {
  sluice::Config c = config();
  sluice::RuntimeState rt;
  rt.neighbours[ip("198.51.100.1")] = mac("02:00:00:00:00:f4");
  rt.neighbours[ip("2001:db8:b::1")] = mac("02:00:00:00:00:f6");
  const sluice::ServiceConfig& web = testsupport::service(c, "web");
  for (const sluice::BackendConfig& b : web.backends) {
    if (b.address == ip("10.0.0.12")) {
      rt.health[sluice::backendRef(web, b)].up = false;
    }
  }
  return sluice::buildSnapshot(c, ids, 1, nullptr, &rt);
}

}  // namespace fuzz
