// Hostile inputs: forged or stale records, foreign networks, malformed datagrams, floods, and nodes
// that lie about routing.
#include <gtest/gtest.h>

#include "dht/message.h"
#include "dht/node.h"
#include "dht/sim_network.h"
#include "tests/dht/test_util.h"

namespace dmoe::dht {
namespace {

using testing::BuildNetwork;
using testing::SimGet;
using testing::SimOptions;
using testing::TestIdentity;

// A raw endpoint that sends hand-made messages to a node and keeps the answers.
class Prober {
 public:
  explicit Prober(SimNetwork& net) : net_(net) {
    index_ = net.AddEndpoint([this](const Address&, std::span<const uint8_t> bytes) {
      auto m = DecodeMessage(bytes);
      if (!m.ok()) return;
      if (m->token) token = m->token;  // proves the prober receives here: full-size answers
      // The node's challenges (PINGs asking the prober to prove its key) are not answers.
      if (IsRequest(m->type)) {
        ++challenges;
        return;
      }
      answers.push_back(*m);
    });
  }
  void Send(size_t to, Message m) {
    if (m.network.empty()) m.network = "sim";
    m.sender = identity.public_key();
    m.txid = ++txid_;
    if (use_token && token) m.token = token;
    // Without a token, the answer is no larger than the request: leave room for it and a token.
    if (!m.token && m.padding == 0) m.padding = 64;
    auto bytes = EncodeMessage(m);
    ASSERT_TRUE(bytes.ok());
    SendRaw(to, *bytes);
  }
  void SendRaw(size_t to, const std::string& bytes) {
    net_.TransportOf(index_).Send(
        net_.address(to),
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
    net_.RunFor(10);
  }
  Message Store(const Record& r) {
    Message m;
    m.type = MessageType::kStore;
    m.key = r.key;
    m.records.push_back(r);
    return m;
  }
  Identity identity = TestIdentity(200);
  std::vector<Message> answers;
  std::optional<Token> token;
  bool use_token = true;
  int challenges = 0;

 private:
  SimNetwork& net_;
  size_t index_;
  uint64_t txid_ = 0;
};

TEST(SecurityTest, BadRecordsAreRejectedWithTheReasonCounted) {
  SimNetwork net(31);
  size_t node = net.AddNode(SimOptions());
  Prober p(net);
  Identity alice = TestIdentity(1);
  Identity bob = TestIdentity(2);
  int64_t now = net.clock().NowUnixMs();
  const NodeStats& stats = net.node(node).stats();

  Record good = SignRecord(alice, "k", "alice", "v", now + 60'000, 10);
  p.Send(node, p.Store(good));
  ASSERT_EQ(p.answers.back().type, MessageType::kStoreAck);
  EXPECT_EQ(p.answers.back().code, Code::kOk);

  Record forged = SignRecord(bob, "k", "x", "v", now + 60'000, 1);
  forged.publisher = alice.public_key();  // bob's signature, alice's name
  p.Send(node, p.Store(forged));
  EXPECT_EQ(p.answers.back().code, Code::kUnauthenticated);

  Record tampered = SignRecord(alice, "k", "y", "v", now + 60'000, 1);
  tampered.value = "evil";
  p.Send(node, p.Store(tampered));
  EXPECT_EQ(p.answers.back().code, Code::kUnauthenticated);
  EXPECT_EQ(stats.rejected(RejectReason::kBadSignature), 2u);

  p.Send(node, p.Store(SignRecord(alice, "k", "alice", "older", now + 60'000, 9)));
  EXPECT_EQ(p.answers.back().code, Code::kInvalidArgument);
  EXPECT_EQ(stats.rejected(RejectReason::kLowerSeq), 1u);

  // The prober's sends advance virtual time by 10 ms each; leave a margin past the limit.
  p.Send(node,
         p.Store(SignRecord(alice, "k", "z", "v",
                            net.clock().NowUnixMs() + kMaxTtlMs + kMaxClockSkewMs + 1000, 1)));
  EXPECT_EQ(p.answers.back().code, Code::kInvalidArgument);
  EXPECT_EQ(stats.rejected(RejectReason::kTtlTooLong), 1u);

  p.Send(node, p.Store(SignRecord(alice, "k", "old", "v", now - 1, 1)));
  EXPECT_EQ(stats.rejected(RejectReason::kExpired), 1u);

  // The store still holds alice's original record and nothing else.
  auto held = net.node(node).store().Get("k", now, std::nullopt);
  ASSERT_EQ(held.size(), 1u);
  EXPECT_EQ(*held[0], good);

  size_t answers = p.answers.size();
  Message foreign;
  foreign.type = MessageType::kPing;
  foreign.network = "other-net";
  p.Send(node, foreign);
  EXPECT_EQ(stats.dropped_foreign_network, 1u);
  EXPECT_EQ(p.answers.size(), answers);  // ignored, not answered
}

TEST(SecurityTest, MalformedDatagramsAreDroppedAndCounted) {
  SimNetwork net(32);
  size_t node = net.AddNode(SimOptions());
  Prober p(net);
  p.SendRaw(node, "");
  p.SendRaw(node, "\x93\x01\x02");
  p.SendRaw(node, std::string(kMaxDatagramBytes + 1, '\x90'));
  Message ping;
  ping.type = MessageType::kPing;
  ping.network = "sim";
  ping.sender = p.identity.public_key();
  auto bytes = EncodeMessage(ping);
  ASSERT_TRUE(bytes.ok());
  p.SendRaw(node, bytes->substr(0, bytes->size() - 3));  // truncated
  const NodeStats& stats = net.node(node).stats();
  EXPECT_EQ(stats.dropped_malformed, 3u);
  EXPECT_EQ(stats.dropped_oversized, 1u);
  EXPECT_TRUE(p.answers.empty());
  p.Send(node, ping);  // and the node still works
  ASSERT_EQ(p.answers.size(), 1u);
  EXPECT_EQ(p.answers[0].type, MessageType::kPong);
}

TEST(SecurityTest, FloodFromOneAddressIsRateLimited) {
  SimNetwork net(33);
  NodeOptions o = SimOptions();
  o.requests_per_second_per_address = 10;
  o.request_burst_per_address = 20;
  size_t node = net.AddNode(o);
  Prober p(net);
  Message ping;
  ping.type = MessageType::kPing;
  for (int i = 0; i < 50; ++i) p.Send(node, ping);  // 50 pings in 0.5 s of virtual time
  int pongs = 0, refusals = 0;
  for (const Message& m : p.answers) {
    pongs += m.type == MessageType::kPong;
    refusals += m.type == MessageType::kError && m.code == Code::kResourceExhausted;
  }
  EXPECT_GE(pongs, 20);
  EXPECT_LE(pongs, 26);
  EXPECT_EQ(pongs + refusals, 50);
  EXPECT_EQ(net.node(node).stats().dropped_rate_limited, static_cast<uint64_t>(refusals));
}

// A node that answers every FIND_NODE / FIND_VALUE with 20 made-up contacts closer than anyone
// real.
class LiarNode {
 public:
  LiarNode(SimNetwork& net, uint8_t n) : net_(net), identity_(TestIdentity(n)), rng_(n) {
    index_ = net.AddEndpoint([this](const Address& from, std::span<const uint8_t> bytes) {
      auto m = DecodeMessage(bytes);
      if (!m.ok() || !IsRequest(m->type)) return;
      Message a;
      a.network = m->network;
      a.sender = identity_.public_key();
      a.txid = m->txid;
      NodeId target = m->type == MessageType::kFindValue ? KeyIdOf(m->key) : m->target;
      if (m->type == MessageType::kPing) {
        a.type = MessageType::kPong;
      } else if (m->type == MessageType::kStore) {
        a.type = MessageType::kStoreAck;
      } else {
        a.type = m->type == MessageType::kFindValue ? MessageType::kValue : MessageType::kNodes;
        a.key = m->key;
        for (int i = 0; i < 20; ++i) {
          // Shares 40+ bits with the target: closer than any honest node in a small network.
          NodeId fake = RandomIdWithPrefix(target, 40 + i, rng_);
          a.nodes.push_back({fake, Address::V4(10, 200, 0, static_cast<uint8_t>(i), 1)});
        }
      }
      auto bytes_out = EncodeMessage(a);
      if (bytes_out.ok()) {
        net_.TransportOf(index_).Send(
            from, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes_out->data()),
                                           bytes_out->size()));
      }
    });
  }
  size_t index() const { return index_; }

 private:
  SimNetwork& net_;
  Identity identity_;
  std::mt19937_64 rng_;
  size_t index_;
};

TEST(SecurityTest, BogusCloserNodesDoNotStopHonestLookups) {
  SimNetwork net(34);
  net.set_link({3000, 1000, 0});
  std::vector<std::unique_ptr<LiarNode>> liars;
  for (uint8_t i = 0; i < 8; ++i) liars.push_back(std::make_unique<LiarNode>(net, 100 + i));
  NodeOptions o = SimOptions();
  std::vector<size_t> ids;
  std::mt19937_64 rng(3);
  for (int i = 0; i < 64; ++i) {
    size_t idx = net.AddNode(o);
    // Every honest node also knows a couple of liars from the start.
    std::vector<Address> seeds = {net.address(liars[rng() % liars.size()]->index())};
    if (!ids.empty()) seeds.push_back(net.address(ids[rng() % ids.size()]));
    net.node(idx).Bootstrap(seeds, nullptr);
    ids.push_back(idx);
  }
  net.RunFor(20'000);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(
        testing::SimPut(net, ids[static_cast<size_t>(i)], "key" + std::to_string(i), "s", "v")
            .ok());
  }
  int ok = 0;
  for (int i = 0; i < 20; ++i) {
    KeyResult r = SimGet(net, ids[63 - static_cast<size_t>(i)], "key" + std::to_string(i));
    ok += r.status.ok();
  }
  EXPECT_EQ(ok, 20);
}

}  // namespace
}  // namespace dmoe::dht
