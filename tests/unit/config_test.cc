#include "control/config.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "tests/support/fixtures.h"

namespace sluice {
namespace {

// The documents below start with a newline after R"( for readability; drop it so that the first
// line of text is line 1 in the messages.
std::string doc(std::string_view text) {
  if (!text.empty() && text.front() == '\n') {
    text.remove_prefix(1);
  }
  return std::string(text);
}

// The message of the ConfigError that parsing `text` raises, or a marker when it parses.
std::string errorOf(std::string_view text) {
  try {
    parseConfig(doc(text), "t.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<no error>";
}

std::string validateError(const Config& config) {
  try {
    validateConfig(config, "edit");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<no error>";
}

using testsupport::ip;
using testsupport::mac;

// A service as a one-line-per-field dump, without the source lines, to compare configurations.
std::string describe(const Config& c) {
  std::string out = fmt::format(
      "flow_table_size={} gateway_mac={} tcp={} tcp_fin={} udp={}\n", c.dataplane.flow_table_size,
      c.dataplane.gateway_mac ? c.dataplane.gateway_mac->str() : "none", c.timeouts.tcp_s,
      c.timeouts.tcp_fin_s, c.timeouts.udp_s);
  if (!c.dataplane.addresses.empty() || !c.dataplane.gateways.empty() ||
      !c.dataplane.exception_interface.empty() || c.dataplane.promiscuous) {
    out += "addresses=";
    for (const IpPrefix& a : c.dataplane.addresses) {
      out += a.str() + " ";
    }
    out += "gateways=";
    for (const IpAddress& g : c.dataplane.gateways) {
      out += g.str() + " ";
    }
    out += fmt::format("exception={} promiscuous={}\n", c.dataplane.exception_interface,
                       c.dataplane.promiscuous);
  }
  auto check = [](const HealthCheckConfig& h) {
    return fmt::format("{} every {} ms timeout {} ms rise {} fall {} port {} path {} expect {}",
                       healthCheckTypeName(h.type), h.interval_ms, h.timeout_ms, h.rise, h.fall,
                       h.port, h.path, h.expect_status);
  };
  for (const ServiceConfig& s : c.services) {
    out += fmt::format("service {} {} {} {} {} M={}{}{}\n", s.name,
                       formatEndpoint(s.vip, s.port), protocolName(s.protocol),
                       forwardingName(s.forwarding), schedulerName(s.scheduler), s.table_size,
                       s.on_backend_down == DownPolicy::kKeep
                           ? ""
                           : fmt::format(" down={}", downPolicyName(s.on_backend_down)),
                       s.health_check == HealthCheckConfig{}
                           ? ""
                           : " check=" + check(s.health_check));
    for (const BackendConfig& b : s.backends) {
      out += fmt::format("  backend {} mac={} weight={}{}\n", formatEndpoint(b.address, b.port),
                         b.mac ? b.mac->str() : "resolved", b.weight,
                         b.health_check ? " check=" + check(*b.health_check) : "");
    }
  }
  return out;
}

std::string examplePath() {
#ifdef SOURCE_ROOT
  return std::string(SOURCE_ROOT) + "/conf/example.toml";
#else
  return "../conf/example.toml";
#endif
}

// ---------------------------------------------------------------------------------------------
// Valid configurations

TEST(ConfigTest, FullConfigRoundTrips) {
  const Config c = parseConfig(doc(R"(
[dataplane]
flow_table_size = 4096
gateway_mac = "02:00:00:00:00:FE"

[timeouts]
tcp = 600
tcp_fin = 5
udp = 30

[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"
scheduler = "maglev"
table_size = 251

[[service.backend]]
address = "10.0.0.11"
port = 80
mac = "02:00:00:00:01:11"
weight = 100

[[service.backend]]
address = "10.0.0.12"
mac = "02-00-00-00-01-12"
weight = 0

[[service]]
name = "dns6"
vip = "2001:db8::53"
port = 53
protocol = "udp"
forwarding = "nat"

[[service.backend]]
address = "2001:db8:1::21"
port = 5353
mac = "02:00:00:00:02:21"
weight = 65535
)"),
                               "full.toml");

  EXPECT_EQ(c.dataplane.flow_table_size, 4096u);
  ASSERT_TRUE(c.dataplane.gateway_mac.has_value());
  EXPECT_EQ(*c.dataplane.gateway_mac, mac("02:00:00:00:00:fe"));
  EXPECT_EQ(c.timeouts.tcp_s, 600u);
  EXPECT_EQ(c.timeouts.tcp_fin_s, 5u);
  EXPECT_EQ(c.timeouts.udp_s, 30u);

  ASSERT_EQ(c.services.size(), 2u);
  const ServiceConfig& web = c.services[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.vip, ip("192.0.2.10"));
  EXPECT_TRUE(web.vip.isV4());
  EXPECT_EQ(web.port, 80);
  EXPECT_EQ(web.protocol, Protocol::kTcp);
  EXPECT_EQ(web.forwarding, Forwarding::kDr);
  EXPECT_EQ(web.scheduler, Scheduler::kMaglev);
  EXPECT_EQ(web.table_size, 251u);
  EXPECT_EQ(web.line, 10);
  ASSERT_EQ(web.backends.size(), 2u);
  EXPECT_EQ(web.backends[0].address, ip("10.0.0.11"));
  EXPECT_EQ(web.backends[0].port, 80);
  EXPECT_EQ(web.backends[0].mac, mac("02:00:00:00:01:11"));
  EXPECT_EQ(web.backends[0].weight, 100u);
  EXPECT_EQ(web.backends[0].line, 19);
  EXPECT_EQ(web.backends[1].address, ip("10.0.0.12"));
  EXPECT_EQ(web.backends[1].port, 80);  // DR: the service port
  EXPECT_EQ(web.backends[1].mac, mac("02:00:00:00:01:12"));
  EXPECT_EQ(web.backends[1].weight, 0u);
  EXPECT_EQ(web.backends[1].line, 25);

  const ServiceConfig& dns = c.services[1];
  EXPECT_EQ(dns.name, "dns6");
  EXPECT_EQ(dns.vip, ip("2001:db8::53"));
  EXPECT_TRUE(dns.vip.isV6());
  EXPECT_EQ(dns.port, 53);
  EXPECT_EQ(dns.protocol, Protocol::kUdp);
  EXPECT_EQ(dns.forwarding, Forwarding::kNat);
  EXPECT_EQ(dns.scheduler, Scheduler::kMaglev);       // default
  EXPECT_EQ(dns.table_size, kDefaultMaglevTableSize);  // default
  EXPECT_EQ(dns.line, 30);
  ASSERT_EQ(dns.backends.size(), 1u);
  EXPECT_EQ(dns.backends[0].address, ip("2001:db8:1::21"));
  EXPECT_EQ(dns.backends[0].port, 5353);
  EXPECT_EQ(dns.backends[0].weight, 65535u);
  EXPECT_EQ(dns.backends[0].line, 37);
}

TEST(ConfigTest, DefaultsApplyWhenKeysAreLeftOut) {
  const Config c = parseConfig(doc(R"(
[[service]]
name = "svc"
vip = "192.0.2.1"
port = 8080
protocol = "udp"
forwarding = "nat"

[[service.backend]]
address = "10.0.0.1"
mac = "02:00:00:00:00:01"
)"),
                               "t.toml");
  const Config defaults;
  EXPECT_EQ(c.dataplane.flow_table_size, 1u << 20);
  EXPECT_FALSE(c.dataplane.gateway_mac.has_value());
  EXPECT_EQ(c.timeouts.tcp_s, 900u);
  EXPECT_EQ(c.timeouts.tcp_fin_s, 10u);
  EXPECT_EQ(c.timeouts.udp_s, 300u);
  EXPECT_EQ(c.dataplane.flow_table_size, defaults.dataplane.flow_table_size);
  ASSERT_EQ(c.services.size(), 1u);
  EXPECT_EQ(c.services[0].scheduler, Scheduler::kMaglev);
  EXPECT_EQ(c.services[0].table_size, 65537u);
  ASSERT_EQ(c.services[0].backends.size(), 1u);
  EXPECT_EQ(c.services[0].backends[0].port, 8080);  // NAT: defaults to the service port
  EXPECT_EQ(c.services[0].backends[0].weight, 1u);
}

TEST(ConfigTest, EmptyDocumentIsValid) {
  const Config c = parseConfig("", "empty.toml");
  EXPECT_TRUE(c.services.empty());
  EXPECT_EQ(c.dataplane.flow_table_size, 1u << 20);
  EXPECT_EQ(c.timeouts.tcp_s, 900u);

  // Empty sections are fine too, and a service may have no backend yet.
  const Config d = parseConfig(doc(R"(
[dataplane]
[timeouts]
[[service]]
name = "idle"
vip = "192.0.2.1"
port = 80
protocol = "tcp"
forwarding = "dr"
)"),
                               "t.toml");
  ASSERT_EQ(d.services.size(), 1u);
  EXPECT_TRUE(d.services[0].backends.empty());
}

TEST(ConfigTest, InlineTablesAreAccepted) {
  const Config c = parseConfig(doc(R"(
service = [
  { name = "a", vip = "192.0.2.1", port = 80, protocol = "tcp", forwarding = "dr", backend = [
      { address = "10.0.0.1", mac = "02:00:00:00:00:01" },
    ] },
]
)"),
                               "t.toml");
  ASSERT_EQ(c.services.size(), 1u);
  ASSERT_EQ(c.services[0].backends.size(), 1u);
  EXPECT_EQ(c.services[0].backends[0].address, ip("10.0.0.1"));
}

// An error is one line of the log and of sluicectl's answer, whatever the input quoted in it
// holds (found by tests/fuzz/config_fuzz: toml++ quotes the rest of the line, newline included).
TEST(ConfigTest, ErrorsAreOneLineWhateverTheyQuote) {
  const std::string syntax = errorOf("a = fals\n");
  EXPECT_EQ(syntax.find('\n'), std::string::npos) << syntax;
  EXPECT_TRUE(syntax.starts_with("t.toml:1: ")) << syntax;

  const std::string key = errorOf("[\"web\\nfront\"]\n");
  EXPECT_EQ(key, "t.toml:1: unknown table [web\\nfront] (expected [dataplane], [timeouts], "
                 "[flood] or [[service]])");

  const std::string control = errorOf("\"a\\u0007\" = 1\n");
  EXPECT_EQ(control.find('\x07'), std::string::npos) << control;
  EXPECT_NE(control.find("\\x07"), std::string::npos) << control;
}

TEST(ConfigTest, NamesOfEnums) {
  EXPECT_STREQ(forwardingName(Forwarding::kDr), "dr");
  EXPECT_STREQ(forwardingName(Forwarding::kNat), "nat");
  EXPECT_STREQ(schedulerName(Scheduler::kMaglev), "maglev");
}

// The built-in default must describe exactly the services the sample capture was made for.
TEST(ConfigTest, DefaultConfigTextParses) {
  const Config c = parseConfig(defaultConfigText(), "<default>");
  EXPECT_EQ(describe(c),
            "flow_table_size=65536 gateway_mac=02:00:00:00:00:fe tcp=900 tcp_fin=10 udp=300\n"
            "service web 192.0.2.10:80 tcp dr maglev M=65537\n"
            "  backend 10.0.0.11:80 mac=02:00:00:00:01:11 weight=100\n"
            "  backend 10.0.0.12:80 mac=02:00:00:00:01:12 weight=100\n"
            "  backend 10.0.0.13:80 mac=02:00:00:00:01:13 weight=200\n"
            "service dns 192.0.2.53:53 udp nat maglev M=65537\n"
            "  backend 10.0.1.21:5353 mac=02:00:00:00:02:21 weight=1\n"
            "  backend 10.0.1.22:5353 mac=02:00:00:00:02:22 weight=1\n"
            "service web6 [2001:db8::10]:443 tcp nat maglev M=65537\n"
            "  backend [2001:db8:1::11]:8443 mac=02:00:00:00:03:11 weight=1\n"
            "  backend [2001:db8:1::12]:8443 mac=02:00:00:00:03:12 weight=1\n");
}

TEST(ConfigTest, ExampleFileParsesAndMatchesTheDefault) {
  const std::string path = examplePath();
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " not found";
  }
  const Config example = loadConfigFile(path);
  const Config builtin = parseConfig(defaultConfigText(), "<default>");
  EXPECT_EQ(describe(example), describe(builtin));
}

// ---------------------------------------------------------------------------------------------
// Files

TEST(ConfigTest, MissingFileIsAConfigError) {
  try {
    loadConfigFile("/nonexistent/sluice.toml");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "/nonexistent/sluice.toml: cannot read: No such file or directory");
  }
}

/** A fresh directory under the temporary directory, removed with its contents at the end. */
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "sluice-config-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("mkdtemp: " + std::string(std::strerror(errno)));
    }
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

/**
 * The message of the ConfigError that loadConfigFile(path) raises, run in a child process so
 * that a loader which blocks (a FIFO) or reads without end (/dev/zero) fails this test within
 * a few seconds instead of hanging it or exhausting the host's memory.
 */
std::string loadErrorWithin(const std::string& path, std::chrono::seconds limit) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return "<pipe failed>";
  }
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipe_fds[0]);
    const rlimit memory{size_t{1} << 30, size_t{1} << 30};  // an unbounded read fails, not the host
    ::setrlimit(RLIMIT_AS, &memory);
    std::string message = "<no error>";
    try {
      loadConfigFile(path);
    } catch (const ConfigError& e) {
      message = e.what();
    } catch (const std::exception& e) {
      message = std::string("<not a ConfigError: ") + e.what() + ">";
    }
    const ssize_t ignored = ::write(pipe_fds[1], message.data(), message.size());
    static_cast<void>(ignored);
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  if (pid < 0) {
    ::close(pipe_fds[0]);
    return "<fork failed>";
  }
  std::string message;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{pipe_fds[0], POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) == 0) {
      ::kill(pid, SIGKILL);
      message = fmt::format("<still loading after {} s>", limit.count());
      break;
    }
    char buffer[512];
    const ssize_t n = ::read(pipe_fds[0], buffer, sizeof(buffer));
    if (n <= 0) {
      break;
    }
    message.append(buffer, static_cast<size_t>(n));
  }
  ::close(pipe_fds[0]);
  int wstatus = 0;
  ::waitpid(pid, &wstatus, 0);
  return message.empty() ? "<the loader died>" : message;
}

