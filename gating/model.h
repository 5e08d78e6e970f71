// DmoeModel: the network a model spec describes (model/model_spec.h), built the same way by the
// trainer (dmoe-train) and the router, so a published state dict means the same thing to both.
//
//   auto spec = model::ParseModelSpec(json);
//   DmoeModel model(*spec, ModelContext{swarm});
//   at::Tensor logits = model(x);                    // x: F32 [B, input_dim]
//   (loss(logits) + model->balance_loss()).backward();
//
// Parameter names follow the layer index: "layer0.weight" for a linear first layer, and
// "layer2.<RemoteMixtureOfExperts names>" for the gating of a moe layer. Used from one thread at a
// time, as torch modules are.
//
// LocalLayer is the builder of every layer that runs in this process (all but moe and
// residual_moe); a network that replaces the moe layers by something else of its own (the dense
// baseline of bench/train_fmnist) builds the rest with it and so matches DmoeModel's parameter
// names, initialization order and forward.
#ifndef DMOE_GATING_MODEL_H_
#define DMOE_GATING_MODEL_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "gating/remote_moe.h"
#include "gating/swarm.h"
#include "model/model_spec.h"
#include "tensor/safetensors.h"

namespace dmoe::gating {

// One layer of a spec that runs here: linear, relu, gelu, layer_norm or dropout.
class LocalLayer {
 public:
  // Builds layer `index` of a spec, whose type must not be moe or residual_moe, and registers its
  // module in `owner` as "layer<index>" (linear and layer_norm: their parameters become
  // "layer<index>.weight" and ".bias"; the others have none). Draws from torch's RNG as the module
  // does, so building the layers in spec order reproduces DmoeModel's initialization.
  LocalLayer(torch::nn::Module& owner, size_t index, const model::LayerSpec& layer);

  // x [.., in_features] -> [.., out_features]. Dropout acts only when `training`.
  at::Tensor forward(const at::Tensor& x, bool training);

 private:
  model::LayerType type_;
  double p_ = 0;  // dropout
  torch::nn::Linear linear_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
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

  // x: [B, input_dim] -> [B, output_dim]. Throws NotEnoughExpertsError
  // (gating/not_enough_experts.h) when a moe layer cannot get k_min answers for some sample and
  // zero outputs are not allowed (see RemoteMixtureOfExperts).
  at::Tensor forward(at::Tensor x);
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
  model::ModelSpec spec_;
  // By index in the spec: the layers that run here, and the moe layers.
  std::map<size_t, LocalLayer> local_;
  std::map<size_t, RemoteMixtureOfExperts> moes_;
};
TORCH_MODULE(DmoeModel);

}  // namespace dmoe::gating

#endif  // DMOE_GATING_MODEL_H_
