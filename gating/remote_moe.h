// RemoteMixtureOfExperts: a mixture-of-experts layer whose experts live on expert servers found
// through the DHT (DESIGN.md, "One forward and backward pass, walked through").
//
//   auto swarm = std::make_shared<gating::Swarm>(dht.get(), clock);  // one per trainer, shared
//   gating::RemoteMixtureOfExperts moe(
//       gating::RemoteMixtureOfExpertsOptions(256, {4, 4}).uid_prefix("ffn").k_best(4).k_min(2),
//       swarm);
//   at::Tensor y = moe(x);                          // x [N, d] or [B, T, d]
//   at::Tensor loss = task_loss(y) + moe->balance_loss();
//   loss.backward();                                // gating weights, x, and the remote experts
//
// Every token is routed on its own to its top-k live experts (beam search over the grid, scores
// from one linear projection per grid dimension). One request per chosen expert goes out at once;
// the layer waits until every token has k_min answers, then at most timeout_after_k_min, never past
// forward_timeout. Late, failed and (with detect_anomalies) NaN/Inf answers are dropped and their
// peers banned with backoff; a token's output is the softmax-weighted sum over the experts that
// answered. A token with no answer gets zeros. Backward sends grad_y only to the experts that
// answered, with step_seen.
//
// Time: the timeouts are measured on the swarm's clock (Swarm::clock()), so a layer on a swarm
// built with a FakeClock waits only as that clock moves.
//
// Errors: forward throws NotEnoughExpertsError (gating/not_enough_experts.h) when some token got
// fewer than k_min answers and allow_zero_outputs is false, std::runtime_error when x has the
// wrong shape. A module is used from one thread at
// a time, as torch modules are.
#ifndef DMOE_GATING_REMOTE_MOE_H_
#define DMOE_GATING_REMOTE_MOE_H_

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gating/beam_search.h"
#include "gating/swarm.h"
#include "tensor/safetensors.h"

namespace dmoe::gating {

namespace internal {
struct Counters;
}  // namespace internal

struct RemoteMixtureOfExpertsOptions {
  RemoteMixtureOfExpertsOptions(int64_t in_features, std::vector<int64_t> grid_size)
      : in_features_(in_features), grid_size_(std::move(grid_size)) {}

  // Width d of x and of the experts.
  TORCH_ARG(int64_t, in_features);
  // Coordinates per grid dimension, e.g. {4, 4} for ffn.[0:4].[0:4].
  TORCH_ARG(std::vector<int64_t>, grid_size);
  // Experts are "<uid_prefix>.i.j".
  TORCH_ARG(std::string, uid_prefix) = "ffn";
  TORCH_ARG(int, k_best) = 4;
  TORCH_ARG(int, k_min) = 1;
  TORCH_ARG(std::chrono::milliseconds, forward_timeout) = std::chrono::seconds(5);
  TORCH_ARG(std::chrono::milliseconds, timeout_after_k_min) = std::chrono::seconds(1);
  TORCH_ARG(int, backward_k_min) = 1;
  TORCH_ARG(std::chrono::milliseconds, backward_timeout) = std::chrono::seconds(10);
  TORCH_ARG(bool, detect_anomalies) = true;
  TORCH_ARG(bool, allow_zero_outputs) = false;
  // Unresolved grid prefixes one token may ask the DHT about per round; 0 = k_best.
  TORCH_ARG(int, beam_size) = 0;
  // F32, F16 or BF16 on the wire (F16/BF16 halve the traffic).
  TORCH_ARG(safetensors::DType, wire_dtype) = safetensors::DType::kF32;
  // Weight of the auxiliary load-balancing loss returned by balance_loss().
  TORCH_ARG(double, balance_loss_weight) = 0.01;
  // When true, timeout_after_k_min shrinks to 3x the slowest chosen peer's average latency (at
  // least 20 ms) once every peer of the round has a latency record.
  TORCH_ARG(bool, adaptive_timeout) = false;
};

// Counts since the layer was built, for the trainer's progress line.
struct MoeStats {
  int64_t forward_passes = 0;
  int64_t samples = 0;    // tokens routed
  int64_t requests = 0;   // forward requests sent (one per chosen expert per batch)
  int64_t answered = 0;   // forward requests answered in time with finite outputs
  int64_t timed_out = 0;  // given up on (late)
  int64_t failed = 0;     // errors and anomalous answers
  int64_t nonfinite = 0;  // of which NaN/Inf or absurdly large outputs (PROTOCOL section 7)
  int64_t zero_output_samples = 0;
  int64_t answers = 0;  // sum over tokens of experts that answered for it
  int64_t backward_requests = 0, backward_answered = 0, backward_failed = 0, backward_timed_out = 0;
  int banned_peers = 0;  // banned right now (swarm-wide)

  double AnswersPerSample() const { return samples ? static_cast<double>(answers) / samples : 0; }
};

// What the last forward did, token by token.
struct Routing {
  std::vector<std::vector<ExpertChoice>> chosen;  // per token, best first
  at::Tensor answered;                            // [N, k_best] bool, by slot of `chosen`
  at::Tensor weights;                             // [N, k_best] gate weights used (detached)
};

class RemoteMixtureOfExpertsImpl : public torch::nn::Module {
 public:
  // `swarm` is shared with the trainer's other layers; it gives the clock and the connections.
  RemoteMixtureOfExpertsImpl(RemoteMixtureOfExpertsOptions options, std::shared_ptr<Swarm> swarm);

  at::Tensor forward(const at::Tensor& x);

  // The auxiliary load-balancing loss of the last forward (Switch-style per grid dimension:
  // g * sum_c fraction_routed[c] * mean_probability[c], averaged over dimensions and scaled by
  // balance_loss_weight); differentiable w.r.t. the gating. Zero before the first forward.
  at::Tensor balance_loss() const { return balance_loss_; }
  MoeStats stats() const;
  const Routing& last_routing() const { return routing_; }
  const RemoteMixtureOfExpertsOptions& options() const { return options_; }
  // One projection d -> grid_size[i] per grid dimension.
  const std::vector<torch::nn::Linear>& gates() const { return gates_; }

 private:
  RemoteMixtureOfExpertsOptions options_;
  std::shared_ptr<Swarm> swarm_;
  std::shared_ptr<internal::Counters> counters_;
  std::vector<torch::nn::Linear> gates_;
  at::Tensor anchor_;  // requires grad, so backward reaches the experts even when x does not
  at::Tensor balance_loss_;
  Routing routing_;
};

TORCH_MODULE(RemoteMixtureOfExperts);

}  // namespace dmoe::gating

#endif  // DMOE_GATING_REMOTE_MOE_H_
