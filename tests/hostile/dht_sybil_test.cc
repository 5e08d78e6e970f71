// Sybils ground around a key (issue 12 part 6): 51 of 256 nodes (20%) with ids sharing 8 leading
// bits with the key's id, so that every one of them is closer to it than any honest node, censor
// the key: they acknowledge its STOREs and drop them, and answer its FIND_VALUEs with each other
// only. They come from 4 /24 networks (an attacker with a few address ranges). Honest nodes keep at
// most 2 contacts per /24 per bucket and per lookup, and get over 3 disjoint paths, so the put
// lands on honest nodes and honest gets still find it.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>

#include "dht/node.h"
#include "dht/sim_network.h"
#include "tests/dht/test_util.h"
#include "tests/hostile/rogue_dht.h"

namespace dmoe::dht {
namespace {

using hostile::GrindIdentityNear;
using hostile::RogueBehaviour;
using hostile::RogueDhtNode;

NodeOptions HonestOptions() {
  NodeOptions o;
  o.network = "sim";
  // The simulated network hands out private 10.x addresses: turn the Sybil limits on for them, as
  // they are for public addresses by default.
  o.sybil.on_private = true;
  return o;
}

TEST(DhtSybilTest, TwentyPercentSybilsAroundAKeyCannotCensorIt) {
  SimNetwork net(61);
  net.set_link({2000, 500, 0});
  const std::string key = "expert/ffn.7.7";
  const NodeId target = KeyIdOf(key);
  std::vector<size_t> honest = testing::BuildNetwork(net, 205, HonestOptions(), 62);

  std::vector<std::unique_ptr<RogueDhtNode>> sybils;
  std::mt19937_64 rng(63);
  RogueBehaviour censor;
  censor.censored_keys = {key};
  for (int i = 0; i < 51; ++i) {
    Identity id = GrindIdentityNear(target, 10, static_cast<uint64_t>(i) + 1);
    // 4 attacker networks: 20.0.0.0/24 .. 20.0.3.0/24.
    Address at =
        Address::V4(20, 0, static_cast<uint8_t>(i % 4), static_cast<uint8_t>(10 + i), 4000);
    NodeOptions o = HonestOptions();
    sybils.push_back(std::make_unique<RogueDhtNode>(net, id, o, at, censor));
  }
  std::vector<WireContact> accomplices;
  for (auto& s : sybils) accomplices.push_back(s->contact());
  for (auto& s : sybils) {
    s->behaviour().accomplices = accomplices;
    s->node().Bootstrap({net.address(honest[rng() % honest.size()])}, nullptr);
  }
  net.RunFor(10'000);
  // The Sybils really sit next to the key: at least 19 of the 20 nodes closest to it are Sybils.
  std::vector<std::pair<NodeId, bool>> everyone;  // (id, is a Sybil)
  for (size_t h : honest) everyone.push_back({net.node(h).id(), false});
  for (auto& s : sybils) everyone.push_back({s->node().id(), true});
  std::sort(everyone.begin(), everyone.end(),
            [&](const auto& x, const auto& y) { return Closer(target, x.first, y.first); });
  int sybils_in_k = 0;
  for (size_t i = 0; i < 20; ++i) sybils_in_k += everyone[i].second;
  ASSERT_GE(sybils_in_k, 19);

  size_t publisher = honest[rng() % honest.size()];
  Result<int> put = testing::SimPut(net, publisher, key, net.node(publisher).identity().peer_id(),
                                    "{\"endpoint\":\"http://honest\"}");
  ASSERT_TRUE(put.ok()) << put.status().ToString();

  const int kGets = 200;
  int found = 0;
  for (int g = 0; g < kGets; ++g) {
    size_t asker = honest[rng() % honest.size()];
    KeyResult r = testing::SimGet(net, asker, key);
    bool honest_record = false;
    for (const Record& rec : r.records) {
      honest_record |= rec.publisher == net.node(publisher).identity().public_key();
    }
    found += r.status.ok() && honest_record;
    if (!honest_record) {
      std::printf("  get %d from %zu: %s, %zu records, %d rpcs\n", g, asker,
                  r.status.ToString().c_str(), r.records.size(), r.rpcs);
    }
  }
  uint64_t censored = 0;
  for (auto& s : sybils) censored += s->censored();
  std::printf("  %d of %d gets found the record; the Sybils censored %llu requests\n", found, kGets,
              static_cast<unsigned long long>(censored));
  EXPECT_GT(censored, 0u) << "the Sybils were never asked: the attack did not happen";
  EXPECT_GE(found, kGets * 99 / 100);
  // No honest routing table holds more than 2 Sybils of one /24 in a bucket, nor a Sybil's
  // address under another id.
  for (size_t h : honest) {
    for (const Contact& c : net.node(h).Contacts()) {
      if (c.address.ip[0] != 20) continue;
      bool known = false;
      for (auto& s : sybils) known |= s->node().id() == c.id && s->address() == c.address;
      EXPECT_TRUE(known);
    }
  }
}

}  // namespace
}  // namespace dmoe::dht
