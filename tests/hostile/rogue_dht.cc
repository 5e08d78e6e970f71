#include "tests/hostile/rogue_dht.h"

#include <array>

namespace dmoe::dht::hostile {
namespace {

std::span<const uint8_t> Span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

RogueDhtNode::RogueDhtNode(SimNetwork& net, const Identity& identity, NodeOptions options,
                           const Address& at, RogueBehaviour behaviour)
    : net_(net),
      network_(options.network),
      key_(identity.public_key()),
      behaviour_(std::move(behaviour)) {
  index_ = net.AddNodeAt(
      identity, std::move(options), at,
      [this](const Address& from, std::span<const uint8_t> bytes) { OnDatagram(from, bytes); });
}

void RogueDhtNode::Send(const Address& to, const Message& m) {
  Result<std::string> bytes = EncodeMessage(m);
  if (bytes.ok()) net_.TransportOf(index_).Send(to, Span(*bytes));
}

size_t RogueDhtNode::SendAs(const Address& to, const PublicKey& sender, Message m) {
  m.network = network_;
  m.sender = sender;
  m.txid = ++txid_;
  Result<std::string> bytes = EncodeMessage(m);
  if (!bytes.ok()) return 0;
  net_.TransportOf(index_).Send(to, Span(*bytes));
  return bytes->size();
}

size_t RogueDhtNode::Store(const Address& to, const Record& record) {
  Message m;
  m.type = MessageType::kStore;
  m.key = record.key;
  m.records.push_back(record);
  return SendAs(to, key_, m);
}

void RogueDhtNode::OnDatagram(const Address& from, std::span<const uint8_t> bytes) {
  Result<Message> decoded = DecodeMessage(bytes);
  if (decoded.ok()) {
    const Message& m = *decoded;
    received.push_back(m);
    auto answer = [&](MessageType type) {
      Message a;
      a.type = type;
      a.txid = m.txid;
      a.network = network_;
      a.sender = key_;
      return a;
    };
    if (m.type == MessageType::kPing && m.prove && behaviour_.claim_key) {
      // Claims the victim's key; it cannot sign for it.
      Message pong = answer(MessageType::kPong);
      pong.sender = *behaviour_.claim_key;
      pong.proof = Signature{};
      Send(from, pong);
      return;
    }
    if (m.type == MessageType::kStore && Censors(m.key)) {
      ++censored_;
      Send(from, answer(MessageType::kStoreAck));  // "stored", and dropped
      return;
    }
    if (m.type == MessageType::kFindValue && Censors(m.key)) {
      ++censored_;
      if (behaviour_.accomplices.empty()) return;
      Message a = answer(MessageType::kValue);
      a.key = m.key;
      for (const WireContact& c : behaviour_.accomplices) {
        if (a.nodes.size() < 20 && c.address != net_.address(index_)) a.nodes.push_back(c);
      }
      if (m.prove) a.proof = Signature{};  // it never proves itself where it censors
      Send(from, a);
      return;
    }
    if (m.type == MessageType::kFindValue && !behaviour_.injected_records.empty()) {
      Message a = answer(MessageType::kValue);
      a.key = m.key;
      for (const Record& r : behaviour_.injected_records) {
        if (r.key == m.key) a.records.push_back(r);
      }
      if (!a.records.empty()) {
        Send(from, a);
        return;
      }
    }
  }
  net_.node(index_).OnDatagram(from, bytes);
}

Identity GrindIdentityNear(const NodeId& target, int bits, uint64_t salt) {
  for (uint64_t i = 0;; ++i) {
    std::array<uint8_t, 32> seed{};
    for (int b = 0; b < 8; ++b) {
      seed[static_cast<size_t>(b)] = static_cast<uint8_t>(salt >> (8 * b));
      seed[static_cast<size_t>(8 + b)] = static_cast<uint8_t>(i >> (8 * b));
    }
    seed[31] = 0xb1;
    Identity id = Identity::FromSeed(seed);
    if (CommonPrefixLength(NodeIdOf(id.public_key()), target) >= bits) return id;
  }
}

size_t SendFrom(SimNetwork& net, size_t from_index, const Address& to, const Message& m) {
  Result<std::string> bytes = EncodeMessage(m);
  if (!bytes.ok()) return 0;
  net.TransportOf(from_index).Send(to, Span(*bytes));
  return bytes->size();
}

}  // namespace dmoe::dht::hostile
