// DmoeModel: the network a model spec describes (gating/model_spec.h), built the same way by the
// trainer (dmoe-train) and the router, so a published state dict means the same thing to both.
//
//   auto spec = ParseModelSpec(json);
//   DmoeModel model(*spec, ModelContext{swarm});
//   at::Tensor logits = model(x);                    // x: F32 [B, input_dim]
//   (loss(logits) + model->balance_loss()).backward();
//
// Parameter names follow the layer index: "layer0.weight" for a linear first layer, and
// "layer2.<RemoteMixtureOfExperts names>" for the gating of a moe layer. Used from one thread at a
// time, as torch modules are.
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
#include "gating/model_spec.h"
#include "gating/remote_moe.h"
#include "gating/swarm.h"
#include "tensor/safetensors.h"

namespace dmoe::gating {

struct ModelContext {
  std::shared_ptr<Swarm> swarm;
  safetensors::DType wire_dtype = safetensors::DType::kF32;
  double balance_loss_weight = 0.01;
  // Forward-only users (the router) may prefer zeros plus a count over an error.
  bool allow_zero_outputs = false;
};

class DmoeModelImpl : public torch::nn::Module {
 public:
  DmoeModelImpl(ModelSpec spec, ModelContext context);

  // x: [B, input_dim] -> [B, output_dim]. Throws std::runtime_error when a moe layer cannot get
  // k_min answers for some sample (see RemoteMixtureOfExperts).
  at::Tensor forward(at::Tensor x);
  // Sum of the moe layers' load-balancing losses of the last forward.
  at::Tensor balance_loss() const;
  // Counts summed over the moe layers.
  MoeStats moe_stats() const;
  // For each sample of the last forward, the uids that answered it in the last moe layer.
  std::vector<std::vector<std::string>> last_experts() const;
  const ModelSpec& spec() const { return spec_; }

  // Parameters and buffers by name, detached.
  std::map<std::string, at::Tensor> StateDict() const;
  // Copies every tensor of `state` into the parameter of the same name. kInvalidArgument when a
  // name is missing or extra or a shape or dtype differs; nothing changes then.
  Status LoadStateDict(const std::map<std::string, at::Tensor>& state);

 private:
  ModelSpec spec_;
  // Parametric layers by index in the spec; relu and gelu have none.
  std::map<size_t, torch::nn::Linear> linears_;
  std::map<size_t, torch::nn::LayerNorm> norms_;
  std::vector<RemoteMixtureOfExperts> moes_;  // in layer order
};
TORCH_MODULE(DmoeModel);

}  // namespace dmoe::gating

#endif  // DMOE_GATING_MODEL_H_
