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
#include "expert_server/options.h"

namespace dmoe::expert_server {

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
