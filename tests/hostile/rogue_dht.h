// A rogue DHT node for the hostile-peers suite (issue 12): a real dht::Node on the simulated
// network (so it joins, answers challenges and proves its key like any node) with bad behaviour
// switched on in front of it. Test helper only, never in a shipped binary.
//
// Passive behaviour (RogueBehaviour): it censors keys (acknowledges their STOREs and drops them,
// answers their FIND_VALUEs with fellow rogues only, or not at all), answers gets with forged or
// replayed records, and answers challenges with a victim's key. Active attacks are methods: PINGs
// with a spoofed sender key, STOREs of arbitrary (forged, replayed) records, store floods, and
// requests from a spoofed source address.
#ifndef DMOE_TESTS_HOSTILE_ROGUE_DHT_H_
#define DMOE_TESTS_HOSTILE_ROGUE_DHT_H_

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "dht/message.h"
#include "dht/node.h"
#include "dht/sim_network.h"

namespace dmoe::dht::hostile {

struct RogueBehaviour {
  // Keys the rogue censors (all keys when `censor_all`).
  std::set<std::string> censored_keys;
  bool censor_all = false;
  // For a censored key: answer FIND_VALUE with these contacts only (fellow rogues) instead of
  // records or honest nodes; when empty, do not answer at all.
  std::vector<WireContact> accomplices;
  // Records added to every VALUE answer the rogue gives (forged or replayed ones).
  std::vector<Record> injected_records;
  // Answer a challenge (a PING with "q") with this key in "s" and no valid proof.
  std::optional<PublicKey> claim_key;
};

class RogueDhtNode {
 public:
  // Adds the rogue at `at` (a chosen address, so tests can place rogues in few subnets).
  RogueDhtNode(SimNetwork& net, const Identity& identity, NodeOptions options, const Address& at,
               RogueBehaviour behaviour);

  size_t index() const { return index_; }
  Node& node() { return net_.node(index_); }
  const Address& address() const { return net_.address(index_); }
  RogueBehaviour& behaviour() { return behaviour_; }
  WireContact contact() { return WireContact{node().id(), address()}; }

  // Sends one request from the rogue's address, claiming `sender` as its key; returns its size.
  size_t SendAs(const Address& to, const PublicKey& sender, Message m);
  // A PING whose sender field is `victim`'s key.
  size_t SpoofPing(const Address& to, const PublicKey& victim) {
    Message m;
    m.type = MessageType::kPing;
    return SendAs(to, victim, m);
  }
  // A STORE of `record` as is (forged, replayed, or one of a flood).
  size_t Store(const Address& to, const Record& record);

  // Datagrams the rogue received that it answered itself or dropped.
  uint64_t censored() const { return censored_; }
  std::vector<Message> received;  // every decodable datagram addressed to the rogue

 private:
  void OnDatagram(const Address& from, std::span<const uint8_t> bytes);
  void Send(const Address& to, const Message& m);
  bool Censors(const std::string& key) const {
    return behaviour_.censor_all || behaviour_.censored_keys.count(key) != 0;
  }

  SimNetwork& net_;
  size_t index_;
  std::string network_;
  PublicKey key_{};
  RogueBehaviour behaviour_;
  uint64_t censored_ = 0;
  uint64_t txid_ = 0xa000'0000'0000'0000;
};

// An identity whose node id shares at least `bits` leading bits with `target` (ground from seeds
// derived from `salt`): what a Sybil attacker does to sit next to a key.
Identity GrindIdentityNear(const NodeId& target, int bits, uint64_t salt);

// Sends `m` from `from_index`'s address (the simulated network's model of a spoofed source: the
// datagram carries that address, whoever built it).
size_t SendFrom(SimNetwork& net, size_t from_index, const Address& to, const Message& m);

}  // namespace dmoe::dht::hostile

#endif  // DMOE_TESTS_HOSTILE_ROGUE_DHT_H_
