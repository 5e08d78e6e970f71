#include "gating/dispatch.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <utility>

#include "core/clock.h"
#include "core/integer.h"
#include "gating/expert_caller.h"
#include "gating/peer_health.h"
#include "gating/swarm.h"
#include "net/buffer_pool.h"
#include "tensor/torch_tensor.h"

namespace dmoe::gating::internal {
namespace {

enum class Op { kForward, kBackward };

// The largest gain an honest expert's answer may show over its input, per sample (PROTOCOL
// section 7). An expert ending in layer norm answers at most about sqrt(d) * max|gamma| + max|beta|
// (32 * gamma at d = 1024) whatever x is; a residual block answers about max|x| plus that.
constexpr float kMaxAnswerGain = 1000.0f;

// Collects the outcomes of one round's calls for the one thread waiting on them. Thread-safe.
class CallBatch : public std::enable_shared_from_this<CallBatch> {
 public:
  explicit CallBatch(size_t calls) : outcomes_(calls) {}
  // A callback that stores outcome `index` and wakes the waiter; it keeps the batch alive, so a
  // late answer is harmless. The batch must be owned by a shared_ptr.
  ExpertCaller::Callback Completion(size_t index) {
    return [self = shared_from_this(), index](CallOutcome outcome) {
      std::lock_guard<std::mutex> lock(self->mu_);
      if (self->outcomes_[index].has_value()) return;
      self->outcomes_[index] = std::move(outcome);
      self->fresh_.push_back(index);
      self->cv_.notify_all();
    };
  }
  // Waits until a completion not yet taken arrives or the real time `until` passes; moves the
  // newly completed (index, outcome) pairs out. Empty on timeout.
  std::vector<std::pair<size_t, CallOutcome>> WaitNew(std::chrono::steady_clock::time_point until) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_until(lock, until, [&] { return !fresh_.empty(); });
    std::vector<std::pair<size_t, CallOutcome>> out;
    for (size_t i : fresh_) out.emplace_back(i, std::move(*outcomes_[i]));
    fresh_.clear();
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::optional<CallOutcome>> outcomes_;
  std::vector<size_t> fresh_;
};

// What became of one call once its answer (or failure) is in.
struct Resolution {
  bool ok = false;
  bool nonfinite = false;
  bool blame_peer = true;  // counts against the peer's health
  at::Tensor output;       // y or grad_x, float, [rows, d]
  int64_t step = -1;
  std::string why;
};

Resolution Resolve(const ExpertCall& call, CallOutcome& outcome, Op op, bool detect_anomalies,
                   int64_t d) {
  Resolution r;
  if (!outcome.status.ok()) {
    r.why = outcome.status.ToString();
    return r;
  }
  Result<tensor::TorchPayload> payload = tensor::DecodeToTorch(outcome.blob);
  if (!payload.ok()) {
    r.why = payload.status().ToString();
    return r;
  }
  auto code = payload->metadata.find("error_code");
  if (code != payload->metadata.end()) {
    r.why = code->second + ": " + payload->metadata["error_message"];
    std::optional<Code> c = CodeFromName(code->second);
    // Every error answer counts against the peer (an expert that lies about our valid x, or
    // says it does not host what it announced, must lose its place), except a backward refused as
    // invalid_argument: that is the server judging our gradient (stale under --max-staleness, or
    // an update it rolled back), which an honest server does.
    r.blame_peer = !(op == Op::kBackward && c && *c == Code::kInvalidArgument);
    return r;
  }
  const char* name = op == Op::kForward ? "y" : "grad_x";
  auto it = payload->tensors.find(name);
  const int64_t rows = static_cast<int64_t>(call.rows.size());
  if (it == payload->tensors.end() || it->second.dim() != 2 || it->second.size(0) != rows ||
      it->second.size(1) != d) {
    r.why = std::string("answer has no ") + name + " of shape [" + std::to_string(rows) + ", " +
            std::to_string(d) + "]";
    return r;
  }
  r.output = it->second.to(at::kFloat);
  if (detect_anomalies && !at::isfinite(r.output).all().item<bool>()) {
    r.nonfinite = true;
    r.why = std::string(name) + " holds NaN or Inf";
    return r;
  }
  if (op == Op::kForward && detect_anomalies) {
    // A finite 3e38 passes the check above and still turns the loss and every local weight into
    // NaN. PROTOCOL section 7: per sample, max|y| <= kMaxAnswerGain * (1 + max|x|).
    at::Tensor bound = call.x_wire.to(at::kFloat).abs().amax(1).add_(1).mul_(kMaxAnswerGain);
    if (!r.output.abs().amax(1).le(bound).all().item<bool>()) {
      r.nonfinite = true;
      r.why = std::string("y exceeds ") + std::to_string(kMaxAnswerGain) +
              " * (1 + max|x|) for some sample: an absurd answer";
      return r;
    }
  }
  auto step = payload->metadata.find("step");
  if (step != payload->metadata.end()) {
    r.step = ParseInteger<int64_t>(step->second).value_or(r.step);
  }
  r.ok = true;
  return r;
}

// Sends one request per call (`active` selects which) and waits: until every sample has
// policy.k_min answers or no call of it is still out, then at most policy.after_k_min more, never
// past policy.timeout. `on_answer` gets each good answer.
void SendAndWait(DispatchState& state, Op op, const std::vector<bool>& active,
                 const std::vector<at::Tensor>& grad_y, const WaitPolicy& policy,
                 const std::function<void(size_t, Resolution&)>& on_answer) {
  Swarm& swarm = *state.swarm;
  const Clock& clock = swarm.clock();
  Counters& counters = *state.counters;
  const auto start = clock.Now();
  const auto deadline = start + policy.timeout;
  auto batch = std::make_shared<CallBatch>(state.calls.size());
  std::vector<std::string> ids(state.calls.size());
  std::vector<int> answered_per_sample(state.n, 0), out_per_sample(state.n, 0);
  std::vector<bool> resolved(state.calls.size(), true);
  size_t outstanding = 0;
  // Per peer, what its calls of this round came to: the peer's health learns of the round once.
  struct PeerRound {
    bool succeeded = false;
    bool failed = false;
    bool unreachable = false;
  };
  std::map<std::string, PeerRound> rounds;
  const char* op_name = op == Op::kForward ? "forward" : "backward";

  for (size_t c = 0; c < state.calls.size(); ++c) {
    if (!active[c]) continue;
    ExpertCall& call = state.calls[c];
    ids[c] = swarm.caller().NextId();
    std::map<std::string, std::string> meta = {{"id", ids[c]}, {"op", op_name}, {"uid", call.uid}};
    std::vector<tensor::NamedTensor> tensors = {{"x", call.x_wire}};
    if (op == Op::kBackward) {
      tensors.push_back({"grad_y", grad_y[c]});
      if (call.step >= 0) meta["step_seen"] = std::to_string(call.step);
    }
    // Into a reused buffer (net/buffer_pool.h): the connection gives it back once it is sent.
    net::Bytes blob = swarm.caller().buffer_pool().Take(tensor::EncodedSizeHint(tensors));
    if (Status s = tensor::EncodeFromTorchInto(tensors, meta, &blob); !s.ok()) {
      spdlog::warn("gating: cannot encode {} for {}: {}", op_name, call.uid, s.ToString());
      continue;
    }
    resolved[c] = false;
    ++outstanding;
    for (int64_t row : call.rows) ++out_per_sample[row];
    swarm.caller().Send(call.endpoint, ids[c], std::move(blob), deadline, batch->Completion(c));
  }
  (op == Op::kForward ? counters.requests : counters.backward_requests) += outstanding;

  std::optional<MonotonicClock::time_point> settled_at;
  bool cut_after_k_min = false;  // the wait ended timeout_after_k_min after k_min, not at deadline
  while (outstanding > 0) {
    if (!settled_at) {
      bool settled = true;
      for (int64_t i = 0; i < state.n && settled; ++i) {
        settled = answered_per_sample[i] >= policy.k_min || out_per_sample[i] == 0;
      }
      if (settled) settled_at = clock.Now();
    }
    const auto until = settled_at ? std::min(deadline, *settled_at + policy.after_k_min) : deadline;
    if (clock.Now() >= until) {
      cut_after_k_min = until < deadline;
      break;
    }
    for (auto& [c, outcome] : batch->WaitNew(RealTimeBound(clock, until))) {
      ExpertCall& call = state.calls[c];
      if (resolved[c]) continue;
      resolved[c] = true;
      --outstanding;
      for (int64_t row : call.rows) --out_per_sample[row];
      Resolution r = Resolve(call, outcome, op, policy.detect_anomalies, state.d);
      swarm.caller().buffer_pool().Give(std::move(outcome.blob));  // decoded into tensors
      if (r.ok) {
        swarm.health().RecordSuccess(call.endpoint, outcome.latency_s);
        rounds[call.endpoint].succeeded = true;
        for (int64_t row : call.rows) ++answered_per_sample[row];
        ++(op == Op::kForward ? counters.answered : counters.backward_answered);
        on_answer(c, r);
        continue;
      }
      spdlog::debug("gating: {} of {} at {} dropped: {}", op_name, call.uid, call.endpoint, r.why);
      if (r.nonfinite) ++counters.nonfinite;
      ++(op == Op::kForward ? counters.failed : counters.backward_failed);
      if (r.blame_peer) {
        rounds[call.endpoint].failed = true;
        // No answer at all (as opposed to an error answer): the connection failed.
        if (!outcome.status.ok()) rounds[call.endpoint].unreachable = true;
        swarm.directory().Invalidate("expert/" + call.uid);
      }
    }
  }
  for (size_t c = 0; c < state.calls.size(); ++c) {
    if (resolved[c]) continue;
    const ExpertCall& call = state.calls[c];
    swarm.caller().Forget(call.endpoint, ids[c]);
    ++(op == Op::kForward ? counters.timed_out : counters.backward_timed_out);
    rounds[call.endpoint].failed = true;
    // Late after k_min is a strike; silent for the whole deadline is as good as unreachable.
    if (!cut_after_k_min) rounds[call.endpoint].unreachable = true;
    spdlog::debug("gating: {} of {} at {} timed out", op_name, call.uid, call.endpoint);
  }
  for (const auto& [endpoint, round] : rounds) {
    if (round.succeeded || !round.failed) continue;
    swarm.health().RecordFailure(
        endpoint, round.unreachable ? PeerFailure::kUnreachable : PeerFailure::kStrike, start);
  }
}

at::Tensor IndexTensor(const std::vector<int64_t>& v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong));
}

