// DmoeModel as a decoder-only transformer (a token model spec): the full forward and the cached
// decode agree, attention is causal, a tied head reads the embedding, local training lowers the
// loss, and with residual_moe layers over the in-process swarm each decode step routes only the
// new tokens.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <torch/utils.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "gating/model.h"
#include "model/model_spec.h"
#include "tests/gating/swarm4x4.h"

namespace dmoe::gating {
namespace {

// Two blocks of local attention (the second with rotary positions), a learned position table, a
// tied head: no expert needed.
constexpr char kLocalSpec[] = R"({"name": "lm", "input": "tokens", "vocab": 256, "max_len": 32,
  "layers": [{"type": "embedding", "dim": 16}, {"type": "positions"},
    {"type": "attention", "heads": 4}, {"type": "gelu"},
    {"type": "attention", "heads": 2, "rotary": true},
    {"type": "layer_norm"}, {"type": "lm_head", "tied": true}]})";

DmoeModel Build(const char* json, ModelContext context = {}) {
  Result<model::ModelSpec> spec = model::ParseModelSpec(json);
  EXPECT_TRUE(spec.ok()) << spec.status().ToString();
  return DmoeModel(*spec, std::move(context));
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// Decode feeds sequence 0 a prompt of 5 tokens and then one token a step; sequence 1 joins at
// step 3 with a prompt of 4 and leaves after step 6. Every row of logits equals the full forward's.
void ExpectDecodeEqualsForward(DmoeModel& model, const at::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  model->eval();
  const at::Tensor full = model->forward(tokens);  // [2, T, vocab]
  const int64_t length = tokens.size(1);
  SequenceCache first, second;
  auto step = model->Decode({&first}, {tokens[0].narrow(0, 0, 5)});
  ASSERT_TRUE(step.ok()) << step.status().ToString();
  EXPECT_LT(MaxDiff((*step)[0], full[0].narrow(0, 0, 5)), 1e-4);
  int64_t next_second = 0;
  for (int64_t t = 5; t < length; ++t) {
    std::vector<SequenceCache*> caches = {&first};
    std::vector<at::Tensor> inputs = {tokens[0].narrow(0, t, 1)};
    const bool joined = t >= 7 && t < 11;
    if (joined) {
      const int64_t n = next_second == 0 ? 4 : 1;
      caches.push_back(&second);
      inputs.push_back(tokens[1].narrow(0, next_second, n));
    }
    step = model->Decode(caches, inputs);
    ASSERT_TRUE(step.ok()) << step.status().ToString();
    EXPECT_LT(MaxDiff((*step)[0], full[0].narrow(0, t, 1)), 1e-4) << "step " << t;
    if (joined) {
      const int64_t n = inputs[1].size(0);
      EXPECT_LT(MaxDiff((*step)[1], full[1].narrow(0, next_second, n)), 1e-4) << "step " << t;
      next_second += n;
    }
  }
  EXPECT_EQ(first.length(), length);
  EXPECT_EQ(second.length(), 7);
}

TEST(LmModelTest, CachedDecodeGivesTheLogitsOfTheFullForward) {
  at::manual_seed(3);
  DmoeModel model = Build(kLocalSpec);
  ExpectDecodeEqualsForward(model, at::randint(256, {2, 14}, at::kLong));
}

TEST(LmModelTest, ALaterTokenDoesNotChangeEarlierLogits) {
  at::manual_seed(4);
  DmoeModel model = Build(kLocalSpec);
  model->eval();
  torch::NoGradGuard no_grad;
  at::Tensor tokens = at::randint(256, {1, 12}, at::kLong);
  at::Tensor changed = tokens.clone();
  changed[0][7] = (tokens[0][7].item<int64_t>() + 1) % 256;
  at::Tensor a = model->forward(tokens), b = model->forward(changed);
  EXPECT_EQ(MaxDiff(a.narrow(1, 0, 7), b.narrow(1, 0, 7)), 0.0);
  EXPECT_GT(MaxDiff(a.narrow(1, 7, 5), b.narrow(1, 7, 5)), 1e-3);
}

TEST(LmModelTest, RotaryPositionsLeaveTheFirstPositionAloneAndTurnTheOthers) {
  at::manual_seed(8);
  CausalSelfAttention plain(16, 2), rotary(16, 2, /*rotary=*/true);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : rotary->named_parameters()) p.value().copy_(plain->named_parameters()[p.key()]);
  }
  at::Tensor x = at::randn({1, 3, 16});
  at::Tensor a = plain(x), b = rotary(x);
  // Position 0 is rotated by angle 0; later queries see keys turned by their distance.
  EXPECT_LT(MaxDiff(a.narrow(1, 0, 1), b.narrow(1, 0, 1)), 1e-6);
  EXPECT_GT(MaxDiff(a.narrow(1, 1, 2), b.narrow(1, 1, 2)), 1e-4);
  EXPECT_THROW(CausalSelfAttention(6, 2, /*rotary=*/true), std::invalid_argument);
}

