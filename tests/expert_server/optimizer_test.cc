// The optimizer against a double-precision reference of its formulas: Adam (bias-corrected, with
// decoupled weight decay, gradient-norm clipping and warmup) and SGD with momentum, over several
// steps, through the fused float path and through the general one (non-contiguous parameters).
#include "expert_server/optimizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/utils.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace dmoe::expert_server {
namespace {

struct Reference {
  OptimizerOptions o;
  std::vector<at::Tensor> p, m, v;  // double
  int64_t step = 0;

  void Step(const std::vector<at::Tensor>& grads) {
    const double lr = o.warmup_steps > 0 && step < o.warmup_steps
                          ? o.lr * static_cast<double>(step + 1) / o.warmup_steps
                          : o.lr;
    double clip = 1.0;
    if (o.clip_grad_norm > 0) {
      double sq = 0;
      for (const auto& g : grads) sq += g.to(at::kDouble).pow(2).sum().item<double>();
      if (std::sqrt(sq) > o.clip_grad_norm) clip = o.clip_grad_norm / (std::sqrt(sq) + 1e-6);
    }
    ++step;
    for (size_t i = 0; i < p.size(); ++i) {
      at::Tensor g = grads[i].to(at::kDouble) * clip;
      p[i] = p[i] * (1.0 - lr * o.weight_decay);
      if (o.kind == OptimizerKind::kAdam) {
        m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
        v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
        const double b1 = 1 - std::pow(o.beta1, static_cast<double>(step));
        const double b2 = 1 - std::pow(o.beta2, static_cast<double>(step));
        p[i] = p[i] - lr / b1 * m[i] / ((v[i] / b2).sqrt() + o.eps);
      } else {
        m[i] = o.beta1 * m[i] + g;
        p[i] = p[i] - lr * m[i];
      }
    }
  }
};

// Runs `steps` updates on both; returns the largest difference of a parameter relative to the
// largest change the reference made to it. Float against double: both of the optimizer's paths
// land near 1e-5 here; a wrong formula (bias correction, decay, clipping) is off by far more.
double RelativeError(const OptimizerOptions& o, bool contiguous, int steps) {
  at::manual_seed(5);
  std::vector<std::pair<std::string, at::Tensor>> params;
  Reference ref{o, {}, {}, {}};
  for (auto shape : {std::vector<int64_t>{64, 48}, std::vector<int64_t>{48}}) {
    at::Tensor t = at::randn(shape);
    if (!contiguous && shape.size() == 2) t = at::randn({shape[1], shape[0]}).t();
    params.emplace_back("p" + std::to_string(params.size()), t.requires_grad_(true));
    ref.p.push_back(t.detach().to(at::kDouble).clone());
    ref.m.push_back(at::zeros(shape, at::kDouble));
    ref.v.push_back(at::zeros(shape, at::kDouble));
  }
  std::vector<at::Tensor> start;
  for (auto& [n, t] : params) start.push_back(t.detach().to(at::kDouble).clone());
  Optimizer opt(params, o);
  for (int s = 0; s < steps; ++s) {
    std::vector<at::Tensor> grads;
    for (auto& [n, t] : params) {
      grads.push_back(at::randn(t.sizes()) * (s % 2 ? 3.0 : 0.2));
      t.mutable_grad() = grads.back().clone();
    }
    EXPECT_TRUE(opt.GradientsFinite());
    EXPECT_TRUE(opt.Step().ok());
    ref.Step(grads);
    for (auto& [n, t] : params) EXPECT_FALSE(t.grad().defined()) << "Step clears the gradients";
  }
  EXPECT_EQ(opt.step(), steps);
  double worst = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor got = params[i].second.detach().to(at::kDouble);
    const double moved = (ref.p[i] - start[i]).abs().max().item<double>();
    EXPECT_GT(moved, 0);
    worst = std::max(worst, (got - ref.p[i]).abs().max().item<double>() / moved);
  }
  return worst;
}

