// CachingCpuAllocator: the CPU memory of torch tensors, for processes that run the same tensor
// shapes over and over (an expert server's batches).
//
// Why: libtorch's default CPU allocator is glibc malloc, and glibc serves a large tensor either
// with a fresh mmap (every new tensor then costs a page fault per 4 KiB page: measured here, an ffn
// d=1024 forward+backward at batch 16 ran ~20% slower with tensors >= 1 MiB mmapped) or from a
// per-thread arena (a tensor made on a network thread and freed on the compute thread goes back to
// the network thread's arena, each arena keeps its own high-water mark, and the mix of sizes
// fragments them: under bench/server, dmoe-server's glibc heaps grew to ~390 MiB while the tensors
// it held at once never passed 167 MiB, 96 of them weights and Adam state). This allocator gives
// every tensor of at least `min_block_bytes` its own mapping (in size classes at most 12.5% apart)
// and keeps freed mappings in one cache shared by all threads, reused by size class, so repeated
// shapes cost no page faults and the process holds at most `max_idle_bytes` beyond what its tensors
// use. Smaller tensors go to libtorch's default allocator (glibc) unchanged.
//
// c10 keeps one CPU allocator per process and calls its deleter without context, so the installed
// allocator is process-wide by nature; Install it once from main() before creating tensors.
#ifndef DMOE_TENSOR_CPU_ALLOCATOR_H_
#define DMOE_TENSOR_CPU_ALLOCATOR_H_

#include <c10/core/Allocator.h>

#include <cstddef>
#include <cstdint>

namespace dmoe::tensor {

struct CpuAllocatorOptions {
  // Tensors of at least this size get a mapping of their own.
  size_t min_block_bytes = 256 << 10;
  // Freed blocks kept for reuse at most; past it the least recently freed are unmapped.
  size_t max_idle_bytes = 32 << 20;
};

struct CpuAllocatorStats {
  int64_t live_bytes = 0;       // blocks held by tensors now
  int64_t peak_live_bytes = 0;  // the most live_bytes has been
  int64_t idle_bytes = 0;       // freed blocks kept for reuse
  int64_t mapped = 0;           // blocks mapped from the kernel so far
  int64_t reused = 0;           // allocations served from the idle blocks
};

class CachingCpuAllocator final : public c10::Allocator {
 public:
  // Makes a CachingCpuAllocator libtorch's CPU allocator for the rest of the process and returns
  // it; it is never destroyed (tensors may be freed during static destruction). Tensors that exist
  // already keep their own deleters. A later call returns the first allocator, options unchanged.
  // Safe from any thread.
  static CachingCpuAllocator* Install(CpuAllocatorOptions options);
  // The installed allocator, or nullptr.
  static CachingCpuAllocator* Installed();

  CachingCpuAllocator(const CachingCpuAllocator&) = delete;
  CachingCpuAllocator& operator=(const CachingCpuAllocator&) = delete;

  c10::DataPtr allocate(size_t n) const override;
  c10::DeleterFnPtr raw_deleter() const override;

  // Unmaps every idle block. Safe from any thread.
  void ReleaseIdle();
  CpuAllocatorStats stats() const;
  const CpuAllocatorOptions& options() const { return options_; }

 private:
  struct State;
  explicit CachingCpuAllocator(CpuAllocatorOptions options);
  static void Delete(void* ptr);
  void* AllocateBlock(size_t bytes) const;
  // False when `ptr` is not one of this allocator's blocks.
  bool FreeBlock(void* ptr) const;

  const CpuAllocatorOptions options_;
  State* const state_;  // Mutable through const allocate(), as c10's interface wants.
};

}  // namespace dmoe::tensor

#endif  // DMOE_TENSOR_CPU_ALLOCATOR_H_
