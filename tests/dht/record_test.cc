#include "dht/record.h"

#include <gtest/gtest.h>

#include "dht/store.h"
#include "tests/dht/test_util.h"

namespace dmoe::dht {
namespace {

constexpr int64_t kNow = 1'700'000'000'000;

TEST(RecordTest, SignedBytesAreLengthPrefixed) {
  Identity id = testing::TestIdentity(1);
  Record a = SignRecord(id, "ab", "c", "", kNow + 1000, 1);
  Record b = SignRecord(id, "a", "bc", "", kNow + 1000, 1);
  EXPECT_NE(SignedBytes(a), SignedBytes(b));
  EXPECT_EQ(SignedBytes(a).substr(0, 11), "dmoe-dht-v1");
  EXPECT_TRUE(VerifyRecordSignature(a));
  b.subkey = "c";
  b.key = "ab";
  EXPECT_FALSE(VerifyRecordSignature(b));  // signature was over the other split
}

TEST(RecordTest, ShapeRules) {
  Identity id = testing::TestIdentity(1);
  RecordLimits limits;
  EXPECT_EQ(CheckRecordShape(SignRecord(id, "k", "s", "v", kNow, 1), kNow, limits),
            RejectReason::kExpired);
  EXPECT_EQ(CheckRecordShape(SignRecord(id, "k", "s", "v", kNow + kMaxTtlMs + kMaxClockSkewMs, 1),
                             kNow, limits),
            RejectReason::kNone);
  EXPECT_EQ(
      CheckRecordShape(SignRecord(id, "k", "s", "v", kNow + kMaxTtlMs + kMaxClockSkewMs + 1, 1),
                       kNow, limits),
      RejectReason::kTtlTooLong);
  EXPECT_EQ(CheckRecordShape(SignRecord(id, "", "s", "v", kNow + 1, 1), kNow, limits),
            RejectReason::kBadKey);
  EXPECT_EQ(
      CheckRecordShape(SignRecord(id, "k", "s", std::string(1025, 'x'), kNow + 1, 1), kNow, limits),
      RejectReason::kValueTooLarge);
}

TEST(RecordStoreTest, SeqAndOwnershipRules) {
  Identity alice = testing::TestIdentity(1);
  Identity bob = testing::TestIdentity(2);
  RecordStore store(StoreLimits{});
  VerifiedCache cache;
  Record r1 = SignRecord(alice, "k", "s", "v1", kNow + 10'000, 5);
  EXPECT_EQ(store.Put(r1, kNow, cache), RejectReason::kNone);
  EXPECT_EQ(store.Put(r1, kNow, cache), RejectReason::kNone);  // identical republish
  EXPECT_EQ(store.Put(SignRecord(alice, "k", "s", "old", kNow + 20'000, 4), kNow, cache),
            RejectReason::kLowerSeq);
  EXPECT_EQ(store.Put(SignRecord(alice, "k", "s", "same seq", kNow + 5'000, 5), kNow, cache),
            RejectReason::kLowerSeq);
  EXPECT_EQ(store.Put(SignRecord(bob, "k", "s", "mine", kNow + 10'000, 99), kNow, cache),
            RejectReason::kForeignSubkey);
  Record later = SignRecord(alice, "k", "s", "later", kNow + 20'000, 5);
  EXPECT_EQ(store.Put(later, kNow, cache), RejectReason::kNone);
  auto got = store.Get("k", kNow, std::nullopt);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0]->value, "later");
  // Once alice's record expires, the subkey is free for bob.
  EXPECT_EQ(store.Put(SignRecord(bob, "k", "s", "mine", kNow + 30'000, 1), kNow + 20'000, cache),
            RejectReason::kNone);
  EXPECT_TRUE(store.Get("k", kNow + 30'000, std::nullopt).empty());  // expired: never returned
  EXPECT_EQ(store.Sweep(kNow + 30'000), 1u);
  EXPECT_EQ(store.size(), 0u);
}

TEST(RecordStoreTest, LimitsRefuseTheExcess) {
  Identity alice = testing::TestIdentity(1);
  StoreLimits limits;
  limits.max_subkeys_per_key = 3;
  limits.max_records = 5;
  RecordStore store(limits);
  VerifiedCache cache;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(
        store.Put(SignRecord(alice, "a", std::to_string(i), "v", kNow + 1000, 1), kNow, cache),
        RejectReason::kNone);
  }
  EXPECT_EQ(store.Put(SignRecord(alice, "a", "3", "v", kNow + 1000, 1), kNow, cache),
            RejectReason::kTooManySubkeys);
  EXPECT_EQ(store.Put(SignRecord(alice, "b", "0", "v", kNow + 1000, 1), kNow, cache),
            RejectReason::kNone);
  EXPECT_EQ(store.Put(SignRecord(alice, "b", "1", "v", kNow + 1000, 1), kNow, cache),
            RejectReason::kNone);
  EXPECT_EQ(store.Put(SignRecord(alice, "c", "0", "v", kNow + 1000, 1), kNow, cache),
            RejectReason::kStoreFull);
  Record forged = SignRecord(alice, "d", "0", "v", kNow + 1000, 1);
  forged.value = "tampered";
  EXPECT_EQ(store.Put(forged, kNow, cache), RejectReason::kBadSignature);
}

TEST(RecordStoreTest, CursorListsSubkeysAfterIt) {
  Identity alice = testing::TestIdentity(1);
  RecordStore store(StoreLimits{});
  VerifiedCache cache;
  for (const char* s : {"a", "b", "c", "d"}) {
    ASSERT_EQ(store.Put(SignRecord(alice, "k", s, "v", kNow + 1000, 1), kNow, cache),
              RejectReason::kNone);
  }
  auto after_b = store.Get("k", kNow, std::string("b"));
  ASSERT_EQ(after_b.size(), 2u);
  EXPECT_EQ(after_b[0]->subkey, "c");
  EXPECT_EQ(store.Get("k", kNow, std::string("")).size(), 4u);
}

}  // namespace
}  // namespace dmoe::dht
