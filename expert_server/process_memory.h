// Process-wide set-up for programs that run the expert runtime: dmoe-server, and bench/server for
// its in-process runtime (so that both sides of its comparison allocate alike). Torch-free to
// include: the programs that call it need not compile against libtorch.
//
// Memory. Why, measured with bench/server (ffn d=1024, Adam, batches of 16 and 256, 1-16 clients
// over HTTP and WebSocket): with glibc's defaults the server's peak RSS was 520-670 MiB for 96 MiB
// of weights and optimizer state. libtorch and its ~290 shared libraries take ~160 MiB of it
// whatever we do (110-120 MiB of mapped code and data, ~41 MiB of heap for its operator registry);
// the rest was glibc keeping memory nobody used any more:
//   - Tensors: each thread allocates from its own arena, a tensor freed by another thread returns
//     to the arena it came from, and each arena keeps its own high-water mark. Fixed by
//     tensor::CachingCpuAllocator: one bounded cache of tensor blocks for all threads.
//   - Request bodies, WebSocket messages and encoded answers (1-2 MiB at batch 256): glibc raises
//     its mmap threshold to the size of every mmapped block it frees (up to 32 MiB), after which
//     such buffers live in per-thread arenas too. A fixed threshold keeps them in mappings of
//     their own that go back to the kernel when freed. The price is first-touch page faults on
//     them, ~0.4 ms per MiB here: under 1 ms for a forward of 256 samples (1 MiB in, 1 MiB out)
//     against ~20 ms of compute, and bench/server's samples/s did not drop. (A 64 MiB body, the
//     default limit, now arrives at ~550 MB/s over loopback instead of ~1 GB/s.) Fixing the mmap
//     threshold also fixes the trim threshold, so that is set too: how much free memory an arena
//     keeps at its top.
// The server also bounds the requests it holds (ExpertServerOptions::max_held_request_bytes).
#ifndef DMOE_EXPERT_SERVER_PROCESS_MEMORY_H_
#define DMOE_EXPERT_SERVER_PROCESS_MEMORY_H_

#include <optional>

#include "expert_server/options.h"
#include "tensor/cpu_allocator_options.h"

namespace dmoe::expert_server {

// Applies `options` to the whole process: glibc's thresholds, and CachingCpuAllocator as
// libtorch's CPU allocator. Call once, first thing in main(), before threads or tensors exist.
void ConfigureProcessMemory(const ProcessMemoryOptions& options = {});

// The counters of the tensor allocator ConfigureProcessMemory installed; nullopt when the process
// did not call it. Any thread.
std::optional<tensor::CpuAllocatorStats> TensorMemoryStats();

// libtorch's intra-op threads for the whole process (at::set_num_threads): how many cores one
// batch's compute may use. Call once from main(), before the server starts. (Defined in
// runtime.cc, which compiles against ATen anyway.)
void SetComputeThreads(int threads);

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_PROCESS_MEMORY_H_
