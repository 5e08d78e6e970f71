#include "storage/expert_store.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <thread>

#include <gtest/gtest.h>

#include "storage/checkpoint_format.h"
#include "storage/kv_store.h"
#include "tests/storage/test_util.h"

namespace dmoe::storage {
namespace {

using safetensors::DType;
using testing::DiffFromExpected;
using testing::MetadataForStep;
using testing::TempDir;
using testing::TensorsForStep;

NamedTensor MakeTensor(std::string name, DType dtype, std::vector<int64_t> shape, uint8_t fill) {
  NamedTensor t{std::move(name), dtype, std::move(shape), {}};
  int64_t elements = 1;
  for (int64_t d : t.shape) elements *= d;
  t.data.resize(static_cast<size_t>(elements) * safetensors::ItemSize(dtype));
  for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = static_cast<uint8_t>(fill + i * 31);
  return t;
}

std::vector<NamedTensor> SmallTensors(uint8_t fill) {
  return {MakeTensor("param/linear1.weight", DType::kF32, {4, 3}, fill),
          MakeTensor("optim/linear1.weight.exp_avg", DType::kF32, {4, 3}, fill + 1),
          MakeTensor("param/linear1.bias", DType::kBF16, {4}, fill + 2)};
}

// Options on the real clock, for the tests that are not about time (the one that reads
// created_unix_ms passes a FakeClock).
ExpertStoreOptions RealClockOptions() { return {.clock = &RealClock::Instance()}; }

std::unique_ptr<ExpertStore> OpenStore(const std::string& path,
                                       ExpertStoreOptions options = RealClockOptions()) {
  auto store = ExpertStore::Open(path, options);
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  return store.ok() ? std::move(*store) : nullptr;
}

Status Save(ExpertStore& store, std::string_view uid, int64_t step) {
  const auto tensors = TensorsForStep(step);
  return store.SaveCheckpoint(uid, RefsOf(tensors), step, MetadataForStep(step));
}

// How many keys of `uid` at `step` the experts column family still holds.
int KeysOfVersion(Database& db, std::string_view uid, int64_t step) {
  int keys = 0;
  Status s = db.Scan(ColumnFamily::kExperts, format::VersionPrefix(uid, step),
                     [&](std::string_view, std::string_view) {
                       ++keys;
                       return true;
                     });
  EXPECT_TRUE(s.ok()) << s.ToString();
  return keys;
}

TEST(ExpertStoreTest, SaveThenLoadLatestRoundTripsEveryField) {
  TempDir dir;
  FakeClock clock(1'700'000'123'456);
  ExpertStoreOptions options{.clock = &clock};
  auto store = OpenStore(dir.path(), options);
  const auto tensors = SmallTensors(7);
  const std::map<std::string, std::string> metadata = {{"schema", "ffn-v1"}, {"lr", "0.001"}};
  ASSERT_TRUE(store->SaveCheckpoint("ffn.3.14", RefsOf(tensors), 42, metadata).ok());

  Result<Checkpoint> loaded = store->LoadLatest("ffn.3.14");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->uid, "ffn.3.14");
  EXPECT_EQ(loaded->step, 42);
  EXPECT_EQ(loaded->created_unix_ms, 1'700'000'123'456);
  EXPECT_EQ(loaded->metadata, metadata);
  ASSERT_EQ(loaded->tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(loaded->tensors[i].name, tensors[i].name);
    EXPECT_EQ(loaded->tensors[i].dtype, tensors[i].dtype);
    EXPECT_EQ(loaded->tensors[i].shape, tensors[i].shape);
    EXPECT_EQ(loaded->tensors[i].data, tensors[i].data);
  }
  EXPECT_EQ(loaded->checksum, CheckpointChecksum(*loaded));
  ASSERT_NE(loaded->Find("param/linear1.bias"), nullptr);
  EXPECT_EQ(loaded->Find("param/linear1.bias")->shape, std::vector<int64_t>{4});
  EXPECT_EQ(loaded->Find("param/missing"), nullptr);
}

TEST(ExpertStoreTest, CheckpointSurvivesCloseAndReopen) {
  TempDir dir;
  {
    auto store = OpenStore(dir.path());
    ASSERT_TRUE(Save(*store, "ffn.0", 5).ok());
    ASSERT_TRUE(store->Close().ok());
  }
  auto store = OpenStore(dir.path());
  Result<Checkpoint> loaded = store->LoadLatest("ffn.0");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->step, 5);
  EXPECT_EQ(DiffFromExpected(*loaded), "");
}

