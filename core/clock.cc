#include "core/clock.h"

namespace dmoe {

std::chrono::steady_clock::time_point RealTimeBound(const Clock& clock, Deadline deadline) {
  using Steady = std::chrono::steady_clock;
  const Steady::time_point now = Steady::now();
  const MonotonicClock::time_point at = clock.Now();
  if (deadline <= at) return now;
  if (deadline == Deadline::max()) return Steady::time_point::max();
  const MonotonicClock::duration left = deadline - at;
  // A deadline further away than steady_clock can represent never passes either.
  if (left >=
      std::chrono::duration_cast<MonotonicClock::duration>(Steady::time_point::max() - now)) {
    return Steady::time_point::max();
  }
  return now + std::chrono::duration_cast<Steady::duration>(left);
}

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
