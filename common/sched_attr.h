// struct sched_attr (sched_getattr/sched_setattr). glibc 2.36 has no wrapper and
// <linux/sched/types.h> clashes with glibc's struct sched_param, so the layout is spelled out.
#pragma once

#include <cstdint>

namespace godwit {

struct SchedAttr {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime;
  uint64_t sched_deadline;
  uint64_t sched_period;
  uint32_t sched_util_min;
  uint32_t sched_util_max;
};
static_assert(sizeof(SchedAttr) == 56);

}  // namespace godwit
