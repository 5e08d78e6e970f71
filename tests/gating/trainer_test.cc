// The trainer's pure parts: the learning-rate schedule and the epoch order a resumed trainer and
// the dense baseline rely on; its checks before it joins a swarm; and the model's layers and typed
// error it relies on.
#include "gating/trainer.h"

#include <ATen/ATen.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "core/clock.h"
#include "gating/model.h"
#include "gating/not_enough_experts.h"
#include "gating/swarm.h"
#include "model/model_spec.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::gating {
namespace {

TEST(TrainerTest, CosineScheduleFallsFromLrToZeroAndConstantStays) {
  EXPECT_DOUBLE_EQ(ScheduledLr(1e-3, LrSchedule::kCosine, 0, 1000), 1e-3);
  EXPECT_NEAR(ScheduledLr(1e-3, LrSchedule::kCosine, 500, 1000), 0.5e-3, 1e-15);
  EXPECT_NEAR(ScheduledLr(1e-3, LrSchedule::kCosine, 250, 1000), 1e-3 * (1 + std::sqrt(0.5)) / 2,
              1e-15);
  EXPECT_NEAR(ScheduledLr(1e-3, LrSchedule::kCosine, 1000, 1000), 0.0, 1e-18);
  EXPECT_NEAR(ScheduledLr(1e-3, LrSchedule::kCosine, 5000, 1000), 0.0, 1e-18)
      << "clamped past the end";
  double previous = 1;
  for (int64_t step = 0; step <= 1000; step += 50) {
    const double lr = ScheduledLr(1.0, LrSchedule::kCosine, step, 1000);
    EXPECT_LE(lr, previous) << "step " << step;
    previous = lr;
  }
  for (int64_t step : {0, 10, 999, 5000}) {
    EXPECT_DOUBLE_EQ(ScheduledLr(2e-3, LrSchedule::kConstant, step, 1000), 2e-3);
  }
  EXPECT_DOUBLE_EQ(ScheduledLr(2e-3, LrSchedule::kCosine, 3, 0), 2e-3)
      << "no step budget: no schedule";
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
  Result<model::ModelSpec> spec = model::ParseModelSpec(
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

// LocalLayer is what DmoeModel builds its local layers with, so another network built from the same
// spec with it (the dense baseline) has the same parameter names and, from the same seed, values.
TEST(TrainerTest, LocalLayersMatchTheModelsNamesAndInitialization) {
  Result<model::ModelSpec> spec = model::ParseModelSpec(
      R"({"name":"m","input_dim":6,"layers":[{"type":"linear","out":4},{"type":"gelu"},
          {"type":"layer_norm"},{"type":"linear","out":3}]})");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  at::manual_seed(3);
  DmoeModel model(*spec, ModelContext{});
  at::manual_seed(3);
  torch::nn::Module other;
  std::vector<LocalLayer> layers;
  for (size_t i = 0; i < spec->layers.size(); ++i) layers.emplace_back(other, i, spec->layers[i]);
  std::map<std::string, at::Tensor> mine = model->StateDict();
  std::map<std::string, at::Tensor> theirs;
  for (const auto& item : other.named_parameters()) theirs[item.key()] = item.value();
  ASSERT_EQ(mine.size(), 6u);
  ASSERT_EQ(theirs.size(), mine.size());
  for (const auto& [name, t] : mine) {
    ASSERT_TRUE(theirs.count(name)) << name;
    EXPECT_TRUE(at::equal(theirs[name], t)) << name;
  }
  at::Tensor x = at::rand({5, 6}), y = x;
  for (LocalLayer& l : layers) y = l.forward(y, /*training=*/true);
  EXPECT_TRUE(at::allclose(model->forward(x), y));
}

// residual_ffn, the dense baseline's layer, is x + ffn(layer_norm(x)) with ffn what an ffn expert
// computes, and holds exactly the parameters its spec counts.
TEST(TrainerTest, AResidualFfnComputesAnFfnExpertOnTheNormedInput) {
  Result<model::ModelSpec> spec = model::ParseModelSpec(
      R"({"name":"d","input_dim":6,"layers":[{"type":"residual_ffn","hidden":24,"pre_norm":true}]})");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  at::manual_seed(4);
  DmoeModel model(*spec, ModelContext{});
  std::map<std::string, at::Tensor> p = model->StateDict();
  EXPECT_EQ(p.size(), 8u);  // norm, linear1, linear2, ffn_norm: a weight and a bias each
  const at::Tensor x = at::randn({5, 6});
  const at::Tensor z = at::layer_norm(x, {6}, p["layer0.norm.weight"], p["layer0.norm.bias"]);
  const at::Tensor h =
      at::gelu(at::linear(z, p["layer0.linear1.weight"], p["layer0.linear1.bias"]));
  const at::Tensor f =
      at::layer_norm(z + at::linear(h, p["layer0.linear2.weight"], p["layer0.linear2.bias"]), {6},
                     p["layer0.ffn_norm.weight"], p["layer0.ffn_norm.bias"]);
  EXPECT_TRUE(at::allclose(model->forward(x), x + f, 1e-5, 1e-6));
  int64_t count = 0;
  for (const at::Tensor& t : model->parameters()) count += t.numel();
  EXPECT_EQ(static_cast<double>(count), spec->LocalParameterCount());
}

// A moe layer whose experts cannot be found throws the typed error the trainer and evaluation
// catch (and nothing else), unless zero outputs are allowed.
TEST(TrainerTest, AMoeLayerWithoutExpertsThrowsNotEnoughExperts) {
  Result<model::ModelSpec> spec = model::ParseModelSpec(
      R"({"name":"m","input_dim":4,"layers":[{"type":"moe","uid_prefix":"ffn","grid":[2],
          "k_best":1,"k_min":1,"forward_timeout_ms":200}]})");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  auto offline = std::make_shared<Swarm>(
      [](std::vector<std::string>, std::chrono::milliseconds,
         std::function<void(ExpertDirectory::KeyResults)> done) { done({}); },
      RealClock::Instance());
  DmoeModel strict(*spec, ModelContext{offline, safetensors::DType::kF32, 0.01, false});
  EXPECT_THROW(strict->forward(at::rand({3, 4})), NotEnoughExpertsError);
  DmoeModel lenient(*spec, ModelContext{offline, safetensors::DType::kF32, 0.01, true});
  EXPECT_TRUE(at::equal(lenient->forward(at::rand({3, 4})), at::zeros({3, 4})));
}

