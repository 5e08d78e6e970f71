// The trainer's pure parts: the learning-rate schedule and the epoch order a resumed trainer and
// the dense baseline rely on.
#include "gating/trainer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace dmoe::gating {
namespace {

TEST(TrainerTest, CosineScheduleFallsFromLrToZeroAndConstantStays) {
  EXPECT_DOUBLE_EQ(ScheduledLr(1e-3, "cosine", 0, 1000), 1e-3);
  EXPECT_NEAR(ScheduledLr(1e-3, "cosine", 500, 1000), 0.5e-3, 1e-15);
  EXPECT_NEAR(ScheduledLr(1e-3, "cosine", 250, 1000), 1e-3 * (1 + std::sqrt(0.5)) / 2, 1e-15);
  EXPECT_NEAR(ScheduledLr(1e-3, "cosine", 1000, 1000), 0.0, 1e-18);
  EXPECT_NEAR(ScheduledLr(1e-3, "cosine", 5000, 1000), 0.0, 1e-18) << "clamped past the end";
  double previous = 1;
  for (int64_t step = 0; step <= 1000; step += 50) {
    const double lr = ScheduledLr(1.0, "cosine", step, 1000);
    EXPECT_LE(lr, previous) << "step " << step;
    previous = lr;
  }
  for (int64_t step : {0, 10, 999, 5000}) {
    EXPECT_DOUBLE_EQ(ScheduledLr(2e-3, "constant", step, 1000), 2e-3);
  }
  EXPECT_DOUBLE_EQ(ScheduledLr(2e-3, "cosine", 3, 0), 2e-3) << "no step budget: no schedule";
}

TEST(TrainerTest, EpochOrderIsAPermutationFixedBySeedAndEpoch) {
  std::vector<int64_t> a = EpochOrder(7, 0, 1000), b = EpochOrder(7, 0, 1000);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, EpochOrder(7, 1, 1000));
  EXPECT_NE(a, EpochOrder(8, 0, 1000));
  std::vector<int64_t> sorted = a, all(1000);
  std::sort(sorted.begin(), sorted.end());
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(sorted, all);
}

}  // namespace
}  // namespace dmoe::gating