TEST(ExpertStoreTest, LargeTensorsRoundTrip) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  // 4 MiB: well above the blob-file threshold.
  std::vector<NamedTensor> tensors = {MakeTensor("param/big", DType::kF32, {1024, 1024}, 3),
                                      MakeTensor("param/empty", DType::kF32, {0, 16}, 0),
                                      MakeTensor("param/scalar", DType::kF64, {}, 9)};
  ASSERT_TRUE(store->SaveCheckpoint("big.1", RefsOf(tensors), 1).ok());
  ASSERT_TRUE(store->Close().ok());
  store = OpenStore(dir.path());
  Result<Checkpoint> loaded = store->LoadLatest("big.1");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_EQ(loaded->tensors.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(loaded->tensors[i].data, tensors[i].data) << i;
}

TEST(ExpertStoreTest, KeepsNewestNVersionsAndDeletesOlderOnes) {
  TempDir dir;
  ExpertStoreOptions options = RealClockOptions();
  options.keep_checkpoints = 2;
  auto store = OpenStore(dir.path(), options);
  for (int64_t step : {10, 20, 30, 40}) ASSERT_TRUE(Save(*store, "ffn.1", step).ok());

  auto experts = store->ListExperts();
  ASSERT_TRUE(experts.ok());
  ASSERT_EQ(experts->size(), 1u);
  EXPECT_EQ(experts->front().steps, (std::vector<int64_t>{30, 40}));
  for (int64_t gone : {10, 20}) {
    EXPECT_EQ(store->Load("ffn.1", gone).status().code(), Code::kNotFound) << gone;
    EXPECT_EQ(KeysOfVersion(*store->database(), "ffn.1", gone), 0) << gone;
  }
  for (int64_t kept : {30, 40}) {
    Result<Checkpoint> version = store->Load("ffn.1", kept);
    ASSERT_TRUE(version.ok()) << version.status().ToString();
    EXPECT_EQ(DiffFromExpected(*version), "");
    // The manifest plus one key per tensor.
    EXPECT_EQ(KeysOfVersion(*store->database(), "ffn.1", kept),
              static_cast<int>(TensorsForStep(kept).size()) + 1);
  }
}

TEST(ExpertStoreTest, DefaultKeepsThreeVersions) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  for (int64_t step = 0; step < 6; ++step) ASSERT_TRUE(Save(*store, "ffn.2", step).ok());
  auto experts = store->ListExperts();
  ASSERT_TRUE(experts.ok());
  EXPECT_EQ(experts->front().steps, (std::vector<int64_t>{3, 4, 5}));
}

TEST(ExpertStoreTest, ListExpertsGivesEveryUidWithItsLatestStep) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(Save(*store, "ffn.1", 3).ok());
  ASSERT_TRUE(Save(*store, "ffn.10", 7).ok());
  ASSERT_TRUE(Save(*store, "ffn.1", 4).ok());
  ASSERT_TRUE(Save(*store, "attn.0.0", 1).ok());

  auto experts = store->ListExperts();
  ASSERT_TRUE(experts.ok()) << experts.status().ToString();
  ASSERT_EQ(experts->size(), 3u);
  EXPECT_EQ((*experts)[0].uid, "attn.0.0");
  EXPECT_EQ((*experts)[0].latest_step, 1);
  EXPECT_EQ((*experts)[1].uid, "ffn.1");
  EXPECT_EQ((*experts)[1].latest_step, 4);
  EXPECT_EQ((*experts)[1].steps, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ((*experts)[2].uid, "ffn.10");
  EXPECT_EQ((*experts)[2].latest_step, 7);
}

