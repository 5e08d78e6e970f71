#include "gating/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/string_utils.h>
#include <spdlog/spdlog.h>
#include <torch/optim/adam.h>
#include <torch/serialize/archive.h>
#include <torch/utils.h>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <fstream>
#include <future>
#include <iomanip>
#include <limits>
#include <list>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>

#include "core/clock.h"
#include "core/identity.h"
#include "core/lr_schedule.h"
#include "core/request_auth.h"
#include "data/fashion_mnist.h"
#include "gating/model.h"
#include "gating/not_enough_experts.h"
#include "net/http_client.h"
#include "storage/kv_store.h"
#include "tensor/torch_tensor.h"

namespace dmoe::gating {
namespace {

constexpr char kStateFamily[] = "node_state";

// Checks what no flag parser can: the flags' ranges, and that they fit each other.
Status CheckOptions(const TrainerOptions& o) {
  if (o.steps < 0 || o.batch_size < 1 || o.eval_every < 0 || o.publish_every < 0 ||
      o.log_every < 1) {
    return InvalidArgumentError(
        "steps, eval/publish intervals must be >= 0; batch size and log interval >= 1");
  }
  if (o.in_flight < 1 || o.in_flight > kMaxInFlight) {
    return InvalidArgumentError("--in-flight must be in [1, " + std::to_string(kMaxInFlight) +
                                "], got " + std::to_string(o.in_flight));
  }
  if (o.wire_dtype != safetensors::DType::kF32 && o.wire_dtype != safetensors::DType::kF16 &&
      o.wire_dtype != safetensors::DType::kBF16) {
    return InvalidArgumentError("--wire-dtype must be F32, F16 or BF16");
  }
  if (o.seq_len < 1 || o.seq_len > data::kMaxSeqLen) {
    return InvalidArgumentError("--seq-len must be in [1, " + std::to_string(data::kMaxSeqLen) +
                                "], got " + std::to_string(o.seq_len));
  }
  if (o.eval_samples < 0 || o.eval_bytes < 0) {
    return InvalidArgumentError("--eval-samples and --eval-bytes must be >= 0");
  }
  if (!(o.max_seconds >= 0) || !std::isfinite(o.max_seconds)) {
    return InvalidArgumentError("--max-seconds must be a finite number >= 0");
  }
  return Status::Ok();
}

// The checks that spec and data fit each other (PrepareTrainer).
Status CheckSpecFitsData(const TrainerOptions& o, const TrainerInputs& in) {
  const model::ModelSpec& spec = in.spec;
  if (in.text) {
    if (spec.input != model::InputKind::kTokens) {
      return InvalidArgumentError(
          "--data " +
          std::string(o.data.source == data::DataSource::kKjv ? "kjv" : "text:" + o.data.path) +
          " trains a token model, but the spec '" + spec.name +
          "' is a feature model (give it \"input\": \"tokens\")");
    }
    if (spec.vocab != data::kByteVocabSize) {
      return InvalidArgumentError("the spec's vocab is " + std::to_string(spec.vocab) +
                                  "; the byte tokenizer has " +
                                  std::to_string(data::kByteVocabSize) + " tokens");
    }
    if (o.seq_len > spec.max_len) {
      return InvalidArgumentError("--seq-len " + std::to_string(o.seq_len) +
                                  " exceeds the spec's max_len " + std::to_string(spec.max_len));
    }
    return Status::Ok();
  }
  if (spec.input != model::InputKind::kFeatures) {
    return InvalidArgumentError("the spec '" + spec.name +
                                "' is a token model: train it on text (--data kjv or text:FILE)");
  }
  if (o.batch_size > in.train.x.size(0)) {
    return InvalidArgumentError("--batch-size " + std::to_string(o.batch_size) + " exceeds the " +
                                std::to_string(in.train.x.size(0)) + " training images");
  }
  if (in.train.x.size(1) != spec.input_dim) {
    return InvalidArgumentError("the spec's input_dim is " + std::to_string(spec.input_dim) +
                                " but Fashion-MNIST images have " +
                                std::to_string(in.train.x.size(1)) + " pixels");
  }
  return Status::Ok();
}

// Windows [n, window_len] of `corpus` starting at `begins`, as int64 token ids.
at::Tensor WindowTensor(const data::TextCorpus& corpus, std::span<const int64_t> begins) {
  Result<std::vector<data::Token>> tokens = corpus.Gather(begins);
  // The begins come from the corpus itself (TrainWindowBegins, EvalWindows): always in range.
  if (!tokens.ok()) throw std::logic_error(tokens.status().ToString());
  return at::from_blob(tokens->data(), {static_cast<int64_t>(begins.size()), corpus.window_len()},
                       at::kLong)
      .clone();
}

Result<std::string> ReadFile(const std::string& path, const std::string& what) {
  std::ifstream file(path);
  if (!file) return NotFoundError("cannot read " + what + " " + path);
  std::stringstream buf;
  buf << file.rdbuf();
  return buf.str();
}

// Accuracy on the first `limit` samples, forward only. Chunks the swarm cannot answer count as
// wrong, so a failing swarm shows as low accuracy rather than a crash.
double Evaluate(DmoeModel& model, const TensorSplit& data, int64_t limit) {
  model->eval();
  torch::NoGradGuard no_grad;
  const int64_t n = std::min<int64_t>(limit, data.x.size(0));
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += 500) {
    const int64_t len = std::min<int64_t>(500, n - start);
    try {
      at::Tensor logits = model->forward(data.x.narrow(0, start, len));
      correct += logits.argmax(1).eq(data.y.narrow(0, start, len)).sum().item<int64_t>();
    } catch (const NotEnoughExpertsError& e) {
      spdlog::warn("evaluation chunk at {} failed: {}", start, e.what());
    }
  }
  model->train();
  return n ? static_cast<double>(correct) / static_cast<double>(n) : 0;
}

// Windows per evaluation forward of a token model.
constexpr int64_t kEvalWindowsPerBatch = 32;

std::vector<tensor::NamedTensor> Named(const std::map<std::string, at::Tensor>& state) {
  std::vector<tensor::NamedTensor> out;
  for (const auto& [name, t] : state) out.push_back({name, t});
  return out;
}

// The peer id of the router at `router_url`, which publications are signed for (dmoe-req-v2):
// the router must prove it by signing a fresh challenge with the key of that peer id.
Result<std::string> RouterPeerId(const std::string& router_url) {
  const std::string challenge = NewChallengeHex();
  // A small answer limit: the health JSON is a few hundred bytes.
  net::HttpClient client(net::HttpClientOptions{.max_response_body_bytes = 16 << 10});
  DMOE_ASSIGN_OR_RETURN(
      net::Response r, client.Fetch("GET", router_url + "/v1/health?challenge=" + challenge, {}, {},
                                    std::chrono::seconds(10)));
  auto j = nlohmann::json::parse(r.body_view(), nullptr, false);
  if (!j.is_object() || !j.contains("public_key") || !j["public_key"].is_string() ||
      !j.contains("proof") || !j["proof"].is_string()) {
    return UnavailableError("the router at " + router_url +
                            " does not prove its identity (GET /v1/health?challenge=)");
  }
  Result<PublicKey> key = PublicKeyFromHex(j["public_key"].get<std::string>());
  if (!key.ok() || !VerifyProof(*key, challenge, j["proof"].get<std::string>())) {
    return UnavailableError("the router at " + router_url +
                            " answered the challenge without a valid proof of its key");
  }
  return PeerIdOf(*key);
}

Status Publish(const TrainerOptions& o, const TrainerWiring& wiring, DmoeModel& model,
               const std::string& spec_json, int64_t version, int64_t step) {
  DMOE_ASSIGN_OR_RETURN(
      std::vector<uint8_t> blob,
      tensor::EncodeFromTorch(Named(model->StateDict()), {{"spec", spec_json},
                                                          {"version", std::to_string(version)},
                                                          {"step", std::to_string(step)}}));
  const std::string path = "/v1/models/" + model->spec().name;
  net::Headers headers{{"Content-Type", "application/x-safetensors"}};
  if (wiring.identity) {
    DMOE_ASSIGN_OR_RETURN(std::string router_peer_id, RouterPeerId(o.router_url));
    RequestSignature sig =
        SignRequest(*wiring.identity, router_peer_id, "PUT", path, blob, wiring.clock->NowUnixMs());
    headers.Set(kKeyHeader, sig.key_hex);
    headers.Set(kTimestampHeader, sig.timestamp_ms);
    headers.Set(kNonceHeader, sig.nonce_hex);
    headers.Set(kSignatureHeader, sig.signature_hex);
  }
  DMOE_ASSIGN_OR_RETURN(net::Response r, net::Fetch("PUT", o.router_url + path, headers,
                                                    std::move(blob), std::chrono::seconds(30)));
  (void)r;
  return Status::Ok();
}

// True when every tensor (or, with `grads`, every defined gradient of them) is free of NaN/Inf.
bool AllFinite(const std::vector<at::Tensor>& tensors, bool grads) {
  for (const at::Tensor& t : tensors) {
    const at::Tensor& v = grads ? t.grad() : t;
    if (v.defined() && !at::isfinite(v).all().item<bool>()) return false;
  }
  return true;
}

bool OptimizerStateFinite(torch::optim::Adam& optimizer) {
  for (const auto& entry : optimizer.state()) {
    const auto& st = static_cast<const torch::optim::AdamParamState&>(*entry.second);
    if (!at::isfinite(st.exp_avg()).all().item<bool>() ||
        !at::isfinite(st.exp_avg_sq()).all().item<bool>()) {
      return false;
    }
  }
  return true;
}

// The most updates any parameter's Adam state has seen (0 before the first step).
int64_t AdamSteps(torch::optim::Adam& optimizer) {
  int64_t steps = 0;
  for (const auto& entry : optimizer.state()) {
    steps = std::max<int64_t>(
        steps, static_cast<const torch::optim::AdamParamState&>(*entry.second).step());
  }
  return steps;
}

struct Checkpoint {
  int64_t step = 0;
  int64_t version = 0;
};

Status SaveCheckpoint(storage::KvStore& kv, const std::string& name, DmoeModel& model,
                      torch::optim::Adam& optimizer, const Checkpoint& c) {
  DMOE_ASSIGN_OR_RETURN(std::vector<uint8_t> params,
                        tensor::EncodeFromTorch(Named(model->StateDict())));
  std::ostringstream optim;
  try {
    torch::serialize::OutputArchive archive;
    optimizer.save(archive);
    archive.save_to(optim);
  } catch (const c10::Error& e) {
    return InternalError(std::string("cannot serialize the optimizer: ") + e.what());
  }
  nlohmann::json meta = {{"step", c.step}, {"version", c.version}};
  const std::string prefix = "trainer/" + name + "/";
  return kv.ReplacePrefix(kStateFamily, prefix,
                          {{prefix + "meta", meta.dump()},
                           {prefix + "params", std::string(params.begin(), params.end())},
                           {prefix + "optim", optim.str()}},
                          /*sync=*/true);
}

Result<Checkpoint> LoadCheckpoint(storage::KvStore& kv, const std::string& name, DmoeModel& model,
                                  torch::optim::Adam& optimizer) {
  const std::string prefix = "trainer/" + name + "/";
  DMOE_ASSIGN_OR_RETURN(std::string meta_text, kv.Get(kStateFamily, prefix + "meta"));
  DMOE_ASSIGN_OR_RETURN(std::string params, kv.Get(kStateFamily, prefix + "params"));
  DMOE_ASSIGN_OR_RETURN(std::string optim, kv.Get(kStateFamily, prefix + "optim"));
  nlohmann::json meta = nlohmann::json::parse(meta_text, nullptr, false);
  if (meta.is_discarded() || !meta.is_object() || !meta.contains("step") ||
      !meta["step"].is_number_integer() ||
      (meta.contains("version") && !meta["version"].is_number_integer())) {
    return InternalError("trainer checkpoint meta is corrupt");
  }
  DMOE_ASSIGN_OR_RETURN(
      tensor::TorchPayload payload,
      tensor::DecodeToTorch({reinterpret_cast<const uint8_t*>(params.data()), params.size()}));
  DMOE_RETURN_IF_ERROR(model->LoadStateDict(payload.tensors));
  if (!AllFinite(model->parameters(), /*grads=*/false)) {
    // Written before trainers refused to keep poison: resuming would train NaN forever.
    return InternalError("the trainer checkpoint of " + name +
                         " holds NaN or Inf weights; move --db away to start over");
  }
  try {
    std::istringstream in(optim);
    torch::serialize::InputArchive archive;
    archive.load_from(in);
    optimizer.load(archive);
  } catch (const c10::Error& e) {
    return InternalError(std::string("cannot restore the optimizer: ") + e.what());
  }
  return Checkpoint{meta["step"].get<int64_t>(), meta.value("version", int64_t{0})};
}

}  // namespace