TEST(LmModelTest, ATiedHeadReadsTheEmbeddingAndAnUntiedOneHasItsOwnWeight) {
  DmoeModel tied = Build(kLocalSpec);
  std::map<std::string, at::Tensor> state = tied->StateDict();
  EXPECT_EQ(state.count("layer6.weight"), 0u);
  ASSERT_EQ(state.count("layer0.weight"), 1u);
  EXPECT_EQ(state.at("layer1.weight").sizes(), (std::vector<int64_t>{32, 16}));
  EXPECT_EQ(state.count("layer2.qkv.weight"), 1u);
  {
    torch::NoGradGuard no_grad;
    tied->named_parameters()["layer0.weight"].fill_(0);
  }
  // With the embedding zero, the tied head can only answer zeros.
  EXPECT_EQ(tied->forward(at::randint(256, {1, 3}, at::kLong)).abs().max().item<double>(), 0.0);

  DmoeModel untied = Build(R"({"name": "lm", "input": "tokens", "vocab": 64, "max_len": 8,
    "layers": [{"type": "embedding", "dim": 8}, {"type": "lm_head"}]})");
  state = untied->StateDict();
  ASSERT_EQ(state.count("layer1.weight"), 1u);
  EXPECT_EQ(state.at("layer1.weight").sizes(), (std::vector<int64_t>{64, 8}));
  EXPECT_NE(state.at("layer1.weight").data_ptr(), state.at("layer0.weight").data_ptr());
  EXPECT_EQ(untied->parameters().size(), 2u);  // no bias
}

TEST(LmModelTest, LocalTrainingOnAFixedTextLowersTheLoss) {
  at::manual_seed(5);
  DmoeModel model = Build(kLocalSpec);
  const std::string text = "In the beginning God created the heaven and the earth.";
  at::Tensor bytes = at::empty({static_cast<int64_t>(text.size())}, at::kLong);
  for (size_t i = 0; i < text.size(); ++i) bytes[i] = static_cast<unsigned char>(text[i]);
  at::Tensor inputs = bytes.narrow(0, 0, 32).unsqueeze(0);
  at::Tensor targets = bytes.narrow(0, 1, 32).unsqueeze(0);
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(3e-3));
  auto loss_now = [&] {
    at::Tensor logits = model->forward(inputs);
    return at::cross_entropy_loss(logits.reshape({-1, 256}), targets.reshape({-1}));
  };
  const double first = loss_now().item<double>();
  for (int step = 0; step < 30; ++step) {
    adam.zero_grad();
    at::Tensor loss = loss_now();
    loss.backward();
    adam.step();
  }
  const double last = loss_now().item<double>();
  EXPECT_GT(first, 5.0);  // about ln 256 = 5.55 at the start
  EXPECT_LT(last, first - 2.0) << first << " -> " << last;
}

TEST(LmModelTest, DecodeRefusesBadInputAndLeavesTheCachesAsTheyWere) {
  DmoeModel model = Build(kLocalSpec);
  SequenceCache cache;
  ASSERT_TRUE(model->Decode({&cache}, {at::arange(30, at::kLong)}).ok());
  struct Case {
    std::vector<at::Tensor> tokens;
    const char* says;
  };
  const Case cases[] = {
      {{at::arange(3, at::kLong)}, "past the model's max_len 32"},
      {{at::full({1}, 256, at::kLong)}, "outside 0..255"},
      {{at::full({1}, -1, at::kLong)}, "outside 0..255"},
      {{at::zeros({1}, at::kInt)}, "int64 token ids [n]"},
      {{at::zeros({1, 1}, at::kLong)}, "int64 token ids [n]"},
      {{at::zeros({0}, at::kLong)}, "int64 token ids [n]"},
      {{}, "one token list per cache"},
  };
  Result<std::vector<at::Tensor>> twice =
      model->Decode({&cache, &cache}, {at::arange(1, at::kLong), at::arange(1, at::kLong)});
  EXPECT_EQ(twice.status().code(), Code::kInvalidArgument);
  EXPECT_NE(twice.status().message().find("sequence 1: its cache is null or given twice"),
            std::string::npos);
  for (const Case& c : cases) {
    Result<std::vector<at::Tensor>> r = model->Decode({&cache}, c.tokens);
    ASSERT_FALSE(r.ok()) << c.says;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.says), std::string::npos) << r.status().message();
    EXPECT_EQ(cache.length(), 30);
  }
  ASSERT_TRUE(model->Decode({&cache}, {at::arange(2, at::kLong)}).ok());
  EXPECT_EQ(cache.length(), 32);

  DmoeModel features = Build(R"({"name":"f","input_dim":4,"layers":[{"type":"relu"}]})");
  SequenceCache other;
  Result<std::vector<at::Tensor>> r = features->Decode({&other}, {at::arange(2, at::kLong)});
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("not a token model"), std::string::npos);
}