constexpr std::chrono::seconds kPromptly{5};

TEST(ConfigTest, DirectoryIsAConfigError) {
  const std::string dir = std::filesystem::temp_directory_path().string();
  EXPECT_EQ(loadErrorWithin(dir, kPromptly), dir + ": not a regular file (a directory)");
}

TEST(ConfigTest, FifoIsRefusedWithoutBlocking) {
  // Nobody writes to the FIFO: an open without O_NONBLOCK would wait for a writer for ever.
  const ScratchDir dir;
  const std::string fifo = dir.file("config.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  EXPECT_EQ(loadErrorWithin(fifo, kPromptly), fifo + ": not a regular file (a FIFO)");
}

TEST(ConfigTest, CharacterDeviceIsRefused) {
  EXPECT_EQ(loadErrorWithin("/dev/zero", kPromptly),
            "/dev/zero: not a regular file (a character device)");
}

TEST(ConfigTest, FileOverTheCapIsRefusedUnread) {
  // Sparse: the size is there without the disk space, and a loader that read it would spend
  // seconds and the cap in memory before the parser refused the NUL bytes.
  const ScratchDir dir;
  const std::string big = dir.file("big.toml");
  const int fd = ::open(big.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  const off_t size = static_cast<off_t>(kMaxConfigFileBytes) + 1;
  ASSERT_EQ(::ftruncate(fd, size), 0) << std::strerror(errno);
  ::close(fd);
  EXPECT_EQ(loadErrorWithin(big, kPromptly),
            fmt::format("{}: {} bytes, more than the {} bytes a configuration file may have", big,
                        size, kMaxConfigFileBytes));

  // At the cap exactly, it is read (and rejected by the parser, which is not the point here).
  const int again = ::open(big.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(again, 0) << std::strerror(errno);
  ASSERT_EQ(::ftruncate(again, static_cast<off_t>(kMaxConfigFileBytes)), 0);
  ::close(again);
  EXPECT_EQ(loadErrorWithin(big, kPromptly).find("more than the"), std::string::npos);
}

TEST(ConfigTest, FileErrorsNameThePath) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            fmt::format("sluice_config_test_{}.toml", ::getpid()))
                               .string();
  {
    std::ofstream out(path);
    out << "[timeouts]\ntcp = 900\nudp = \"long\"\n";
  }
  try {
    loadConfigFile(path);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              path + ":3: timeouts.udp must be an integer, not a string");
  }
  std::remove(path.c_str());
}

