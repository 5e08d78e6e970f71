// The options and counters of tensor::CachingCpuAllocator (tensor/cpu_allocator.h), torch-free so
// that code which configures the allocator or reports its counters need not include libtorch.
#ifndef DMOE_TENSOR_CPU_ALLOCATOR_OPTIONS_H_
#define DMOE_TENSOR_CPU_ALLOCATOR_OPTIONS_H_

#include <cstddef>
#include <cstdint>

namespace dmoe::tensor {

struct CpuAllocatorOptions {
  // Tensors of at least this size get a mapping of their own.
  size_t min_block_bytes = 256 << 10;
  // Freed blocks are kept for reuse while both bounds hold; past either, the least recently freed
  // are unmapped. At most this many bytes idle:
  size_t max_idle_bytes = 64 << 20;
  // and idle plus live at most this much above the most the tensors have ever held at once. A
  // server's tensor memory peaks in a backward pass (weight gradients, activations); between
  // passes the cache may keep what the next one will reuse, but at the peak itself it adds at
  // most this much.
  size_t max_idle_over_peak_bytes = 4 << 20;
};

struct CpuAllocatorStats {
  int64_t live_bytes = 0;       // blocks held by tensors now
  int64_t peak_live_bytes = 0;  // the most live_bytes has been
  int64_t idle_bytes = 0;       // freed blocks kept for reuse
  int64_t mapped = 0;           // blocks mapped from the kernel so far
  int64_t reused = 0;           // allocations served from the idle blocks
};

}  // namespace dmoe::tensor

#endif  // DMOE_TENSOR_CPU_ALLOCATOR_OPTIONS_H_
