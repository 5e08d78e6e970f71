// Announced addresses ("a", PROTOCOL section 6): a node behind a port forward enters other nodes'
// routing tables at the forward, only after a PING there proved its key; forged announcements
// never enter a table, never evict a contact, and a flood of them sends a bounded number of PINGs.
#include <gtest/gtest.h>

#include <set>

#include "dht/message.h"
#include "dht/node.h"
#include "dht/sim_network.h"
#include "tests/dht/test_util.h"

namespace dmoe::dht {
namespace {

using testing::SimOptions;
using testing::Span;
using testing::TestIdentity;

// The address `node`'s routing table holds for `id`, or "none".
std::string TableAddress(SimNetwork& net, size_t node, const NodeId& id) {
  const Contact* c = net.node(node).routing_table().Find(id);
  return c == nullptr ? "none" : c->address.ToString();
}

// A raw endpoint that sends hand-made requests, each claiming `sender` and announcing `announced`.
class Forger {
 public:
  explicit Forger(SimNetwork& net) : net_(net) {
    index_ = net.AddEndpoint([](const Address&, std::span<const uint8_t>) {});
  }
  // Returns the datagram's size.
  size_t Ping(size_t to, const PublicKey& sender, const Address& announced) {
    Message m;
    m.type = MessageType::kPing;
    m.network = "sim";
    m.sender = sender;
    m.txid = ++txid_;
    m.announced = announced;
    Result<std::string> bytes = EncodeMessage(m);
    EXPECT_TRUE(bytes.ok());
    net_.TransportOf(index_).Send(net_.address(to), Span(*bytes));
    return bytes->size();
  }
  const Address& address() const { return net_.address(index_); }