// ---------------------------------------------------------------------------------------------
// Syntax, unknown keys, types, missing keys

TEST(ConfigTest, SyntaxErrorGivesTheLine) {
  EXPECT_EQ(errorOf(R"(
[dataplane]
flow_table_size = 65536
gateway_mac = 
)"),
            "t.toml:3: Error while parsing key-value pair: expected value, saw '\\n'");
  EXPECT_EQ(errorOf(R"(
[timeouts]
tcp = 1
tcp = 2
)"),
            "t.toml:3: Error while parsing key-value pair: cannot redefine existing integer "
            "'tcp'");
}

TEST(ConfigTest, UnknownKeyInBackend) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "10.0.0.11"
mac = "02:00:00:00:01:11"
wieght = 100
)"),
            "t.toml:11: service \"web\": unknown key \"wieght\" in [[service.backend]] (did you "
            "mean \"weight\"?)");
}

TEST(ConfigTest, UnknownKeyInService) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"
persistence = 300
)"),
            "t.toml:7: unknown key \"persistence\" in [[service]]");
  // A misspelt sub-table is an unknown key of the service too.
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backends]]
address = "10.0.0.11"
)"),
            "t.toml:8: unknown key \"backends\" in [[service]] (did you mean \"backend\"?)");
}

TEST(ConfigTest, UnknownKeyInSections) {
  EXPECT_EQ(errorOf(R"(
[dataplane]
flow_table_size = 65536
next_hop = "02:00:00:00:00:fe"
)"),
            "t.toml:3: unknown key \"next_hop\" in [dataplane]");
  EXPECT_EQ(errorOf(R"(
[timeouts]
tcp = 900
tcpfin = 10
)"),
            "t.toml:3: unknown key \"tcpfin\" in [timeouts] (did you mean \"tcp_fin\"?)");
  EXPECT_EQ(errorOf(R"(
[timeouts]
tcp = 900

[stats]
interval = 1
)"),
            "t.toml:4: unknown table [stats] (expected [dataplane], [timeouts], [flood] or "
            "[[service]])");
  EXPECT_EQ(errorOf(R"(
workers = 4
)"),
            "t.toml:1: unknown key \"workers\" at the top level (expected [dataplane], "
            "[timeouts], [flood] or [[service]])");
}

