// Learning-rate schedules shared by the expert servers' optimizers and the trainer.
#ifndef DMOE_CORE_LR_SCHEDULE_H_
#define DMOE_CORE_LR_SCHEDULE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace dmoe {

// Cosine decay: `lr` at step 0, lr / 2 halfway, 0 at `steps` and after. steps <= 0: `lr`.
inline double CosineDecay(double lr, int64_t step, int64_t steps) {
  if (steps <= 0) return lr;
  const double t = std::clamp(static_cast<double>(step) / static_cast<double>(steps), 0.0, 1.0);
  return lr * 0.5 * (1.0 + std::cos(M_PI * t));
}

}  // namespace dmoe

#endif  // DMOE_CORE_LR_SCHEDULE_H_
