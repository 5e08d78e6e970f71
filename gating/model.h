// DmoeModel: the network a model spec describes (model/model_spec.h), built the same way by the
// trainer (dmoe-train) and the router, so a published state dict means the same thing to both.
//
//   auto spec = model::ParseModelSpec(json);
//   DmoeModel model(*spec, ModelContext{swarm});
//   at::Tensor logits = model(x);                    // x: F32 [B, input_dim]
//   (loss(logits) + model->balance_loss()).backward();
//
// A token model (a decoder-only transformer) takes int64 token ids [B, T] and answers logits
// [B, T, vocab]; its moe layers see every token as one sample. For generation, Decode() runs a
// prompt once and then one token per sequence per call, keeping each sequence's attention keys and
// values in a SequenceCache the caller owns:
//
//   SequenceCache a, b;
//   auto logits = model->Decode({&a, &b}, {prompt_a, prompt_b});   // [n_a, vocab], [n_b, vocab]
//   logits = model->Decode({&a, &b}, {next_a, next_b});            // one new token each
//   logits = model->Decode({&b}, {next_b});                        // a finished: just drop it
//
// Parameter names follow the layer index: "layer0.weight" for a linear first layer, and
// "layer2.<RemoteMixtureOfExperts names>" for the gating of a moe layer (plus "layer2.norm.*" for
// a residual_moe with pre_norm); "layer0.weight" [vocab, dim] for an embedding, "layer1.weight"
// [max_len, dim] for positions, "layer3.{norm,qkv,proj}.*" for attention, and "layer9.weight"
// [vocab, dim] for an lm_head that is not tied (a tied one has no parameter of its own: it reads
// "layer0.weight"), and "layer4.{norm,linear1,linear2,ffn_norm}.*" for a residual_ffn (norm only
// with pre_norm). Used from one thread at a time, as torch modules are.
//
// LocalLayer is the builder of every layer that runs in this process (all but moe and
// residual_moe); a network that replaces the moe layers by something else of its own (the dense
// baseline of bench/train_fmnist) builds the rest with it and so matches DmoeModel's parameter
// names, initialization order and forward.
#ifndef DMOE_GATING_MODEL_H_
#define DMOE_GATING_MODEL_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "gating/attention.h"
#include "gating/remote_moe.h"
#include "gating/swarm.h"
#include "model/model_spec.h"
#include "tensor/safetensors.h"

namespace dmoe::gating {

// One layer of a spec that runs here: every type but moe and residual_moe.
class LocalLayer {
 public:
  // Builds layer `index` of a spec, whose type must not be moe or residual_moe, and registers its
  // module in `owner` as "layer<index>" (see DmoeModel for the parameter names). Draws from
  // torch's RNG as the module does, so building the layers in spec order reproduces DmoeModel's
  // initialization. A tied lm_head takes owner's "layer0.weight", the embedding a token model
  // has first, so it must be built after it, in the same owner.
  LocalLayer(torch::nn::Module& owner, size_t index, const model::LayerSpec& layer);

  // x [.., in_features] -> [.., out_features]; the embedding takes int64 token ids [..] instead.
  // Positions and attention take whole sequences [B, T, d] starting at position 0, and throw
  // std::invalid_argument past max_len. Dropout acts only when `training`.
  at::Tensor forward(const at::Tensor& x, bool training);

  // The same layer over packed new tokens of several sequences (DmoeModel::Decode): x [N, ..],
  // `positions` [N] int64 each token's position in its sequence, sequence s owning the next
  // counts[s] rows; attention reads and extends *kv[s]. Other types act as forward(x, false).
  at::Tensor Extend(const at::Tensor& x, const at::Tensor& positions,
                    const std::vector<int64_t>& counts, const std::vector<LayerKv*>& kv);

 private:
  model::LayerType type_;
  double p_ = 0;         // dropout
  int64_t max_len_ = 0;  // positions
  torch::nn::Linear linear_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Linear linear2_{nullptr};       // residual_ffn: linear_ is its first linear
  torch::nn::LayerNorm ffn_norm_{nullptr};   // residual_ffn: after the ffn; norm_ is its pre-norm
  torch::nn::Embedding embedding_{nullptr};  // embedding and positions
  CausalSelfAttention attention_{nullptr};
  at::Tensor head_weight_;  // lm_head: its own weight or the embedding's
};

// The attention keys and values one sequence has left in a token model: what DmoeModel::Decode
// needs to go on where the sequence stopped. The caller owns one per sequence and may start,
// continue or drop any sequence at any call; a cache belongs to the model that filled it (or one
// built from the same spec). Copying it copies handles to the same tensors, which Decode never
// changes in place.
class SequenceCache {
 public:
  // The tokens the sequence holds so far.
  int64_t length() const { return length_; }

