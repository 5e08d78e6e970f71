// Per-expert optimizers (Adam with decoupled weight decay, or SGD with momentum), gradient-norm
// clipping and linear learning-rate warmup. The state is plain named tensors so a checkpoint can
// store it as safetensors. Not thread-safe: used by the expert's owner only.
#ifndef DMOE_EXPERT_SERVER_OPTIMIZER_H_
#define DMOE_EXPERT_SERVER_OPTIMIZER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace dmoe::expert_server {

struct OptimizerOptions {
  std::string kind = "adam";  // "adam" or "sgd"
  double lr = 1e-3;
  double beta1 = 0.9;  // Adam; for SGD, the momentum (0 = plain SGD)
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;    // decoupled: p -= lr * weight_decay * p
  double clip_grad_norm = 0.0;  // 0 = no clipping
  int64_t warmup_steps = 0;     // lr ramps linearly from lr/warmup to lr over these steps
  int64_t decay_steps = 0;      // then cosine decay from lr to 0 over these steps; 0 = none
};

Status ValidateOptimizerOptions(const OptimizerOptions& options);

class Optimizer {
 public:
  // `params` are the module's named parameters (requires_grad tensors).
  Optimizer(std::vector<std::pair<std::string, at::Tensor>> params, OptimizerOptions options);

  // The learning rate the next Step will use.
  double CurrentLr() const;
  // True when every gradient is finite; Step must not be called otherwise.
  bool GradientsFinite() const;
  // Applies one update from the parameters' .grad() and clears them; increments step.
  void Step();
  void ZeroGrad();
  int64_t step() const { return step_; }

  // "optim/<param>/<slot>" tensors plus "optim/step" (I64 scalar).
  std::vector<std::pair<std::string, at::Tensor>> State() const;
  Status LoadState(const std::vector<std::pair<std::string, at::Tensor>>& state);

 private:
  struct Slot {
    std::string name;
    at::Tensor param;
    at::Tensor m;  // Adam first moment, or SGD momentum buffer
    at::Tensor v;  // Adam second moment (undefined for SGD)
  };
  OptimizerOptions options_;
  std::vector<Slot> slots_;
  int64_t step_ = 0;
};

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_OPTIMIZER_H_