TEST(OptimizerTest, AdamMatchesItsFormulaInTheFusedAndTheGeneralPath) {
  OptimizerOptions o;
  o.lr = 1e-2;
  o.weight_decay = 0.1;
  o.clip_grad_norm = 5.0;
  o.warmup_steps = 3;
  for (bool contiguous : {true, false}) {
    EXPECT_LT(RelativeError(o, contiguous, 8), 1e-4) << "contiguous " << contiguous;
  }
  o.weight_decay = 0;
  o.clip_grad_norm = 0;
  o.warmup_steps = 0;
  EXPECT_LT(RelativeError(o, true, 8), 1e-4);
}

TEST(OptimizerTest, SgdWithMomentumMatchesItsFormula) {
  OptimizerOptions o;
  o.kind = OptimizerKind::kSgd;
  o.lr = 1e-2;
  o.beta1 = 0.9;
  o.weight_decay = 0.01;
  // Unclipped: clipping (tested with Adam above) shrinks the steps to where float rounding of the
  // weights, not the formula, dominates this relative error.
  o.clip_grad_norm = 0;
  EXPECT_LT(RelativeError(o, true, 6), 1e-5);
}

TEST(OptimizerTest, WarmupThenCosineDecayToZero) {
  OptimizerOptions o;
  o.lr = 0.1;
  o.warmup_steps = 2;
  o.decay_steps = 4;
  at::Tensor p = at::zeros({3}).requires_grad_(true);
  Optimizer opt({{"p", p}}, o);
  std::vector<double> seen;
  for (int s = 0; s < 8; ++s) {
    seen.push_back(opt.CurrentLr());
    p.mutable_grad() = at::ones({3});
    EXPECT_TRUE(opt.Step().ok());
  }
  const std::vector<double> expected = {
      0.05, 0.1, 0.1, 0.1 * (1 + std::sqrt(0.5)) / 2, 0.05, 0.1 * (1 - std::sqrt(0.5)) / 2,
      0.0,  0.0};
  ASSERT_EQ(seen.size(), expected.size());
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_NEAR(seen[i], expected[i], 1e-12) << "step " << i;
  o.decay_steps = -1;
  EXPECT_EQ(ValidateOptimizerOptions(o).code(), Code::kInvalidArgument);
}

TEST(OptimizerTest, NonFiniteGradientsAreSeenInEitherLayout) {
  for (bool contiguous : {true, false}) {
    for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
      at::Tensor p = contiguous ? at::randn({40, 33}) : at::randn({33, 40}).t();
      p.requires_grad_(true);
      Optimizer opt({{"p", p}}, OptimizerOptions{});
      at::Tensor g = at::zeros_like(p);
      g[39][32] = bad;  // the last element: a check that stopped early would miss it
      p.mutable_grad() = g;
      EXPECT_FALSE(opt.GradientsFinite()) << bad << " contiguous " << contiguous;
      g[39][32] = 1.0f;
      EXPECT_TRUE(opt.GradientsFinite());
    }
  }
}

// Copies of every state tensor (parameters and optimizer slots) and the step, to compare bitwise.
std::vector<at::Tensor> Copies(const Optimizer& opt, const at::Tensor& p) {
  std::vector<at::Tensor> out{p.detach().clone()};
  for (const auto& [name, t] : opt.State()) out.push_back(t.clone());
  return out;
}

bool BitIdentical(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!at::equal(a[i], b[i])) return false;
  }
  return true;
}

bool AllFinite(const Optimizer& opt, const at::Tensor& p) {
  bool finite = at::isfinite(p).all().item<bool>();
  for (const auto& [name, t] : opt.State()) finite = finite && at::isfinite(t).all().item<bool>();
  return finite;
}