TEST(ConfigTest, UnknownKeyReportedIsTheFirstInTheFile) {
  // Keys are stored sorted; the message names the first one in the document, not "aaa".
  EXPECT_EQ(errorOf(R"(
[timeouts]
zzz = 1
aaa = 2
)"),
            "t.toml:2: unknown key \"zzz\" in [timeouts]");
}

TEST(ConfigTest, WrongValueTypes) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = "80"
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:4: service \"web\": port must be an integer, not a string");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = 3221225994
port = 80
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:3: service \"web\": vip must be a string, not an integer");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "10.0.0.11"
mac = "02:00:00:00:01:11"
weight = 1.5
)"),
            "t.toml:11: service \"web\": backend 10.0.0.11: weight must be an integer, not a "
            "float");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"
table_size = "big"
)"),
            "t.toml:7: service \"web\": table_size must be an integer, not a string");
  EXPECT_EQ(errorOf(R"(
[dataplane]
flow_table_size = true
)"),
            "t.toml:2: dataplane.flow_table_size must be an integer, not a boolean");
  EXPECT_EQ(errorOf(R"(
name = "x"
dataplane = 1
)"),
            "t.toml:1: unknown key \"name\" at the top level (expected [dataplane], [timeouts], "
            "[flood] or [[service]])");
  EXPECT_EQ(errorOf(R"(
dataplane = 1
)"),
            "t.toml:1: dataplane must be a table ([dataplane]), not an integer");
}

TEST(ConfigTest, TablesWhereArraysOfTablesBelong) {
  EXPECT_EQ(errorOf(R"(
[service]
name = "web"
)"),
            "t.toml:1: service must be an array of tables ([[service]]), not a table");
  EXPECT_EQ(errorOf(R"(
service = [1, 2]
)"),
            "t.toml:1: service must be an array of tables ([[service]]), but it holds an "
            "integer");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[service.backend]
address = "10.0.0.11"
)"),
            "t.toml:8: service \"web\": backend must be an array of tables "
            "([[service.backend]]), not a table");
}

TEST(ConfigTest, MissingRequiredServiceKeys) {
  EXPECT_EQ(errorOf(R"(
[[service]]
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:1: missing required key \"name\" in [[service]]");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
port = 80
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:1: service \"web\": missing required key \"vip\" in [[service]]");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:1: service \"web\": missing required key \"port\" in [[service]]");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
forwarding = "dr"
)"),
            "t.toml:1: service \"web\": missing required key \"protocol\" in [[service]]");
  EXPECT_EQ(errorOf(R"(
[timeouts]
tcp = 900

[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
)"),
            "t.toml:4: service \"web\": missing required key \"forwarding\" in [[service]]");
}

TEST(ConfigTest, MissingRequiredBackendKeys) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
mac = "02:00:00:00:01:11"
)"),
            "t.toml:8: service \"web\": missing required key \"address\" in "
            "[[service.backend]]");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "10.0.0.11"
weight = 5
)"),
            "t.toml:8: service \"web\": backend 10.0.0.11 has no mac, is on none of the subnets "
            "of dataplane.addresses, and there is no IPv4 dataplane.gateway: its MAC could never "
            "be resolved (give its mac, or Sluice's address on its subnet)");
}

// ---------------------------------------------------------------------------------------------
// Values

TEST(ConfigTest, ServiceNames) {
  constexpr const char* kTemplate = R"(
[[service]]
name = "{}"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"
)";
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "")),
            "t.toml:2: service name \"\" is invalid: use 1 to 64 letters, digits, '_', '.' or "
            "'-'");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "web front")),
            "t.toml:2: service name \"web front\" is invalid: use 1 to 64 letters, digits, '_', "
            "'.' or '-'");
  const std::string long_name(65, 'a');
  EXPECT_EQ(errorOf(fmt::format(kTemplate, long_name)),
            fmt::format("t.toml:2: service name \"{}\" is invalid: use 1 to 64 letters, digits, "
                        "'_', '.' or '-'",
                        long_name));
  EXPECT_EQ(errorOf(fmt::format(kTemplate, std::string(64, 'a'))), "<no error>");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "Web_1.prod-eu")), "<no error>");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = 7
)"),
            "t.toml:2: name must be a string, not an integer");
}

TEST(ConfigTest, DuplicateServiceName) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service]]
name = "web"
vip = "192.0.2.11"
port = 80
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:8: service name \"web\" is used twice (line 1)");
}

// The data planes' backend ids are 16 bits: the bound is on all services together, and a file
// over it is told where, as any other error (it once surfaced from the id registry, without a
// line, and only when the file was loaded as a reload).
TEST(ConfigTest, TooManyBackendsInAllNamesTheFirstOneOver) {
  std::string text;
  int line = 1;
  int over_line = 0;
  for (int s = 0; s < 3; ++s) {
    text += fmt::format("[[service]]\nname = \"s{}\"\nvip = \"192.0.2.{}\"\nport = 80\n"
                        "protocol = \"tcp\"\nforwarding = \"dr\"\n",
                        s, s + 1);
    line += 6;
    for (int b = 0; b < 30000; ++b) {
      if (s * 30000 + b == 65535) {
        over_line = line;
      }
      text += fmt::format("[[service.backend]]\naddress = \"10.{}.{}.{}\"\nmac = "
                          "\"02:00:00:00:00:01\"\n",
                          s, b / 250, b % 250 + 1);
      line += 3;
    }
  }
  EXPECT_EQ(errorOf(text), fmt::format("t.toml:{}: service \"s2\": backend 10.2.22.36:80/tcp is "
                                       "one more than the 65535 backends all services may have "
                                       "together",
                                       over_line));
}

