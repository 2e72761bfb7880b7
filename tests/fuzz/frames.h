// What the packet-path fuzz targets share (pipeline_fuzz, xdp_diff_fuzz, and fuzz_seeds, which
// writes their seeds): how an input becomes a sequence of frames with their clock, and the one
// configuration they run under, with services of every kind and the host's own addresses.
//
// Input format: one byte of flags, then records of [length: 2 bytes, big-endian][clock step:
// 1 byte][frame: length bytes]; the last record may be cut short (it keeps the bytes there are).
// A clock step s advances the clock before its frame by s x 100 ms for s < 200, by (s - 199) x
// 100 s from 200 on, so that an input reaches the TCP FIN (10 s), UDP (300 s) and TCP (900 s)
// timeouts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/net.h"
#include "common/snapshot.h"
#include "control/config.h"
#include "control/snapshot_builder.h"

namespace fuzz {

inline constexpr uint8_t kFlagAcceptAnyMac = 0x01;        // the port takes every destination MAC
inline constexpr uint8_t kFlagPartialChecksums = 0x02;    // pipeline_fuzz: a kernel-fed port
inline constexpr uint64_t kT0 = 1000ull * 1'000'000'000ull;  // the clock of the first frame

struct Frame {
  std::vector<uint8_t> bytes;
  uint64_t now_ns = 0;
};

struct Input {
  uint8_t flags = 0;
  std::vector<Frame> frames;
};

/**
 * @param max_frames frames beyond it are ignored
 * @param max_len a longer frame is cut to it
 */
Input decode(const uint8_t* data, size_t size, size_t max_frames, size_t max_len);

/** One record of the input format. */
void appendFrame(std::vector<uint8_t>& input, uint8_t clock_step, const std::vector<uint8_t>& f);

/** The MAC of the port the frames arrive on. */
extern const sluice::MacAddress kPortMac;

/**
 * The fixture's three services (web DR/TCP/IPv4, dns NAT/UDP/IPv4, web6 NAT/TCP/IPv6), then
 * api NAT/TCP/IPv4, dns6 NAT/UDP/IPv6, web6dr DR/TCP/IPv6, one service whose backends are all
 * drained and one with none; Sluice's addresses 198.51.100.2/24 and 2001:db8:b::2/64 with a
 * gateway in each; Maglev tables of 251 slots (the builder's work per input stays small).
 */
sluice::Config config();

/**
 * config()'s snapshot as the daemon would publish it: both gateways resolved, and backend
 * 10.0.0.12 of web (which reschedules the flows of a down backend) down.
 */
sluice::SnapshotPtr snapshot(sluice::IdRegistry& ids);

}  // namespace fuzz