// A finite gradient of 1e38 squares to +Inf in Adam's second moment, which used to freeze the
// weights for good. Without clipping the step is rolled back exactly, in both paths and for SGD.
TEST(OptimizerTest, AnOverflowingUpdateIsRolledBackBitExactly) {
  for (OptimizerKind kind : {OptimizerKind::kAdam, OptimizerKind::kSgd}) {
    const char* name = kind == OptimizerKind::kAdam ? "adam" : "sgd";
    for (bool contiguous : {true, false}) {
      OptimizerOptions o;
      o.kind = kind;
      o.clip_grad_norm = 0;
      at::Tensor p = contiguous ? at::randn({40, 33}) : at::randn({33, 40}).t();
      p.requires_grad_(true);
      Optimizer opt({{"p", p}}, o);
      p.mutable_grad() = at::randn(p.sizes());
      ASSERT_TRUE(opt.Step().ok());
      const std::vector<at::Tensor> before = Copies(opt, p);
      at::Tensor g = at::randn(p.sizes());
      g[39][32] = 3e38f;  // the last element: finite, but its square or momentum overflows
      p.mutable_grad() = g;
      ASSERT_TRUE(opt.GradientsFinite());
      if (kind == OptimizerKind::kSgd) {
        // Momentum 0.9 * 3e38 + 3e38 overflows only on the second such step.
        ASSERT_TRUE(opt.Step().ok());
        p.mutable_grad() = g.clone();
      }
      const std::vector<at::Tensor> after_first = Copies(opt, p);
      const int64_t step = opt.step();
      Status s = opt.Step();
      EXPECT_EQ(s.code(), Code::kInvalidArgument) << name << " contiguous " << contiguous;
      EXPECT_TRUE(BitIdentical(kind == OptimizerKind::kSgd ? after_first : before, Copies(opt, p)))
          << name << " contiguous " << contiguous;
      EXPECT_EQ(opt.step(), step);
      EXPECT_FALSE(p.grad().defined()) << "a refused step still clears the gradients";
      // The expert goes on learning from honest gradients.
      p.mutable_grad() = at::randn(p.sizes());
      EXPECT_TRUE(opt.Step().ok());
      EXPECT_TRUE(AllFinite(opt, p));
    }
  }
}

// Clipping is on by default: the same gradient then moves no weight by more than Adam's bound.
TEST(OptimizerTest, DefaultClippingTamesAHugeGradient) {
  OptimizerOptions o;
  ASSERT_GT(o.clip_grad_norm, 0);
  at::Tensor p = at::randn({40, 33}).requires_grad_(true);
  Optimizer opt({{"p", p}}, o);
  const at::Tensor start = p.detach().clone();
  at::Tensor g = at::full(p.sizes(), 1e38f);
  p.mutable_grad() = g;
  ASSERT_TRUE(opt.Step().ok());
  EXPECT_TRUE(AllFinite(opt, p));
  EXPECT_LE((p.detach() - start).abs().max().item<double>(), 1.01 * o.lr);
  p.mutable_grad() = at::randn(p.sizes());
  ASSERT_TRUE(opt.Step().ok());
  EXPECT_TRUE(AllFinite(opt, p));
  EXPECT_EQ(opt.step(), 2);
}

// The bound that decides whether a step needs a copy to roll back to also covers the weights: a
// weight near the float range that an ordinary gradient pushes over (here through a weight decay
// factor of -2) is rolled back as well, once the optimizer knows the weights changed.
TEST(OptimizerTest, WeightsNearTheFloatRangeAreRolledBackToo) {
  OptimizerOptions o;
  o.lr = 1.0;
  o.weight_decay = 3.0;  // decay factor 1 - lr * wd = -2
  at::Tensor p = at::randn({40, 33}).requires_grad_(true);
  Optimizer opt({{"p", p}}, o);
  {
    torch::NoGradGuard no_grad;
    p[7][7] = 2e38f;
  }
  opt.Remeasure();
  const std::vector<at::Tensor> before = Copies(opt, p);
  p.mutable_grad() = at::randn(p.sizes());
  EXPECT_EQ(opt.Step().code(), Code::kInvalidArgument);
  EXPECT_TRUE(BitIdentical(before, Copies(opt, p)));
  EXPECT_EQ(opt.step(), 0);
}

}  // namespace
}  // namespace dmoe::expert_server
