// The maps a loaded BPF program uses, opened from its fd (tests that read or clear a map the
// XdpDataplane does not expose: xdp_diff_test's counters, xdp_diff_fuzz's flow tables).
#pragma once

#include <bpf/bpf.h>
#include <unistd.h>

#include <cstdint>
#include <set>
#include <vector>

namespace testsupport {

struct ProgramMap {
  int fd = -1;  // the caller's to close
  bpf_map_info info{};
};

/** Map id, opened and described, appended to out (nothing when the kernel refuses). */
inline void openMapById(uint32_t id, std::vector<ProgramMap>& out) {
  ProgramMap m;
  m.fd = bpf_map_get_fd_by_id(id);
  uint32_t mlen = sizeof(m.info);
  if (m.fd >= 0 && bpf_obj_get_info_by_fd(m.fd, &m.info, &mlen) == 0) {
    out.push_back(m);
  } else if (m.fd >= 0) {
    close(m.fd);
  }
}

/** Every map of the program, opened; empty when the kernel does not say (no CAP_BPF). */
inline std::vector<ProgramMap> openProgramMaps(int prog_fd) {
  std::vector<ProgramMap> out;
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) {
    return out;
  }
  // Asked twice: the first answer says how many ids there are to make room for.
  std::vector<uint32_t> ids(info.nr_map_ids);
  info = bpf_prog_info{};
  info.nr_map_ids = static_cast<uint32_t>(ids.size());
  info.map_ids = reinterpret_cast<uint64_t>(ids.data());
  len = sizeof(info);
  if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) {
    return out;
  }
  for (const uint32_t id : ids) {
    openMapById(id, out);
  }
  return out;
}

/**
 * The distinct maps held by a map of maps (an ARRAY_OF_MAPS: the flow tables, one per CPU or one
 * in every slot; the Maglev tables), opened; the caller closes them.
 */
inline std::vector<ProgramMap> openInnerMaps(const ProgramMap& outer) {
  std::vector<ProgramMap> out;
  if (outer.info.type != BPF_MAP_TYPE_ARRAY_OF_MAPS) {
    return out;
  }
  std::set<uint32_t> seen;
  for (uint32_t slot = 0; slot < outer.info.max_entries; ++slot) {
    uint32_t id = 0;  // from userspace, a map of maps' value is the inner map's id
    if (bpf_map_lookup_elem(outer.fd, &slot, &id) != 0 || !seen.insert(id).second) {
      continue;
    }
    openMapById(id, out);
  }
  return out;
}

}  // namespace testsupport
