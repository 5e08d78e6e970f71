// Many-node tests on the simulated network (virtual time, no sleeps).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include "dht/node.h"
#include "dht/sim_network.h"
#include "tests/dht/test_util.h"

namespace dmoe::dht {
namespace {

using testing::BuildNetwork;
using testing::SimGet;
using testing::SimOptions;
using testing::SimPut;

TEST(SimTest, LookupFindsTrueKClosestForMostTargets) {
  SimNetwork net(11);
  net.set_link({2000, 500, 0});
  auto ids = BuildNetwork(net, 256, SimOptions());
  std::vector<NodeId> all;
  for (size_t i : ids) all.push_back(net.node(i).id());
  std::mt19937_64 rng(5);
  int exact = 0;
  const int kTargets = 100;
  for (int t = 0; t < kTargets; ++t) {
    NodeId target = RandomId(rng);
    size_t from = ids[rng() % ids.size()];
    std::optional<std::vector<WireContact>> found;
    net.node(from).FindNode(
        target, [&](std::vector<WireContact> nodes, int, int) { found = std::move(nodes); });
    ASSERT_TRUE(net.RunUntil([&] { return found.has_value(); }, 10'000));
    // Brute force: the 20 closest of every node but the asker (which never lists itself).
    std::vector<NodeId> truth;
    for (const NodeId& id : all) {
      if (id != net.node(from).id()) truth.push_back(id);
    }
    std::sort(truth.begin(), truth.end(),
              [&](const NodeId& a, const NodeId& b) { return Closer(target, a, b); });
    truth.resize(20);
    std::set<NodeId> got;
    for (const WireContact& c : *found) got.insert(c.id);
    exact += std::set<NodeId>(truth.begin(), truth.end()) == got;
  }
  std::printf("  true k closest found for %d of %d targets\n", exact, kTargets);
  EXPECT_GE(exact, kTargets * 95 / 100) << exact << " of " << kTargets;
}

struct Workload {
  std::vector<std::pair<std::string, size_t>> keys;  // key, publisher index
};

Workload Publish(SimNetwork& net, const std::vector<size_t>& publishers, int keys_per_publisher) {
  Workload w;
  for (size_t p : publishers) {
    for (int j = 0; j < keys_per_publisher; ++j) {
      std::string key = "expert/ffn." + std::to_string(p) + "." + std::to_string(j);
      net.node(p).Put(key, net.node(p).identity().peer_id(), "{\"endpoint\":\"x\"}", 45'000,
                      nullptr);
      w.keys.push_back({key, p});
    }
  }
  net.RunFor(3000);
  return w;
}

TEST(SimTest, StaticNetworkGetsAlwaysSucceed) {
  SimNetwork net(12);
  net.set_link({5000, 2000, 0});
  auto ids = BuildNetwork(net, 256, SimOptions());
  std::vector<size_t> publishers(ids.begin(), ids.begin() + 32);
  Workload w = Publish(net, publishers, 3);
  std::mt19937_64 rng(1);
  int ok = 0, total = 0;
  for (int i = 0; i < 200; ++i) {
    const auto& [key, p] = w.keys[rng() % w.keys.size()];
    KeyResult r = SimGet(net, ids[rng() % ids.size()], key);
    ++total;
    ok += r.status.ok() && r.records.size() == 1 &&
          r.records[0].publisher == net.node(p).identity().public_key();
  }
  std::printf("  static: %d of %d gets succeeded\n", ok, total);
  EXPECT_EQ(ok, total);
}

// Runs gets while nodes are replaced; publishers (never replaced) re-announce like expert servers.
double ChurnSuccess(double loss, double churn_fraction, uint64_t seed) {
  SimNetwork net(seed);
  NodeOptions o = SimOptions();
  o.republish_interval_ms = 20'000;
  o.refresh_interval_ms = 60'000;
  net.set_link({5000, 2000, loss});
  auto ids = BuildNetwork(net, 256, o);
  std::vector<size_t> publishers(ids.begin(), ids.begin() + 32);
  std::vector<size_t> replaceable(ids.begin() + 32, ids.end());
  Workload w = Publish(net, publishers, 2);
  std::mt19937_64 rng(seed);
  size_t to_replace = static_cast<size_t>(churn_fraction * ids.size());
  int ok = 0, total = 0;
  const int kRounds = 30;
  for (int round = 0; round < kRounds; ++round) {
    // Replace a slice of the nodes: the old ones vanish, new ones join through a live node.
    for (size_t j = 0; j < to_replace / kRounds + (round < static_cast<int>(to_replace % kRounds));
         ++j) {
      size_t victim_pos = rng() % replaceable.size();
      net.Remove(replaceable[victim_pos]);
      size_t fresh = net.AddNode(o);
      net.node(fresh).Bootstrap({net.address(publishers[rng() % publishers.size()])}, nullptr);
      replaceable[victim_pos] = fresh;
    }
    net.RunFor(1000);
    // Publishers re-announce every 15 s with a 45 s expiration, as expert servers do.
    if (round % 15 == 0 && round > 0) {
      for (const auto& [key, p] : w.keys) {
        net.node(p).Put(key, net.node(p).identity().peer_id(), "{\"endpoint\":\"x\"}", 45'000,
                        nullptr);
      }
    }
    for (int g = 0; g < 10; ++g) {
      const auto& [key, p] = w.keys[rng() % w.keys.size()];
      size_t asker = replaceable[rng() % replaceable.size()];
      KeyResult r = SimGet(net, asker, key);
      ++total;
      ok += r.status.ok() && !r.records.empty();
      if (!r.status.ok()) {
        std::printf("  failed get %s: %s\n", key.c_str(), r.status.ToString().c_str());
      }
    }
  }
  std::printf("  loss %.0f%%, churn %.0f%%: %d of %d gets succeeded\n", loss * 100,
              churn_fraction * 100, ok, total);
  return static_cast<double>(ok) / total;
}

TEST(SimTest, GetsSurviveThirtyPercentChurn) { EXPECT_GE(ChurnSuccess(0.0, 0.30, 21), 0.99); }

TEST(SimTest, GetsSurviveTenPercentLoss) { EXPECT_GE(ChurnSuccess(0.10, 0.0, 22), 0.99); }

TEST(SimTest, ManySubkeysArePaginated) {
  SimNetwork net(13);
  auto ids = BuildNetwork(net, 40, SimOptions());
  // 300 publishers' worth of subkeys under one key, as `prefix/ffn.` holds for a big grid.
  for (int i = 0; i < 300; ++i) {
    size_t p = ids[static_cast<size_t>(i) % ids.size()];
    // Each node may own many subkeys; the value is small like a prefix announcement.
    net.node(p).Put("prefix/ffn.", std::to_string(i),
                    "{\"uid\":\"ffn." + std::to_string(i) + ".0\",\"peer_id\":\"" +
                        net.node(p).identity().peer_id() + "\"}",
                    60'000, nullptr);
  }
  net.RunFor(5000);
  // Ask from a node that published nothing under the key and is not among its holders.
  size_t asker = net.AddNode(SimOptions());
  net.node(asker).Bootstrap({net.address(ids[0])}, nullptr);
  net.RunFor(3000);
  KeyResult r = SimGet(net, asker, "prefix/ffn.");
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.records.size(), 300u);
  EXPECT_GT(r.rpcs, 10);  // many pages
}

TEST(SimTest, BatchGetAnswersEveryKey) {
  SimNetwork net(14);
  auto ids = BuildNetwork(net, 64, SimOptions());
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(SimPut(net, ids[1], "prefix/ffn." + std::to_string(i) + ".", "0", "v").ok());
  }
  std::vector<std::string> keys;
  for (int i = 0; i < 40; ++i) keys.push_back("prefix/ffn." + std::to_string(i) + ".");
  std::optional<std::vector<KeyResult>> results;
  net.node(ids[50]).GetMany(keys, 5000, [&](std::vector<KeyResult> r) { results = std::move(r); });
  ASSERT_TRUE(net.RunUntil([&] { return results.has_value(); }, 6000));
  ASSERT_EQ(results->size(), 40u);
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ((*results)[i].key, keys[i]);
    EXPECT_EQ((*results)[i].status.code(), i < 30 ? Code::kOk : Code::kNotFound) << i;
  }
}

TEST(SimTest, LoneNodeAnswersLocallyAndNeverHangs) {
  SimNetwork net(15);
  size_t lone = net.AddNode(SimOptions());
  Result<int> put = SimPut(net, lone, "mine", "a", "v");
  EXPECT_EQ(put.status().code(), Code::kUnavailable);
  std::optional<std::vector<KeyResult>> results;
  net.node(lone).GetMany({"mine", "other"}, 1000,
                         [&](std::vector<KeyResult> r) { results = std::move(r); });
  ASSERT_TRUE(net.RunUntil([&] { return results.has_value(); }, 10));
  EXPECT_TRUE((*results)[0].status.ok());
  ASSERT_EQ((*results)[0].records.size(), 1u);
  EXPECT_EQ((*results)[1].status.code(), Code::kUnavailable);
}

TEST(SimTest, BootstrapToNobodyIsUnavailable) {
  SimNetwork net(16);
  size_t a = net.AddNode(SimOptions());
  std::optional<Status> status;
  net.node(a).Bootstrap({Address::V4(10, 99, 99, 99, 1)}, [&](Status s) { status = s; });
  ASSERT_TRUE(net.RunUntil([&] { return status.has_value(); }, 5000));
  EXPECT_EQ(status->code(), Code::kUnavailable);
}

TEST(SimTest, UnrefreshedRecordsDisappearAndRefreshedOnesStay) {
  SimNetwork net(17);
  NodeOptions o = SimOptions();
  o.republish_interval_ms = 10'000;
  auto ids = BuildNetwork(net, 32, o);
  ASSERT_TRUE(SimPut(net, ids[3], "short", "s", "v", 20'000).ok());
  ASSERT_TRUE(SimPut(net, ids[4], "long", "s", "v", 60'000).ok());
  net.Remove(ids[3]);  // the short record's publisher is gone: nobody refreshes it
  net.RunFor(25'000);
  EXPECT_EQ(SimGet(net, ids[10], "short").status.code(), Code::kNotFound);
  EXPECT_TRUE(SimGet(net, ids[10], "long").status.ok());
  net.RunFor(40'000);
  EXPECT_EQ(SimGet(net, ids[10], "long").status.code(), Code::kNotFound);
  // Sweeping removed the expired records from every store.
  size_t stored = 0;
  for (size_t i : ids) {
    if (net.alive(i)) stored += net.node(i).store().size();
  }
  EXPECT_EQ(stored, 0u);
}

// A token is valid for one to two epochs of the node that gave it. A requester that kept using
// an old one sent small requests (no padding: it believed itself validated), so every answer was
// cut to the request's size, records and the fresh token first: after 5-10 minutes the swarm's
// gets found nothing, for good. Tokens now expire on the requester's side after one epoch.
TEST(SimTest, GetsStillFindRecordsAfterTokensExpire) {
  SimNetwork net(23);
  NodeOptions o = SimOptions();
  auto ids = BuildNetwork(net, 8, o);
  // The getter is a client node, as routers and trainers are.
  NodeOptions client_options = o;
  client_options.client = true;
  const size_t client = net.AddNode(client_options);
  net.node(client).Bootstrap({net.address(ids[0])}, nullptr);
  net.RunFor(5000);
  // Announced again before every get, as expert servers do, with values large enough that a cut
  // answer loses them.
  const std::string value(200, 'v');
  auto announce = [&] {
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(SimPut(net, ids[1], "key", "sub" + std::to_string(i), value, kMaxTtlMs).ok());
    }
  };
  announce();
  ASSERT_EQ(SimGet(net, client, "key").records.size(), 4u);
  for (int epoch = 1; epoch <= 4; ++epoch) {
    net.RunFor(o.token_epoch_ms);
    announce();
    KeyResult r = SimGet(net, client, "key");
    EXPECT_TRUE(r.status.ok()) << "after " << epoch << " epochs: " << r.status.ToString();
    EXPECT_EQ(r.records.size(), 4u) << "after " << epoch << " epochs";
  }
}

TEST(SimTest, PartitionedGetMeetsItsDeadline) {
  SimNetwork net(18);
  auto ids = BuildNetwork(net, 32, SimOptions());
  ASSERT_TRUE(SimPut(net, ids[1], "k", "s", "v").ok());
  for (size_t i : ids) net.SetGroup(i, i == ids[5] ? 1 : 0);
  int64_t start = net.clock().NowMonotonicUs();
  KeyResult r = SimGet(net, ids[5], "k", 300);
  EXPECT_FALSE(r.status.ok());
  EXPECT_TRUE(r.status.code() == Code::kDeadlineExceeded || r.status.code() == Code::kUnavailable)
      << r.status.ToString();
  EXPECT_LE(net.clock().NowMonotonicUs() - start, 301'000);
}

}  // namespace
}  // namespace dmoe::dht
