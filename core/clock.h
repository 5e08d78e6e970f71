// The clock seam. Code that reasons about time (record expiry, timestamps, timeouts in protocol
// cores) takes a Clock so tests can drive it with FakeClock instead of sleeping.
#ifndef DMOE_CORE_CLOCK_H_
#define DMOE_CORE_CLOCK_H_

#include <atomic>
#include <cstdint>

namespace dmoe {

class Clock {
 public:
  virtual ~Clock() = default;
  // Milliseconds since the unix epoch. Safe to call from any thread.
  virtual int64_t NowUnixMs() const = 0;
  // Microseconds on a monotonic clock with an arbitrary origin, for measuring intervals.
  virtual int64_t NowMonotonicUs() const = 0;
};

// The system clock. Stateless; one shared instance is fine.
class RealClock final : public Clock {
 public:
  int64_t NowUnixMs() const override;
  int64_t NowMonotonicUs() const override;
  // A process-wide instance, for code that is not given a clock explicitly.
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
  void SetUnixMs(int64_t ms) { unix_us_ = ms * 1000; }

 private:
  std::atomic<int64_t> unix_us_;
};

}  // namespace dmoe

#endif  // DMOE_CORE_CLOCK_H_