double EvaluateBitsPerByte(DmoeModel& model, const data::TextCorpus& corpus, int64_t limit_bytes) {
  model->eval();
  torch::NoGradGuard no_grad;
  std::vector<data::EvalWindow> windows = corpus.EvalWindows();
  const int64_t seq_len = corpus.seq_len();
  double nll = 0;
  int64_t bytes = 0;
  size_t next = 0;
  while (next < windows.size() && (limit_bytes <= 0 || bytes < limit_bytes)) {
    const size_t n = std::min<size_t>(kEvalWindowsPerBatch, windows.size() - next);
    std::vector<int64_t> begins;
    at::Tensor mask = at::zeros({static_cast<int64_t>(n), seq_len}, at::kBool);
    int64_t scored = 0;
    for (size_t i = 0; i < n; ++i) {
      const data::EvalWindow& w = windows[next + i];
      begins.push_back(w.begin);
      mask[static_cast<int64_t>(i)].narrow(0, w.first_scored, seq_len - w.first_scored).fill_(true);
      scored += seq_len - w.first_scored;
    }
    at::Tensor tokens = WindowTensor(corpus, begins);
    try {
      at::Tensor logits = model->forward(tokens.narrow(1, 0, seq_len));
      at::Tensor logp = at::log_softmax(logits.to(at::kDouble), -1)
                            .gather(-1, tokens.narrow(1, 1, seq_len).unsqueeze(-1))
                            .squeeze(-1);
      nll -= logp.masked_select(mask).sum().item<double>();
    } catch (const NotEnoughExpertsError& e) {
      spdlog::warn("evaluation windows from byte {} failed: {}", begins.front(), e.what());
      nll += static_cast<double>(scored) * std::log(static_cast<double>(data::kByteVocabSize));
    }
    bytes += scored;
    next += n;
  }
  model->train();
  Result<double> bpb = data::BitsPerByte(nll, bytes);
  return bpb.ok() ? *bpb : std::numeric_limits<double>::quiet_NaN();
}

