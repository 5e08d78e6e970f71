#include "expert_server/checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <limits>

#include "storage/checkpoint_format.h"
#include "storage/database.h"

namespace dmoe::expert_server {
namespace {

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/dmoe_ckpt_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    store_ = std::move(storage::ExpertStore::Open(dir_ + "/db", {.clock = &RealClock::Instance()}))
                 .value();
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

// Saves `expert` after `steps` more backward steps; returns the step it was saved at.
int64_t TrainAndSave(storage::ExpertStore& store, Expert& expert, int steps) {
  for (int i = 0; i < steps; ++i) {
    EXPECT_TRUE(expert.Backward(at::randn({3, 8}), at::randn({3, 8}), std::nullopt).ok());
  }
  EXPECT_TRUE(SaveSnapshot(store, TakeSnapshot(expert)).ok());
  return expert.step();
}

// Writes a version of ffn.1.2 at `step` straight through the store, past SaveSnapshot's checks.
void SaveRaw(storage::ExpertStore& store, const ExpertSnapshot& snapshot, int64_t step) {
  std::vector<storage::NamedTensor> owned;
  for (const auto& [name, t] : snapshot.state) {
    const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
    owned.push_back(
        {name,
         t.scalar_type() == at::kLong ? safetensors::DType::kI64 : safetensors::DType::kF32,
         t.sizes().vec(),
         {bytes, bytes + t.nbytes()}});
  }
  ASSERT_TRUE(
      store.SaveCheckpoint("ffn.1.2", storage::RefsOf(owned), step, snapshot.metadata).ok());
}

TEST_F(CheckpointTest, NonFiniteStateIsNeverCheckpointed) {
  auto a = Make(1);
  const int64_t good = TrainAndSave(*store_, *a, 1);
  ExpertSnapshot poisoned = TakeSnapshot(*a);
  poisoned.step = good + 1;
  poisoned.state[0].second.view(-1)[0] = std::numeric_limits<float>::infinity();
  Status s = SaveSnapshot(*store_, poisoned);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find(poisoned.state[0].first), std::string::npos) << s.message();
  EXPECT_EQ(*store_->Steps("ffn.1.2"), std::vector<int64_t>{good});
}

// Each way a newest version can be damaged: the older intact one is restored instead.
TEST_F(CheckpointTest, CorruptNewestFallsBackToTheNewestIntactVersion) {
  enum class Damage { kBadBytes, kUndecodable, kWrongShape, kNonFinite };
  for (Damage damage :
       {Damage::kBadBytes, Damage::kUndecodable, Damage::kWrongShape, Damage::kNonFinite}) {
    TearDown();
    SetUp();
    auto a = Make(1);
    const int64_t intact = TrainAndSave(*store_, *a, 2);
    const NamedTensors intact_params = a->Parameters();
    std::vector<at::Tensor> expected;
    for (const auto& [n, t] : intact_params) expected.push_back(t.detach().clone());
    ExpertSnapshot newest = TakeSnapshot(*a);
    const int64_t bad_step = intact + 1;
    newest.step = bad_step;
    switch (damage) {
      case Damage::kBadBytes: {
        SaveRaw(*store_, newest, bad_step);
        storage::Database& db = *store_->database();
        storage::Database::WriteBatch batch(db);
        ASSERT_TRUE(batch
                        .Put(storage::ColumnFamily::kExperts,
                             storage::format::TensorKey("ffn.1.2", bad_step, 0),
                             std::string_view("garbage"))
                        .ok());
        ASSERT_TRUE(db.Write(batch, true).ok());
        break;
      }
      case Damage::kUndecodable: {
        // BOOL bytes of the right shape under a parameter's name: they must not be read as
        // weights of 0 and 1.
        newest.state[0].second = at::zeros(newest.state[0].second.sizes(), at::kBool);
        std::vector<storage::NamedTensor> owned;
        for (const auto& [name, t] : newest.state) {
          const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
          owned.push_back({name,
                           t.scalar_type() == at::kLong   ? safetensors::DType::kI64
                           : t.scalar_type() == at::kBool ? safetensors::DType::kBool
                                                          : safetensors::DType::kF32,
                           t.sizes().vec(),
                           {bytes, bytes + t.nbytes()}});
        }
        ASSERT_TRUE(
            store_->SaveCheckpoint("ffn.1.2", storage::RefsOf(owned), bad_step, newest.metadata)
                .ok());
        break;
      }
      case Damage::kWrongShape:
        newest.state[0].second = at::zeros({2, 2});
        SaveRaw(*store_, newest, bad_step);
        break;
      case Damage::kNonFinite:
        newest.state[1].second.view(-1)[0] = std::numeric_limits<float>::quiet_NaN();
        SaveRaw(*store_, newest, bad_step);
        break;
    }
    ASSERT_EQ(*store_->Steps("ffn.1.2"), (std::vector<int64_t>{intact, bad_step}));
    auto b = Make(2);
    Status s = RestoreLatest(*store_, *b);
    ASSERT_TRUE(s.ok()) << static_cast<int>(damage) << ": " << s.ToString();
    EXPECT_EQ(b->step(), intact) << static_cast<int>(damage);
    NamedTensors got = b->Parameters();
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_TRUE(at::equal(got[i].second, expected[i])) << static_cast<int>(damage);
    }
  }
}

TEST_F(CheckpointTest, NoIntactVersionIsAnInternalErrorAndChangesNothing) {
  auto a = Make(1);
  const int64_t step = TrainAndSave(*store_, *a, 1);
  storage::Database& db = *store_->database();
  storage::Database::WriteBatch batch(db);
  ASSERT_TRUE(batch
                  .Put(storage::ColumnFamily::kExperts,
                       storage::format::TensorKey("ffn.1.2", step, 1), std::string_view("x"))
                  .ok());
  ASSERT_TRUE(db.Write(batch, true).ok());
  auto b = Make(2);
  at::Tensor before = b->Parameters()[0].second.clone();
  Status s = RestoreLatest(*store_, *b);
  EXPECT_EQ(s.code(), Code::kInternal);
  EXPECT_NE(s.message().find("skipped steps " + std::to_string(step)), std::string::npos)
      << s.message();
  EXPECT_TRUE(at::equal(before, b->Parameters()[0].second));
  EXPECT_EQ(b->step(), 0);
}

}  // namespace
}  // namespace dmoe::expert_server
