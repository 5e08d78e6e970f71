#include "gating/model.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/utils.h>

#include <stdexcept>

namespace dmoe::gating {

LocalLayer::LocalLayer(torch::nn::Module& owner, size_t index, const model::LayerSpec& layer)
    : type_(layer.type), p_(layer.p) {
  const std::string name = "layer" + std::to_string(index);
  if (type_ == model::LayerType::kLinear) {
    linear_ = owner.register_module(name, torch::nn::Linear(layer.in_features, layer.out));
  } else if (type_ == model::LayerType::kLayerNorm) {
    norm_ = owner.register_module(
        name, torch::nn::LayerNorm(torch::nn::LayerNormOptions({layer.in_features})));
  }
}

at::Tensor LocalLayer::forward(const at::Tensor& x, bool training) {
  switch (type_) {
    case model::LayerType::kLinear:
      return linear_->forward(x);
    case model::LayerType::kLayerNorm:
      return norm_->forward(x);
    case model::LayerType::kRelu:
      return at::relu(x);
    case model::LayerType::kGelu:
      return at::gelu(x);
    case model::LayerType::kDropout:
      return at::dropout(x, p_, training);
    case model::LayerType::kMoe:
    case model::LayerType::kResidualMoe:
      break;
  }
  throw std::logic_error("LocalLayer: a moe layer does not run locally");
}

DmoeModelImpl::DmoeModelImpl(model::ModelSpec spec, ModelContext context) : spec_(std::move(spec)) {
  for (size_t i = 0; i < spec_.layers.size(); ++i) {
    const model::LayerSpec& l = spec_.layers[i];
    if (!model::IsMoe(l.type)) {
      local_.emplace(i, LocalLayer(*this, i, l));
      continue;
    }
    const model::MoeLayerSpec& m = l.moe;
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
    moes_.emplace(
        i, register_module("layer" + std::to_string(i), RemoteMixtureOfExperts(o, context.swarm)));
  }
}

at::Tensor DmoeModelImpl::forward(at::Tensor x) {
  for (size_t i = 0; i < spec_.layers.size(); ++i) {
    auto local = local_.find(i);
    if (local != local_.end()) {
      x = local->second.forward(x, is_training());
    } else {
      x = MoeLayerOutput(spec_.layers[i].type, x, moes_.at(i)->forward(x));
    }
  }
  return x;
}

at::Tensor DmoeModelImpl::balance_loss() const {
  at::Tensor total = at::zeros({}, at::kFloat);
  for (const auto& [index, m] : moes_) {
    if (m->balance_loss().defined()) total = total + m->balance_loss();
  }
  return total;
}

MoeStats DmoeModelImpl::moe_stats() const {
  MoeStats sum;
  for (const auto& [index, m] : moes_) {
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
  const Routing& r = moes_.rbegin()->second->last_routing();
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