Result<TensorSplit> LoadFashionMnistTensors(bool train, const std::string& dir) {
  DMOE_ASSIGN_OR_RETURN(data::ImageDataset d, dir.empty() ? data::LoadFashionMnist(train)
                                                          : data::LoadFashionMnist(train, dir));
  const int64_t pixels = d.rows * d.cols;
  TensorSplit s;
  s.x = at::from_blob(d.pixels.data(), {d.count, pixels}, at::kByte).to(at::kFloat).div_(255.0);
  s.y = at::from_blob(d.labels.data(), {d.count}, at::kByte).to(at::kLong);
  return s;
}

std::vector<int64_t> EpochOrder(uint64_t seed, int64_t epoch, int64_t n) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed * 1'000'003 + static_cast<uint64_t>(epoch));
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

double ScheduledLr(double lr, LrSchedule schedule, int64_t step, int64_t steps) {
  return schedule == LrSchedule::kCosine ? CosineDecay(lr, step, steps) : lr;
}

namespace {

// The steps of one training run, several in flight at once (TrainerOptions::in_flight). The
// shared ("master") parameters and their Adam state live in `master_`; each worker thread owns a
// replica of the model whose parameters it copies from the master when it claims a step, runs the
// step's forward and backward on (waiting for the swarm there, without holding any lock), and
// whose gradients it then applies to the master under `mu_`, in step order. Milestones (progress
// line, evaluation, publication, checkpoint) happen as the applied-step count reaches them, in the
// worker that applied that step.
//
// A worker that leaves by an exception (a bug: the swarm's failures are NotEnoughExpertsError and
// handled) aborts the loop: the others stop claiming and waiting, and Run rethrows it.
class TrainingLoop {
 public:
  // `master` is trained with `optimizer`, from `state` (a resumed checkpoint or zero). Everything
  // passed by reference must outlive the loop.
  TrainingLoop(const TrainerOptions& o, const TrainerInputs& inputs, const TrainerWiring& wiring,
               const ModelContext& context, DmoeModel master, torch::optim::Adam& optimizer,
               storage::KvStore* kv, Checkpoint state, std::ostream& out,
               const std::atomic<bool>* stop)
      : o_(o),
        inputs_(inputs),
        wiring_(wiring),
        out_(out),
        stop_(stop),
        master_(std::move(master)),
        optimizer_(optimizer),
        kv_(kv),
        state_(state),
        next_step_(state.step),
        eval_model_(inputs.spec, context) {
    for (int i = 0; i < o.in_flight; ++i) replicas_.emplace_back(inputs.spec, context);
    master_params_ = master_->parameters();
    accumulated_.resize(master_params_.size());
    updates_ = state_.step / group_;
    window_start_us_ = start_us_ = wiring_.clock->NowMonotonicUs();
  }