at::Tensor RunBackward(DispatchState& state, const at::Tensor& grad_y) {
  at::Tensor grad = grad_y.to(at::kFloat).contiguous();
  const at::ScalarType wire = tensor::ToScalarType(state.wire_dtype);
  std::vector<bool> active(state.calls.size(), false);
  std::vector<at::Tensor> grads(state.calls.size());
  for (size_t c = 0; c < state.calls.size(); ++c) {
    const ExpertCall& call = state.calls[c];
    if (!call.answered) continue;
    active[c] = true;
    grads[c] = grad.index({IndexTensor(call.rows), IndexTensor(call.slots)}).to(wire).contiguous();
  }
  at::Tensor grad_x = at::zeros({state.n, state.d}, at::kFloat);
  SendAndWait(state, Op::kBackward, active, grads, state.backward_policy,
              [&](size_t c, Resolution& r) {
                grad_x.index_add_(0, IndexTensor(state.calls[c].rows), r.output);
              });
  return grad_x.to(state.input_dtype);
}

class RemoteExpertsFunction : public torch::autograd::Function<RemoteExpertsFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                at::Tensor /*anchor*/, at::Tensor /*x_flat*/,
                                                c10::intrusive_ptr<DispatchState> state) {
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    return {state->y.clone()};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto holder = ctx->saved_data["state"].toCapsule();
    auto state = c10::static_intrusive_pointer_cast<DispatchState>(holder);
    // The experts train whether or not x wants a gradient (the anchor guarantees we get here).
    at::Tensor grad_x = RunBackward(
        *state, grads[0].defined() ? grads[0] : at::zeros({state->n, state->k, state->d}));
    if (!ctx->needs_input_grad(1)) grad_x = at::Tensor();
    return {at::Tensor(), grad_x, at::Tensor()};
  }
};

}  // namespace

