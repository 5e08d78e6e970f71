// The trainer behind dmoe-train: trains a model spec's local layers here and its experts remotely
// (through RemoteMixtureOfExperts) on Fashion-MNIST, shows progress, evaluates, publishes the local
// parameters to the router, and checkpoints its own state so a restarted trainer resumes.
// Several trainers may run at once on the same experts.
#ifndef DMOE_GATING_TRAINER_H_
#define DMOE_GATING_TRAINER_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/status.h"

namespace dmoe::gating {

// The default keeps the accuracy of a synchronous trainer (within ~0.5-1.7 points after 1500
// Fashion-MNIST steps) while overlapping four steps' round trips; behind 100 ms links a trainer
// needs ~16 in flight to keep 0.8x of its loopback speed, at a cost in accuracy
// (docs/benchmarks.md, wan). At most kMaxInFlight.
inline constexpr int kDefaultInFlight = 4;
inline constexpr int kMaxInFlight = 256;
// With more than this many steps in flight, consecutive steps form one optimizer step (their mean
// gradient), so that at most this many optimizer updates are in flight: GroupSize(n) =
// ceil(n / kUpdatesInFlight) steps per update. Staleness costs this model more accuracy than a
// larger batch does (docs/architecture.md).
inline constexpr int kUpdatesInFlight = 4;
inline int64_t GroupSize(int in_flight) {
  return (std::max(in_flight, 1) + kUpdatesInFlight - 1) / kUpdatesInFlight;
}

struct TrainerOptions {
  std::string spec_path;
  std::vector<std::string> dht_bootstrap;
  std::string dht_network = "dmoe";
  std::string router_url;     // empty = do not publish
  std::string identity_path;  // signs expert backward and model publication; empty = unsigned
  // --server-keys: when set, only experts announced by the keys in this file are used.
  std::string server_keys_path;
  std::string db_dir;  // trainer checkpoint; empty = none
  std::string data = "fashion-mnist";
  std::string data_dir;  // default: Debian's package directory
  int64_t steps = 300;
  int64_t batch_size = 64;
  double lr = 1e-3;
  // "constant", or "cosine": lr * (1 + cos(pi * step / steps)) / 2, from lr at step 0 to 0 at
  // `steps` (the local layers' Adam only; experts follow their servers' own settings).
  std::string lr_schedule = "constant";
  uint64_t seed = 0;
  int64_t eval_every = 100;
  int64_t eval_samples = 10000;  // of the test split
  int64_t publish_every = 50;
  int64_t log_every = 10;
  std::string wire_dtype = "F32";
  double balance_loss_weight = 0.01;
  // A sample none of whose experts answered gets zeros from its moe layer (counted in the progress
  // line) instead of failing the whole step; with residual_moe that is a plain skip connection.
  bool allow_zero_outputs = true;
  // Steps in flight at once (--in-flight). Each runs on its own copy of the local parameters, read
  // when the step starts, while the others' requests and answers travel; its gradient is applied
  // to the shared parameters (one Adam) when its backward returns. So a local gradient is at most
  // in_flight - 1 updates stale, and an expert sees at most in_flight - 1 of this trainer's
  // updates between a forward and its backward (servers refuse more with --max-staleness). 1 is
  // the synchronous trainer: each step waits for its forward and backward round trips.
  int in_flight = kDefaultInFlight;
  // With in_flight > 1, a step computes its gradient at the parameters predicted for the moment
  // it is applied: the shared ones minus, for each update still ahead of it, Adam's current step
  // (lr * m / (sqrt(v) + eps)). At 4 in flight this recovers most of the accuracy staleness costs
  // (docs/benchmarks.md, wan).
  bool weight_prediction = true;
};

struct TrainerResult {
  int64_t steps_done = 0;
  double final_test_accuracy = -1;
  int64_t published_version = 0;
  // The most updates applied to the local parameters between the read and the apply of one step.
  int64_t max_staleness = 0;
};

// A Fashion-MNIST split as tensors, the way the trainer feeds it (PROTOCOL section 5).
struct TensorSplit {
  at::Tensor x;  // F32 [N, 784], byte / 255, row-major
  at::Tensor y;  // I64 [N], 0..9
};
// `dir` empty = Debian's package directory.
Result<TensorSplit> LoadFashionMnistTensors(bool train, const std::string& dir = "");

// The learning rate of step `step` (0-based) of `steps` under `schedule` (see TrainerOptions).
double ScheduledLr(double lr, const std::string& schedule, int64_t step, int64_t steps);

// The sample order of one epoch: a permutation seeded by (seed, epoch), so a resumed trainer
// continues exactly where it stopped and a baseline can train on the same order.
std::vector<int64_t> EpochOrder(uint64_t seed, int64_t epoch, int64_t n);

// Runs until `steps` are done or `*stop` becomes true (then checkpoints and returns). Progress
// lines go to `out`.
Result<TrainerResult> RunTrainer(const TrainerOptions& options, std::ostream& out,
                                 const std::atomic<bool>* stop);

}  // namespace dmoe::gating

#endif  // DMOE_GATING_TRAINER_H_