  Result<TrainerResult> Run() {
    master_->train();
    // std::async hands a worker's exception to get(): every worker has stopped before one is
    // rethrown.
    std::vector<std::future<void>> workers;
    for (auto& replica : replicas_) {
      workers.push_back(std::async(std::launch::async, [this, &replica] { Work(replica); }));
    }
    for (auto& w : workers) w.wait();
    for (auto& w : workers) w.get();

    TrainerResult result;
    result.steps_done = state_.step;
    result.max_staleness = max_staleness_;
    // Also when stopped early (SIGINT/SIGTERM): the score of what is published last.
    if (state_.step >= o_.steps || (state_.step > 0 && last_eval_step_ != state_.step)) {
      const double score = Score(master_);
      (inputs_.text ? result.final_bpb : result.final_test_accuracy) = score;
      PrintEval(state_.step, score);
    }
    PublishLocked(state_.step);
    CheckpointLocked();
    result.published_version = published_version_;
    return result;
  }

 private:
  // A step claimed by a worker: its batch, and the updates applied when it read the master.
  struct Claim {
    int64_t step = 0;
    int64_t read_at = 0;
    at::Tensor x, y;
  };
  // What a step's forward and backward came to.
  struct Outcome {
    enum Kind { kTrained, kNonfinite, kSkipped } kind = kSkipped;
    double loss = 0;
    int64_t correct = 0;  // right predictions (argmax) of the `targets` it made
    int64_t targets = 0;  // images, or tokens predicted
  };

  // Leaves the loop by an exception: a bug, propagated from Run.
  class AbortOnUnwind {
   public:
    explicit AbortOnUnwind(TrainingLoop& loop) : loop_(loop) {}
    ~AbortOnUnwind() {
      if (std::uncaught_exceptions() <= exceptions_) return;
      std::lock_guard<std::mutex> lock(loop_.mu_);
      loop_.aborted_ = true;
      loop_.turn_.notify_all();
    }

