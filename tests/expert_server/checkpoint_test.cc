#include "expert_server/checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

namespace dmoe::expert_server {
namespace {

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/dmoe_ckpt_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    store_ = std::move(storage::ExpertStore::Open(dir_ + "/db")).value();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<Expert> Make(uint64_t seed, int64_t dim = 8) {
    ExpertConfig config;
    config.hidden_dim = dim;
    config.seed = seed;
    return std::move(Expert::Create(ExpertRegistry::WithBuiltins(), "ffn.1.2", config,
                                    OptimizerOptions{}))
        .value();
  }
  std::string dir_;
  std::unique_ptr<storage::ExpertStore> store_;
};

TEST_F(CheckpointTest, RestoreGivesBackWeightsOptimizerAndStep) {
  auto a = Make(1);
  for (int i = 0; i < 2; ++i)
    ASSERT_TRUE(a->Backward(at::randn({3, 8}), at::randn({3, 8}), std::nullopt).ok());
  ASSERT_TRUE(SaveSnapshot(*store_, TakeSnapshot(*a)).ok());
  auto b = Make(2);
  ASSERT_TRUE(RestoreLatest(*store_, *b).ok());
  EXPECT_EQ(b->step(), 2);
  auto pa = a->Parameters(), pb = b->Parameters();
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(at::equal(pa[i].second, pb[i].second)) << pa[i].first;
  at::Tensor x = at::randn({3, 8}), g = at::randn({3, 8});
  EXPECT_TRUE(at::equal(*a->Backward(x, g, std::nullopt), *b->Backward(x, g, std::nullopt)));
  EXPECT_TRUE(at::equal(a->Parameters()[0].second, b->Parameters()[0].second));
}

TEST_F(CheckpointTest, RestoreWithoutCheckpointIsNotFound) {
  auto a = Make(1);
  EXPECT_EQ(RestoreLatest(*store_, *a).code(), Code::kNotFound);
}

TEST_F(CheckpointTest, RestoreRefusesAnotherWidthAndLeavesTheExpertAlone) {
  ASSERT_TRUE(SaveSnapshot(*store_, TakeSnapshot(*Make(1, 16))).ok());
  auto a = Make(1, 8);
  at::Tensor before = a->Parameters()[0].second.clone();
  Status s = RestoreLatest(*store_, *a);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("hidden_dim 16"), std::string::npos);
  EXPECT_TRUE(at::equal(before, a->Parameters()[0].second));
}

TEST_F(CheckpointTest, WeightsOnlyKeepsParametersUnderModuleNames) {
  auto a = Make(1);
  ASSERT_TRUE(SaveSnapshot(*store_, TakeSnapshot(*a)).ok());
  storage::Checkpoint w = storage::WeightsOnly(*store_->LoadLatest("ffn.1.2"));
  std::vector<std::string> names;
  for (const auto& t : w.tensors) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"linear1.weight", "linear1.bias", "linear2.weight",
                                             "linear2.bias", "norm.weight", "norm.bias"}));
}

}  // namespace
}  // namespace dmoe::expert_server