TEST(ExpertStoreTest, ListExpertsOfEmptyStoreIsEmpty) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto experts = store->ListExperts();
  ASSERT_TRUE(experts.ok());
  EXPECT_TRUE(experts->empty());
}

TEST(ExpertStoreTest, SavingTheLatestStepAgainReplacesIt) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store->SaveCheckpoint("ffn.4", RefsOf(SmallTensors(1)), 9).ok());
  // Fewer tensors than before: none of the old version's may survive.
  std::vector<NamedTensor> replacement = {MakeTensor("param/other", DType::kU8, {5}, 2)};
  ASSERT_TRUE(store->SaveCheckpoint("ffn.4", RefsOf(replacement), 9, {{"why", "shutdown"}}).ok());

  Result<Checkpoint> loaded = store->LoadLatest("ffn.4");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_EQ(loaded->tensors.size(), 1u);
  EXPECT_EQ(loaded->tensors[0].name, "param/other");
  EXPECT_EQ(loaded->metadata.at("why"), "shutdown");
  EXPECT_EQ(KeysOfVersion(*store->database(), "ffn.4", 9), 2);
  auto experts = store->ListExperts();
  ASSERT_TRUE(experts.ok());
  EXPECT_EQ(experts->front().steps, std::vector<int64_t>{9});
}

TEST(ExpertStoreTest, RefusesAStepOlderThanTheLatest) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(Save(*store, "ffn.5", 10).ok());
  Status s = Save(*store, "ffn.5", 9);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("older than its latest checkpoint, step 10"), std::string::npos)
      << s.message();
}

TEST(ExpertStoreTest, RefusesInvalidInput) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const auto good = SmallTensors(0);
  EXPECT_EQ(store->SaveCheckpoint("ffn", RefsOf(good), 1).code(), Code::kInvalidArgument);
  EXPECT_EQ(store->SaveCheckpoint("ffn.01", RefsOf(good), 1).code(), Code::kInvalidArgument);
  EXPECT_EQ(store->SaveCheckpoint("ffn/1.2", RefsOf(good), 1).code(), Code::kInvalidArgument);
  EXPECT_EQ(store->SaveCheckpoint("ffn.1", RefsOf(good), -1).code(), Code::kInvalidArgument);

  auto expect_refused = [&](std::vector<NamedTensor> tensors, std::string_view why) {
    Status s = store->SaveCheckpoint("ffn.1", RefsOf(tensors), 1);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << why;
  };
  NamedTensor short_data = MakeTensor("param/w", DType::kF32, {2, 2}, 0);
  short_data.data.pop_back();
  expect_refused({short_data}, "bytes do not match the shape");
  expect_refused({MakeTensor("", DType::kU8, {1}, 0)}, "empty name");
  expect_refused({MakeTensor(std::string(257, 'a'), DType::kU8, {1}, 0)}, "long name");
  expect_refused({MakeTensor("bad\nname", DType::kU8, {1}, 0)}, "control character");
  expect_refused({MakeTensor("bad\xff", DType::kU8, {1}, 0)}, "not UTF-8");
  expect_refused({MakeTensor("w", DType::kU8, {1}, 0), MakeTensor("w", DType::kU8, {2}, 0)},
                 "duplicate name");
  expect_refused({MakeTensor("w", DType::kU8, {1, 1, 1, 1, 1, 1, 1, 1, 1}, 0)}, "rank 9");
  expect_refused({MakeTensor("w", DType::kBool, {4}, 5)}, "BOOL byte 5");
  NamedTensor negative{"w", DType::kU8, {-1}, {}};
  expect_refused({negative}, "negative dimension");

  EXPECT_EQ(store->SaveCheckpoint("ffn.1", RefsOf(good), 1, {{"step", "3"}}).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(store->SaveCheckpoint("ffn.1", RefsOf(good), 1, {{"k", "\xc0\x80"}}).code(),
            Code::kInvalidArgument);
  // Nothing was written by any refused call.
  EXPECT_EQ(store->LoadLatest("ffn.1").status().code(), Code::kNotFound);
}

