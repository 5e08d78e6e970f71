#include "dht/lookup.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "tests/dht/test_util.h"

namespace dmoe::dht {
namespace {

WireContact C(uint8_t first) {
  WireContact c;
  c.id[0] = first;
  c.address = Address::V4(10, 0, 0, first, 1);
  return c;
}

TEST(LookupTest, AsksAlphaClosestAndFinishesWhenWindowAnswered) {
  NodeId target{};  // distance = id
  NodeId self{};
  self[0] = 0xff;
  Lookup::Options o;
  o.k = 3;
  o.alpha = 2;
  Lookup lk(Lookup::Kind::kFindNode, target, "", self, o);
  for (uint8_t b : {40, 30, 20, 10}) lk.AddCandidate(C(b), 1);
  auto q = lk.NextQueries();
  ASSERT_EQ(q.size(), 2u);
  EXPECT_EQ(q[0].id[0], 10);
  EXPECT_EQ(q[1].id[0], 20);
  EXPECT_TRUE(lk.NextQueries().empty());  // alpha in flight
  lk.OnNodes(C(10).id, {C(5), C(6)});
  q = lk.NextQueries();
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].id[0], 5);
  lk.OnNodes(C(5).id, {});
  lk.OnFailed(C(20).id);
  q = lk.NextQueries();
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].id[0], 6);
  EXPECT_FALSE(lk.Done());
  lk.OnNodes(C(6).id, {});
  EXPECT_TRUE(lk.Done());  // window {5, 6, 10} answered
  auto closest = lk.ClosestResponded();
  ASSERT_EQ(closest.size(), 3u);
  EXPECT_EQ(closest[0].id[0], 5);
  EXPECT_EQ(lk.Rounds(), 2);
}

TEST(LookupTest, StalledRequestFreesItsSlot) {
  NodeId target{};
  NodeId self{};
  self[0] = 0xff;
  Lookup::Options o;
  o.k = 2;
  o.alpha = 1;
  Lookup lk(Lookup::Kind::kFindNode, target, "", self, o);
  lk.AddCandidate(C(1), 1);
  lk.AddCandidate(C(2), 1);
  lk.AddCandidate(C(3), 1);
  ASSERT_EQ(lk.NextQueries().size(), 1u);
  lk.OnStalled(C(1).id);
  auto q = lk.NextQueries();
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].id[0], 2);
  lk.OnNodes(C(2).id, {});
  q = lk.NextQueries();
  ASSERT_EQ(q.size(), 1u);
  lk.OnNodes(C(3).id, {});
  EXPECT_TRUE(lk.Done());  // {2, 3} answered; 1 is presumed dead
}

TEST(LookupTest, FindValueStopsAtQuorumAfterPagination) {
  NodeId target{};
  NodeId self{};
  self[0] = 0xff;
  Lookup lk(Lookup::Kind::kFindValue, target, "key", self, Lookup::Options{});
  lk.AddCandidate(C(1), 1);
  lk.AddCandidate(C(2), 1);
  lk.NextQueries();
  Record r;
  r.key = "key";
  r.subkey = "a";
  r.expiration_ms = 10;
  auto cursor = lk.OnRecords(C(1).id, {r}, /*more=*/true);
  ASSERT_TRUE(cursor.has_value());
  EXPECT_EQ(cursor->first, "a");
  EXPECT_EQ(cursor->second, r.publisher);
  EXPECT_FALSE(lk.Done());
  r.subkey = "b";
  EXPECT_FALSE(lk.OnRecords(C(1).id, {r}, false).has_value());
  EXPECT_TRUE(lk.Done());
  EXPECT_EQ(lk.records().size(), 2u);
}

// A stranger's record of a subkey sits beside the honest one, whatever its expiration; only the
// same publisher's newer record replaces one.
TEST(LookupTest, RecordsOfOneSubkeyFromTwoPublishersAreKeptSideBySide) {
  Identity honest = testing::TestIdentity(1);
  Identity stranger = testing::TestIdentity(2);
  Lookup lk(Lookup::Kind::kFindValue, NodeId{}, "key", NodeId{}, Lookup::Options{});
  lk.MergeRecord(SignRecord(honest, "key", "s", "honest", 45'000, 5));
  lk.MergeRecord(SignRecord(stranger, "key", "s", "stranger", 600'000, 99));
  lk.MergeRecord(SignRecord(honest, "key", "s", "honest older", 30'000, 4));
  ASSERT_EQ(lk.records().size(), 2u);
  std::vector<std::string> values;
  for (const auto& [slot, r] : lk.records()) values.push_back(r.value);
  EXPECT_NE(std::find(values.begin(), values.end(), "honest"), values.end());
  EXPECT_NE(std::find(values.begin(), values.end(), "stranger"), values.end());
  lk.MergeRecord(SignRecord(honest, "key", "s", "honest newer", 45'000, 6));
  EXPECT_EQ(lk.records().at({"s", honest.public_key()}).value, "honest newer");
}

TEST(LookupTest, EmptyLookupIsDone) {
  NodeId target{};
  Lookup lk(Lookup::Kind::kFindNode, target, "", NodeId{}, Lookup::Options{});
  EXPECT_TRUE(lk.Done());
  EXPECT_TRUE(lk.NextQueries().empty());
}

}  // namespace
}  // namespace dmoe::dht