// The transformer with its feed-forward blocks on the swarm's experts (width kDim, grid 4x4).
constexpr char kSwarmSpec[] = R"({"name": "lm", "input": "tokens", "vocab": 64, "max_len": 16,
  "layers": [{"type": "embedding", "dim": 16}, {"type": "positions"},
    {"type": "attention", "heads": 2},
    {"type": "residual_moe", "pre_norm": true, "uid_prefix": "ffn", "grid": [4, 4], "k_best": 2,
     "k_min": 2, "forward_timeout_ms": 20000},
    {"type": "attention", "heads": 2},
    {"type": "residual_moe", "pre_norm": true, "uid_prefix": "ffn", "grid": [4, 4], "k_best": 2,
     "k_min": 2, "forward_timeout_ms": 20000},
    {"type": "layer_norm"}, {"type": "lm_head", "tied": true}]})";

TEST_F(Swarm4x4, ATransformerOverRemoteExpertsDecodesAsItRunsWhole) {
  at::manual_seed(6);
  DmoeModel model = Build(kSwarmSpec, ModelContext{MakeSwarm()});
  EXPECT_EQ(model->StateDict().count("layer3.norm.weight"), 1u);
  EXPECT_EQ(model->StateDict().count("layer3.gate0.weight"), 1u);
  ExpectDecodeEqualsForward(model, at::randint(64, {2, 12}, at::kLong));

  // One more step of two sequences: each moe layer routes just those two new tokens.
  SequenceCache a, b;
  torch::NoGradGuard no_grad;
  ASSERT_TRUE(model->Decode({&a, &b}, {at::arange(3, at::kLong), at::arange(5, at::kLong)}).ok());
  const int64_t before = model->moe_stats().samples;
  auto step = model->Decode({&a, &b}, {at::full({1}, 7, at::kLong), at::full({1}, 9, at::kLong)});
  ASSERT_TRUE(step.ok()) << step.status().ToString();
  EXPECT_EQ(model->moe_stats().samples - before, 2 * 2);  // 2 tokens x 2 moe layers
  EXPECT_EQ((*step)[0].sizes(), (std::vector<int64_t>{1, 64}));
  EXPECT_EQ(model->last_experts().size(), 2u);
}

TEST_F(Swarm4x4, ATransformerOverRemoteExpertsLearnsLocally) {
  at::manual_seed(7);
  DmoeModel model = Build(kSwarmSpec, ModelContext{MakeSwarm()});
  at::Tensor bytes = at::randint(64, {17}, at::kLong);
  at::Tensor inputs = bytes.narrow(0, 0, 16).unsqueeze(0);
  at::Tensor targets = bytes.narrow(0, 1, 16).unsqueeze(0);
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(1e-2));
  auto loss_now = [&] {
    return at::cross_entropy_loss(model->forward(inputs).reshape({-1, 64}), targets.reshape({-1}));
  };
  const double first = loss_now().item<double>();
  for (int step = 0; step < 15; ++step) {
    adam.zero_grad();
    at::Tensor loss = loss_now();  // first: balance_loss() is that of the last forward
    (loss + model->balance_loss()).backward();
    adam.step();
  }
  const double last = loss_now().item<double>();
  EXPECT_LT(last, first - 1.0) << first << " -> " << last;
  EXPECT_EQ(model->moe_stats().zero_output_samples, 0);
}

}  // namespace
}  // namespace dmoe::gating