// PrepareTrainer refuses what it can before the process joins a swarm.
TEST(TrainerTest, PrepareRefusesBadOptionsAndSpecsBeforeJoining) {
  testing::TempDir dir("dmoe-trainer-test");
  const Clock& clock = RealClock::Instance();
  TrainerOptions o;
  o.spec_path = dir.Sub("missing.json");
  EXPECT_EQ(PrepareTrainer(o, clock).status().code(), Code::kNotFound);
  o.spec_path = dir.WriteFile("bad.json", R"({"name":"m","input_dim":4,"layers":[{"type":"x"}]})");
  EXPECT_EQ(PrepareTrainer(o, clock).status().code(), Code::kInvalidArgument);
  o.in_flight = kMaxInFlight + 1;
  Result<TrainerInputs> too_many = PrepareTrainer(o, clock);
  EXPECT_EQ(too_many.status().code(), Code::kInvalidArgument);
  EXPECT_NE(too_many.status().message().find("--in-flight"), std::string::npos);
  o.in_flight = 1;
  o.wire_dtype = safetensors::DType::kI64;
  Result<TrainerInputs> dtype = PrepareTrainer(o, clock);
  EXPECT_EQ(dtype.status().code(), Code::kInvalidArgument);
  EXPECT_NE(dtype.status().message().find("--wire-dtype"), std::string::npos);
  o.wire_dtype = safetensors::DType::kF32;
  o.seq_len = 0;
  EXPECT_EQ(PrepareTrainer(o, clock).status().message(), "--seq-len must be in [1, 65536], got 0");
  o.seq_len = 128;
  o.max_seconds = -1;
  EXPECT_EQ(PrepareTrainer(o, clock).status().message(),
            "--max-seconds must be a finite number >= 0");
}

}  // namespace
}  // namespace dmoe::gating