TEST(ExpertStoreTest, MissingExpertOrVersionIsNotFound) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  Result<Checkpoint> none = store->LoadLatest("ffn.9");
  EXPECT_EQ(none.status().code(), Code::kNotFound);
  EXPECT_NE(none.status().message().find("ffn.9"), std::string::npos);
  ASSERT_TRUE(Save(*store, "ffn.9", 2).ok());
  Result<Checkpoint> other_step = store->Load("ffn.9", 3);
  EXPECT_EQ(other_step.status().code(), Code::kNotFound);
  EXPECT_NE(other_step.status().message().find("kept: 2"), std::string::npos)
      << other_step.status().message();
  EXPECT_EQ(store->LoadLatest("not a uid").status().code(), Code::kInvalidArgument);
}

TEST(ExpertStoreTest, DeleteExpertRemovesEveryVersion) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(Save(*store, "ffn.1", 1).ok());
  ASSERT_TRUE(Save(*store, "ffn.1", 2).ok());
  ASSERT_TRUE(Save(*store, "ffn.10", 1).ok());
  ASSERT_TRUE(store->DeleteExpert("ffn.1").ok());
  EXPECT_EQ(store->LoadLatest("ffn.1").status().code(), Code::kNotFound);
  EXPECT_EQ(KeysOfVersion(*store->database(), "ffn.1", 1), 0);
  EXPECT_EQ(KeysOfVersion(*store->database(), "ffn.1", 2), 0);
  // The neighbour whose uid extends "ffn.1" is untouched.
  ASSERT_TRUE(store->LoadLatest("ffn.10").ok());
  EXPECT_EQ(store->DeleteExpert("ffn.1").code(), Code::kNotFound);
  // A deleted expert may start again from any step.
  ASSERT_TRUE(Save(*store, "ffn.1", 0).ok());
}

// Tampering below the store, through the same Database, stands in for disk corruption and for bugs.
class CorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = Database::Open(dir_.path());
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    db_ = *db;
    auto store = ExpertStore::Open(db_, RealClockOptions());
    ASSERT_TRUE(store.ok());
    store_ = std::move(*store);
    ASSERT_TRUE(store_->SaveCheckpoint("ffn.1", RefsOf(SmallTensors(4)), 3).ok());
  }

  void Tamper(const std::function<Status(Database::WriteBatch&)>& edit) {
    Database::WriteBatch batch(*db_);
    ASSERT_TRUE(edit(batch).ok());
    ASSERT_TRUE(db_->Write(batch, true).ok());
  }

  void ExpectTorn(std::string_view detail) {
    Result<Checkpoint> loaded = store_->LoadLatest("ffn.1");
    ASSERT_FALSE(loaded.ok());
    EXPECT_EQ(loaded.status().code(), Code::kInternal);
    EXPECT_NE(loaded.status().message().find("is torn or corrupt"), std::string::npos)
        << loaded.status().message();
    EXPECT_NE(loaded.status().message().find(detail), std::string::npos)
        << loaded.status().message();
  }

  TempDir dir_;
  std::shared_ptr<Database> db_;
  std::unique_ptr<ExpertStore> store_;
};

TEST_F(CorruptionTest, ChangedTensorBytesFailTheChecksum) {
  Tamper([](Database::WriteBatch& batch) {
    std::string forged(4 * 3 * 4, 'x');  // Right size, wrong bytes.
    return batch.Put(ColumnFamily::kExperts, format::TensorKey("ffn.1", 3, 0), forged);
  });
  ExpectTorn("do not match its checksum");
}

TEST_F(CorruptionTest, MissingTensorIsTorn) {
  Tamper([](Database::WriteBatch& batch) {
    return batch.Delete(ColumnFamily::kExperts, format::TensorKey("ffn.1", 3, 2));
  });
  ExpectTorn("'param/linear1.bias' are missing");
}

TEST_F(CorruptionTest, MissingManifestIsTorn) {
  Tamper([](Database::WriteBatch& batch) {
    return batch.Delete(ColumnFamily::kExperts, format::ManifestKey("ffn.1", 3));
  });
  ExpectTorn("manifest is missing");
}