   private:
    TrainingLoop& loop_;
    const int exceptions_ = std::uncaught_exceptions();
  };

  // One worker: claims the next step, trains it on `replica`, applies it; until the steps are
  // done or a stop is asked for (steps in flight then finish).
  void Work(DmoeModel& replica) {
    AbortOnUnwind abort_on_unwind(*this);
    // With several steps in flight the parallelism is across workers: each computes on one
    // thread (OpenMP's thread count is per calling thread), so N workers do not start N teams.
    // libtorch sets a thread's count once, lazily, at its first parallel op: do that first.
    if (o_.in_flight > 1) {
      at::internal::lazy_init_num_threads();
      omp_set_num_threads(1);
    }
    replica->train();
    std::vector<at::Tensor> params = replica->parameters();
    while (std::optional<Claim> claim = ClaimStep(params)) {
      const Outcome outcome = Compute(replica, params, *claim);
      if (!ApplyInTurn(params, *claim, outcome)) return;
    }
  }

  // The next step and its batch, with `params` set to the master's (predicted ahead); none when
  // the run is over, stopped or aborted.
  std::optional<Claim> ClaimStep(std::vector<at::Tensor>& params) {
    std::lock_guard<std::mutex> lock(mu_);
    // A stop takes effect at a group boundary, so no optimizer step is left half accumulated.
    if (aborted_ || next_step_ >= o_.steps ||
        ((StopAsked() || TimeIsUp()) && next_step_ % group_ == 0)) {
      return std::nullopt;
    }
    Claim c;
    c.step = next_step_++;
    c.read_at = updates_;
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(master_params_[i]);
    PredictAhead(params, c.step / group_ - updates_);
    if (inputs_.text) {
      // Window k of step s depends on (seed, s, k) only: a resumed trainer draws the same.
      const data::TextCorpus& text = *inputs_.text;
      at::Tensor windows =
          WindowTensor(text, text.TrainWindowBegins(o_.seed, c.step, o_.batch_size));
      c.x = windows.narrow(1, 0, text.seq_len()).contiguous();
      c.y = windows.narrow(1, 1, text.seq_len()).contiguous();
      return c;
    }
    at::Tensor idx = BatchIndex(c.step);
    c.x = inputs_.train.x.index_select(0, idx);
    c.y = inputs_.train.y.index_select(0, idx);
    return c;
  }

  bool StopAsked() const { return stop_ && stop_->load(); }
  bool TimeIsUp() const {
    return o_.max_seconds > 0 &&
           static_cast<double>(wiring_.clock->NowMonotonicUs() - start_us_) >= o_.max_seconds * 1e6;
  }

  // The step's forward and backward on `replica`, without a lock: the swarm's round trips happen
  // here. Its gradient is left in `params`' grads.
  Outcome Compute(DmoeModel& replica, const std::vector<at::Tensor>& params, const Claim& c) {
    Outcome r;
    try {
      replica->zero_grad();
      // A token model's logits [B, T, vocab] are B * T predictions, each scored alike.
      at::Tensor logits = replica->forward(c.x);
      logits = logits.reshape({-1, logits.size(-1)});
      const at::Tensor targets = c.y.reshape({-1});
      at::Tensor loss = at::cross_entropy_loss(logits, targets);
      at::Tensor total = loss + replica->balance_loss();
      r.loss = loss.item<double>();
      // Never step on a non-finite loss: its gradient would turn every local weight into NaN,
      // and its backward would hand the experts NaN gradients. The step is skipped and counted.
      if (!std::isfinite(r.loss) || !std::isfinite(total.item<double>())) {
        r.kind = Outcome::kNonfinite;
        spdlog::warn("step {} skipped: the loss is not finite ({})", c.step + 1, r.loss);
        return r;
      }
      total.backward();
      r.correct = logits.argmax(1).eq(targets).sum().item<int64_t>();
      r.targets = targets.size(0);
      if (!AllFinite(params, /*grads=*/true)) {
        r.kind = Outcome::kNonfinite;
        spdlog::warn("step {} skipped: a local gradient is not finite", c.step + 1);
        return r;
      }
      r.kind = Outcome::kTrained;
    } catch (const NotEnoughExpertsError& e) {
      // Skip this batch: the swarm may recover.
      spdlog::warn("step {} skipped: {}", c.step + 1, e.what());
      r.kind = Outcome::kSkipped;
    }
    return r;
  }

