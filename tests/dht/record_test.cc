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
  // Bob's record of the same subkey is kept beside alice's: neither replaces the other.
  EXPECT_EQ(store.Put(SignRecord(bob, "k", "s", "mine", kNow + 10'000, 99), kNow, cache),
            RejectReason::kNone);
  Record later = SignRecord(alice, "k", "s", "later", kNow + 20'000, 5);
  EXPECT_EQ(store.Put(later, kNow, cache), RejectReason::kNone);
  auto got = store.Get("k", kNow, std::nullopt);
  ASSERT_EQ(got.size(), 2u);
  for (const Record* r : got) {
    EXPECT_EQ(r->value, r->publisher == alice.public_key() ? "later" : "mine");
  }
  EXPECT_EQ(store.size(), 2u);
  EXPECT_TRUE(store.Get("k", kNow + 30'000, std::nullopt).empty());  // expired: never returned
  EXPECT_EQ(store.Sweep(kNow + 30'000), 2u);
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

// Publishers per subkey are bounded, and a newcomer past the bound is refused without evicting an
// established record; per-publisher and per-source quotas refuse the excess of one stranger while
// others still store.
TEST(RecordStoreTest, PublisherBoundAndQuotas) {
  StoreLimits limits;
  limits.max_publishers_per_subkey = 2;
  limits.max_records_per_publisher = 3;
  limits.max_records_per_source = 4;
  RecordStore store(limits);
  VerifiedCache cache;
  Identity a = testing::TestIdentity(1), b = testing::TestIdentity(2), c = testing::TestIdentity(3);
  EXPECT_EQ(store.Put(SignRecord(a, "k", "s", "a", kNow + 1000, 1), kNow, cache, "10.0.0.1"),
            RejectReason::kNone);
  EXPECT_EQ(store.Put(SignRecord(b, "k", "s", "b", kNow + 1000, 1), kNow, cache, "10.0.0.2"),
            RejectReason::kNone);
  EXPECT_EQ(store.Put(SignRecord(c, "k", "s", "c", kNow + 9000, 1), kNow, cache, "10.0.0.3"),
            RejectReason::kTooManyPublishers);
  EXPECT_EQ(store.Get("k", kNow, std::nullopt).size(), 2u);
  // Once an established record expires, its place is free.
  EXPECT_EQ(store.Put(SignRecord(c, "k", "s", "c", kNow + 9000, 1), kNow + 1000, cache, "10.0.0.3"),
            RejectReason::kNone);

  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(store.Put(SignRecord(c, "p" + std::to_string(i), "", "v", kNow + 9000, 1),
                        kNow + 1000, cache, "10.0.0.3"),
              RejectReason::kNone);
  }
  EXPECT_EQ(store.Put(SignRecord(c, "p9", "", "v", kNow + 9000, 1), kNow + 1000, cache, "10.0.0.3"),
            RejectReason::kPublisherQuota);
  EXPECT_EQ(store.publisher_count(c.public_key()), 3u);
  // A replacement by the same publisher is not a new record.
  EXPECT_EQ(
      store.Put(SignRecord(c, "p0", "", "v2", kNow + 9000, 2), kNow + 1000, cache, "10.0.0.3"),
      RejectReason::kNone);
  // Many publishers behind one source address.
  for (int i = 0; i < 4; ++i) {
    Identity pub = testing::TestIdentity(static_cast<uint8_t>(10 + i));
    RejectReason want = i < 4 - 3 ? RejectReason::kNone : RejectReason::kSourceQuota;
    EXPECT_EQ(store.Put(SignRecord(pub, "q", std::to_string(i), "v", kNow + 9000, 1), kNow + 1000,
                        cache, "10.0.0.3"),
              want)
        << i;
  }
  // Another source and the node's own records are untouched by that source's quota.
  EXPECT_EQ(store.Put(SignRecord(a, "own", "", "v", kNow + 9000, 1), kNow + 1000, cache),
            RejectReason::kNone);
  EXPECT_EQ(
      store.Put(SignRecord(b, "other", "", "v", kNow + 9000, 1), kNow + 1000, cache, "10.0.0.2"),
      RejectReason::kNone);
}

TEST(RecordStoreTest, CursorWithPublisherContinuesWithinASubkey) {
  RecordStore store(StoreLimits{});
  VerifiedCache cache;
  Identity a = testing::TestIdentity(1), b = testing::TestIdentity(2);
  for (const Identity* id : {&a, &b}) {
    for (const char* s : {"x", "y"}) {
      ASSERT_EQ(store.Put(SignRecord(*id, "k", s, "v", kNow + 1000, 1), kNow, cache),
                RejectReason::kNone);
    }
  }
  auto all = store.Get("k", kNow, std::nullopt);
  ASSERT_EQ(all.size(), 4u);
  auto rest = store.Get("k", kNow, all[0]->subkey, all[0]->publisher);
  ASSERT_EQ(rest.size(), 3u);
  EXPECT_EQ(*rest[0], *all[1]);
  EXPECT_EQ(store.Get("k", kNow, std::string("x")).size(), 2u);  // a subkey-only cursor skips x
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
