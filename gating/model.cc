#include "gating/model.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/utils.h>

namespace dmoe::gating {

DmoeModelImpl::DmoeModelImpl(ModelSpec spec, ModelContext context) : spec_(std::move(spec)) {
  for (size_t i = 0; i < spec_.layers.size(); ++i) {
    const LayerSpec& l = spec_.layers[i];
    const std::string name = "layer" + std::to_string(i);
    if (l.type == "linear") {
      linears_.emplace(i, register_module(name, torch::nn::Linear(l.in_features, l.out)));
    } else if (l.type == "layer_norm") {
      norms_.emplace(i, register_module(name, torch::nn::LayerNorm(
                                                  torch::nn::LayerNormOptions({l.in_features}))));
    } else if (l.type == "moe" || l.type == "residual_moe") {
      const MoeLayerSpec& m = l.moe;
      RemoteMixtureOfExpertsOptions o(l.in_features, m.grid);
      o.uid_prefix(m.uid_prefix)
          .k_best(static_cast<int>(m.k_best))
          .k_min(static_cast<int>(m.k_min))
          .forward_timeout(std::chrono::milliseconds(m.forward_timeout_ms))
          .timeout_after_k_min(std::chrono::milliseconds(m.timeout_after_k_min_ms))
          .backward_k_min(static_cast<int>(m.backward_k_min))
          .backward_timeout(std::chrono::milliseconds(m.backward_timeout_ms))
          .wire_dtype(context.wire_dtype)
          .balance_loss_weight(context.balance_loss_weight)
          .allow_zero_outputs(context.allow_zero_outputs);
      RemoteMixtureOfExperts moe = register_module(name, RemoteMixtureOfExperts(o, context.swarm));
      moes_.push_back(moe);
    }
  }
}

at::Tensor DmoeModelImpl::forward(at::Tensor x) {
  size_t moe_index = 0;
  for (size_t i = 0; i < spec_.layers.size(); ++i) {
    const std::string& type = spec_.layers[i].type;
    if (type == "linear") {
      x = linears_.at(i)->forward(x);
    } else if (type == "layer_norm") {
      x = norms_.at(i)->forward(x);
    } else if (type == "relu") {
      x = at::relu(x);
    } else if (type == "gelu") {
      x = at::gelu(x);
    } else if (type == "dropout") {
      x = at::dropout(x, spec_.layers[i].p, is_training());
    } else {
      at::Tensor y = moes_[moe_index++]->forward(x);
      x = type == "residual_moe" ? x + y : y;
    }
  }
  return x;
}

at::Tensor DmoeModelImpl::balance_loss() const {
  at::Tensor total = at::zeros({}, at::kFloat);
  for (const auto& m : moes_) {
    if (m->balance_loss().defined()) total = total + m->balance_loss();
  }
  return total;
}

MoeStats DmoeModelImpl::moe_stats() const {
  MoeStats sum;
  for (const auto& m : moes_) {
    MoeStats s = m->stats();
    sum.forward_passes += s.forward_passes;
    sum.samples += s.samples;
    sum.requests += s.requests;
    sum.answered += s.answered;
    sum.timed_out += s.timed_out;
    sum.failed += s.failed;
    sum.nonfinite += s.nonfinite;
    sum.zero_output_samples += s.zero_output_samples;
    sum.answers += s.answers;
    sum.backward_requests += s.backward_requests;
    sum.backward_answered += s.backward_answered;
    sum.backward_failed += s.backward_failed;
    sum.backward_timed_out += s.backward_timed_out;
    sum.banned_peers = std::max(sum.banned_peers, s.banned_peers);
  }
  return sum;
}

std::vector<std::vector<std::string>> DmoeModelImpl::last_experts() const {
  std::vector<std::vector<std::string>> out;
  if (moes_.empty()) return out;
  const Routing& r = moes_.back()->last_routing();
  if (!r.answered.defined()) return out;
  at::Tensor answered = r.answered.to(at::kBool).contiguous();
  for (size_t token = 0; token < r.chosen.size(); ++token) {
    std::vector<std::string> uids;
    for (size_t slot = 0; slot < r.chosen[token].size(); ++slot) {
      if (answered[token][slot].item<bool>()) uids.push_back(r.chosen[token][slot].uid);
    }
    out.push_back(std::move(uids));
  }
  return out;
}

std::map<std::string, at::Tensor> DmoeModelImpl::StateDict() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : named_parameters()) out[item.key()] = item.value().detach();
  for (const auto& item : named_buffers()) out[item.key()] = item.value().detach();
  return out;
}

Status DmoeModelImpl::LoadStateDict(const std::map<std::string, at::Tensor>& state) {
  std::map<std::string, at::Tensor> mine = StateDict();
  for (const auto& [name, t] : mine) {
    auto it = state.find(name);
    if (it == state.end()) return InvalidArgumentError("state dict lacks '" + name + "'");
    if (it->second.sizes() != t.sizes() || it->second.scalar_type() != t.scalar_type()) {
      return InvalidArgumentError("state dict tensor '" + name + "' has the wrong shape or dtype");
    }
  }
  for (const auto& [name, t] : state) {
    if (!mine.count(name))
      return InvalidArgumentError("state dict has unknown tensor '" + name + "'");
  }
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters()) item.value().copy_(state.at(item.key()));
  for (auto& item : named_buffers()) item.value().copy_(state.at(item.key()));
  return Status::Ok();
}

}  // namespace dmoe::gating