  // Waits for the step's turn, then adds its gradient to the group's (an optimizer step at the
  // group's end) and reaches the milestones of its count. False when the loop was aborted.
  bool ApplyInTurn(const std::vector<at::Tensor>& params, const Claim& c, const Outcome& r) {
    std::unique_lock<std::mutex> lock(mu_);
    // Steps are applied in their order, so the update of step s lands after exactly the updates
    // before it: at most ceil(in_flight / group) - 1 of them were not applied when s read.
    turn_.wait(lock, [this, &c] { return aborted_ || state_.step == c.step; });
    if (aborted_) return false;
    switch (r.kind) {
      case Outcome::kTrained:
        max_staleness_ = std::max(max_staleness_, updates_ - c.read_at);
        Accumulate(params);
        window_loss_ += r.loss;
        window_correct_ += r.correct;
        window_targets_ += r.targets;
        window_samples_ += o_.batch_size;
        ++window_steps_;
        break;
      case Outcome::kNonfinite:
        ++nonfinite_steps_;
        break;
      case Outcome::kSkipped:
        ++failed_steps_;
        break;
    }
    ++state_.step;
    if (state_.step % group_ == 0 || state_.step == o_.steps) ApplyAccumulated();
    turn_.notify_all();
    Milestones(lock);
    return true;
  }

  // Adds the gradients of `params` to the group's sum. Under mu_.
  void Accumulate(const std::vector<at::Tensor>& params) {
    for (size_t i = 0; i < params.size(); ++i) {
      const at::Tensor& g = params[i].grad();
      if (!g.defined()) continue;
      if (accumulated_[i].defined()) {
        accumulated_[i].add_(g);
      } else {
        accumulated_[i] = g.clone();
      }
    }
    ++accumulated_count_;
  }

  // One optimizer step with the mean gradient of the steps accumulated since the last. Under mu_.
  void ApplyAccumulated() {
    if (accumulated_count_ > 0) {
      lr_now_ = ScheduledLr(o_.lr, o_.lr_schedule, state_.step - 1, o_.steps);
      for (auto& group : optimizer_.param_groups()) {
        static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr_now_);
      }
      for (size_t i = 0; i < master_params_.size(); ++i) {
        if (!accumulated_[i].defined()) continue;
        if (accumulated_count_ > 1) accumulated_[i].div_(static_cast<double>(accumulated_count_));
        master_params_[i].mutable_grad() = accumulated_[i];
      }
      optimizer_.step();
      for (auto& p : master_params_) p.mutable_grad().reset();
      for (auto& a : accumulated_) a.reset();
      accumulated_count_ = 0;
    }
    ++updates_;
  }

  // Weight prediction for a stale step: the `ahead` updates that will land before this step's
  // own are mostly known already, as Adam's smoothed direction m / (sqrt(v) + eps) times lr. The
  // replica computes its gradient at the parameters those updates will most likely reach, so the
  // gradient fits the parameters it is applied to. Called under mu_ with grad disabled.
  void PredictAhead(std::vector<at::Tensor>& params, int64_t ahead) {
    if (ahead <= 0 || !o_.weight_prediction) return;
    const auto& adam =
        static_cast<const torch::optim::AdamOptions&>(optimizer_.param_groups().front().options());
    const double beta1 = std::get<0>(adam.betas()), beta2 = std::get<1>(adam.betas());
    for (size_t i = 0; i < params.size(); ++i) {
      auto it =
          optimizer_.state().find(c10::guts::to_string(master_params_[i].unsafeGetTensorImpl()));
      if (it == optimizer_.state().end()) continue;
      const auto& st = static_cast<const torch::optim::AdamParamState&>(*it->second);
      const double t = static_cast<double>(st.step());
      const double c1 = 1 - std::pow(beta1, t), c2 = 1 - std::pow(beta2, t);
      at::Tensor direction = (st.exp_avg() / c1) / ((st.exp_avg_sq() / c2).sqrt() + adam.eps());
      params[i].sub_(direction, lr_now_ * static_cast<double>(ahead));
    }
  }

  // The sample indices of batch `step`: epoch order (seeded by seed and epoch) from the step's
  // offset, so a resumed trainer continues exactly where it stopped. Called under mu_.
  at::Tensor BatchIndex(int64_t step) {
    const int64_t n = inputs_.train.x.size(0);
    const int64_t per_epoch = n / o_.batch_size;
    const int64_t e = step / per_epoch;
    auto it = orders_.find(e);
    if (it == orders_.end()) {
      it = orders_.emplace(e, EpochOrder(o_.seed, e, n)).first;
      while (orders_.size() > 2) orders_.erase(orders_.begin());
    }
    const int64_t offset = (step % per_epoch) * o_.batch_size;
    return at::from_blob(it->second.data() + offset, {o_.batch_size}, at::kLong).clone();
  }

  // After a step was applied; `lock` holds mu_ (released while evaluating).
  void Milestones(std::unique_lock<std::mutex>& lock) {
    const int64_t step = state_.step;
    if (step % o_.log_every == 0 || step == o_.steps) PrintProgress(step);
    if (o_.eval_every > 0 && step % o_.eval_every == 0 && step < o_.steps) {
      // On a copy of the parameters of this step, so the other workers go on meanwhile.
      Status copied = eval_model_->LoadStateDict(master_->StateDict());
      if (!copied.ok()) spdlog::error("evaluation copy failed: {}", copied.ToString());
      last_eval_step_ = step;
      lock.unlock();
      double score = 0;
      {
        std::lock_guard<std::mutex> eval_lock(eval_mu_);
        score = Score(eval_model_);
      }
      lock.lock();
      PrintEval(step, score);
    }
    if (o_.publish_every > 0 && step % o_.publish_every == 0 && step < o_.steps) {
      PublishLocked(step);
      CheckpointLocked();
    }
  }

