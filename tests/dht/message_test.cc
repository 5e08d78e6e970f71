#include "dht/message.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "tests/dht/test_util.h"

namespace dmoe::dht {
namespace {

using testing::Span;

Message Header(MessageType type) {
  Message m;
  m.type = type;
  m.txid = 0x1234567890abcdefULL;
  m.network = "dmoe";
  m.sender = testing::TestIdentity(1).public_key();
  return m;
}

TEST(MessageTest, FindNodeRoundTrips) {
  Message m = Header(MessageType::kFindNode);
  m.target[3] = 7;
  auto bytes = EncodeMessage(m);
  ASSERT_TRUE(bytes.ok());
  auto back = DecodeMessage(Span(*bytes));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->type, MessageType::kFindNode);
  EXPECT_EQ(back->txid, m.txid);
  EXPECT_EQ(back->target, m.target);
  EXPECT_EQ(back->sender, m.sender);
  EXPECT_EQ(back->network, "dmoe");
  EXPECT_FALSE(back->client);
}

TEST(MessageTest, NodesRoundTripWithBothAddressFamilies) {
  Message m = Header(MessageType::kNodes);
  m.client = true;
  m.nodes.push_back({NodeId{1}, Address::V4(127, 0, 0, 1, 4000)});
  m.nodes.push_back({NodeId{2}, *Address::Parse("[::1]:65535")});
  auto bytes = EncodeMessage(m);
  ASSERT_TRUE(bytes.ok());
  auto back = DecodeMessage(Span(*bytes));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->nodes, m.nodes);
  EXPECT_TRUE(back->client);
}

TEST(MessageTest, AnnouncedAddressRoundTripsInBothFamilies) {
  for (const Address& announced :
       {Address::V4(203, 0, 113, 7, 7000), *Address::Parse("[2001:db8::1]:443")}) {
    SCOPED_TRACE(announced.ToString());
    Message m = Header(MessageType::kFindValue);
    m.key = "expert/ffn.0";
    m.announced = announced;
    auto bytes = EncodeMessage(m);
    ASSERT_TRUE(bytes.ok());
    auto back = DecodeMessage(Span(*bytes));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    ASSERT_TRUE(back->announced.has_value());
    EXPECT_EQ(*back->announced, announced);
    EXPECT_EQ(back->key, m.key);
  }
  // Without "a" a message decodes as in version 1 before it, and its encoding has no "a" key.
  Message plain = Header(MessageType::kPing);
  auto bytes = EncodeMessage(plain);
  ASSERT_TRUE(bytes.ok());
  nlohmann::json j = nlohmann::json::from_msgpack(*bytes);
  EXPECT_FALSE(j.contains("a"));
  auto back = DecodeMessage(Span(*bytes));
  ASSERT_TRUE(back.ok());
  EXPECT_FALSE(back->announced.has_value());
}

// The fields of issue 12: proof request "q", proof "p", token "o", padding "z", and the cursor's
// publisher "U"; each round-trips, and a wrong size or type is refused.
TEST(MessageTest, ProofTokenPaddingAndCursorPublisherRoundTrip) {
  Message m = Header(MessageType::kFindValue);
  m.key = "prefix/ffn.";
  m.cursor = "3";
  m.cursor_publisher = PublicKey{};
  (*m.cursor_publisher)[0] = 7;
  m.prove = true;
  m.token = Token{};
  (*m.token)[15] = 9;
  m.padding = 300;
  auto bytes = EncodeMessage(m);
  ASSERT_TRUE(bytes.ok());
  auto back = DecodeMessage(Span(*bytes));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->prove);
  EXPECT_EQ(back->token, m.token);
  EXPECT_EQ(back->padding, 300u);
  EXPECT_EQ(back->cursor_publisher, m.cursor_publisher);

  Message pong = Header(MessageType::kPong);
  pong.proof = Signature{};
  (*pong.proof)[63] = 1;
  bytes = EncodeMessage(pong);
  ASSERT_TRUE(bytes.ok());
  back = DecodeMessage(Span(*bytes));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->proof, pong.proof);
  EXPECT_FALSE(back->prove);
  EXPECT_FALSE(back->token.has_value());

  for (const char* field : {"p", "o", "U"}) {
    nlohmann::json j = nlohmann::json::from_msgpack(*EncodeMessage(m));
    j[field] = nlohmann::json::binary(std::vector<uint8_t>(5, 0));
    std::vector<uint8_t> bad;
    nlohmann::json::to_msgpack(j, bad);
    EXPECT_FALSE(DecodeMessage(bad).ok()) << field;
  }
  nlohmann::json j = nlohmann::json::from_msgpack(*EncodeMessage(m));
  j["q"] = 1;
  std::vector<uint8_t> bad;
  nlohmann::json::to_msgpack(j, bad);
  EXPECT_FALSE(DecodeMessage(bad).ok());
}

TEST(MessageTest, MalformedAnnouncedAddressIsRejected) {
  Message m = Header(MessageType::kPing);
  auto bytes = EncodeMessage(m);
  ASSERT_TRUE(bytes.ok());
  nlohmann::json base = nlohmann::json::from_msgpack(*bytes);
  struct Case {
    nlohmann::json a;
    const char* why;
  };
  for (const Case& c :
       {Case{"1.2.3.4:5", "'a' is not binary"},
        Case{nlohmann::json::binary(std::vector<uint8_t>(5, 1)), "5 bytes"},
        Case{nlohmann::json::binary(std::vector<uint8_t>{1, 2, 3, 4, 0, 0}), "port 0"}}) {
    SCOPED_TRACE(c.why);
    nlohmann::json j = base;
    j["a"] = c.a;
    std::string packed;
    nlohmann::json::to_msgpack(j, packed);
    auto r = DecodeMessage(Span(packed));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.why), std::string::npos) << r.status().message();
  }
}

