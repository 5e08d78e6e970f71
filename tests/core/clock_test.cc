#include "core/clock.h"

#include <gtest/gtest.h>

#include <chrono>

namespace dmoe {
namespace {

TEST(ClockTest, FakeClockMovesOnlyWhenTold) {
  FakeClock clock(5000);
  EXPECT_EQ(clock.NowUnixMs(), 5000);
  int64_t mono = clock.NowMonotonicUs();
  clock.AdvanceMs(250);
  EXPECT_EQ(clock.NowUnixMs(), 5250);
  EXPECT_EQ(clock.NowMonotonicUs() - mono, 250'000);
  clock.AdvanceUs(999);
  EXPECT_EQ(clock.NowUnixMs(), 5250);
  clock.AdvanceUs(1);
  EXPECT_EQ(clock.NowUnixMs(), 5251);
}

TEST(ClockTest, RealClockIsNearTheSystemTimeAndMonotonic) {
  const Clock& clock = RealClock::Instance();
  // 2023-11-14 .. 2100-01-01: a sanity range, not a timing assertion.
  EXPECT_GT(clock.NowUnixMs(), 1'700'000'000'000);
  EXPECT_LT(clock.NowUnixMs(), 4'102'444'800'000);
  int64_t a = clock.NowMonotonicUs();
  int64_t b = clock.NowMonotonicUs();
  EXPECT_LE(a, b);
}

TEST(ClockTest, DeadlinesAreOnTheClocksMonotonicTime) {
  using namespace std::chrono_literals;
  FakeClock clock;
  const Deadline deadline = clock.Now() + 2s;
  EXPECT_EQ(deadline - clock.Now(), 2s);
  clock.AdvanceMs(1999);
  EXPECT_LT(clock.Now(), deadline);
  clock.Advance(1ms);
  EXPECT_GE(clock.Now(), deadline);
  EXPECT_EQ(clock.Now().time_since_epoch().count(), clock.NowMonotonicUs());
  EXPECT_LT(clock.Now(), Deadline::max());
}

TEST(ClockTest, RealTimeBoundIsWhereTheDeadlinePassesInRealTime) {
  using namespace std::chrono_literals;
  using Steady = std::chrono::steady_clock;
  FakeClock clock;
  // A deadline 5 s away on the fake clock: 5 s of real time from now.
  const Steady::time_point before = Steady::now();
  const Steady::time_point bound = RealTimeBound(clock, clock.Now() + 5s);
  const Steady::time_point after = Steady::now();
  EXPECT_GE(bound, before + 5s);
  EXPECT_LE(bound, after + 5s);
  // Passed deadlines bound nothing; Deadline::max() bounds nothing either way.
  clock.Advance(10s);
  const Steady::time_point passed = RealTimeBound(clock, clock.Now() - 1s);
  EXPECT_LE(passed, Steady::now());
  EXPECT_EQ(RealTimeBound(clock, Deadline::max()), Steady::time_point::max());
  EXPECT_EQ(RealTimeBound(clock, Deadline::max() - 1s), Steady::time_point::max());
}

}  // namespace
}  // namespace dmoe