  // The progress line of the window that ends at `step`. Under mu_.
  void PrintProgress(int64_t step) {
    const int64_t now_us = wiring_.clock->NowMonotonicUs();
    const double seconds = static_cast<double>(now_us - window_start_us_) / 1e6;
    MoeStats now = ReplicaStats();
    const double answers = static_cast<double>(now.answers - window_stats_.answers);
    const double routed = static_cast<double>(now.samples - window_stats_.samples);
    const double loss = window_steps_ ? window_loss_ / window_steps_ : 0.0;
    out_ << "step " << step << "/" << o_.steps << std::fixed << std::setprecision(4) << " loss "
         << loss;
    // A byte is a token: the mean loss in nats per token over ln 2 is the training bpb.
    if (inputs_.text) out_ << " bpb " << loss / std::log(2.0);
    out_ << " train_acc "
         << (window_targets_ ? static_cast<double>(window_correct_) / window_targets_ : 0.0)
         << std::setprecision(1) << " samples/s "
         << (seconds > 0 ? window_samples_ / seconds : 0.0);
    if (inputs_.text) {
      out_ << " tokens/s " << (seconds > 0 ? static_cast<double>(window_targets_) / seconds : 0.0);
    }
    out_ << std::setprecision(2) << " experts/sample " << (routed > 0 ? answers / routed : 0.0)
         << " zero_output_samples " << (now.zero_output_samples - window_stats_.zero_output_samples)
         << " skipped_steps " << failed_steps_ << " nonfinite_steps " << nonfinite_steps_
         << std::setprecision(6) << " lr " << lr_now_ << " in_flight " << o_.in_flight
         << " max_staleness " << max_staleness_ << "\n"
         << std::defaultfloat << std::flush;
    window_loss_ = 0;
    window_correct_ = window_targets_ = window_samples_ = window_steps_ = 0;
    window_stats_ = now;
    window_start_us_ = wiring_.clock->NowMonotonicUs();
  }

  // Test accuracy, or held-out bpb for text, of `model` (master_, or eval_model_ under eval_mu_).
  double Score(DmoeModel& model) {
    return inputs_.text ? EvaluateBitsPerByte(model, *inputs_.text, o_.eval_bytes)
                        : Evaluate(model, inputs_.test, o_.eval_samples);
  }

  void PrintEval(int64_t step, double score) {
    out_ << "eval step " << step << (inputs_.text ? " bpb " : " test_accuracy ") << std::fixed
         << std::setprecision(4) << score << "\n"
         << std::defaultfloat << std::flush;
  }

  MoeStats ReplicaStats() const {
    MoeStats sum;
    for (const auto& r : replicas_) {
      MoeStats s = r->moe_stats();
      sum.samples += s.samples;
      sum.answers += s.answers;
      sum.zero_output_samples += s.zero_output_samples;
    }
    return sum;
  }

  void PublishLocked(int64_t step) {
    if (o_.router_url.empty()) return;
    if (!AllFinite(master_params_, /*grads=*/false)) {
      spdlog::error("not publishing step {}: a local weight is not finite", step);
      return;
    }
    const int64_t version = std::max(state_.version + 1, wiring_.clock->NowUnixMs());
    Status s = Publish(o_, wiring_, master_, inputs_.spec_json, version, step);
    if (s.ok()) {
      state_.version = version;
      published_version_ = version;
      out_ << "published " << inputs_.spec.name << " version " << version << " at step " << step
           << "\n"
           << std::flush;
    } else {
      spdlog::warn("publishing to {} failed: {}", o_.router_url, s.ToString());
    }
  }

  void CheckpointLocked() {
    if (!kv_) return;
    // The last intact checkpoint stays: a resumed trainer must not start from poison.
    if (!AllFinite(master_params_, /*grads=*/false) || !OptimizerStateFinite(optimizer_)) {
      spdlog::error(
          "not checkpointing step {}: the local weights or their Adam state are not finite",
          state_.step);
      return;
    }
    Status s = SaveCheckpoint(*kv_, inputs_.spec.name, master_, optimizer_, state_);
    if (!s.ok()) spdlog::error("trainer checkpoint failed: {}", s.ToString());
  }

  const TrainerOptions& o_;
  const TrainerInputs& inputs_;
  const TrainerWiring& wiring_;
  std::ostream& out_;
  const std::atomic<bool>* stop_;
  DmoeModel master_;
  torch::optim::Adam& optimizer_;
  storage::KvStore* kv_;

