// The DHT wire messages and their MessagePack codec (PROTOCOL section 6).
//
// One message per UDP datagram of at most kMaxDatagramBytes. A message is a MessagePack map with
// one-letter keys (nlohmann::json::to_msgpack):
//   "v" protocol version (1)   "n" network name   "t" type   "x" transaction id (u64, echoed)
//   "s" sender public key (bin 32)   "c" true when the sender is a short-lived client that must not
//   enter routing tables   "a" optional: the sender's announced address (bin 6|18, as in NODES),
//   when others must reach it at an address other than the one its datagrams come from (port
//   forwarding, a relay); nodes send it on requests, and a receiver acts on it only there
//   "q" true on a request: the answer must prove the sender key ("p")
//   "p" on an answer to "q": Ed25519 signature (bin 64) by "s" over ProofBytes (below)
//   "o" return-routability token (bin 16): on an answer, the token of the request's source address;
//       on a request, the token the receiver gave that address earlier
//   "z" padding (bin) on a request whose sender holds no token, so that its answer may be as large
// and per type:
//   PING / PONG            nothing more
//   FIND_NODE              "g" target id (bin 32)
//   NODES                  "N" [[id (bin 32), address (bin 6|18)], ...]
//   FIND_VALUE             "k" key, optional "u" cursor: only subkeys strictly after it are wanted;
//                          with "U" (bin 32) beside it, records strictly after (u, U) in
//                          (subkey, publisher) order
//   VALUE                  "k" key, and either "r" records [[subkey, value (bin), expiration_ms,
//                          publisher (bin 32), seq, signature (bin 64)], ...] sorted by (subkey,
//                          publisher), with "m" true when more follow (ask again with the last
//                          record's subkey and publisher as "u" and "U"), or "N" closer nodes when
//                          the node holds no record of the key
//   STORE                  "k" key, "r" one record
//   STORE_ACK / ERROR      "e" status code (core/status.h Code as an integer), "E" message
// Decoding never throws and never trusts a length: any deviation is kInvalidArgument with the
// reason.
#ifndef DMOE_DHT_MESSAGE_H_
#define DMOE_DHT_MESSAGE_H_

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "dht/address.h"
#include "dht/node_id.h"
#include "dht/record.h"

namespace dmoe::dht {

inline constexpr int kProtocolVersion = 1;
inline constexpr size_t kMaxDatagramBytes = 1400;
inline constexpr size_t kMaxNetworkNameBytes = 64;
inline constexpr std::string_view kProofDomain = "dmoe-dht-proof-v1";
inline constexpr size_t kTokenBytes = 16;
// A request carrying "a" is padded to at least this many bytes, so that the challenge PING it draws
// to the announced address (no larger than the request) has room for its own padding or token.
inline constexpr size_t kAnnouncingRequestBytes = 192;
using Token = std::array<uint8_t, kTokenBytes>;

enum class MessageType : uint8_t {
  kPing = 1,
  kPong = 2,
  kFindNode = 3,
  kNodes = 4,
  kFindValue = 5,
  kValue = 6,
  kStore = 7,
  kStoreAck = 8,
  kError = 9,
};

inline bool IsRequest(MessageType t) {
  return t == MessageType::kPing || t == MessageType::kFindNode || t == MessageType::kFindValue ||
         t == MessageType::kStore;
}

struct WireContact {
  NodeId id{};
  Address address;
  friend bool operator==(const WireContact&, const WireContact&) = default;
};

struct Message {
  int version = kProtocolVersion;
  MessageType type = MessageType::kPing;
  uint64_t txid = 0;
  std::string network;
  PublicKey sender{};
  bool client = false;
  std::optional<Address> announced;  // "a"
  bool prove = false;                // "q"
  std::optional<Signature> proof;    // "p"
  std::optional<Token> token;        // "o"
  size_t padding = 0;                // "z": that many zero bytes

  NodeId target{};                            // FIND_NODE
  std::string key;                            // FIND_VALUE, VALUE, STORE
  std::optional<std::string> cursor;          // FIND_VALUE "u"
  std::optional<PublicKey> cursor_publisher;  // FIND_VALUE "U", only with "u"
  std::vector<WireContact> nodes;             // NODES, VALUE without records
  std::vector<Record> records;                // VALUE, STORE (exactly one); key is copied from "k"
  bool more = false;                          // VALUE
  Code code = Code::kOk;                      // STORE_ACK, ERROR
  std::string error;                          // STORE_ACK, ERROR
};

// The bytes a proof signs: kProofDomain || u64 txid (big-endian) || the requester's public key
// (the request's "s"). The txid is the requester's fresh random challenge; the requester key keeps
// one answer from proving anything to another node.
std::string ProofBytes(uint64_t txid, const PublicKey& requester);

// kPayloadTooLarge when the encoding exceeds kMaxDatagramBytes.
Result<std::string> EncodeMessage(const Message& message);
// Encoded size without the datagram limit check (used to pack VALUE answers).
size_t EncodedSize(const Message& message);
// Bytes one record adds to the records array of a VALUE answer.
size_t EncodedRecordSize(const Record& record);
Result<Message> DecodeMessage(std::span<const uint8_t> bytes);

// A whole record (key included) as one MessagePack array, for persistence.
std::string EncodeRecordBlob(const Record& record);
Result<Record> DecodeRecordBlob(std::span<const uint8_t> bytes);

}  // namespace dmoe::dht

#endif  // DMOE_DHT_MESSAGE_H_