TEST(ConfigTest, BadAddresses) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.300"
port = 80
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:3: service \"web\": vip \"192.0.2.300\" is not an IPv4 or IPv6 address");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "0.0.0.0"
port = 80
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:3: service \"web\": vip 0.0.0.0 is not a usable unicast address");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "ff02::1"
port = 80
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:3: service \"web\": vip ff02::1 is not a usable unicast address");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "10.0.0.11/24"
mac = "02:00:00:00:01:11"
)"),
            "t.toml:9: service \"web\": backend address \"10.0.0.11/24\" is not an IPv4 or "
            "IPv6 address");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "239.1.2.3"
mac = "02:00:00:00:01:11"
)"),
            "t.toml:9: service \"web\": backend address 239.1.2.3 is not a usable unicast "
            "address");
}

TEST(ConfigTest, BadMacs) {
  constexpr const char* kTemplate = R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "10.0.0.11"
mac = "{}"
)";
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "02:00:00:00:01")),
            "t.toml:10: service \"web\": backend 10.0.0.11: mac \"02:00:00:00:01\" is not a MAC "
            "address (expected six hex pairs like 02:00:00:00:01:11)");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "00:00:00:00:00:00")),
            "t.toml:10: service \"web\": backend 10.0.0.11: mac 00:00:00:00:00:00 is all zeros; "
            "it must be a unicast MAC");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "01:00:5e:00:00:01")),
            "t.toml:10: service \"web\": backend 10.0.0.11: mac 01:00:5e:00:00:01 is a multicast "
            "address; it must be a unicast MAC");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "ff:ff:ff:ff:ff:ff")),
            "t.toml:10: service \"web\": backend 10.0.0.11: mac ff:ff:ff:ff:ff:ff is a multicast "
            "address; it must be a unicast MAC");
  EXPECT_EQ(errorOf(R"(
[dataplane]
gateway_mac = "02:00:00:00:00:zz"
)"),
            "t.toml:2: dataplane.gateway_mac \"02:00:00:00:00:zz\" is not a MAC address "
            "(expected six hex pairs like 02:00:00:00:01:11)");
  EXPECT_EQ(errorOf(R"(
[dataplane]
gateway_mac = "33:33:00:00:00:01"
)"),
            "t.toml:2: dataplane.gateway_mac 33:33:00:00:00:01 is a multicast address; it must "
            "be a unicast MAC");
}

TEST(ConfigTest, PortsOutOfRange) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 0
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:4: service \"web\": port 0 is out of range 1..65535");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 65536
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:4: service \"web\": port 65536 is out of range 1..65535");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "dns"
vip = "192.0.2.53"
port = 53
protocol = "udp"
forwarding = "nat"

[[service.backend]]
address = "10.0.1.21"
port = -1
mac = "02:00:00:00:02:21"
)"),
            "t.toml:10: service \"dns\": backend 10.0.1.21: port -1 is out of range 1..65535");
}

TEST(ConfigTest, WeightOutOfRange) {
  constexpr const char* kTemplate = R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "10.0.0.11"
mac = "02:00:00:00:01:11"
weight = {}
)";
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 65536)),
            "t.toml:11: service \"web\": backend 10.0.0.11: weight 65536 is out of range "
            "0..65535");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, -1)),
            "t.toml:11: service \"web\": backend 10.0.0.11: weight -1 is out of range 0..65535");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 0)), "<no error>");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 65535)), "<no error>");
}

TEST(ConfigTest, UnknownProtocolForwardingScheduler) {
  constexpr const char* kTemplate = R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "{}"
forwarding = "{}"
scheduler = "{}"
)";
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "sctp", "dr", "maglev")),
            "t.toml:5: service \"web\": unknown protocol \"sctp\" (expected \"tcp\" or \"udp\")");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "TCP", "dr", "maglev")),
            "t.toml:5: service \"web\": unknown protocol \"TCP\" (expected \"tcp\" or \"udp\")");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "tcp", "tun", "maglev")),
            "t.toml:6: service \"web\": unknown forwarding \"tun\" (expected \"dr\" or \"nat\")");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "tcp", "dr", "wrr")),
            "t.toml:7: service \"web\": unknown scheduler \"wrr\" (only \"maglev\" is "
            "supported)");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "udp", "nat", "maglev")), "<no error>");
}

TEST(ConfigTest, TableSize) {
  constexpr const char* kTemplate = R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"
table_size = {}
)";
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 65536)),
            "t.toml:7: service \"web\": table_size 65536 is not prime (Maglev needs a prime; the "
            "next one is 65537)");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 5)),
            "t.toml:7: service \"web\": table_size 5 is out of range 7..1048573");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 1048583)),
            "t.toml:7: service \"web\": table_size 1048583 is out of range 7..1048573");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 7)), "<no error>");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 1048573)), "<no error>");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 251)), "<no error>");
}

TEST(ConfigTest, MemoryLimit) {
  auto limitOf = [](std::string_view value) {
    return parseConfig(fmt::format("[dataplane]\nmemory_limit = {}\n", value), "t.toml")
        .dataplane.memory_limit;
  };
  EXPECT_EQ(limitOf("\"512M\""), uint64_t{512} << 20);
  EXPECT_EQ(limitOf("\"4G\""), uint64_t{4} << 30);
  EXPECT_EQ(limitOf("\"2T\""), uint64_t{2} << 40);
  EXPECT_EQ(limitOf("\"65536K\""), uint64_t{64} << 20);
  EXPECT_EQ(limitOf("1073741824"), uint64_t{1} << 30);
  EXPECT_EQ(limitOf("0"), 0u) << "0: what the host has available";
  EXPECT_EQ(parseConfig("", "t.toml").dataplane.memory_limit, 0u);

  const std::string kind = "dataplane.memory_limit must be a number of bytes, or a string such "
                           "as \"512M\" or \"4G\" (K, M, G, T: powers of 1024)";
  for (const char* bad : {"\"12X\"", "\"G\"", "\"1.5G\"", "-1", "\"\"", "true",
                          "\"99999999999999999999\"", "\"17179869184T\""}) {
    EXPECT_EQ(errorOf(fmt::format("[dataplane]\nmemory_limit = {}\n", bad)), "t.toml:2: " + kind)
        << bad;
  }
  EXPECT_EQ(errorOf("[dataplane]\nmemory_limit = \"1M\"\n"),
            "t.toml:2: dataplane.memory_limit 1048576 is below 16777216 (16M): too small for any "
            "flow table");

  // Saved and read back.
  Config c = parseConfig("[dataplane]\nmemory_limit = \"3G\"\n", "t.toml");
  EXPECT_EQ(parseConfig(renderConfig(c), "saved.toml").dataplane.memory_limit, uint64_t{3} << 30);
  c.dataplane.memory_limit = 1000;
  EXPECT_EQ(validateError(c), "edit: dataplane.memory_limit 1000 is below 16777216 (16M): too "
                              "small for any flow table");
}