  std::mutex mu_;  // guards everything below, the master's parameters and the optimizer
  std::condition_variable turn_;  // a step was applied (or the loop aborted): the next may apply
  bool aborted_ = false;          // a worker left by an exception
  Checkpoint state_;              // state_.step: steps applied (or skipped)
  int64_t next_step_;             // the next step to claim; > state_.step while steps are in flight
  std::vector<at::Tensor> master_params_;
  std::map<int64_t, std::vector<int64_t>> orders_;  // epoch -> sample order, the last two
  int64_t max_staleness_ = 0;                       // in optimizer updates
  // Steps per optimizer step (GroupSize), the updates applied, and the gradient sum of the steps
  // of the current group that were applied so far.
  const int64_t group_ = GroupSize(o_.in_flight);
  int64_t updates_ = 0;
  std::vector<at::Tensor> accumulated_;
  int64_t accumulated_count_ = 0;
  int64_t failed_steps_ = 0;
  int64_t nonfinite_steps_ = 0;  // skipped for a non-finite loss or local gradient
  int64_t last_eval_step_ = -1;
  int64_t published_version_ = 0;
  double lr_now_ = 0;
  // The progress window: sums since the last progress line, and when it started.
  double window_loss_ = 0;
  int64_t window_correct_ = 0, window_targets_ = 0, window_samples_ = 0, window_steps_ = 0;
  MoeStats window_stats_;
  int64_t window_start_us_ = 0;
  int64_t start_us_ = 0;  // when this run started training (max_seconds)

  std::mutex eval_mu_;  // one evaluation at a time, on eval_model_
  DmoeModel eval_model_;
  std::list<DmoeModel> replicas_;  // one per worker; a list, so references stay valid
};

// Resumes `model` and `optimizer` from the checkpoint in `kv`, printing where; the zero state
// when there is none.
Result<Checkpoint> Resume(storage::KvStore& kv, const TrainerOptions& o, const TrainerInputs& in,
                          DmoeModel& model, torch::optim::Adam& optimizer, std::ostream& out) {
  Result<Checkpoint> resumed = LoadCheckpoint(kv, in.spec.name, model, optimizer);
  if (!resumed.ok()) {
    if (resumed.status().code() == Code::kNotFound) return Checkpoint{};
    return resumed.status();
  }
  // The data position follows from the step (EpochOrder, TrainWindowBegins); the Adam step counts
  // the updates its moments hold, so a resumed trainer shows both.
  out << "resumed from step " << resumed->step << "\n"
      << "resumed optimizer_steps " << AdamSteps(optimizer);
  if (in.text) {
    out << " data_windows " << resumed->step * o.batch_size;
  } else {
    const int64_t per_epoch = in.train.x.size(0) / o.batch_size;
    out << " data_epoch " << resumed->step / per_epoch << " data_offset "
        << (resumed->step % per_epoch) * o.batch_size;
  }
  out << "\n" << std::flush;
  return resumed;
}

}  // namespace

Result<TrainerInputs> PrepareTrainer(const TrainerOptions& o, const Clock& clock) {
  DMOE_RETURN_IF_ERROR(CheckOptions(o));
  TrainerInputs in;
  DMOE_ASSIGN_OR_RETURN(in.spec_json, ReadFile(o.spec_path, "model spec"));
  DMOE_ASSIGN_OR_RETURN(in.spec, model::ParseModelSpec(in.spec_json));
  if (data::IsTextSource(o.data.source)) {
    DMOE_ASSIGN_OR_RETURN(std::string text, data::ReadTextSource(o.data, clock));
    DMOE_ASSIGN_OR_RETURN(in.text, data::TextCorpus::Create(std::move(text), o.seq_len));
  } else {
    DMOE_ASSIGN_OR_RETURN(in.train, LoadFashionMnistTensors(true, o.data_dir));
    DMOE_ASSIGN_OR_RETURN(in.test, LoadFashionMnistTensors(false, o.data_dir));
  }
  DMOE_RETURN_IF_ERROR(CheckSpecFitsData(o, in));
  return in;
}

Result<TrainerResult> RunTrainer(const TrainerOptions& o, const TrainerInputs& inputs,
                                 const TrainerWiring& wiring, std::ostream& out,
                                 const std::atomic<bool>* stop) {
  torch::manual_seed(o.seed);
  const ModelContext context{wiring.swarm, o.wire_dtype, o.balance_loss_weight,
                             o.allow_zero_outputs};
  DmoeModel model(inputs.spec, context);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(o.lr));
  std::unique_ptr<storage::KvStore> kv;
  Checkpoint state;
  if (!o.db_dir.empty()) {
    DMOE_ASSIGN_OR_RETURN(kv, storage::KvStore::Open(o.db_dir));
    DMOE_ASSIGN_OR_RETURN(state, Resume(*kv, o, inputs, model, optimizer, out));
  }
  return TrainingLoop(o, inputs, wiring, context, model, optimizer, kv.get(), state, out, stop)
      .Run();
}

}  // namespace dmoe::gating