TEST_F(CorruptionTest, FlippedManifestByteFailsTheChecksum) {
  auto manifest = db_->Get(ColumnFamily::kExperts, format::ManifestKey("ffn.1", 3));
  ASSERT_TRUE(manifest.ok());
  std::string bad = *manifest;
  bad[bad.size() / 2] ^= 0x01;
  Tamper([&](Database::WriteBatch& batch) {
    return batch.Put(ColumnFamily::kExperts, format::ManifestKey("ffn.1", 3), bad);
  });
  ExpectTorn("checksum does not match");
}

TEST_F(CorruptionTest, MalformedStepListIsInternal) {
  Tamper([](Database::WriteBatch& batch) {
    return batch.Put(ColumnFamily::kMeta, "ffn.1", std::string_view("abc"));
  });
  EXPECT_EQ(store_->LoadLatest("ffn.1").status().code(), Code::kInternal);
  EXPECT_EQ(store_->ListExperts().status().code(), Code::kInternal);
}

TEST(ExpertStoreTest, ExportWritesASafetensorsFileThatDecodesToTheSameBytes) {
  TempDir dir;
  auto store = OpenStore(dir.Sub("db"));
  std::vector<NamedTensor> tensors = SmallTensors(11);
  tensors.push_back(MakeTensor("param/mask", DType::kBool, {6}, 0));
  for (uint8_t& b : tensors.back().data) b &= 1;
  tensors.push_back(MakeTensor("optim/step_count", DType::kI64, {}, 1));
  ASSERT_TRUE(store->SaveCheckpoint("ffn.3.14", RefsOf(tensors), 77, {{"schema", "ffn-v1"}}).ok());

  const std::string path = dir.Sub("ffn.3.14.safetensors");
  ASSERT_TRUE(store->Export("ffn.3.14", path).ok());
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Result<safetensors::Decoded> decoded = safetensors::Decode(blob);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ASSERT_EQ(decoded->tensors.size(), tensors.size());
  for (const NamedTensor& want : tensors) {
    const safetensors::TensorView* got = decoded->Find(want.name);
    ASSERT_NE(got, nullptr) << want.name;
    EXPECT_EQ(got->dtype, want.dtype) << want.name;
    EXPECT_EQ(got->shape, want.shape) << want.name;
    EXPECT_EQ(std::vector<uint8_t>(got->data.begin(), got->data.end()), want.data) << want.name;
  }
  const std::map<std::string, std::string> metadata = {
      {"schema", "ffn-v1"}, {"uid", "ffn.3.14"}, {"step", "77"}};
  EXPECT_EQ(decoded->metadata, metadata);
  EXPECT_EQ(std::filesystem::status(path).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                std::filesystem::perms::group_read | std::filesystem::perms::others_read);

  // A second export replaces the file and leaves no temporary file behind.
  ASSERT_TRUE(Save(*store, "ffn.3.14", 78).ok());
  ASSERT_TRUE(store->Export("ffn.3.14", path).ok());
  int entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    (void)entry;
    ++entries;
  }
  EXPECT_EQ(entries, 2);  // "db" and the exported file.
}

TEST(ExpertStoreTest, ExportFailuresLeaveNothingBehind) {
  TempDir dir;
  auto store = OpenStore(dir.Sub("db"));
  EXPECT_EQ(store->Export("ffn.1", dir.Sub("x.safetensors")).code(), Code::kNotFound);
  ASSERT_TRUE(Save(*store, "ffn.1", 1).ok());
  EXPECT_EQ(store->Export("ffn.1", dir.Sub("no/such/dir/x.safetensors")).code(), Code::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("x.safetensors")));
}

TEST(ExpertStoreTest, SecondOpenOfTheSameDirectoryIsUnavailable) {
  TempDir dir;
  auto first = OpenStore(dir.path());
  const std::string expected =
      "database " + dir.path() + " is in use by another process (lock held)";
  auto second = ExpertStore::Open(dir.path(), RealClockOptions());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kUnavailable);
  EXPECT_EQ(second.status().message(), expected);
  auto kv = KvStore::Open(dir.path());
  ASSERT_FALSE(kv.ok());
  EXPECT_EQ(kv.status().message(), expected);

  ASSERT_TRUE(first->Close().ok());
  auto third = ExpertStore::Open(dir.path(), RealClockOptions());
  EXPECT_TRUE(third.ok()) << third.status().ToString();
}