TEST(ConfigTest, TableSizeMustLeaveASlotPerBackend) {
  std::string text = doc(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"
table_size = 7
)");
  for (int i = 1; i <= 8; ++i) {
    text += fmt::format("[[service.backend]]\naddress = \"10.0.0.{}\"\nmac = "
                        "\"02:00:00:00:01:{:02x}\"\nweight = {}\n",
                        i, i, i == 8 ? 0 : 1);
  }
  EXPECT_EQ(errorOf(text), "<no error>");  // seven weighted backends, one drained
  text += "[[service.backend]]\naddress = \"10.0.0.9\"\nmac = \"02:00:00:00:01:09\"\n";
  EXPECT_EQ(errorOf(text),
            "t.toml:1: service \"web\": table_size 7 is smaller than the number of backends "
            "with weight > 0 (8); each needs at least one slot");
}

TEST(ConfigTest, DataplaneAndTimeoutRanges) {
  EXPECT_EQ(errorOf(R"(
[dataplane]
flow_table_size = 1000
)"),
            "t.toml:2: dataplane.flow_table_size 1000 is out of range 1024..67108864");
  EXPECT_EQ(errorOf(R"(
[dataplane]
flow_table_size = 67108865
)"),
            "t.toml:2: dataplane.flow_table_size 67108865 is out of range 1024..67108864");
  EXPECT_EQ(errorOf(R"(
[timeouts]
tcp = 0
)"),
            "t.toml:2: timeouts.tcp 0 is out of range 1..604800");
  EXPECT_EQ(errorOf(R"(
[timeouts]
tcp_fin = 3601
)"),
            "t.toml:2: timeouts.tcp_fin 3601 is out of range 1..3600");
  EXPECT_EQ(errorOf(R"(
[timeouts]
udp = 604801
)"),
            "t.toml:2: timeouts.udp 604801 is out of range 1..604800");
  EXPECT_EQ(errorOf(R"(
[dataplane]
flow_table_size = 1024
[timeouts]
tcp = 604800
tcp_fin = 3600
udp = 1
)"),
            "<no error>");
}

TEST(ConfigTest, SynTimeoutAndNewFlowRateLimit) {
  const Config defaults = parseConfig("", "t.toml");
  EXPECT_EQ(defaults.timeouts.tcp_syn_s, 30u);
  EXPECT_EQ(defaults.flood.new_flow_rate_limit, 0u) << "0: no limit";
  const Config set = parseConfig(
      "[timeouts]\ntcp_syn = 5\n[flood]\nnew_flow_rate_limit = 125000\n", "t.toml");
  EXPECT_EQ(set.timeouts.tcp_syn_s, 5u);
  EXPECT_EQ(set.flood.new_flow_rate_limit, 125000u);
  // A short tcp shortens the default handshake timeout rather than fail on a key not given.
  EXPECT_EQ(parseConfig("[timeouts]\ntcp = 20\n", "t.toml").timeouts.tcp_syn_s, 20u);

  EXPECT_EQ(errorOf("[timeouts]\ntcp_syn = 0\n"),
            "t.toml:2: timeouts.tcp_syn 0 is out of range 1..3600");
  EXPECT_EQ(errorOf("[timeouts]\ntcp_syn = 3601\n"),
            "t.toml:2: timeouts.tcp_syn 3601 is out of range 1..3600");
  EXPECT_EQ(errorOf("[timeouts]\ntcp = 60\ntcp_syn = 120\n"),
            "t.toml:3: timeouts.tcp_syn 120 is longer than timeouts.tcp 60: a connection still "
            "in its handshake would be kept longer than an established one");
  EXPECT_EQ(errorOf("[timeouts]\ntcpsyn = 10\n"),
            "t.toml:2: unknown key \"tcpsyn\" in [timeouts] (did you mean \"tcp_syn\"?)");
  EXPECT_EQ(errorOf("[flood]\nnew_flow_rate_limit = -1\n"),
            "t.toml:2: flood.new_flow_rate_limit -1 is out of range 0..100000000");
  EXPECT_EQ(errorOf("[flood]\nnew_flow_rate_limit = \"fast\"\n"),
            "t.toml:2: flood.new_flow_rate_limit must be an integer, not a string");
  EXPECT_EQ(errorOf("[flood]\nsyn_rate = 1\n"), "t.toml:2: unknown key \"syn_rate\" in [flood]");

  // Saved and read back.
  const Config again = parseConfig(renderConfig(set), "saved.toml");
  EXPECT_EQ(again.timeouts.tcp_syn_s, 5u);
  EXPECT_EQ(again.flood.new_flow_rate_limit, 125000u);
  // Edits are validated too (no line: not from a file).
  Config c = set;
  c.timeouts.tcp_syn_s = 901;
  EXPECT_EQ(validateError(c), "edit: timeouts.tcp_syn 901 is longer than timeouts.tcp 900: a "
                              "connection still in its handshake would be kept longer than an "
                              "established one");
  c.timeouts.tcp_syn_s = 0;
  EXPECT_EQ(validateError(c), "edit: timeouts.tcp_syn 0 is out of range 1..3600");
  c = set;
  c.flood.new_flow_rate_limit = 100'000'001;
  EXPECT_EQ(validateError(c), "edit: flood.new_flow_rate_limit 100000001 is out of range "
                              "0..100000000");
}

// ---------------------------------------------------------------------------------------------
// Rules within a service

