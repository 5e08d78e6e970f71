#include "expert_server/process_memory.h"

#include <malloc.h>

#include <algorithm>
#include <climits>

namespace dmoe::expert_server {

void ConfigureProcessMemory(const ProcessMemoryOptions& options) {
  auto clamp = [](size_t v) { return static_cast<int>(std::min<size_t>(v, INT_MAX)); };
  mallopt(M_MMAP_THRESHOLD, clamp(options.malloc_mmap_threshold));
  mallopt(M_TRIM_THRESHOLD, clamp(options.malloc_trim_threshold));
  tensor::CachingCpuAllocator::Install(options.tensors);
}

}  // namespace dmoe::expert_server