TEST(MessageTest, MaxSizeRecordFitsADatagram) {
  Identity id = testing::TestIdentity(2);
  Message m = Header(MessageType::kValue);
  m.network = std::string(kMaxNetworkNameBytes, 'n');
  m.client = true;
  RecordLimits limits;
  // The largest record the limits allow: key + subkey + value == max_record_bytes.
  std::string key(64, 'k');
  std::string subkey(limits.max_record_bytes - key.size() - limits.max_value_bytes, 's');
  m.key = key;
  m.records.push_back(SignRecord(id, key, subkey, std::string(limits.max_value_bytes, 'v'),
                                 INT64_MAX / 2, UINT64_MAX));
  m.more = true;
  auto bytes = EncodeMessage(m);
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto back = DecodeMessage(Span(*bytes));
  ASSERT_TRUE(back.ok());
  ASSERT_EQ(back->records.size(), 1u);
  EXPECT_EQ(back->records[0], m.records[0]);
  EXPECT_TRUE(back->more);
  EXPECT_TRUE(VerifyRecordSignature(back->records[0]));
}

TEST(MessageTest, OversizedEncodingIsRefused) {
  Message m = Header(MessageType::kStoreAck);
  m.error = std::string(2000, 'x');
  auto bytes = EncodeMessage(m);
  EXPECT_EQ(bytes.status().code(), Code::kPayloadTooLarge);
}

TEST(MessageTest, MalformedInputsAreRejectedWithReasons) {
  EXPECT_EQ(DecodeMessage({}).status().code(), Code::kInvalidArgument);
  std::string junk = "\xc1\xc1\xc1";
  EXPECT_EQ(DecodeMessage(Span(junk)).status().code(), Code::kInvalidArgument);
  // A map missing the sender key.
  nlohmann::json j = {{"v", 1}, {"n", "dmoe"}, {"t", 1}, {"x", 5}};
  std::string packed;
  nlohmann::json::to_msgpack(j, packed);
  auto r = DecodeMessage(Span(packed));
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("'s'"), std::string::npos);
  // Wrong types.
  j["s"] = "not binary";
  packed.clear();
  nlohmann::json::to_msgpack(j, packed);
  EXPECT_EQ(DecodeMessage(Span(packed)).status().code(), Code::kInvalidArgument);
  // Unknown type.
  j["s"] = nlohmann::json::binary(std::vector<uint8_t>(32, 1));
  j["t"] = 42;
  packed.clear();
  nlohmann::json::to_msgpack(j, packed);
  EXPECT_EQ(DecodeMessage(Span(packed)).status().code(), Code::kInvalidArgument);
  std::string big(kMaxDatagramBytes + 1, 'x');
  EXPECT_EQ(DecodeMessage(Span(big)).status().code(), Code::kPayloadTooLarge);
}

TEST(MessageTest, EveryTruncationOfAValidMessageIsRejected) {
  Identity id = testing::TestIdentity(3);
  Message m = Header(MessageType::kStore);
  m.key = "prefix/ffn.";
  m.records.push_back(SignRecord(id, m.key, "3", "{\"uid\":\"ffn.3.14\"}", 1'800'000'000'000, 9));
  auto bytes = EncodeMessage(m);
  ASSERT_TRUE(bytes.ok());
  for (size_t n = 0; n < bytes->size(); ++n) {
    EXPECT_FALSE(DecodeMessage(Span(bytes->substr(0, n))).ok()) << n;
  }
  // Random bit flips never crash (the result may or may not decode).
  std::mt19937 rng(1);
  for (int i = 0; i < 2000; ++i) {
    std::string copy = *bytes;
    copy[rng() % copy.size()] ^= static_cast<char>(1 << (rng() % 8));
    (void)DecodeMessage(Span(copy));
  }
}

TEST(AddressTest, ParsesAndPrints) {
  auto a = Address::Parse("127.0.0.1:4000");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->ToString(), "127.0.0.1:4000");
  auto b = Address::Parse("[::1]:80");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->ToString(), "[::1]:80");
  EXPECT_FALSE(Address::Parse("localhost:80").ok());
  EXPECT_FALSE(Address::Parse("1.2.3.4:99999").ok());
  EXPECT_FALSE(Address::Parse("1.2.3.4").ok());
  // Numeric only, IPv6 in brackets only: every refusal is kInvalidArgument.
  for (const char* bad : {"localhost:80", "::1:80", "[1.2.3.4]:80", "1.2.3.256:80", "[::1]:x"}) {
    EXPECT_EQ(Address::Parse(bad).status().code(), Code::kInvalidArgument) << bad;
  }
  auto mapped = Address::Parse("[::ffff:10.0.0.1]:7000");
  ASSERT_TRUE(mapped.ok());
  EXPECT_TRUE(mapped->v6);
  EXPECT_EQ(mapped->port, 7000);
  std::string bytes = a->ToWire();
  auto wire = Address::FromWire(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  ASSERT_TRUE(wire.ok());
  EXPECT_EQ(*wire, *a);
}

}  // namespace
}  // namespace dmoe::dht
