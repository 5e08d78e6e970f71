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
// shapes mostly cost no page faults, while the cache never lifts the process's tensor memory more
// than `max_idle_over_peak_bytes` above the most its tensors have held at once. Blocks of 2 MiB and
// more use transparent huge pages where the kernel allows it (madvise), which makes the faults of a
// block mapped anew ~3x cheaper. Smaller tensors go to libtorch's default allocator (glibc)
// unchanged.
//
// c10 keeps one CPU allocator per process and calls its deleter without context, so the installed
// allocator is process-wide by nature; Install it once from main() before creating tensors.
#ifndef DMOE_TENSOR_CPU_ALLOCATOR_H_
#define DMOE_TENSOR_CPU_ALLOCATOR_H_

#include <c10/core/Allocator.h>

#include <cstddef>
#include <vector>

#include "tensor/cpu_allocator_options.h"

namespace dmoe::tensor {

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
  struct Block {
    void* ptr;
    size_t bytes;
  };
  explicit CachingCpuAllocator(CpuAllocatorOptions options);
  static void Delete(void* ptr);
  void* AllocateBlock(size_t bytes) const;
  // False when `ptr` is not one of this allocator's blocks.
  bool FreeBlock(void* ptr) const;
  // Picks idle blocks to unmap until both bounds of the options hold. Called with the lock held.
  void EvictLocked(std::vector<Block>* unmap) const;

  const CpuAllocatorOptions options_;
  State* const state_;  // Mutable through const allocate(), as c10's interface wants.
};

}  // namespace dmoe::tensor

#endif  // DMOE_TENSOR_CPU_ALLOCATOR_H_
