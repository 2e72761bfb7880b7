// The packet parser (src/dataplane/packet.h, parsePacket and parseIcmpError) on arbitrary bytes,
// held against its XDP twin (bpf/lib/parse.h, built for the host: bpf_parse_twin.c). Both must
// read only the bytes given (ASan sees the first segment in a buffer of exactly its size), return
// the same verdict and, on success, the same key and offsets, and what they return must satisfy
// what ParsedPacket promises the pipeline.
//
// Input: two bytes (big-endian) of frame beyond the first segment, as an mbuf chain has (the
// parser checks IP lengths against them but never reads them), then the first segment.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/lb_abi.h"
#include "dataplane/icmp_error.h"
#include "dataplane/packet.h"
#include "tests/fuzz/bpf_parse_twin.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using sluice::IcmpError;
using sluice::ParsedPacket;

bool sameKey(const lb_flow_key& a, const lb_flow_key& b) {
  return std::memcmp(a.src, b.src, sizeof(a.src)) == 0 &&
         std::memcmp(a.dst, b.dst, sizeof(a.dst)) == 0 && a.sport == b.sport &&
         a.dport == b.dport && a.proto == b.proto && a.family == b.family;
}

void checkParsed(const uint8_t* frame, uint32_t data_len, uint32_t pkt_len,
                 const ParsedPacket& p) {
  // Ethernet and zero to two tags.
  FUZZ_CHECK(p.l3_offset == 14 || p.l3_offset == 18 || p.l3_offset == 22);
  FUZZ_CHECK(p.key.family == LB_FAMILY_IPV4 || p.key.family == LB_FAMILY_IPV6);
  // The offsets the pipeline writes at lie in order inside what the IP header claims, and that
  // inside the frame.
  FUZZ_CHECK(p.l3_offset < p.l4_offset);
  FUZZ_CHECK(p.l4_offset <= p.l3_end);
  FUZZ_CHECK(p.l3_end <= pkt_len);
  if (p.key.family == LB_FAMILY_IPV4) {
    const uint32_t ihl = (frame[p.l3_offset] & 0x0f) * 4u;
    FUZZ_CHECK(p.l4_offset == p.l3_offset + ihl);
    FUZZ_CHECK(p.key.src[1] == 0 && p.key.src[2] == 0 && p.key.src[3] == 0);
    FUZZ_CHECK(p.key.dst[1] == 0 && p.key.dst[2] == 0 && p.key.dst[3] == 0);
  }
  if (p.fragment) {
    FUZZ_CHECK(p.key.sport == 0 && p.key.dport == 0 && p.tcp_flags == 0);
    return;
  }
  // A TCP/UDP header the pipeline rewrites is in the first segment and in the IP packet.
  if (p.key.proto == LB_PROTO_TCP) {
    FUZZ_CHECK(p.l4_offset + 20u <= data_len && p.l4_offset + 20u <= p.l3_end);
    FUZZ_CHECK(p.tcp_flags == frame[p.l4_offset + 13]);
  } else if (p.key.proto == LB_PROTO_UDP) {
    FUZZ_CHECK(p.l4_offset + 8u <= data_len && p.l4_offset + 8u <= p.l3_end);
  } else {
    FUZZ_CHECK(p.key.sport == 0 && p.key.dport == 0);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A first segment of at least one byte: an mbuf that holds a frame has one, and an empty
  // vector's data() is a null pointer, not a frame.
  if (size < 3 || size > 0xffff) {
    return 0;
  }
  const uint32_t extra = static_cast<uint32_t>(data[0]) << 8 | data[1];
  // The first segment alone on the heap, so that a read one byte past it is an ASan report.
  const std::vector<uint8_t> segment(data + 2, data + size);
  const uint8_t* frame = segment.data();
  const auto data_len = static_cast<uint32_t>(segment.size());
  const uint32_t pkt_len = data_len + extra;

  ParsedPacket p;
  const int rc = sluice::parsePacket(frame, data_len, pkt_len, p);
  twin_result t;
  twin_parse(frame, data_len, pkt_len, &t);
  FUZZ_CHECK(rc == t.rc);
  FUZZ_CHECK(rc == sluice::kParseOk || (rc >= 0 && rc < LB_DROP__COUNT));
  if (rc != sluice::kParseOk) {
    return 0;
  }
  FUZZ_CHECK(sameKey(p.key, t.key));
  FUZZ_CHECK(p.l3_offset == t.l3_off && p.l4_offset == t.l4_off && p.l3_end == t.l3_end);
  FUZZ_CHECK(p.tcp_flags == t.tcp_flags && p.fragment == (t.fragment != 0));
  checkParsed(frame, data_len, pkt_len, p);

  const bool icmp = sluice::isIcmpError(frame, p, data_len);
  FUZZ_CHECK(icmp == (t.is_icmp_error != 0));
  if (!icmp) {
    return 0;
  }
  IcmpError e;
  const int erc = sluice::parseIcmpError(frame, p, data_len, e);
  FUZZ_CHECK(erc == t.icmp_rc);
  FUZZ_CHECK(erc == sluice::kParseOk || erc == sluice::kNotAFlowError ||
             erc == LB_DROP_TRUNCATED || erc == LB_DROP_BAD_IP_HEADER);
  FUZZ_CHECK(sluice::kNotAFlowError == t.not_a_flow_error);
  if (erc != sluice::kParseOk) {
    return 0;
  }
  FUZZ_CHECK(sameKey(e.key, t.icmp_key));
  FUZZ_CHECK(e.inner_l3 == t.inner_l3 && e.inner_l4 == t.inner_l4);
  // The quoted ports the rewrite reads and writes are inside the frame and the outer packet.
  FUZZ_CHECK(e.inner_l3 == p.l4_offset + LB_ICMP_HLEN && e.inner_l3 < e.inner_l4);
  FUZZ_CHECK(e.inner_l4 + 8u <= data_len && e.inner_l4 + 8u <= p.l3_end);
  FUZZ_CHECK(e.key.proto == LB_PROTO_TCP || e.key.proto == LB_PROTO_UDP);
  return 0;
}
