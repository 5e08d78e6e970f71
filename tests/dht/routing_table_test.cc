#include "dht/routing_table.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace dmoe::dht {
namespace {

constexpr int64_t kStale = 1'000'000;

TEST(NodeIdTest, CommonPrefixAndRandomPrefix) {
  std::mt19937_64 rng(1);
  NodeId base = RandomId(rng);
  EXPECT_EQ(CommonPrefixLength(base, base), 256);
  for (int cpl : {0, 1, 7, 8, 9, 100, 255}) {
    NodeId id = RandomIdWithPrefix(base, cpl, rng);
    EXPECT_EQ(CommonPrefixLength(base, id), cpl);
  }
}

TEST(RoutingTableTest, FindClosestReturnsKNearestByXor) {
  std::mt19937_64 rng(2);
  NodeId self = RandomId(rng);
  RoutingTable table(self, 20);
  std::vector<NodeId> all;
  for (int i = 0; i < 500; ++i) {
    NodeId id = RandomId(rng);
    table.Seen(id, Address::V4(10, 0, 0, 1, static_cast<uint16_t>(i)), i, kStale);
  }
  for (const Contact& c : table.AllContacts()) all.push_back(c.id);
  NodeId target = RandomId(rng);
  std::sort(all.begin(), all.end(),
            [&](const NodeId& a, const NodeId& b) { return Closer(target, a, b); });
  auto closest = table.Closest(target, 20);
  ASSERT_EQ(closest.size(), 20u);
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(closest[i].id, all[i]);
}

TEST(RoutingTableTest, SplitsOnlyTheOwnSideAndKeepsAtMostKPerBucket) {
  std::mt19937_64 rng(3);
  NodeId self = RandomId(rng);
  RoutingTable table(self, 4);
  // 50 ids that all differ from self in the first bit: they share bucket 0 forever.
  int added = 0, cached = 0;
  for (int i = 0; i < 50; ++i) {
    NodeId id = RandomIdWithPrefix(self, 0, rng);
    auto u = table.Seen(id, Address::V4(10, 0, 0, 2, static_cast<uint16_t>(i)), 0, kStale);
    added += u.result == RoutingTable::UpdateResult::kAdded;
    cached += u.result == RoutingTable::UpdateResult::kCached;
  }
  EXPECT_EQ(added, 4);
  EXPECT_EQ(cached, 46);
  EXPECT_EQ(table.replacement_count(), 4u);  // the cache keeps the k newest
  // Ids near self split the own-side bucket repeatedly.
  for (int cpl = 1; cpl < 12; ++cpl) {
    table.Seen(RandomIdWithPrefix(self, cpl, rng), Address::V4(10, 0, 1, 1, 1), 0, kStale);
  }
  EXPECT_GE(table.bucket_count(), 3u);
  EXPECT_EQ(table.size(), 4u + 11u);
}

TEST(RoutingTableTest, FullBucketAsksToPingLeastRecentlySeenThenEvictsOnFailure) {
  std::mt19937_64 rng(4);
  NodeId self = RandomId(rng);
  RoutingTable table(self, 2);  // the three contacts are in different /24s: no Sybil limit
  NodeId a = RandomIdWithPrefix(self, 0, rng);
  NodeId b = RandomIdWithPrefix(self, 0, rng);
  NodeId c = RandomIdWithPrefix(self, 0, rng);
  table.Seen(a, Address::V4(1, 1, 1, 1, 1), 0, kStale);
  table.Seen(b, Address::V4(1, 1, 2, 1, 1), 10, kStale);
  // The LRU contact was seen recently: c is cached without a ping.
  auto u = table.Seen(c, Address::V4(1, 1, 3, 1, 1), 20, kStale);
  EXPECT_EQ(u.result, RoutingTable::UpdateResult::kCached);
  EXPECT_FALSE(u.ping.has_value());
  // Later, the LRU (a) is stale: ping it, once.
  u = table.Seen(c, Address::V4(1, 1, 3, 1, 1), 2 * kStale, kStale);
  ASSERT_TRUE(u.ping.has_value());
  EXPECT_EQ(u.ping->id, a);
  EXPECT_FALSE(table.Seen(c, Address::V4(1, 1, 3, 1, 1), 2 * kStale, kStale).ping.has_value());
  // The ping fails: a leaves and c, the replacement, takes its place.
  EXPECT_TRUE(table.Failed(a, 1));
  EXPECT_EQ(table.Find(a), nullptr);
  ASSERT_NE(table.Find(c), nullptr);
  EXPECT_EQ(table.size(), 2u);
}

TEST(RoutingTableTest, AnsweredPingKeepsTheOldContact) {
  std::mt19937_64 rng(5);
  NodeId self = RandomId(rng);
  RoutingTable table(self, 1);
  NodeId a = RandomIdWithPrefix(self, 0, rng);
  NodeId c = RandomIdWithPrefix(self, 0, rng);
  table.Seen(a, Address::V4(1, 1, 1, 1, 1), 0, kStale);
  auto u = table.Seen(c, Address::V4(1, 1, 1, 3, 1), 2 * kStale, kStale);
  ASSERT_TRUE(u.ping.has_value());
  table.Seen(a, Address::V4(1, 1, 1, 1, 1), 2 * kStale + 5, kStale);  // a answered
  EXPECT_NE(table.Find(a), nullptr);
  EXPECT_EQ(table.Find(c), nullptr);
}

TEST(RoutingTableTest, IdleBucketsYieldRefreshTargetsInTheirRange) {
  std::mt19937_64 rng(6);
  NodeId self = RandomId(rng);
  RoutingTable table(self, 2);
  for (int cpl = 0; cpl < 6; ++cpl) {
    for (int j = 0; j < 3; ++j) {
      table.Seen(RandomIdWithPrefix(self, cpl, rng), Address::V4(1, 1, 1, 1, 1), 0, kStale);
    }
  }
  size_t buckets = table.bucket_count();
  auto targets = table.IdleBucketTargets(100, 50, rng);
  ASSERT_EQ(targets.size(), buckets);
  for (size_t i = 0; i + 1 < targets.size(); ++i) {
    EXPECT_EQ(CommonPrefixLength(self, targets[i]), static_cast<int>(i));
  }
  EXPECT_TRUE(table.IdleBucketTargets(120, 50, rng).empty());  // refreshed at 100
}

}  // namespace
}  // namespace dmoe::dht
