#include "storage/kv_store.h"

#include <gtest/gtest.h>

#include "tests/storage/test_util.h"

namespace dmoe::storage {
namespace {

using testing::TempDir;
using Entries = std::vector<std::pair<std::string, std::string>>;

std::unique_ptr<KvStore> OpenKv(const std::string& path) {
  auto kv = KvStore::Open(path);
  EXPECT_TRUE(kv.ok()) << kv.status().ToString();
  return kv.ok() ? std::move(*kv) : nullptr;
}

TEST(KvStoreTest, PutGetDelete) {
  TempDir dir;
  auto kv = OpenKv(dir.path());
  ASSERT_TRUE(kv->Put("node_state", "self", "id-1", true).ok());
  auto value = kv->Get("node_state", "self");
  ASSERT_TRUE(value.ok()) << value.status().ToString();
  EXPECT_EQ(*value, "id-1");

  ASSERT_TRUE(kv->Put("node_state", "self", "id-2", false).ok());
  EXPECT_EQ(*kv->Get("node_state", "self"), "id-2");

  ASSERT_TRUE(kv->Delete("node_state", "self").ok());
  EXPECT_EQ(kv->Get("node_state", "self").status().code(), Code::kNotFound);
  EXPECT_TRUE(kv->Delete("node_state", "self").ok()) << "deleting an absent key is OK";
}

TEST(KvStoreTest, ValuesAreArbitraryBytes) {
  TempDir dir;
  auto kv = OpenKv(dir.path());
  const std::string key("k\0\xff", 3);
  const std::string value("\0\1\2\xff\0", 5);
  ASSERT_TRUE(kv->Put("models", key, value, true).ok());
  EXPECT_EQ(*kv->Get("models", key), value);
  ASSERT_TRUE(kv->Put("models", "empty", "", true).ok());
  EXPECT_EQ(*kv->Get("models", "empty"), "");
}

TEST(KvStoreTest, ColumnFamiliesAreSeparate) {
  TempDir dir;
  auto kv = OpenKv(dir.path());
  ASSERT_TRUE(kv->Put("node_state", "k", "dht", true).ok());
  ASSERT_TRUE(kv->Put("models", "k", "model", true).ok());
  EXPECT_EQ(*kv->Get("node_state", "k"), "dht");
  EXPECT_EQ(*kv->Get("models", "k"), "model");
}

TEST(KvStoreTest, OnlyNodeStateAndModelsAreOpenToIt) {
  TempDir dir;
  auto kv = OpenKv(dir.path());
  for (std::string_view cf : {"experts", "meta", "default", "nope", ""}) {
    Status s = kv->Put(cf, "k", "v", false);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << cf;
    EXPECT_NE(s.message().find("'node_state' or 'models'"), std::string::npos) << s.message();
    EXPECT_EQ(kv->Get(cf, "k").status().code(), Code::kInvalidArgument) << cf;
    EXPECT_EQ(kv->Delete(cf, "k").code(), Code::kInvalidArgument) << cf;
    EXPECT_EQ(kv->Scan(cf, "").status().code(), Code::kInvalidArgument) << cf;
  }
}

TEST(KvStoreTest, ScanReturnsExactlyThePrefixInKeyOrder) {
  TempDir dir;
  auto kv = OpenKv(dir.path());
  for (const char* key :
       {"record/b/2", "record/a/1", "recore", "record", "route/x", "record/a/0"}) {
    ASSERT_TRUE(kv->Put("node_state", key, std::string("v-") + key, false).ok());
  }
  auto records = kv->Scan("node_state", "record/");
  ASSERT_TRUE(records.ok()) << records.status().ToString();
  EXPECT_EQ(*records, (Entries{{"record/a/0", "v-record/a/0"},
                               {"record/a/1", "v-record/a/1"},
                               {"record/b/2", "v-record/b/2"}}));
  auto all = kv->Scan("node_state", "");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 6u);
  EXPECT_TRUE(kv->Scan("node_state", "zzz")->empty());
}

TEST(KvStoreTest, ScanOfPrefixEndingInFfStopsAtThePrefix) {
  TempDir dir;
  auto kv = OpenKv(dir.path());
  ASSERT_TRUE(kv->Put("models", std::string("a\xff", 2), "1", false).ok());
  ASSERT_TRUE(kv->Put("models", std::string("a\xff\x01", 3), "2", false).ok());
  ASSERT_TRUE(kv->Put("models", "b", "3", false).ok());
  auto entries = kv->Scan("models", std::string("a\xff", 2));
  ASSERT_TRUE(entries.ok());
  EXPECT_EQ(entries->size(), 2u);
}

TEST(KvStoreTest, ReplacePrefixSwapsTheWholeSetAtomically) {
  TempDir dir;
  auto kv = OpenKv(dir.path());
  ASSERT_TRUE(kv->Put("node_state", "bucket/1", "old1", false).ok());
  ASSERT_TRUE(kv->Put("node_state", "bucket/2", "old2", false).ok());
  ASSERT_TRUE(kv->Put("node_state", "self", "me", false).ok());
  ASSERT_TRUE(
      kv->ReplacePrefix("node_state", "bucket/", {{"bucket/2", "new2"}, {"bucket/3", "new3"}}, true)
          .ok());
  EXPECT_EQ(*kv->Scan("node_state", "bucket/"),
            (Entries{{"bucket/2", "new2"}, {"bucket/3", "new3"}}));
  EXPECT_EQ(*kv->Get("node_state", "self"), "me");

  ASSERT_TRUE(kv->ReplacePrefix("node_state", "", {}, true).ok());
  EXPECT_TRUE(kv->Scan("node_state", "")->empty());
}

TEST(KvStoreTest, DataSurvivesReopen) {
  TempDir dir;
  {
    auto kv = OpenKv(dir.path());
    ASSERT_TRUE(kv->Put("models", "mnist/v3", "spec", true).ok());
  }
  auto kv = OpenKv(dir.path());
  EXPECT_EQ(*kv->Get("models", "mnist/v3"), "spec");
}

TEST(KvStoreTest, SecondOpenIsUnavailableUntilTheFirstIsGone) {
  TempDir dir;
  auto first = OpenKv(dir.path());
  auto second = KvStore::Open(dir.path());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kUnavailable);
  EXPECT_EQ(second.status().message(),
            "database " + dir.path() + " is in use by another process (lock held)");
  first.reset();
  EXPECT_TRUE(KvStore::Open(dir.path()).ok());
}

TEST(KvStoreTest, OpenOnAFileIsAnError) {
  TempDir dir;
  const std::string file = dir.Sub("file");
  FILE* f = std::fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  auto kv = KvStore::Open(file);
  ASSERT_FALSE(kv.ok());
  EXPECT_NE(kv.status().message().find(file), std::string::npos) << kv.status().ToString();
}

}  // namespace
}  // namespace dmoe::storage