TEST(ConfigTest, BackendFamilyMustMatchTheVip) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "2001:db8::1"
mac = "02:00:00:00:01:11"
)"),
            "t.toml:9: service \"web\": backend 2001:db8::1 is IPv6 but the VIP is IPv4");
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web6"
vip = "2001:db8::10"
port = 443
protocol = "tcp"
forwarding = "nat"

[[service.backend]]
address = "10.0.0.11"
mac = "02:00:00:00:01:11"
)"),
            "t.toml:9: service \"web6\": backend 10.0.0.11 is IPv4 but the VIP is IPv6");
}

TEST(ConfigTest, DrCannotChangeThePort) {
  constexpr const char* kTemplate = R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "10.0.0.11"
port = {}
mac = "02:00:00:00:01:11"
)";
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 8080)),
            "t.toml:10: service \"web\": backend 10.0.0.11: DR cannot change the port (backend "
            "port 8080, service port 80); DR forwards the frame with the VIP and port unchanged, "
            "use forwarding = \"nat\" to rewrite them");
  EXPECT_EQ(errorOf(fmt::format(kTemplate, 80)), "<no error>");
}

TEST(ConfigTest, DuplicateBackend) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "10.0.0.11"
mac = "02:00:00:00:01:11"

[[service.backend]]
address = "10.0.0.11"
port = 80
mac = "02:00:00:00:01:12"
)"),
            "t.toml:12: service \"web\": backend 10.0.0.11:80 appears twice");
  // In NAT the same address on two ports is two backends; on the same port it is a duplicate.
  constexpr const char* kNat = R"(
[[service]]
name = "web6"
vip = "2001:db8::10"
port = 443
protocol = "tcp"
forwarding = "nat"

[[service.backend]]
address = "2001:db8:1::11"
port = 8443
mac = "02:00:00:00:03:11"

[[service.backend]]
address = "2001:db8:1::11"
port = {}
mac = "02:00:00:00:03:11"
)";
  EXPECT_EQ(errorOf(fmt::format(kNat, 8444)), "<no error>");
  EXPECT_EQ(errorOf(fmt::format(kNat, 8443)),
            "t.toml:13: service \"web6\": backend [2001:db8:1::11]:8443 appears twice");
}

TEST(ConfigTest, TooManyBackendsInTheFile) {
  std::string text = doc(R"(
[[service]]
name = "big"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "nat"
)");
  // Inline tables keep the document small: one line per backend, line 7 onwards.
  text += "backend = [\n";
  for (uint32_t i = 0; i < 65536; ++i) {
    text += fmt::format("{{ address = \"10.{}.{}.{}\", mac = \"02:00:00:00:00:01\" }},\n",
                        (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
  }
  text += "]\n";
  // The 65536th backend is on line 7 + 65536.
  EXPECT_EQ(errorOf(text), "t.toml:65543: service \"big\": 65536 backends; a service has at "
                           "most 65535");
}

// ---------------------------------------------------------------------------------------------
// Rules across services

TEST(ConfigTest, DuplicateService) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "a"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service]]
name = "b"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "nat"
)"),
            "t.toml:8: service \"b\" has the same VIP, port and protocol (192.0.2.10:80/tcp) as "
            "service \"a\" (line 1)");
  // The same VIP and port with another protocol, or another port, is another service.
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "a"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service]]
name = "b"
vip = "192.0.2.10"
port = 80
protocol = "udp"
forwarding = "dr"

[[service]]
name = "c"
vip = "192.0.2.10"
port = 443
protocol = "tcp"
forwarding = "dr"
)"),
            "<no error>");
}

TEST(ConfigTest, NatBackendsMustBeUniqueAcrossServices) {
  constexpr const char* kTemplate = R"(
[[service]]
name = "a"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "nat"

[[service.backend]]
address = "10.0.0.11"
port = 8080
mac = "02:00:00:00:01:11"

[[service]]
name = "b"
vip = "192.0.2.11"
port = 80
protocol = "{}"
forwarding = "{}"

[[service.backend]]
address = "10.0.0.11"
port = 8080
mac = "02:00:00:00:01:11"
)";
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "tcp", "nat")),
            "t.toml:20: backend 10.0.0.11:8080/tcp is used by NAT services \"a\" and \"b\"; "
            "replies could not be told apart");
  // Another protocol tells the replies apart.
  EXPECT_EQ(errorOf(fmt::format(kTemplate, "udp", "nat")), "<no error>");
}

TEST(ConfigTest, DrBackendsMayBeShared) {
  // DR replies go from the backend to the client directly; they never come back through Sluice.
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "a"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "10.0.0.11"
mac = "02:00:00:00:01:11"

[[service]]
name = "b"
vip = "192.0.2.11"
port = 80
protocol = "tcp"
forwarding = "dr"

[[service.backend]]
address = "10.0.0.11"
mac = "02:00:00:00:01:11"

[[service]]
name = "c"
vip = "192.0.2.12"
port = 80
protocol = "tcp"
forwarding = "nat"

[[service.backend]]
address = "10.0.0.11"
mac = "02:00:00:00:01:11"
)"),
            "<no error>");
}

TEST(ConfigTest, NatBackendMustNotBeAVip) {
  EXPECT_EQ(errorOf(R"(
[[service]]
name = "a"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "nat"

[[service.backend]]
address = "192.0.2.20"
port = 443
mac = "02:00:00:00:01:11"

[[service]]
name = "b"
vip = "192.0.2.20"
port = 443
protocol = "tcp"
forwarding = "dr"
)"),
            "t.toml:8: service \"a\": NAT backend 192.0.2.20:443/tcp is the VIP of service "
            "\"b\"; its replies could not be told from client traffic");
}

// ---------------------------------------------------------------------------------------------
// validateConfig on configurations built in memory (control-plane edits: no line numbers)

Config smallConfig() {
  Config c = parseConfig(defaultConfigText(), "<default>");
  for (ServiceConfig& s : c.services) {
    s.line = 0;
    for (BackendConfig& b : s.backends) {
      b.line = 0;
    }
  }
  return c;
}

TEST(ConfigTest, ValidateAcceptsTheDefault) {
  EXPECT_EQ(validateError(smallConfig()), "<no error>");
}