 private:
  friend class DmoeModelImpl;
  int64_t length_ = 0;
  std::vector<LayerKv> layers_;  // by spec layer index; only attention layers' are filled
};

// The output of a moe layer given its input `x` and the experts' mixture `y`: y for moe, x + y for
// residual_moe.
inline at::Tensor MoeLayerOutput(model::LayerType type, const at::Tensor& x, const at::Tensor& y) {
  return type == model::LayerType::kResidualMoe ? x + y : y;
}

struct ModelContext {
  std::shared_ptr<Swarm> swarm;
  safetensors::DType wire_dtype = safetensors::DType::kF32;
  double balance_loss_weight = 0.01;
  // Forward-only users (the router) may prefer zeros plus a count over an error.
  bool allow_zero_outputs = false;
};

class DmoeModelImpl : public torch::nn::Module {
 public:
  DmoeModelImpl(model::ModelSpec spec, ModelContext context);

  // x: [B, input_dim] -> [B, output_dim]; for a token model int64 token ids [B, T] with
  // T <= max_len -> logits [B, T, vocab], every token attending to those before it. Throws
  // NotEnoughExpertsError (gating/not_enough_experts.h) when a moe layer cannot get k_min answers
  // for some sample and zero outputs are not allowed (see RemoteMixtureOfExperts), and
  // std::invalid_argument when x does not fit the spec.
  at::Tensor forward(at::Tensor x);

  // Generation for a token model, without gradients: sequence s takes its next tokens tokens[s]
  // (int64 [n_s], n_s >= 1: a whole prompt, or the one token just sampled) after those already in
  // *caches[s], and gets back logits [n_s, vocab] (row i scores the token after tokens[s][i]).
  // The same as forward() over each whole sequence, computing each token once. Every layer but
  // attention runs on all the new tokens of all sequences together, so a moe layer sends each
  // chosen expert one request per call holding only new tokens. The caches grow by n_s.
  // Errors, after which no cache has changed: kInvalidArgument when this is not a token model,
  // caches and tokens differ in number or are empty, a cache is null or given twice, a token list
  // is not int64 [n >= 1] of ids below vocab, a sequence would pass max_len, or a cache was filled
  // by another spec; kUnavailable when a moe layer got fewer than k_min answers for some token (and
  // zero outputs are not allowed); kInternal for any other failure of the computation.
  Result<std::vector<at::Tensor>> Decode(const std::vector<SequenceCache*>& caches,
                                         const std::vector<at::Tensor>& tokens);
  // Sum of the moe layers' load-balancing losses of the last forward.
  at::Tensor balance_loss() const;
  // Counts summed over the moe layers.
  MoeStats moe_stats() const;
  // For each sample of the last forward, the uids that answered it in the last moe layer.
  std::vector<std::vector<std::string>> last_experts() const;
  const model::ModelSpec& spec() const { return spec_; }

  // Parameters and buffers by name, detached.
  std::map<std::string, at::Tensor> StateDict() const;
  // Copies every tensor of `state` into the parameter of the same name. kInvalidArgument when a
  // name is missing or extra or a shape or dtype differs; nothing changes then.
  Status LoadStateDict(const std::map<std::string, at::Tensor>& state);

 private:
  // Layer `index`, a moe or residual_moe, on x.
  at::Tensor MoeForward(size_t index, const at::Tensor& x);
  // kInvalidArgument unless x is int64 token ids below vocab, of `dims` dimensions.
  Status CheckTokens(const at::Tensor& x, int64_t dims) const;
  // Decode once its input was checked; may throw.
  std::vector<at::Tensor> DecodeChecked(const std::vector<SequenceCache*>& caches,
                                        const std::vector<at::Tensor>& tokens);

  model::ModelSpec spec_;
  // By index in the spec: the layers that run here, the moe layers, and the layer norms of the
  // residual_moe layers with pre_norm.
  std::map<size_t, LocalLayer> local_;
  std::map<size_t, RemoteMixtureOfExperts> moes_;
  std::map<size_t, torch::nn::LayerNorm> moe_norms_;
};
TORCH_MODULE(DmoeModel);

}  // namespace dmoe::gating

#endif  // DMOE_GATING_MODEL_H_