TEST(ExpertStoreTest, OpenWithoutCreateOfAnEmptyDirectoryIsNotFound) {
  TempDir dir;
  ExpertStoreOptions options = RealClockOptions();
  options.create_if_missing = false;
  auto store = ExpertStore::Open(dir.Sub("absent"), options);
  EXPECT_EQ(store.status().code(), Code::kNotFound) << store.status().ToString();
}

TEST(ExpertStoreTest, RefusesKeepCheckpointsBelowOne) {
  TempDir dir;
  ExpertStoreOptions options = RealClockOptions();
  options.keep_checkpoints = 0;
  EXPECT_EQ(ExpertStore::Open(dir.path(), options).status().code(), Code::kInvalidArgument);
}

TEST(ExpertStoreTest, RefusesAMissingClockBeforeTouchingTheDirectory) {
  TempDir dir;
  ExpertStoreOptions options;
  auto store = ExpertStore::Open(dir.Sub("db"), options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), Code::kInvalidArgument);
  EXPECT_NE(store.status().message().find("clock"), std::string::npos) << store.status().message();
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("db")));
}

TEST(ExpertStoreTest, CallsAfterCloseAreUnavailable) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store->Close().ok());
  EXPECT_TRUE(store->Close().ok());
  EXPECT_EQ(Save(*store, "ffn.1", 1).code(), Code::kUnavailable);
  EXPECT_EQ(store->LoadLatest("ffn.1").status().code(), Code::kUnavailable);
  EXPECT_EQ(store->ListExperts().status().code(), Code::kUnavailable);
}

TEST(ExpertStoreTest, ConcurrentSavesAndLoadsSeeOnlyWholeCheckpoints) {
  TempDir dir;
  ExpertStoreOptions options = RealClockOptions();
  options.keep_checkpoints = 2;
  auto store = OpenStore(dir.path(), options);
  constexpr int kWriters = 3;
  constexpr int64_t kSteps = 15;
  std::atomic<bool> done{false};
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      for (int64_t step = 0; step < kSteps; ++step) {
        EXPECT_TRUE(Save(*store, "ffn." + std::to_string(w), step).ok());
      }
    });
  }
  std::thread reader([&] {
    int loads = 0;
    while (!done.load() || loads == 0) {
      for (int w = 0; w < kWriters; ++w) {
        Result<Checkpoint> latest = store->LoadLatest("ffn." + std::to_string(w));
        if (latest.status().code() == Code::kNotFound) continue;
        ASSERT_TRUE(latest.ok()) << latest.status().ToString();
        EXPECT_EQ(DiffFromExpected(*latest), "");
        ++loads;
      }
    }
  });
  for (auto& t : writers) t.join();
  done = true;
  reader.join();
  auto experts = store->ListExperts();
  ASSERT_TRUE(experts.ok());
  ASSERT_EQ(experts->size(), static_cast<size_t>(kWriters));
  for (const ExpertSummary& e : *experts) {
    EXPECT_EQ(e.steps, (std::vector<int64_t>{kSteps - 2, kSteps - 1}));
  }
}

TEST(ExpertStoreTest, SharesItsDatabaseWithAKvStore) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  KvStore kv(store->database());
  ASSERT_TRUE(kv.Put("node_state", "routing/a", "1", true).ok());
  ASSERT_TRUE(Save(*store, "ffn.1", 1).ok());
  // The KvStore still holds the database, so closing the expert store leaves it open for the
  // KvStore.
  ASSERT_TRUE(store->Close().ok());
  auto value = kv.Get("node_state", "routing/a");
  ASSERT_TRUE(value.ok()) << value.status().ToString();
  EXPECT_EQ(*value, "1");
}

}  // namespace
}  // namespace dmoe::storage
