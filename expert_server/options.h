// The option structs of the expert server's parts, torch-free, so that a program or test that only
// configures and starts a server (expert_server/server.h) compiles without libtorch. Each struct is
// plain data: copy it, fill it, hand it to the part it configures, which validates it there.
#ifndef DMOE_EXPERT_SERVER_OPTIONS_H_
#define DMOE_EXPERT_SERVER_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "core/clock.h"
#include "tensor/cpu_allocator_options.h"

namespace dmoe::expert_server {

// What a factory needs to build one expert module (expert_server/expert.h).
struct ExpertConfig {
  // A type of the ExpertRegistry: "ffn", "transformer", or one a C++ user registered. A string,
  // not an enum, because the registry is open.
  std::string type = "ffn";
  int64_t hidden_dim = 1024;
  // Attention heads for the transformer type; 0 picks max(1, hidden_dim / 64).
  int64_t num_heads = 0;
  uint64_t seed = 0;
  // Longest sequence (T of [B, T, d]) a sequence expert takes: attention costs [B, H, T, T], so a
  // longer one is refused kInvalidArgument before any compute. Ignored by [B, d] experts.
  int64_t max_seq_len = 512;
};

// The update rule of an expert's optimizer (expert_server/optimizer.h).
enum class OptimizerKind {
  kAdam,  // Adam with decoupled weight decay
  kSgd,   // SGD with momentum beta1 (0 = plain SGD)
};

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::kAdam;
  double lr = 1e-3;
  double beta1 = 0.9;  // Adam; for SGD, the momentum (0 = plain SGD)
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled: p -= lr * weight_decay * p
  // The gradient's global L2 norm is scaled down to this before the update; 0 = no clipping. On by
  // default (dmoe-server --clip-grad-norm): a peer's gradient of 1e38 then moves the weights no
  // more than an honest one. Adam is nearly scale-free, so an honest run hardly notices.
  double clip_grad_norm = 1.0;
  // The learning-rate schedule: lr ramps linearly from lr/warmup_steps to lr over warmup_steps,
  // then decays along a cosine from lr to 0 over decay_steps (0 = constant after warmup).
  int64_t warmup_steps = 0;
  int64_t decay_steps = 0;
};

// The compute runtime (expert_server/runtime.h).
struct RuntimeOptions {
  // Samples merged into one batch at most.
  int64_t max_batch_size = 256;
  // How long a partial batch waits for more requests before it runs.
  int64_t batch_timeout_us = 1000;
  // Samples waiting per expert, counted as tokens (B * T) for sequence experts; past it Submit
  // answers kResourceExhausted. (A first request is queued whatever its size.)
  int64_t max_queue = 4096;
  // A backward whose step_seen is more than this many steps behind is refused; < 0 disables.
  int64_t max_staleness = -1;
  // Runtime threads (intra-op parallelism is set separately, process-wide).
  int threads = 1;
  // Called on a runtime thread after each batch with its number of samples (e.g. for metrics).
  std::function<void(int64_t samples)> on_batch;
  // What the batch timeout is measured with. Required: the process's clock, or a FakeClock in
  // tests (the runtime still waits in real time, re-checking when tasks arrive). Must outlive the
  // runtime.
  const Clock* clock = nullptr;
};

// Process-wide memory set-up of a program that runs the runtime (expert_server/process_memory.h).
struct ProcessMemoryOptions {
  tensor::CpuAllocatorOptions tensors;
  // glibc: allocations of at least this size get their own mapping (M_MMAP_THRESHOLD).
  size_t malloc_mmap_threshold = 1 << 20;
  // glibc: free memory an arena keeps at its top (M_TRIM_THRESHOLD).
  size_t malloc_trim_threshold = 1 << 20;
};

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_OPTIONS_H_
