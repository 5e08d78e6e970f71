#include "core/clock.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace dmoe
