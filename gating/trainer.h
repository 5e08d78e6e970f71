// The trainer behind dmoe-train: trains a model spec's local layers here and its experts remotely
// (through RemoteMixtureOfExperts), shows progress, evaluates, publishes the local parameters to
// the router, and checkpoints its own state so a restarted trainer resumes. Several trainers may
// run at once on the same experts.
//
// Two kinds of run, chosen by the data (TrainerOptions::data) and matching the spec's input:
// - Fashion-MNIST with a feature model: batches of images, cross-entropy over the 10 classes,
//   evaluated as test accuracy.
// - Text (--data kjv or text:FILE) with a token model: batches of seq_len-token windows of the
//   training split (data/text_corpus.h, one token per byte), the mean cross-entropy of every
//   next-token prediction, evaluated as bits per byte (bpb) on the held-out split. The moe layers
//   see every token as one sample: batching, bans, k_min and timeouts act on tokens.
//
// A run has two halves. PrepareTrainer checks the options and reads the spec and the data, so a
// bad flag or file fails fast, before the process joins the swarm. dmoe-train's main then wires
// what the whole process shares (clock, DHT node, swarm, identity: TrainerWiring) and RunTrainer
// trains with it; the trainer creates none of these itself.
#ifndef DMOE_GATING_TRAINER_H_
#define DMOE_GATING_TRAINER_H_

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "core/status.h"
#include "data/data_source.h"
#include "data/text_corpus.h"
#include "gating/model.h"
#include "model/model_spec.h"
#include "tensor/safetensors.h"

namespace dmoe::gating {

class Swarm;

// The learning rate of the local layers over a run (the experts follow their servers' settings).
enum class LrSchedule {
  kConstant,  // lr at every step
  kCosine,    // lr * (1 + cos(pi * step / steps)) / 2: from lr at step 0 to 0 at `steps`
};

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
  std::string router_url;  // empty = do not publish
  std::string db_dir;      // trainer checkpoint; empty = none
  data::DataSpec data;     // --data: fashion-mnist (the default), kjv or text:FILE
  std::string data_dir;    // Fashion-MNIST's IDX files; default: Debian's package directory
  // Text: tokens per training window (the model reads seq_len and predicts the next seq_len);
  // 1..the spec's max_len.
  int64_t seq_len = 128;
  int64_t steps = 300;
  int64_t batch_size = 64;
  double lr = 1e-3;
  LrSchedule lr_schedule = LrSchedule::kConstant;  // of the local layers' Adam
  uint64_t seed = 0;
  int64_t eval_every = 100;
  int64_t eval_samples = 10000;  // Fashion-MNIST: test images per evaluation
  int64_t eval_bytes = 0;        // text: held-out bytes scored per evaluation (0 = all of them)
  // Stop (as on SIGINT: steps in flight finish, then evaluate, publish, checkpoint) once this much
  // time has passed since training started; 0 = no limit. For runs of equal wall time.
  double max_seconds = 0;
  int64_t publish_every = 50;
  int64_t log_every = 10;
  // The dtype of tensors sent to the experts and back: F32, F16 or BF16.
  safetensors::DType wire_dtype = safetensors::DType::kF32;
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
  double final_test_accuracy = -1;  // Fashion-MNIST runs
  double final_bpb = -1;            // text runs: held-out bits per byte
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

// The learning rate of step `step` (0-based) of `steps` under `schedule`. steps <= 0: `lr`.
double ScheduledLr(double lr, LrSchedule schedule, int64_t step, int64_t steps);

// The sample order of one epoch: a permutation seeded by (seed, epoch), so a resumed trainer
// continues exactly where it stopped and a baseline can train on the same order.
std::vector<int64_t> EpochOrder(uint64_t seed, int64_t epoch, int64_t n);

// What a run reads before it joins the swarm.
struct TrainerInputs {
  model::ModelSpec spec;
  std::string spec_json;  // the spec file as read: publications carry it
  TensorSplit train;      // Fashion-MNIST runs
  TensorSplit test;
  std::optional<data::TextCorpus> text;  // text runs (then train and test are empty)
};

// Checks `options` (kInvalidArgument naming the flag), reads and parses the spec (kNotFound when
// unreadable, kInvalidArgument when malformed), loads the data (both Fashion-MNIST splits, or the
// text cut into windows of seq_len; kNotFound naming the package to install or the file), and
// checks that spec and data fit each other: a feature model of input_dim 784 for Fashion-MNIST, a
// token model of the byte vocabulary (256) with max_len >= seq_len for text. Blocks on file reads
// (and, for kjv, on the `bible` program, whose timeout `clock` measures).
Result<TrainerInputs> PrepareTrainer(const TrainerOptions& options, const Clock& clock);

// Held-out bits per byte of a token model on `corpus` (TextCorpus::EvalWindows, in batches),
// forward only, over at least `limit_bytes` held-out bytes (the windows in order until they score
// that many; 0 = all). Windows the swarm cannot answer (NotEnoughExpertsError) count as a uniform
// guess, 8 bits per byte, so a failing swarm shows as a worse score rather than a crash. Leaves the
// model in training mode.
double EvaluateBitsPerByte(DmoeModel& model, const data::TextCorpus& corpus, int64_t limit_bytes);

// What the process wires once and the trainer uses; all must outlive RunTrainer.
struct TrainerWiring {
  // Publication versions, request timestamps and the progress lines' rates. Not null.
  const Clock* clock = nullptr;
  // The experts, through the process's DHT node; shared by every layer and worker. Not null.
  std::shared_ptr<Swarm> swarm;
  // Signs model publications (the swarm's caller signs expert backward); none = unsigned.
  std::optional<Identity> identity;
};

// Trains `inputs` per `options` until `steps` are done or `*stop` becomes true (then finishes the
// steps in flight, checkpoints and returns). Progress lines go to `out`. Blocks the calling thread;
// runs options.in_flight worker threads of its own and joins them before it returns.
//
// Errors: a Status for what the run cannot do (checkpoint store, a corrupt or poisoned
// checkpoint). A step whose experts do not answer (NotEnoughExpertsError) is skipped and counted,
// never an error. Any other exception from torch (a bug) stops every worker and propagates from
// here; dmoe-train turns it into a Status at its edge.
Result<TrainerResult> RunTrainer(const TrainerOptions& options, const TrainerInputs& inputs,
                                 const TrainerWiring& wiring, std::ostream& out,
                                 const std::atomic<bool>* stop);

}  // namespace dmoe::gating

#endif  // DMOE_GATING_TRAINER_H_
