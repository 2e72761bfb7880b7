// The layout checks of lb_abi.h: the BPF program and the C++ control plane must agree byte for
// byte on every map key and value.
#include "common/lb_abi.h"

static_assert(sizeof(lb_flow_key) == 40, "lb_flow_key");
static_assert(sizeof(lb_endpoint_key) == 20, "lb_endpoint_key");
static_assert(sizeof(lb_service) == 32, "lb_service");
static_assert(sizeof(lb_backend) == 40, "lb_backend");
static_assert(sizeof(lb_nat_reply) == 8, "lb_nat_reply");
static_assert(sizeof(lb_flow_entry) == 64, "lb_flow_entry: one cache line");
static_assert(sizeof(lb_flow_sigs) == 4 * LB_FLOW_BUCKET_ENTRIES, "lb_flow_sigs");
static_assert(sizeof(lb_flow_bucket) == 64 * LB_FLOW_BUCKET_ENTRIES,
              "lb_flow_bucket: one cache line per entry");
static_assert(sizeof(lb_cpu_counters) == 8 * (12 + LB_DROP__COUNT), "lb_cpu_counters");
static_assert(sizeof(lb_backend_counters) == 48, "lb_backend_counters");
