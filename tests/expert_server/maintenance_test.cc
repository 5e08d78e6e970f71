// The maintenance thread's timers, driven by a FakeClock: the thread sleeps until next_due_us() and
// then runs what TakeDue says, so these are its wake-ups.
#include "expert_server/maintenance.h"

#include <gtest/gtest.h>

#include <limits>
#include <optional>
#include <vector>

#include "core/clock.h"

namespace dmoe::expert_server {
namespace {

constexpr int64_t kSecondUs = 1'000'000;

// A server without a database once kept a checkpoint time in the past and spun a core from the
// first --checkpoint-every on. Without one, it wakes once per announcement and for nothing else.
TEST(MaintenanceTimersTest, WithoutADatabaseTheThreadWakesOnlyToAnnounce) {
  FakeClock clock;
  const int64_t start_us = clock.NowMonotonicUs();
  MaintenanceTimers timers(start_us, /*checkpoint_every_us=*/std::nullopt,
                           /*announce_every_us=*/kSecondUs);
  for (int wake = 1; wake <= 10; ++wake) {
    const int64_t due_us = timers.next_due_us();
    ASSERT_EQ(due_us, start_us + wake * kSecondUs) << "wake-up " << wake;
    clock.AdvanceUs(due_us - clock.NowMonotonicUs());
    const MaintenanceTimers::Due due = timers.TakeDue(clock.NowMonotonicUs());
    EXPECT_TRUE(due.announce) << "wake-up " << wake;
    EXPECT_FALSE(due.checkpoint) << "wake-up " << wake;
  }
}

TEST(MaintenanceTimersTest, WithNeitherJobTheThreadSleepsUntilStopped) {
  FakeClock clock;
  MaintenanceTimers timers(clock.NowMonotonicUs(), std::nullopt, std::nullopt);
  EXPECT_EQ(timers.next_due_us(), std::numeric_limits<int64_t>::max());
  clock.AdvanceMs(3'600'000);
  const MaintenanceTimers::Due due = timers.TakeDue(clock.NowMonotonicUs());
  EXPECT_FALSE(due.announce);
  EXPECT_FALSE(due.checkpoint);
}

// Each job comes round on its own period, counted from when it last ran.
TEST(MaintenanceTimersTest, CheckpointsAndAnnouncementsKeepTheirOwnPeriods) {
  FakeClock clock;
  const int64_t start_us = clock.NowMonotonicUs();
  MaintenanceTimers timers(start_us, /*checkpoint_every_us=*/3 * kSecondUs,
                           /*announce_every_us=*/2 * kSecondUs);
  std::vector<int64_t> checkpoints_s, announcements_s;
  while (clock.NowMonotonicUs() - start_us < 12 * kSecondUs) {
    clock.AdvanceUs(timers.next_due_us() - clock.NowMonotonicUs());
    const MaintenanceTimers::Due due = timers.TakeDue(clock.NowMonotonicUs());
    EXPECT_TRUE(due.checkpoint || due.announce) << "a wake-up with nothing to do";
    const int64_t at_s = (clock.NowMonotonicUs() - start_us) / kSecondUs;
    if (due.checkpoint) checkpoints_s.push_back(at_s);
    if (due.announce) announcements_s.push_back(at_s);
  }
  EXPECT_EQ(checkpoints_s, (std::vector<int64_t>{3, 6, 9, 12}));
  EXPECT_EQ(announcements_s, (std::vector<int64_t>{2, 4, 6, 8, 10, 12}));
  // A late wake-up (a checkpoint that took 5 s) moves the next one, never bunches them.
  clock.AdvanceUs(5 * kSecondUs);
  const MaintenanceTimers::Due late = timers.TakeDue(clock.NowMonotonicUs());
  EXPECT_TRUE(late.checkpoint && late.announce);
  EXPECT_EQ(timers.next_due_us(), clock.NowMonotonicUs() + 2 * kSecondUs);
}

}  // namespace
}  // namespace dmoe::expert_server
