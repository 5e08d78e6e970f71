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
  double weight_decay = 0.0;  // decoupled: p -= lr * weight_decay * p
  // The gradient's global L2 norm is scaled down to this before the update; 0 = no clipping. On by
  // default (dmoe-server --clip-grad-norm): a peer's gradient of 1e38 then moves the weights no
  // more than an honest one. Adam is nearly scale-free, so an honest run hardly notices.
  double clip_grad_norm = 1.0;
  int64_t warmup_steps = 0;  // lr ramps linearly from lr/warmup to lr over these steps
  int64_t decay_steps = 0;   // then cosine decay from lr to 0 over these steps; 0 = none
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
  // Applies one update from the parameters' .grad() and clears them; increments step. When the
  // update would leave any parameter or optimizer state non-finite (an overflow), it is rolled
  // back: parameters, state and step are exactly as before, the gradients are cleared, and the
  // answer is kInvalidArgument. Costs one pass over the gradients (their norm and largest value)
  // and, only when those make an overflow possible, a copy of the state to roll back to.
  Status Step();
  void ZeroGrad();
  int64_t step() const { return step_; }

  // Re-reads the largest magnitudes of parameters and state that Step's overflow bound relies on.
  // Call after changing the parameters other than through Step (e.g. loading a checkpoint).
  void Remeasure() { MeasureExtent(); }

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
  // The largest |value| over every slot's parameter, m and v: what bounds the next update.
  struct Extent {
    double p = 0, m = 0, v = 0;
  };
  // True when an update from gradients no larger than `max_grad` (after clipping) cannot overflow
  // a float, judged from extent_.
  bool UpdateCannotOverflow(double max_grad, double lr, double decay) const;
  void MeasureExtent();

  OptimizerOptions options_;
  std::vector<Slot> slots_;
  int64_t step_ = 0;
  Extent extent_;
};

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_OPTIMIZER_H_