TEST(ConfigTest, ValidateWithoutLines) {
  Config c = smallConfig();
  c.services[1].name = "web";
  EXPECT_EQ(validateError(c), "edit: service name \"web\" is used twice");

  c = smallConfig();
  c.services[2].backends[1].port = 8443;
  c.services[2].backends[1].address = c.services[2].backends[0].address;
  EXPECT_EQ(validateError(c), "edit: service \"web6\": backend [2001:db8:1::11]:8443 appears twice");

  c = smallConfig();
  c.services[0].backends[0].port = 8080;
  EXPECT_EQ(validateError(c),
            "edit: service \"web\": backend 10.0.0.11: DR cannot change the port (backend port "
            "8080, service port 80); DR forwards the frame with the VIP and port unchanged, use "
            "forwarding = \"nat\" to rewrite them");

  c = smallConfig();
  c.services[0].backends[0].address = ip("2001:db8::1");
  EXPECT_EQ(validateError(c), "edit: service \"web\": backend 2001:db8::1 is IPv6 but the VIP is IPv4");

  c = smallConfig();
  c.services[0].backends[2].weight = 70000;
  EXPECT_EQ(validateError(c),
            "edit: service \"web\": backend 10.0.0.13: weight 70000 is out of range 0..65535");

  c = smallConfig();
  c.services[0].backends[2].mac = MacAddress{};
  EXPECT_EQ(validateError(c), "edit: service \"web\": backend 10.0.0.13: mac 00:00:00:00:00:00 "
                              "is all zeros; it must be a unicast MAC");

  c = smallConfig();
  c.services[1].table_size = 1000;
  EXPECT_EQ(validateError(c), "edit: service \"dns\": table_size 1000 is not prime (Maglev needs "
                              "a prime; the next one is 1009)");

  c = smallConfig();
  c.services[1].vip = IpAddress{};
  EXPECT_EQ(validateError(c), "edit: service \"dns\": vip is not set");

  c = smallConfig();
  c.services[1].name = "";
  EXPECT_EQ(validateError(c),
            "edit: service name \"\" is invalid: use 1 to 64 letters, digits, '_', '.' or '-'");

  c = smallConfig();
  c.timeouts.tcp_s = 0;
  EXPECT_EQ(validateError(c), "edit: timeouts.tcp 0 is out of range 1..604800");

  c = smallConfig();
  c.dataplane.gateway_mac = mac("01:00:00:00:00:01");
  EXPECT_EQ(validateError(c), "edit: dataplane.gateway_mac 01:00:00:00:00:01 is a multicast "
                              "address; it must be a unicast MAC");

  c = smallConfig();
  c.services[1].vip = c.services[0].vip;
  c.services[1].port = 80;
  c.services[1].protocol = Protocol::kTcp;
  EXPECT_EQ(validateError(c), "edit: service \"dns\" has the same VIP, port and protocol "
                              "(192.0.2.10:80/tcp) as service \"web\"");

  c = smallConfig();
  ServiceConfig copy = c.services[1];
  copy.name = "dns2";
  copy.vip = ip("192.0.2.54");
  c.services.push_back(copy);
  EXPECT_EQ(validateError(c), "edit: backend 10.0.1.21:5353/udp is used by NAT services \"dns\" "
                              "and \"dns2\"; replies could not be told apart");
}

TEST(ConfigTest, ValidateRejectsTooManyBackends) {
  Config c = smallConfig();
  ServiceConfig& s = c.services[1];
  s.backends.clear();
  for (uint32_t i = 0; i < 65536; ++i) {
    BackendConfig b;
    b.address = IpAddress::v4(0x0a000000u | i);
    b.port = 5353;
    b.mac = mac("02:00:00:00:02:21");
    b.line = static_cast<int>(i) + 10;
    s.backends.push_back(b);
  }
  EXPECT_EQ(validateError(c), "edit:65545: service \"dns\": 65536 backends; a service has at "
                              "most 65535");
  s.backends.pop_back();
  // A service may have 65535, but not beside other services' backends: the ids are shared.
  EXPECT_TRUE(validateError(c).find("all services may have together") != std::string::npos)
      << validateError(c);
  for (ServiceConfig& other : c.services) {
    if (&other != &s) {
      other.backends.clear();
    }
  }
  EXPECT_EQ(validateError(c), "<no error>");
}

}  // namespace
TEST(ConfigDataplaneMode, XdpModeInterfacesAndAttach) {
  const Config c = parseConfig(R"([dataplane]
mode = "xdp"
interfaces = ["eth0", "veth1"]
xdp_attach = "generic"
)",
                               "t.toml");
  EXPECT_EQ(c.dataplane.mode, DataplaneMode::kXdp);
  EXPECT_EQ(c.dataplane.interfaces, (std::vector<std::string>{"eth0", "veth1"}));
  EXPECT_EQ(c.dataplane.xdp_attach, XdpAttach::kGeneric);
  // save writes them back, and what it writes parses to the same.
  const Config again = parseConfig(renderConfig(c), "saved");
  EXPECT_EQ(again.dataplane.mode, DataplaneMode::kXdp);
  EXPECT_EQ(again.dataplane.interfaces, c.dataplane.interfaces);
  EXPECT_EQ(again.dataplane.xdp_attach, XdpAttach::kGeneric);
  EXPECT_EQ(parseConfig("", "t.toml").dataplane.mode, DataplaneMode::kDpdk);
}

TEST(ConfigDataplaneMode, BadValuesNameTheLine) {
  EXPECT_EQ(errorOf("[dataplane]\nmode = \"netmap\"\n"),
            "t.toml:2: mode \"netmap\" is not dpdk or xdp");
  EXPECT_EQ(errorOf("[dataplane]\nxdp_attach = \"offload\"\n"),
            "t.toml:2: xdp_attach \"offload\" is not auto, native or generic");
  EXPECT_EQ(errorOf("[dataplane]\ninterfaces = \"eth0\"\n"),
            "t.toml:2: interfaces must be an array of interface names");
  EXPECT_EQ(errorOf("[dataplane]\ninterfaces = [\"a-very-long-interface-name\"]\n"),
            "t.toml:2: interfaces must hold interface names (1..15 characters)");
}

}  // namespace sluice
