#include "expert_server/process_memory.h"

#include <malloc.h>

#include <algorithm>
#include <climits>

#include "tensor/cpu_allocator.h"

namespace dmoe::expert_server {

void ConfigureProcessMemory(const ProcessMemoryOptions& options) {
  auto clamp = [](size_t v) { return static_cast<int>(std::min<size_t>(v, INT_MAX)); };
  mallopt(M_MMAP_THRESHOLD, clamp(options.malloc_mmap_threshold));
  mallopt(M_TRIM_THRESHOLD, clamp(options.malloc_trim_threshold));
  tensor::CachingCpuAllocator::Install(options.tensors);
}

std::optional<tensor::CpuAllocatorStats> TensorMemoryStats() {
  const tensor::CachingCpuAllocator* allocator = tensor::CachingCpuAllocator::Installed();
  if (allocator == nullptr) return std::nullopt;
  return allocator->stats();
}

}  // namespace dmoe::expert_server
