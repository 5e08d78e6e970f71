// The one error a mixture-of-experts forward throws on purpose: some sample got fewer than k_min
// expert answers (and zero outputs were not allowed). It is thrown through torch's module call,
// which has no Status return, and means the swarm could not serve this batch now: the caller may
// skip the batch or retry later (the trainer does), or report unavailable (the router does). Any
// other exception from a forward or backward is a bug or a broken environment, not the swarm.
#ifndef DMOE_GATING_NOT_ENOUGH_EXPERTS_H_
#define DMOE_GATING_NOT_ENOUGH_EXPERTS_H_

#include <stdexcept>
#include <string>

namespace dmoe::gating {

class NotEnoughExpertsError : public std::runtime_error {
 public:
  explicit NotEnoughExpertsError(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace dmoe::gating

#endif  // DMOE_GATING_NOT_ENOUGH_EXPERTS_H_