 private:
  SimNetwork& net_;
  size_t index_;
  // Full-width like a real node's random txids (a short one would make the datagram smaller than
  // any PING a node sends, and so draw none).
  uint64_t txid_ = 0xf000'0000'0000'0000;
};

TEST(AnnouncedAddressTest, NodeBehindAForwardEntersTablesAtTheForwardOnceVerified) {
  SimNetwork net(41);
  size_t a = net.AddNode(SimOptions());
  const Address forward = net.AddForwardingAddress(net.size());
  NodeOptions behind = SimOptions();
  behind.public_address = forward;
  size_t b = net.AddNode(TestIdentity(2), behind);
  const NodeId b_id = net.node(b).id();
  ASSERT_NE(net.address(b), forward);

  std::optional<Status> joined;
  net.node(b).Bootstrap({net.address(a)}, [&](Status s) { joined = s; });
  ASSERT_TRUE(net.RunUntil([&] { return joined.has_value(); }, 10'000));
  ASSERT_TRUE(joined->ok()) << joined->ToString();
  ASSERT_TRUE(net.RunUntil([&] { return TableAddress(net, a, b_id) != "none"; }, 5'000));

  // A holds B at the forward it announced, never at the address B's requests came from.
  EXPECT_EQ(TableAddress(net, a, b_id), forward.ToString());
  for (const Contact& c : net.node(a).Contacts()) {
    EXPECT_NE(c.address.ToString(), net.address(b).ToString());
  }
  const NodeStats& stats = net.node(a).stats();
  EXPECT_EQ(stats.verifications_sent, 1u);
  EXPECT_EQ(stats.verifications_passed, 1u);

  // Later requests of B refresh the verified contact without another PING.
  std::optional<std::vector<WireContact>> found;
  net.node(b).FindNode(net.node(a).id(),
                       [&](std::vector<WireContact> nodes, int, int) { found = std::move(nodes); });
  ASSERT_TRUE(net.RunUntil([&] { return found.has_value(); }, 5'000));
  net.RunFor(2'000);
  EXPECT_EQ(stats.verifications_sent, 1u);
  EXPECT_EQ(TableAddress(net, a, b_id), forward.ToString());

  // A third node learns B from A's answers at the forward, and reaches it there.
  size_t c = net.AddNode(SimOptions());
  std::optional<Status> c_joined;
  net.node(c).Bootstrap({net.address(a)}, [&](Status s) { c_joined = s; });
  ASSERT_TRUE(net.RunUntil([&] { return c_joined.has_value(); }, 10'000));
  ASSERT_TRUE(c_joined->ok());
  ASSERT_TRUE(net.RunUntil([&] { return TableAddress(net, c, b_id) != "none"; }, 10'000));
  EXPECT_EQ(TableAddress(net, c, b_id), forward.ToString());
  Result<int> stored = testing::SimPut(net, b, "expert/ffn.0", "b", "{}");
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  KeyResult got = testing::SimGet(net, c, "expert/ffn.0");
  ASSERT_TRUE(got.status.ok()) << got.status.ToString();
  ASSERT_EQ(got.records.size(), 1u);
  EXPECT_EQ(got.records[0].value, "{}");
}

TEST(AnnouncedAddressTest, ForgedAnnouncementNeverEntersTheTableNorEvictsAContact) {
  SimNetwork net(42);
  size_t a = net.AddNode(SimOptions());
  size_t b = net.AddNode(TestIdentity(2), SimOptions());
  size_t v = net.AddNode(TestIdentity(3), SimOptions());
  for (size_t n : {b, v}) net.node(n).Bootstrap({net.address(a)}, nullptr);
  net.RunFor(3'000);
  const NodeId b_id = net.node(b).id();
  const NodeId v_id = net.node(v).id();
  ASSERT_EQ(TableAddress(net, a, b_id), net.address(b).ToString());
  ASSERT_EQ(TableAddress(net, a, v_id), net.address(v).ToString());
  const NodeStats& stats = net.node(a).stats();

  // B and V entered A's table by answering A's challenges; count from here.
  const uint64_t sent0 = stats.verifications_sent;
  const uint64_t passed0 = stats.verifications_passed;
  const uint64_t wrong0 = stats.dropped_wrong_sender;

  Forger forger(net);
  // B's key, announcing V's address: V answers the verification with its own key.
  forger.Ping(a, net.node(b).identity().public_key(), net.address(v));
  net.RunFor(2'000);
  EXPECT_EQ(stats.verifications_sent, sent0 + 1);
  EXPECT_EQ(stats.verifications_passed, passed0);
  EXPECT_EQ(stats.dropped_wrong_sender, wrong0 + 1);
  EXPECT_EQ(TableAddress(net, a, b_id), net.address(b).ToString());  // not moved, not evicted
  EXPECT_EQ(TableAddress(net, a, v_id), net.address(v).ToString());  // the address keeps its id
  EXPECT_EQ(net.node(a).routing_table().Find(b_id)->failures, 0);

  // A stranger's key, announcing V's address: it never enters the table.
  Identity stranger = TestIdentity(9);
  forger.Ping(a, stranger.public_key(), net.address(v));
  // B's key, announcing an address where nobody answers: the PING times out, B stays.
  forger.Ping(a, net.node(b).identity().public_key(), Address::V4(192, 0, 2, 1, 4000));
  net.RunFor(3'000);
  EXPECT_EQ(stats.verifications_sent, sent0 + 3);
  EXPECT_EQ(stats.verifications_passed, passed0);
  EXPECT_EQ(net.node(a).routing_table().Find(NodeIdOf(stranger.public_key())), nullptr);
  EXPECT_EQ(TableAddress(net, a, b_id), net.address(b).ToString());
  EXPECT_EQ(net.node(a).routing_table().Find(b_id)->failures, 0);
  // Neither the forger's own address nor the forged ones entered the table.
  for (const Contact& c : net.node(a).Contacts()) {
    EXPECT_NE(c.address.ToString(), forger.address().ToString());
  }
  EXPECT_EQ(net.node(a).routing_table().size(), 2u);
}

TEST(AnnouncedAddressTest, FloodOfAnnouncementsSendsABoundedNumberOfPings) {
  SimNetwork net(43);
  NodeOptions options = SimOptions();
  options.max_pending_verifications = 64;
  size_t a = net.AddNode(options);
  const NodeStats& stats = net.node(a).stats();
  Forger forger(net);

  // 1000 requests naming 1000 addresses that never answer, sent at once.
  for (uint32_t i = 0; i < 1000; ++i) {
    Identity id = TestIdentity(static_cast<uint8_t>(i % 200 + 10));
    forger.Ping(a, id.public_key(),
                Address::V4(198, 18, static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i), 4000));
  }
  net.RunFor(100);
  EXPECT_EQ(stats.verifications_sent, 64u);
  EXPECT_EQ(stats.verifications_skipped, 936u);
  EXPECT_EQ(net.node(a).pending_rpcs(), 64u);
  // Each is sent once: after the RPC timeout no retransmission went out, and the slots are free.
  net.RunFor(2'000);
  EXPECT_EQ(stats.rpcs_timed_out, 64u);
  EXPECT_EQ(stats.retransmits, 0u);
  EXPECT_EQ(stats.datagrams_out, 1000u + 64u);  // the 1000 PONGs to the source, 64 PINGs
  EXPECT_EQ(net.node(a).pending_rpcs(), 0u);
  EXPECT_EQ(net.node(a).routing_table().size(), 0u);

  // 100 requests naming one address: one PING in flight for it.
  for (int i = 0; i < 100; ++i) {
    forger.Ping(a, TestIdentity(7).public_key(), Address::V4(198, 19, 0, 1, 4000));
  }
  net.RunFor(100);
  EXPECT_EQ(stats.verifications_sent, 65u);
  EXPECT_EQ(net.node(a).pending_rpcs(), 1u);
}

TEST(AnnouncedAddressTest, VerificationPingIsNoLargerThanItsTrigger) {
  SimNetwork net(44);
  NodeOptions options = SimOptions();
  // A's own announced address is IPv6: with it its PING would outgrow an IPv4 trigger.
  options.public_address = *Address::Parse("[2001:db8::7]:4000");
  size_t a = net.AddNode(options);
  std::vector<size_t> received;
  std::vector<Message> pings;
  size_t sink = net.AddEndpoint([&](const Address&, std::span<const uint8_t> bytes) {
    received.push_back(bytes.size());
    if (auto m = DecodeMessage(bytes); m.ok()) pings.push_back(*m);
  });
  Forger forger(net);
  size_t trigger = forger.Ping(a, TestIdentity(5).public_key(), net.address(sink));
  net.RunFor(2'000);
  ASSERT_EQ(received.size(), 1u);  // once, never resent
  EXPECT_LE(received[0], trigger);
  ASSERT_EQ(pings.size(), 1u);
  EXPECT_EQ(pings[0].type, MessageType::kPing);
  EXPECT_FALSE(pings[0].announced.has_value());  // left out to stay within the bound

  // Its other requests carry the announced address.
  size_t b = net.AddNode(SimOptions());
  net.node(a).Bootstrap({net.address(b)}, nullptr);
  net.RunFor(1'000);
  const Contact* at_b = net.node(b).routing_table().Find(net.node(a).id());
  EXPECT_EQ(at_b, nullptr) << "the IPv6 address is unreachable here, so A must not be in B's table";
  EXPECT_GE(net.node(b).stats().verifications_sent, 1u);
}

}  // namespace
}  // namespace dmoe::dht
