#include "gating/remote_moe.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <map>
#include <stdexcept>

#include "gating/dispatch.h"
#include "gating/not_enough_experts.h"

namespace dmoe::gating {
namespace {

void Check(bool ok, const std::string& message) {
  if (!ok) throw std::runtime_error("RemoteMixtureOfExperts: " + message);
}

}  // namespace

RemoteMixtureOfExpertsImpl::RemoteMixtureOfExpertsImpl(RemoteMixtureOfExpertsOptions options,
                                                       std::shared_ptr<Swarm> swarm)
    : options_(std::move(options)),
      swarm_(std::move(swarm)),
      counters_(std::make_shared<internal::Counters>()) {
  Check(swarm_ != nullptr, "a Swarm is required");
  Check(options_.in_features() > 0, "in_features must be positive");
  Check(!options_.grid_size().empty() && options_.grid_size().size() <= 4,
        "grid_size must have 1 to 4 dimensions");
  Check(options_.k_best() >= 1, "k_best must be at least 1");
  Check(options_.k_min() >= 0 && options_.k_min() <= options_.k_best(),
        "k_min must be in [0, k_best]");
  for (size_t i = 0; i < options_.grid_size().size(); ++i) {
    Check(options_.grid_size()[i] >= 1, "every grid dimension needs at least one coordinate");
    gates_.push_back(
        register_module("gate" + std::to_string(i),
                        torch::nn::Linear(options_.in_features(), options_.grid_size()[i])));
  }
  anchor_ = at::zeros({1}).set_requires_grad(true);
  balance_loss_ = at::zeros({});
}

MoeStats RemoteMixtureOfExpertsImpl::stats() const {
  const internal::Counters& c = *counters_;
  MoeStats s;
  s.forward_passes = c.forward_passes;
  s.samples = c.samples;
  s.requests = c.requests;
  s.answered = c.answered;
  s.timed_out = c.timed_out;
  s.failed = c.failed;
  s.nonfinite = c.nonfinite;
  s.zero_output_samples = c.zero_output_samples;
  s.answers = c.answers;
  s.backward_requests = c.backward_requests;
  s.backward_answered = c.backward_answered;
  s.backward_failed = c.backward_failed;
  s.backward_timed_out = c.backward_timed_out;
  s.banned_peers = swarm_->health().BannedNow();
  return s;
}

at::Tensor RemoteMixtureOfExpertsImpl::forward(const at::Tensor& x) {
  const int64_t d = options_.in_features();
  Check((x.dim() == 2 || x.dim() == 3) && x.size(-1) == d,
        "x must be [N, " + std::to_string(d) + "] or [B, T, " + std::to_string(d) + "], got " +
            std::to_string(x.dim()) + " dimensions with last " +
            (x.dim() ? std::to_string(x.size(-1)) : std::string("-")));
  const Clock& clock = swarm_->clock();
  const Deadline deadline = clock.Now() + options_.forward_timeout();
  at::Tensor xf = x.reshape({-1, d});
  const int64_t n = xf.size(0);
  const size_t dims = options_.grid_size().size();
  const int64_t k = options_.k_best();

  // 1. Scores per grid coordinate, and the beam search on a detached copy.
  std::vector<at::Tensor> scores;
  std::vector<std::vector<float>> host(dims);
  for (size_t i = 0; i < dims; ++i) {
    scores.push_back(gates_[i]->forward(xf));
    at::Tensor h = scores.back().detach().to(at::kFloat).contiguous();
    host[i].assign(h.data_ptr<float>(), h.data_ptr<float>() + h.numel());
  }
  BeamSearchOptions search{options_.uid_prefix(), options_.grid_size(), options_.k_best(),
                           options_.beam_size() > 0 ? options_.beam_size() : options_.k_best()};
  PeerHealth& health = swarm_->health();
  Swarm& swarm = *swarm_;
  // Replicas are chosen by proof of key, bans (by publisher key) and latency (Swarm::Policy).
  routing_.chosen = BeamSearch(swarm.directory(), search, host, n, swarm.Policy(), deadline);

  // 2. Group tokens per expert: one call per chosen expert.
  auto state = c10::make_intrusive<internal::DispatchState>();
  state->swarm = swarm_;
  state->counters = counters_;
  state->wire_dtype = options_.wire_dtype();
  state->n = n;
  state->k = k;
  state->d = d;
  std::vector<at::Tensor> coord_index;
  std::vector<int64_t*> coord_ptr;
  for (size_t i = 0; i < dims; ++i) {
    coord_index.push_back(at::zeros({n, k}, at::kLong));
    coord_ptr.push_back(coord_index.back().data_ptr<int64_t>());
  }
  std::map<std::string, size_t> call_of;
  for (int64_t row = 0; row < n; ++row) {
    for (size_t slot = 0; slot < routing_.chosen[row].size(); ++slot) {
      const ExpertChoice& choice = routing_.chosen[row][slot];
      auto [it, fresh] = call_of.emplace(choice.uid, state->calls.size());
      if (fresh) state->calls.push_back({choice.uid, choice.endpoint, {}, {}, {}, -1, false});
      state->calls[it->second].rows.push_back(row);
      state->calls[it->second].slots.push_back(static_cast<int64_t>(slot));
      for (size_t i = 0; i < dims; ++i) coord_ptr[i][row * k + slot] = choice.coords[i];
    }
  }

  // 3. Send everything at once and wait (k_min, timeout_after_k_min, forward deadline).
  internal::WaitPolicy policy{options_.k_min(),
                              std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::max(deadline - clock.Now(), MonotonicClock::duration(0))),
                              options_.timeout_after_k_min(), options_.detect_anomalies()};
  if (options_.adaptive_timeout() && !state->calls.empty()) {
    double slowest = 0;
    bool all_known = true;
    for (const auto& call : state->calls) {
      PeerStats p = health.Get(call.endpoint);
      all_known = all_known && p.successes > 0;
      slowest = std::max(slowest, p.latency_s);
    }
    if (all_known) {
      auto adaptive = std::chrono::milliseconds(std::max<int64_t>(20, slowest * 3000));
      policy.after_k_min = std::min(policy.after_k_min, adaptive);
    }
  }
  state->backward_policy = {options_.backward_k_min(), options_.backward_timeout(),
                            options_.timeout_after_k_min(), options_.detect_anomalies()};
  internal::RunForward(*state, xf, policy);

