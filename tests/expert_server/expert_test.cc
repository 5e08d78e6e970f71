#include "expert_server/expert.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/utils.h>

#include <limits>

namespace dmoe::expert_server {
namespace {

std::unique_ptr<Expert> MakeExpert(const std::string& type, int64_t d,
                                   OptimizerOptions opt = OptimizerOptions{}) {
  ExpertRegistry registry = ExpertRegistry::WithBuiltins();
  ExpertConfig config;
  config.type = type;
  config.hidden_dim = d;
  config.seed = 7;
  auto e = Expert::Create(registry, "ffn.0.1", config, opt);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return std::move(e).value();
}

bool SameParameters(const NamedTensors& a, const NamedTensors& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].first != b[i].first || !at::equal(a[i].second, b[i].second)) return false;
  }
  return true;
}

NamedTensors Snapshot(const Expert& e) {
  NamedTensors out;
  for (auto& [n, t] : e.Parameters()) out.emplace_back(n, t.detach().clone());
  return out;
}

TEST(ExpertTest, FfnMatchesItsFormulaAndNamesItsParameters) {
  auto e = MakeExpert("ffn", 8);
  std::vector<std::string> names;
  for (auto& [n, t] : e->Parameters()) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"linear1.weight", "linear1.bias", "linear2.weight",
                                             "linear2.bias", "norm.weight", "norm.bias"}));
  EXPECT_EQ(e->num_parameters(), 8 * 32 + 32 + 32 * 8 + 8 + 8 + 8);
  at::Tensor x = at::randn({3, 8});
  at::Tensor y = *e->Forward(x, std::nullopt);
  auto p = e->Parameters();
  at::Tensor h = at::gelu(at::linear(x, p[0].second, p[1].second));
  at::Tensor expected =
      at::layer_norm(x + at::linear(h, p[2].second, p[3].second), {8}, p[4].second, p[5].second);
  EXPECT_TRUE(at::allclose(y, expected, 1e-5, 1e-6));
}

TEST(ExpertTest, AnswersInTheDtypeOfTheInput) {
  auto e = MakeExpert("ffn", 16);
  at::Tensor x = at::randn({4, 16});
  at::Tensor y32 = *e->Forward(x, std::nullopt);
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    at::Tensor y = *e->Forward(x.to(dtype), std::nullopt);
    EXPECT_EQ(y.scalar_type(), dtype);
    EXPECT_TRUE(at::allclose(y.to(at::kFloat), y32, 0.05, 0.05));
  }
}

