#include "core/clock.h"

#include <chrono>

namespace dmoe {

int64_t RealClock::NowUnixMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t RealClock::NowMonotonicUs() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

const RealClock& RealClock::Instance() {
  static const RealClock clock;
  return clock;
}

}  // namespace dmoe
