#include "gating/model.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/utils.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>

#include "gating/not_enough_experts.h"

namespace dmoe::gating {

namespace {

// Token and position tables start at N(0, 0.02), as GPT-2's do, not at torch's N(0, 1): a tied
// lm_head reads the token table, and at N(0, 1) its first logits have a standard deviation of
// sqrt(width) (11 at width 128), so an untrained model is surer than a uniform guess and far
// worse (17 bits per byte at width 16 instead of 8), and spends its first steps unlearning that.
void InitSmall(const at::Tensor& table) {
  torch::NoGradGuard no_grad;
  table.normal_(0, 0.02);
}

}  // namespace

LocalLayer::LocalLayer(torch::nn::Module& owner, size_t index, const model::LayerSpec& layer)
    : type_(layer.type), p_(layer.p), max_len_(layer.max_len) {
  const std::string name = "layer" + std::to_string(index);
  switch (type_) {
    case model::LayerType::kLinear:
      linear_ = owner.register_module(name, torch::nn::Linear(layer.in_features, layer.out));
      break;
    case model::LayerType::kLayerNorm:
      norm_ = owner.register_module(
          name, torch::nn::LayerNorm(torch::nn::LayerNormOptions({layer.in_features})));
      break;
    case model::LayerType::kEmbedding:
      embedding_ =
          owner.register_module(name, torch::nn::Embedding(layer.in_features, layer.out_features));
      InitSmall(embedding_->weight);
      break;
    case model::LayerType::kPositions:
      embedding_ = owner.register_module(name, torch::nn::Embedding(max_len_, layer.in_features));
      InitSmall(embedding_->weight);
      break;
    case model::LayerType::kAttention:
      attention_ = owner.register_module(
          name, CausalSelfAttention(layer.in_features, layer.heads, layer.rotary));
      break;
    case model::LayerType::kLmHead:
      if (layer.tied) {
        head_weight_ = owner.named_parameters().find("layer0.weight") != nullptr
                           ? owner.named_parameters()["layer0.weight"]
                           : at::Tensor();
        if (!head_weight_.defined() ||
            head_weight_.sizes() != at::IntArrayRef{layer.out_features, layer.in_features}) {
          throw std::invalid_argument("a tied lm_head needs the embedding as layer 0");
        }
      } else {
        linear_ = owner.register_module(
            name, torch::nn::Linear(
                      torch::nn::LinearOptions(layer.in_features, layer.out_features).bias(false)));
        head_weight_ = linear_->weight;
      }
      break;
    case model::LayerType::kResidualFfn: {
      // A block of its own named "layer<index>", holding what one ffn expert holds.
      auto block = owner.register_module(name, std::make_shared<torch::nn::Module>());
      const int64_t d = layer.in_features;
      if (layer.pre_norm) {
        norm_ =
            block->register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
      }
      linear_ = block->register_module("linear1", torch::nn::Linear(d, layer.hidden));
      linear2_ = block->register_module("linear2", torch::nn::Linear(layer.hidden, d));
      ffn_norm_ = block->register_module("ffn_norm",
                                         torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
      break;
    }
    case model::LayerType::kRelu:
    case model::LayerType::kGelu:
    case model::LayerType::kDropout:
    case model::LayerType::kMoe:
    case model::LayerType::kResidualMoe:
      break;
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
    case model::LayerType::kEmbedding:
      return embedding_->forward(x);
    case model::LayerType::kPositions: {
      const int64_t length = x.dim() >= 2 ? x.size(-2) : 0;
      if (x.dim() != 3 || length > max_len_) {
        throw std::invalid_argument("positions: x must be [B, T, d] with T <= max_len " +
                                    std::to_string(max_len_) +
                                    ", not T = " + std::to_string(length));
      }
      return x + embedding_->weight.narrow(0, 0, length);
    }
    case model::LayerType::kAttention:
      return attention_->forward(x);
    case model::LayerType::kLmHead:
      return at::linear(x, head_weight_);
    case model::LayerType::kResidualFfn: {
      const at::Tensor z = norm_ ? norm_->forward(x) : x;
      return x + ffn_norm_->forward(z + linear2_->forward(at::gelu(linear_->forward(z))));
    }
    case model::LayerType::kMoe:
    case model::LayerType::kResidualMoe:
      break;
  }
  throw std::logic_error("LocalLayer: a moe layer does not run locally");
}

at::Tensor LocalLayer::Extend(const at::Tensor& x, const at::Tensor& positions,
                              const std::vector<int64_t>& counts, const std::vector<LayerKv*>& kv) {
  if (type_ == model::LayerType::kPositions)
    return x + embedding_->weight.index_select(0, positions);
  if (type_ == model::LayerType::kAttention) return attention_->Extend(x, positions, counts, kv);
  return forward(x, /*training=*/false);
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
    RemoteMixtureOfExperts moe =
        register_module("layer" + std::to_string(i), RemoteMixtureOfExperts(o, context.swarm));
    moes_.emplace(i, moe);
    if (l.pre_norm) {
      moe_norms_.emplace(
          i, moe->register_module(
                 "norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({l.in_features}))));
    }
  }
}

at::Tensor DmoeModelImpl::MoeForward(size_t index, const at::Tensor& x) {
  auto norm = moe_norms_.find(index);
  at::Tensor in = norm == moe_norms_.end() ? x : norm->second->forward(x);
  return MoeLayerOutput(spec_.layers[index].type, x, moes_.at(index)->forward(in));
}

Status DmoeModelImpl::CheckTokens(const at::Tensor& x, int64_t dims) const {
  if (!x.defined() || x.scalar_type() != at::kLong || x.dim() != dims || x.numel() == 0) {
    return InvalidArgumentError(std::string("model '") + spec_.name + "' takes int64 token ids " +
                                (dims == 1 ? "[n] with n >= 1" : "[B, T] with B, T >= 1"));
  }
  if (x.min().item<int64_t>() < 0 || x.max().item<int64_t>() >= spec_.vocab) {
    return InvalidArgumentError("a token id is outside 0.." + std::to_string(spec_.vocab - 1) +
                                ", the vocabulary of model '" + spec_.name + "'");
  }
  return Status::Ok();
}

at::Tensor DmoeModelImpl::forward(at::Tensor x) {
  if (spec_.input == model::InputKind::kTokens) {
    Status s = CheckTokens(x, 2);
    if (!s.ok()) throw std::invalid_argument(s.message());
  }
  for (size_t i = 0; i < spec_.layers.size(); ++i) {
    auto local = local_.find(i);
    x = local != local_.end() ? local->second.forward(x, is_training()) : MoeForward(i, x);
  }
  return x;
}

Result<std::vector<at::Tensor>> DmoeModelImpl::Decode(const std::vector<SequenceCache*>& caches,
                                                      const std::vector<at::Tensor>& tokens) {
  if (spec_.input != model::InputKind::kTokens) {
    return InvalidArgumentError("model '" + spec_.name +
                                "' is not a token model: nothing to decode");
  }
  if (caches.empty() || caches.size() != tokens.size()) {
    return InvalidArgumentError("Decode takes one token list per cache, and at least one");
  }
  for (size_t s = 0; s < caches.size(); ++s) {
    if (caches[s] == nullptr ||
        std::find(caches.begin(), caches.begin() + static_cast<std::ptrdiff_t>(s), caches[s]) !=
            caches.begin() + static_cast<std::ptrdiff_t>(s)) {
      return InvalidArgumentError("sequence " + std::to_string(s) +
                                  ": its cache is null or given twice");
    }
    DMOE_RETURN_IF_ERROR(CheckTokens(tokens[s], 1));
    const SequenceCache& c = *caches[s];
    if (!c.layers_.empty() && c.layers_.size() != spec_.layers.size()) {
      return InvalidArgumentError("sequence " + std::to_string(s) +
                                  ": its cache was filled by a model of another spec");
    }
    if (c.length_ + tokens[s].size(0) > spec_.max_len) {
      return InvalidArgumentError("sequence " + std::to_string(s) + " would hold " +
                                  std::to_string(c.length_ + tokens[s].size(0)) +
                                  " tokens, past the model's max_len " +
                                  std::to_string(spec_.max_len));
    }
  }
  // Copies of handles: a failure puts them back, so no cache changes.
  std::vector<SequenceCache> before;
  for (SequenceCache* c : caches) before.push_back(*c);
  auto restore = [&] {
    for (size_t s = 0; s < caches.size(); ++s) *caches[s] = before[s];
  };
  try {
    return DecodeChecked(caches, tokens);
  } catch (const NotEnoughExpertsError& e) {
    restore();
    return UnavailableError(std::string("decoding: ") + e.what());
  } catch (const std::exception& e) {
    restore();
    return InternalError(std::string("decoding: ") + e.what());
  }
}

std::vector<at::Tensor> DmoeModelImpl::DecodeChecked(const std::vector<SequenceCache*>& caches,
                                                     const std::vector<at::Tensor>& tokens) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> counts;
  std::vector<at::Tensor> positions;
  for (size_t s = 0; s < caches.size(); ++s) {
    SequenceCache& c = *caches[s];
    c.layers_.resize(spec_.layers.size());
    counts.push_back(tokens[s].size(0));
    positions.push_back(at::arange(c.length_, c.length_ + counts.back(), at::kLong));
  }
  at::Tensor x = at::cat(tokens);
  const at::Tensor position = at::cat(positions);
  std::vector<LayerKv*> kv(caches.size());
  for (size_t i = 0; i < spec_.layers.size(); ++i) {
    auto local = local_.find(i);
    if (local == local_.end()) {
      x = MoeForward(i, x);
      continue;
    }
    for (size_t s = 0; s < caches.size(); ++s) kv[s] = &caches[s]->layers_[i];
    x = local->second.Extend(x, position, counts, kv);
  }
  for (size_t s = 0; s < caches.size(); ++s) caches[s]->length_ += counts[s];
  return at::split_with_sizes(x, counts);
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