TEST(ExpertTest, RefusesWrongShapesAndDtypes) {
  auto e = MakeExpert("ffn", 8);
  EXPECT_EQ(e->Forward(at::randn({3, 9}), std::nullopt).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(e->Forward(at::randn({3, 2, 8}), std::nullopt).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(e->Forward(at::randn({0, 8}), std::nullopt).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(e->Forward(at::ones({3, 8}, at::kLong), std::nullopt).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(e->Backward(at::randn({3, 8}), at::randn({3, 7}), std::nullopt).status().code(),
            Code::kInvalidArgument);
}

TEST(ExpertTest, BackwardReturnsGradXAndStepsTheOptimizer) {
  auto e = MakeExpert("ffn", 8);
  at::Tensor x = at::randn({5, 8});
  at::Tensor g = at::randn({5, 8});
  // Reference gradient through the same weights before the step.
  at::Tensor xr = x.clone().requires_grad_(true);
  auto p = e->Parameters();
  at::Tensor h = at::gelu(at::linear(xr, p[0].second.detach(), p[1].second.detach()));
  at::Tensor y = at::layer_norm(xr + at::linear(h, p[2].second.detach(), p[3].second.detach()), {8},
                                p[4].second.detach(), p[5].second.detach());
  y.backward(g);
  NamedTensors before = Snapshot(*e);
  at::Tensor grad_x = *e->Backward(x, g, std::nullopt);
  EXPECT_TRUE(at::allclose(grad_x, xr.grad(), 1e-5, 1e-6));
  EXPECT_EQ(e->step(), 1);
  EXPECT_FALSE(SameParameters(before, Snapshot(*e)));
}

TEST(ExpertTest, NonFiniteGradientLeavesWeightsBitIdentical) {
  auto e = MakeExpert("ffn", 8);
  NamedTensors before = Snapshot(*e);
  at::Tensor x = at::randn({2, 8});
  at::Tensor g = at::randn({2, 8});
  g[1][3] = std::numeric_limits<float>::quiet_NaN();
  Result<at::Tensor> r = e->Backward(x, g, std::nullopt);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  g[1][3] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(e->Backward(x, g, std::nullopt).status().code(), Code::kInvalidArgument);
  at::Tensor bad_x = at::randn({2, 8});
  bad_x[0][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(e->Backward(bad_x, at::randn({2, 8}), std::nullopt).status().code(),
            Code::kInvalidArgument);
  EXPECT_TRUE(SameParameters(before, Snapshot(*e)));
  EXPECT_EQ(e->step(), 0);
}

// A finite but huge grad_y: without clipping the update overflows and is refused with every
// weight, the optimizer state and the step unchanged; with the default clip it is a small step.
TEST(ExpertTest, HugeFiniteGradientNeverLeavesNonFiniteState) {
  OptimizerOptions unclipped;
  unclipped.clip_grad_norm = 0;
  auto e = MakeExpert("ffn", 8, unclipped);
  at::Tensor x = at::randn({2, 8});
  ASSERT_TRUE(e->Backward(x, at::randn({2, 8}), std::nullopt).ok());
  NamedTensors before;
  for (auto& [n, t] : e->StateTensors()) before.emplace_back(n, t.clone());
  Result<at::Tensor> r = e->Backward(x, at::randn({2, 8}) * 1e30, std::nullopt);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
  EXPECT_TRUE(SameParameters(before, e->StateTensors()));
  EXPECT_EQ(e->step(), 1);

  auto clipped = MakeExpert("ffn", 8);
  ASSERT_TRUE(clipped->Backward(x, at::randn({2, 8}) * 1e30, std::nullopt).ok());
  for (auto& [n, t] : clipped->StateTensors()) {
    EXPECT_TRUE(at::isfinite(t).all().item<bool>()) << n;
  }
  EXPECT_EQ(clipped->step(), 1);
}

TEST(ExpertTest, StateRoundTripRestoresWeightsOptimizerAndStep) {
  auto a = MakeExpert("ffn", 8);
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(a->Backward(at::randn({4, 8}), at::randn({4, 8}), std::nullopt).ok());
  NamedTensors state;
  for (auto& [n, t] : a->StateTensors()) state.emplace_back(n, t.clone());
  ExpertRegistry registry = ExpertRegistry::WithBuiltins();
  ExpertConfig config;
  config.hidden_dim = 8;
  config.seed = 99;
  auto b = std::move(Expert::Create(registry, "ffn.0.1", config, OptimizerOptions{})).value();
  ASSERT_TRUE(b->LoadStateTensors(state).ok());
  EXPECT_EQ(b->step(), 3);
  EXPECT_TRUE(SameParameters(Snapshot(*a), Snapshot(*b)));
  // Same optimizer state: the next identical update gives identical weights.
  at::Tensor x = at::randn({4, 8}), g = at::randn({4, 8});
  ASSERT_TRUE(a->Backward(x, g, std::nullopt).ok());
  ASSERT_TRUE(b->Backward(x, g, std::nullopt).ok());
  EXPECT_TRUE(SameParameters(Snapshot(*a), Snapshot(*b)));
}

TEST(ExpertTest, LoadStateRefusesMismatchAndChangesNothing) {
  auto a = MakeExpert("ffn", 8);
  auto wide = MakeExpert("ffn", 16);
  NamedTensors before = Snapshot(*a);
  Status s = a->LoadStateTensors(wide->StateTensors());
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_TRUE(SameParameters(before, Snapshot(*a)));
}

TEST(ExpertTest, TransformerHonoursTheMask) {
  auto e = MakeExpert("transformer", 16);
  at::Tensor x = at::randn({2, 5, 16});
  at::Tensor mask = at::ones({2, 5}, at::kBool);
  mask[0][4] = false;
  at::Tensor y = *e->Forward(x, mask);
  EXPECT_EQ(y.sizes(), x.sizes());
  // A masked-out token cannot change what the others see.
  at::Tensor x2 = x.clone();
  x2[0][4] = at::randn({16});
  at::Tensor y2 = *e->Forward(x2, mask);
  EXPECT_TRUE(at::allclose(y.slice(1, 0, 4)[0], y2.slice(1, 0, 4)[0], 1e-5, 1e-6));
  EXPECT_FALSE(at::allclose(y[1], (*e->Forward(x2, std::nullopt))[0]));
  EXPECT_TRUE(e->Backward(x, at::randn({2, 5, 16}), mask).ok());
  EXPECT_EQ(e->Forward(x, at::ones({2, 4}, at::kBool)).status().code(), Code::kInvalidArgument);
}

// Attention costs [B, H, T, T]: a sequence longer than max_seq_len is refused before compute.
TEST(ExpertTest, TransformerRefusesSequencesPastMaxSeqLen) {
  ExpertConfig config;
  config.type = "transformer";
  config.hidden_dim = 16;
  config.max_seq_len = 8;
  auto e = Expert::Create(ExpertRegistry::WithBuiltins(), "tf.0", config, OptimizerOptions{});
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_TRUE((*e)->Forward(at::randn({1, 8, 16}), std::nullopt).ok());
  auto refused = (*e)->Forward(at::randn({1, 9, 16}), std::nullopt);
  EXPECT_EQ(refused.status().code(), Code::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("at most 8 tokens"), std::string::npos)
      << refused.status().ToString();
  EXPECT_EQ(
      (*e)->Backward(at::randn({1, 9, 16}), at::randn({1, 9, 16}), std::nullopt).status().code(),
      Code::kInvalidArgument);
  EXPECT_EQ((*e)->step(), 0);
  EXPECT_EQ((*e)->QueueCost(at::randn({3, 5, 16})), 15);
}

class ScaleModule : public ExpertModule {
 public:
  explicit ScaleModule(int64_t d) : w_(register_parameter("w", at::ones({d}))) {}
  at::Tensor Forward(const at::Tensor& x, const std::optional<at::Tensor>&) override {
    return x * w_;
  }
  int64_t input_rank() const override { return 2; }

 private:
  at::Tensor w_;
};

TEST(ExpertTest, RegistryAcceptsUserTypesAndRefusesUnknownOrDuplicate) {
  ExpertRegistry registry = ExpertRegistry::WithBuiltins();
  ASSERT_TRUE(registry
                  .Register("scale",
                            [](const ExpertConfig& c) {
                              return std::make_shared<ScaleModule>(c.hidden_dim);
                            })
                  .ok());
  EXPECT_EQ(registry.Register("ffn", nullptr).code(), Code::kInvalidArgument);
  ExpertConfig config;
  config.type = "scale";
  config.hidden_dim = 4;
  auto e = std::move(Expert::Create(registry, "scale.0", config, OptimizerOptions{})).value();
  at::Tensor x = at::randn({2, 4});
  EXPECT_TRUE(at::equal(*e->Forward(x, std::nullopt), x));
  config.type = "nope";
  auto bad = Expert::Create(registry, "x.0", config, OptimizerOptions{});
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("known: ffn, scale, transformer"), std::string::npos);
}

TEST(ExpertTest, WarmupRampsTheLearningRate) {
  OptimizerOptions opt;
  opt.kind = OptimizerKind::kSgd;
  opt.beta1 = 0;
  opt.lr = 0.1;
  opt.warmup_steps = 4;
  opt.clip_grad_norm = 0;  // the raw gradient, so the update shows the lr alone
  auto e = MakeExpert("ffn", 4, opt);
  // Observe the lr through a parameter update of known gradient: w -= lr * g.
  at::Tensor b_before = e->Parameters()[5].second.detach().clone();  // norm.bias
  at::Tensor x = at::randn({1, 4});
  at::Tensor g = at::ones({1, 4});
  ASSERT_TRUE(e->Backward(x, g, std::nullopt).ok());
  // d(loss)/d(norm.bias) = sum over batch of grad_y = 1, so the bias moved by exactly lr(step 0).
  at::Tensor moved = b_before - e->Parameters()[5].second.detach();
  EXPECT_TRUE(at::allclose(moved, at::full({4}, 0.1 * 1 / 4), 1e-6, 1e-7));
}

}  // namespace
}  // namespace dmoe::expert_server