void RunForward(DispatchState& state, const at::Tensor& x_flat, const WaitPolicy& policy) {
  const at::ScalarType wire = tensor::ToScalarType(state.wire_dtype);
  at::Tensor x = x_flat.detach().to(wire).contiguous();
  state.input_dtype = x_flat.scalar_type();
  for (ExpertCall& call : state.calls) {
    call.x_wire = x.index_select(0, IndexTensor(call.rows)).contiguous();
  }
  state.y = at::zeros({state.n, state.k, state.d}, at::kFloat);
  state.answered = at::zeros({state.n, state.k}, at::kBool);
  std::vector<bool> active(state.calls.size(), true);
  SendAndWait(state, Op::kForward, active, {}, policy, [&](size_t c, Resolution& r) {
    ExpertCall& call = state.calls[c];
    call.answered = true;
    call.step = r.step;
    at::Tensor rows = IndexTensor(call.rows), slots = IndexTensor(call.slots);
    state.y.index_put_({rows, slots}, r.output);
    state.answered.index_put_({rows, slots}, true);
  });
}

at::Tensor ApplyRemote(const at::Tensor& anchor, const at::Tensor& x_flat,
                       c10::intrusive_ptr<DispatchState> state) {
  return RemoteExpertsFunction::apply(anchor, x_flat, std::move(state))[0];
}

}  // namespace dmoe::gating::internal
