// DHT rogues on the simulated network (issue 12 part 6): spoofed sender keys, forged and replayed
// records, store floods, and reflection through spoofed source addresses.
#include <gtest/gtest.h>

#include <memory>
#include <random>

#include "dht/node.h"
#include "dht/sim_network.h"
#include "tests/dht/test_util.h"
#include "tests/hostile/rogue_dht.h"

namespace dmoe::dht {
namespace {

using hostile::RogueBehaviour;
using hostile::RogueDhtNode;

NodeOptions SimOptions() {
  NodeOptions o;
  o.network = "sim";
  return o;
}

std::string TableAddress(SimNetwork& net, size_t node, const NodeId& id) {
  const Contact* c = net.node(node).routing_table().Find(id);
  return c == nullptr ? "none" : c->address.ToString();
}

// A PING from the rogue's address whose sender field is the victim's key, and the rogue's answer to
// the challenge that follows claiming the victim's key without its signature: the victim's address
// does not move, the rogue's address enters no table under the victim's id.
TEST(DhtRogueTest, SpoofedSenderKeyDoesNotMoveTheVictimsAddress) {
  SimNetwork net(71);
  auto ids = testing::BuildNetwork(net, 12, SimOptions(), 72);
  size_t a = ids[0];
  ASSERT_FALSE(net.node(a).Contacts().empty());
  // The victim: a node A holds.
  NodeId victim_id = net.node(a).Contacts().front().id;
  size_t victim = ids.size();
  for (size_t i : ids) {
    if (net.node(i).id() == victim_id) victim = i;
  }
  ASSERT_LT(victim, ids.size());
  const std::string victim_at = net.address(victim).ToString();
  ASSERT_EQ(TableAddress(net, a, victim_id), victim_at);
  const PublicKey victim_key = net.node(victim).identity().public_key();

  RogueBehaviour claim;
  claim.claim_key = victim_key;
  RogueDhtNode rogue(net, testing::TestIdentity(99), SimOptions(), Address::V4(20, 1, 0, 1, 4000),
                     claim);
  rogue.node().Bootstrap({net.address(ids[1])}, nullptr);
  net.RunFor(3'000);
  const uint64_t failed0 = net.node(a).stats().proofs_failed;

  // Spoofed PINGs, first without a token (A answers but challenges nobody), then padded with the
  // token A handed out (A challenges the rogue's address, which claims the victim's key).
  for (int i = 0; i < 5; ++i) {
    Message ping;
    ping.type = MessageType::kPing;
    ping.padding = 200;
    for (const Message& m : rogue.received) {
      if (m.token && !IsRequest(m.type)) ping.token = m.token;
    }
    rogue.SendAs(net.address(a), victim_key, ping);
    net.RunFor(1'500);
  }
  EXPECT_GT(net.node(a).stats().proofs_failed, failed0) << "A never challenged the rogue";
  EXPECT_EQ(TableAddress(net, a, victim_id), victim_at);
  for (size_t i : ids) {
    EXPECT_NE(TableAddress(net, i, victim_id), rogue.address().ToString());
  }
  // A third node asking for the victim's id learns it at the victim's address only.
  std::optional<std::vector<WireContact>> found;
  net.node(ids[2]).FindNode(victim_id, [&](std::vector<WireContact> n, int, int) { found = n; });
  ASSERT_TRUE(net.RunUntil([&] { return found.has_value(); }, 10'000));
  ASSERT_FALSE(found->empty());
  EXPECT_EQ(found->front().id, victim_id);
  EXPECT_EQ(found->front().address.ToString(), victim_at);
}

// Forged records (a tampered value, a stranger's signature under the publisher's key) and a
// replayed older record of the publisher, stored on every node and injected into every VALUE
// answer of three rogues next to the key, are never returned by a get.
TEST(DhtRogueTest, ForgedAndReplayedRecordsAreNeverReturned) {
  SimNetwork net(73);
  auto ids = testing::BuildNetwork(net, 40, SimOptions(), 74);
  const std::string key = "expert/ffn.3.3";
  size_t publisher = ids[5];
  const Identity& pub = net.node(publisher).identity();
  ASSERT_TRUE(testing::SimPut(net, publisher, key, pub.peer_id(), "v1").ok());
  Record v1 = net.node(publisher).OwnRecords().front();
  net.RunFor(2'000);
  ASSERT_TRUE(testing::SimPut(net, publisher, key, pub.peer_id(), "v2").ok());
  Record v2 = net.node(publisher).OwnRecords().front();
  ASSERT_GT(v2.seq, v1.seq);

  Record tampered = v2;
  tampered.value = "{\"endpoint\":\"http://evil\"}";
  Identity evil = testing::TestIdentity(66);
  Record stolen = SignRecord(evil, key, pub.peer_id(), "evil", v2.expiration_ms, v2.seq + 1);
  stolen.publisher = pub.public_key();  // the evil signature under the publisher's name

  RogueBehaviour inject;
  inject.injected_records = {v1, tampered, stolen};
  std::vector<std::unique_ptr<RogueDhtNode>> rogues;
  for (int i = 0; i < 3; ++i) {
    rogues.push_back(std::make_unique<RogueDhtNode>(
        net, hostile::GrindIdentityNear(KeyIdOf(key), 6, 100 + i), SimOptions(),
        Address::V4(20, 2, static_cast<uint8_t>(i), 1, 4000), inject));
    rogues.back()->node().Bootstrap({net.address(ids[static_cast<size_t>(i)])}, nullptr);
  }
  net.RunFor(5'000);
  for (auto& r : rogues) {
    for (size_t i : ids) {
      for (const Record& rec : {v1, tampered, stolen}) r->Store(net.address(i), rec);
    }
  }
  net.RunFor(2'000);
  for (size_t i : ids) {
    for (const Record* held : net.node(i).store().Get(key, net.clock().NowUnixMs(), std::nullopt)) {
      EXPECT_TRUE(VerifyRecordSignature(*held));
      EXPECT_NE(held->value, tampered.value);
    }
  }

  int gets = 0, injected_answers = 0;
  std::mt19937_64 rng(75);
  for (int g = 0; g < 60; ++g) {
    KeyResult r = testing::SimGet(net, ids[rng() % ids.size()], key);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    ++gets;
    bool saw_v2 = false;
    for (const Record& rec : r.records) {
      EXPECT_TRUE(VerifyRecordSignature(rec));
      EXPECT_NE(rec.value, "v1") << "a replayed record was returned";
      EXPECT_NE(rec.value, tampered.value);
      EXPECT_NE(rec.value, "evil");
      saw_v2 |= rec == v2;
    }
    EXPECT_TRUE(saw_v2);
  }
  uint64_t rejected = 0;
  for (size_t i : ids) rejected += net.node(i).stats().records_rejected_in_answers;
  for (auto& r : rogues) {
    for (const Message& m : r->received) injected_answers += m.type == MessageType::kFindValue;
  }
  EXPECT_GT(injected_answers, 0) << "no get asked a rogue: the attack did not happen";
  EXPECT_GT(rejected, 0u);
}

// A rogue floods one node with STOREs of fresh keys: from one source address under 20 keys, and
// under one key. The node keeps its per-source and per-publisher quotas, refuses the rest with
// resource_exhausted, and honest puts and gets still succeed.
TEST(DhtRogueTest, StoreFloodHitsItsQuotaAndHonestStoresStillSucceed) {
  SimNetwork net(76);
  NodeOptions o = SimOptions();
  o.store.max_records_per_source = 100;
  o.store.max_records_per_publisher = 50;
  auto ids = testing::BuildNetwork(net, 20, o, 77);
  size_t target = ids[3];
  RogueDhtNode flooder(net, testing::TestIdentity(90), o, Address::V4(20, 3, 0, 1, 4000), {});
  flooder.node().Bootstrap({net.address(ids[0])}, nullptr);
  net.RunFor(2'000);
  int64_t exp = net.clock().NowUnixMs() + 300'000;
  for (int p = 0; p < 20; ++p) {
    Identity id = testing::TestIdentity(static_cast<uint8_t>(120 + p));
    for (int i = 0; i < 25; ++i) {
      flooder.Store(net.address(target), SignRecord(id, "flood/" + std::to_string(p * 100 + i), "",
                                                    std::string(200, 'x'), exp, 1));
    }
    net.RunFor(50);
  }
  net.RunFor(500);
  const RecordStore& store = net.node(target).store();
  EXPECT_EQ(store.source_count(flooder.address().HostString()), 100u);
  EXPECT_EQ(net.node(target).stats().rejected(RejectReason::kSourceQuota), 400u);
  int acked_refusals = 0;
  for (const Message& m : flooder.received) {
    acked_refusals += m.type == MessageType::kStoreAck && m.code == Code::kResourceExhausted;
  }
  EXPECT_GT(acked_refusals, 0);

  // One publisher key from many addresses: the publisher quota.
  Identity greedy = testing::TestIdentity(150);
  std::vector<std::unique_ptr<RogueDhtNode>> fleet;
  for (int f = 0; f < 4; ++f) {
    fleet.push_back(std::make_unique<RogueDhtNode>(
        net, testing::TestIdentity(static_cast<uint8_t>(160 + f)), o,
        Address::V4(20, 4, static_cast<uint8_t>(f), 1, 4000), RogueBehaviour{}));
    for (int i = 0; i < 30; ++i) {
      fleet.back()->Store(
          net.address(target),
          SignRecord(greedy, "greedy/" + std::to_string(f * 100 + i), "", "v", exp, 1));
    }
    net.RunFor(100);
  }
  EXPECT_EQ(store.publisher_count(greedy.public_key()), 50u);
  EXPECT_EQ(net.node(target).stats().rejected(RejectReason::kPublisherQuota), 70u);

  // Honest publishers still store and are found.
  for (int k = 0; k < 5; ++k) {
    size_t p = ids[static_cast<size_t>(k)];
    std::string key = "expert/ffn.9." + std::to_string(k);
    Result<int> put = testing::SimPut(net, p, key, net.node(p).identity().peer_id(), "{}");
    ASSERT_TRUE(put.ok()) << put.status().ToString();
    KeyResult got = testing::SimGet(net, ids[10 + static_cast<size_t>(k)], key);
    ASSERT_TRUE(got.status.ok()) << got.status.ToString();
    EXPECT_EQ(got.records.size(), 1u);
  }
}

// Requests from a spoofed source (the victim's address) without a token: every datagram the victim
// receives, and all of them together, are no larger than the requests that drew them. A source
// that presents its token gets the full answer.
TEST(DhtRogueTest, AnswersToAnUnvalidatedSourceAreNoLargerThanItsRequests) {
  SimNetwork net(78);
  auto ids = testing::BuildNetwork(net, 30, SimOptions(), 79);
  size_t n = ids[4];
  const std::string key = "prefix/ffn.";
  int64_t exp = net.clock().NowUnixMs() + 300'000;
  // 30 publishers of the key on the node: a full VALUE answer fills a datagram.
  RogueDhtNode helper(net, testing::TestIdentity(201), SimOptions(), Address::V4(20, 5, 0, 1, 4000),
                      RogueBehaviour{});
  for (int p = 0; p < 30; ++p) {
    Identity id = testing::TestIdentity(static_cast<uint8_t>(p + 1));
    helper.Store(net.address(n),
                 SignRecord(id, key, std::to_string(p), std::string(60, 'v'), exp, 1));
  }
  net.RunFor(500);
  ASSERT_EQ(net.node(n).store().Get(key, net.clock().NowUnixMs(), std::nullopt).size(), 30u);
  std::vector<size_t> received;
  std::optional<Token> token;
  size_t victim = net.AddEndpoint([&](const Address&, std::span<const uint8_t> bytes) {
    received.push_back(bytes.size());
    if (auto m = DecodeMessage(bytes); m.ok() && m->token) token = m->token;
  });
  Identity spoofer = testing::TestIdentity(200);
  auto request = [&](MessageType type) {
    Message m;
    m.type = type;
    m.network = "sim";
    m.sender = spoofer.public_key();
    m.txid = 0xfedc'ba98'7654'3210ULL;
    m.key = key;
    m.target = KeyIdOf(key);
    return m;
  };
  size_t sent = 0;
  for (MessageType t : {MessageType::kFindValue, MessageType::kFindNode, MessageType::kPing,
                        MessageType::kFindValue}) {
    size_t before = received.size();
    size_t bytes = hostile::SendFrom(net, victim, net.address(n), request(t));
    sent += bytes;
    net.RunFor(1'000);
    for (size_t i = before; i < received.size(); ++i) EXPECT_LE(received[i], bytes);
  }
  size_t got = 0;
  for (size_t b : received) got += b;
  std::printf("  %zu request bytes drew %zu answer bytes in %zu datagrams\n", sent, got,
              received.size());
  EXPECT_LE(got, sent);
  EXPECT_GE(net.node(n).stats().answers_truncated, 2u);

  // With the token the answers carried, the same FIND_VALUE gets a full datagram of records.
  ASSERT_TRUE(token.has_value());
  Message full = request(MessageType::kFindValue);
  full.token = token;
  received.clear();
  size_t bytes = hostile::SendFrom(net, victim, net.address(n), full);
  net.RunFor(1'000);
  ASSERT_FALSE(received.empty());
  EXPECT_GT(received.front(), 4 * bytes);
}

}  // namespace
}  // namespace dmoe::dht
