// The trainer's pure parts: the learning-rate schedule and the epoch order a resumed trainer and
// the dense baseline rely on.
#include "gating/trainer.h"

#include <ATen/ATen.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gating/model.h"

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

// The spec's dropout layer: active while training (zeroes about p of the elements, scales the rest
// by 1 / (1 - p)), the identity in evaluation, as the router runs the model.
TEST(TrainerTest, DropoutLayerActsOnlyWhileTraining) {
  Result<ModelSpec> spec = ParseModelSpec(
      R"({"name":"m","input_dim":64,"layers":[{"type":"dropout","p":0.5},{"type":"relu"}]})");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  DmoeModel model(*spec, ModelContext{});
  at::manual_seed(1);
  at::Tensor x = at::rand({32, 64}) + 1.0;  // all positive: relu keeps them
  model->eval();
  EXPECT_TRUE(at::equal(model->forward(x), x));
  model->train();
  at::Tensor y = model->forward(x);
  const double zeroed = (y == 0).to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(zeroed, 0.5, 0.05);
  at::Tensor kept = y != 0;
  EXPECT_TRUE(at::allclose(y.masked_select(kept), x.masked_select(kept) * 2.0));
}

}  // namespace
}  // namespace dmoe::gating
