// What the fuzz targets share: the check that stops a run on a finding.
#pragma once

// Not assert(): a finding must stop the run whatever the build type (NDEBUG or not), and a trap
// is what libFuzzer reports as a crash with the input saved.
#define FUZZ_CHECK(cond) \
  do {                   \
    if (!(cond)) {       \
      __builtin_trap();  \
    }                    \
  } while (0)
