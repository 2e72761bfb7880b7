#include "tests/support/fixtures.h"

#include <stdexcept>
#include <utility>

namespace testsupport {

sluice::IpAddress ip(std::string_view text) {
  auto a = sluice::IpAddress::parse(text);
  if (!a) {
    throw std::invalid_argument("bad IP address in test: " + std::string(text));
  }
  return *a;
}

sluice::MacAddress mac(std::string_view text) {
  auto m = sluice::MacAddress::parse(text);
  if (!m) {
    throw std::invalid_argument("bad MAC in test: " + std::string(text));
  }
  return *m;
}

sluice::MacAddress pcapPortMac(uint8_t n) {
  return sluice::MacAddress{{0x02, 0x70, 0x63, 0x61, 0x70, n}};
}

sluice::Config threeServices() {
  return sluice::parseConfig(sluice::defaultConfigText(), "<built-in default>");
}

sluice::ServiceConfig& service(sluice::Config& c, std::string_view name) {
  for (sluice::ServiceConfig& s : c.services) {
    if (s.name == name) {
      return s;
    }
  }
  throw std::invalid_argument("no service " + std::string(name) + " in the test configuration");
}

sluice::BackendConfig makeBackend(std::string_view addr, uint16_t port, std::string_view m,
                                  uint32_t weight) {
  sluice::BackendConfig b;
  b.address = ip(addr);
  b.port = port;
  b.mac = mac(m);
  b.weight = weight;
  return b;
}

sluice::ServiceConfig makeService(std::string_view name, std::string_view vip, uint16_t port,
                                  sluice::Protocol proto, sluice::Forwarding fwd,
                                  std::vector<sluice::BackendConfig> backends) {
  sluice::ServiceConfig s;
  s.name = name;
  s.vip = ip(vip);
  s.port = port;
  s.protocol = proto;
  s.forwarding = fwd;
  s.backends = std::move(backends);
  return s;
}

std::string configText(const sluice::Config& c) { return sluice::renderConfig(c); }

}  // namespace testsupport
