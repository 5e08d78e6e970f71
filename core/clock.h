// The clock seam. Code that reasons about time (record expiry, timestamps, deadlines, bans,
// timeouts in protocol cores) takes a Clock so tests can drive it with FakeClock instead of
// sleeping. Nothing outside this file reads std::chrono's clocks for those purposes.
//
// Two domains: unix time (NowUnixMs), for what crosses machines (record expiry, signed
// timestamps), and monotonic time (NowMonotonicUs, Now), for intervals and deadlines within one
// process. A Deadline is a point of the monotonic domain, so it passes only as its Clock moves.
#ifndef DMOE_CORE_CLOCK_H_
#define DMOE_CORE_CLOCK_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <ratio>

namespace dmoe {

// A Clock's monotonic domain as a std::chrono clock type, so that its time points and durations
// mix with std::chrono arithmetic (`deadline - clock.Now()` is a duration, `Now() + 2s` a time
// point). It has no now() of its own: the time is read through a Clock.
struct MonotonicClock {
  using rep = int64_t;
  using period = std::micro;
  using duration = std::chrono::microseconds;
  using time_point = std::chrono::time_point<MonotonicClock>;
  static constexpr bool is_steady = true;
};

// When something must be done by, on a Clock's monotonic domain. Deadline::max() never passes.
// Deadlines are compared only with times of the same Clock.
using Deadline = MonotonicClock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  // Milliseconds since the unix epoch. Safe to call from any thread.
  virtual int64_t NowUnixMs() const = 0;
  // Microseconds on a monotonic clock with an arbitrary origin, for measuring intervals.
  virtual int64_t NowMonotonicUs() const = 0;
  // NowMonotonicUs as a time point: what deadlines are computed from and compared with.
  MonotonicClock::time_point Now() const {
    return MonotonicClock::time_point(MonotonicClock::duration(NowMonotonicUs()));
  }
};

// The steady_clock time at which `deadline` passes if `clock` keeps pace with real time from now
// on: the bound for a condition-variable wait or a network timer, which run in real time. A
// deadline already passed gives steady_clock's now, Deadline::max() gives steady_clock's max.
// Under a FakeClock the waiter wakes after the real time the fake deadline is away, and should
// then read the clock again rather than assume the deadline passed.
std::chrono::steady_clock::time_point RealTimeBound(const Clock& clock, Deadline deadline);

// The system clock. Stateless; one shared instance is fine.
class RealClock final : public Clock {
 public:
  int64_t NowUnixMs() const override;
  int64_t NowMonotonicUs() const override;
  // A process-wide instance. Pass it down from where a process is wired rather than reaching for
  // it deep inside, so that tests can hand in a FakeClock instead.
  static const RealClock& Instance();
};

// A clock that moves only when told. Both readings advance together. Thread-safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_unix_ms = 1'700'000'000'000) : unix_us_(start_unix_ms * 1000) {}
  int64_t NowUnixMs() const override { return unix_us_.load() / 1000; }
  int64_t NowMonotonicUs() const override { return unix_us_.load(); }
  void AdvanceMs(int64_t ms) { unix_us_ += ms * 1000; }
  void AdvanceUs(int64_t us) { unix_us_ += us; }
  void Advance(MonotonicClock::duration d) { unix_us_ += d.count(); }
  void SetUnixMs(int64_t ms) { unix_us_ = ms * 1000; }

 private:
  std::atomic<int64_t> unix_us_;
};

}  // namespace dmoe

#endif  // DMOE_CORE_CLOCK_H_
