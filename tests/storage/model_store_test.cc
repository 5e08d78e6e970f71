#include "storage/model_store.h"

#include <gtest/gtest.h>

#include <thread>

#include "tests/testing/temp_dir.h"

namespace dmoe::storage {
namespace {

Model MakeModel(const std::string& name, int64_t version, uint8_t fill = 1) {
  Model m;
  m.info.name = name;
  m.info.version = version;
  m.info.spec_json = "{\"name\":\"" + name + "\",\"input_dim\":4,\"layers\":[]}";
  m.info.published_unix_ms = 1000 + version;
  m.info.publisher = "ab";
  m.state.assign(32, fill);
  return m;
}

class ModelStoreTest : public ::testing::Test {
 protected:
  testing::TempDir dir_{"dmoe-models"};
  std::shared_ptr<KvStore> kv_ =
      std::shared_ptr<KvStore>(std::move(KvStore::Open(dir_.Sub("db"))).value());
  ModelStore store_{kv_};
};

TEST_F(ModelStoreTest, PublishThenGetReturnsTheLatestVersion) {
  ASSERT_TRUE(store_.Publish(MakeModel("fmnist", 1, 1)).ok());
  ASSERT_TRUE(store_.Publish(MakeModel("fmnist", 4, 4)).ok());
  Result<Model> m = store_.Get("fmnist");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->info.version, 4);
  EXPECT_EQ(m->info.published_unix_ms, 1004);
  EXPECT_EQ(m->info.publisher, "ab");
  EXPECT_EQ(m->state, std::vector<uint8_t>(32, 4));
  EXPECT_NE(m->info.spec_json.find("\"input_dim\":4"), std::string::npos);
}

TEST_F(ModelStoreTest, VersionsNeverGoBack) {
  ASSERT_TRUE(store_.Publish(MakeModel("m", 5)).ok());
  for (int64_t v : {5, 4, -1}) {
    Status s = store_.Publish(MakeModel("m", v, 9));
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << v;
    EXPECT_NE(s.message().find("versions must grow"), std::string::npos);
  }
  EXPECT_EQ(store_.Get("m")->state, std::vector<uint8_t>(32, 1));
}

TEST_F(ModelStoreTest, ListsModelsByNameAndRefusesBadNames) {
  ASSERT_TRUE(store_.Publish(MakeModel("b", 1)).ok());
  ASSERT_TRUE(store_.Publish(MakeModel("a", 2)).ok());
  Result<std::vector<ModelInfo>> list = store_.List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "a");
  EXPECT_EQ((*list)[1].name, "b");
  EXPECT_EQ(store_.Get("zz").status().code(), Code::kNotFound);
  EXPECT_EQ(store_.Publish(MakeModel("bad/name", 1)).code(), Code::kInvalidArgument);
  EXPECT_EQ(store_.Publish(MakeModel("", 1)).code(), Code::kInvalidArgument);
}

TEST_F(ModelStoreTest, ConcurrentPublishersOfOneVersionHaveOneWinner) {
  std::atomic<int> wins{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back(
        [&, i] { wins += store_.Publish(MakeModel("race", 7, static_cast<uint8_t>(i))).ok(); });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wins.load(), 1);
}

TEST(ModelStoreReopenTest, PublishedModelSurvivesReopen) {
  testing::TempDir dir("dmoe-models");
  {
    ModelStore store(std::shared_ptr<KvStore>(std::move(KvStore::Open(dir.Sub("db"))).value()));
    ASSERT_TRUE(store.Publish(MakeModel("keep", 3)).ok());
  }
  ModelStore store(std::shared_ptr<KvStore>(std::move(KvStore::Open(dir.Sub("db"))).value()));
  EXPECT_EQ(store.GetInfo("keep")->version, 3);
}

}  // namespace
}  // namespace dmoe::storage