  // 4. Who answered, zero outputs, the k_min contract.
  at::Tensor answered = state->answered;
  at::Tensor answers_per_row = answered.sum(1);
  const int64_t zero_rows = (answers_per_row == 0).sum().item<int64_t>();
  const int64_t short_rows = (answers_per_row < options_.k_min()).sum().item<int64_t>();
  ++counters_->forward_passes;
  counters_->samples += n;
  counters_->answers += answers_per_row.sum().item<int64_t>();
  counters_->zero_output_samples += zero_rows;
  if (short_rows > 0 && !options_.allow_zero_outputs()) {
    throw NotEnoughExpertsError(
        "RemoteMixtureOfExperts: " + std::to_string(short_rows) + " of " + std::to_string(n) +
        " tokens got fewer than k_min=" + std::to_string(options_.k_min()) + " expert answers (" +
        std::to_string(zero_rows) + " got none; " + std::to_string(state->calls.size()) +
        " experts asked, " + std::to_string(health.BannedNow()) +
        " peers banned); set allow_zero_outputs to accept zero outputs");
  }

  // 5. y_i = sum over responders e of softmax_e(score_ie) f_e(x_i), in autograd ops.
  at::Tensor expert_out = internal::ApplyRemote(anchor_, xf, state);  // [n, k, d]
  at::Tensor logits = at::zeros({n, k}, scores[0].options());
  for (size_t i = 0; i < dims; ++i) logits = logits + scores[i].gather(1, coord_index[i]);
  at::Tensor none = (answers_per_row == 0).unsqueeze(1);
  at::Tensor masked =
      logits.masked_fill(answered.logical_not(), -std::numeric_limits<float>::infinity());
  masked = masked.masked_fill(none, 0.0);  // a row with no responder: softmax stays finite
  at::Tensor weights = at::softmax(masked, 1) * answered.to(logits.scalar_type());
  at::Tensor y = (weights.unsqueeze(-1) * expert_out.to(logits.scalar_type())).sum(1);
  routing_.answered = answered;
  routing_.weights = weights.detach();

  // 6. Load balancing (Switch Transformer), per grid dimension.
  at::Tensor balance = at::zeros({}, logits.options());
  for (size_t i = 0; i < dims; ++i) {
    const int64_t g = options_.grid_size()[i];
    at::Tensor routed = at::zeros({g}, at::kFloat);
    routed.index_add_(0, coord_index[i].reshape({-1}), answered.reshape({-1}).to(at::kFloat));
    const double total = std::max<double>(1, routed.sum().item<double>());
    at::Tensor mean_prob = at::softmax(scores[i], 1).mean(0);
    balance = balance + (routed / total).to(mean_prob.scalar_type()).mul(mean_prob).sum() * g;
  }
  balance_loss_ = balance * (options_.balance_loss_weight() / static_cast<double>(dims));
  return y.reshape(x.sizes()).to(x.scalar_type());
}

}  // namespace dmoe::gating
