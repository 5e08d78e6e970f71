// 256-bit Kademlia ids and the XOR metric.
//
// A node id is BLAKE2b-256 of the node's Ed25519 public key; a key id is BLAKE2b-256 of the key
// string (PROTOCOL section 6). Ids compare as big-endian 256-bit integers.
#ifndef DMOE_DHT_NODE_ID_H_
#define DMOE_DHT_NODE_ID_H_

#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include "core/identity.h"

namespace dmoe::dht {

using NodeId = Hash256;

inline NodeId NodeIdOf(const PublicKey& key) { return Blake2b256(std::span<const uint8_t>(key)); }
inline NodeId KeyIdOf(std::string_view key) { return Blake2b256(key); }

NodeId Distance(const NodeId& a, const NodeId& b);
// True when `a` is strictly closer to `target` than `b` under XOR.
bool Closer(const NodeId& target, const NodeId& a, const NodeId& b);
// Number of leading bits `a` and `b` share, 0..256.
int CommonPrefixLength(const NodeId& a, const NodeId& b);
// A uniformly random id whose common prefix with `base` is exactly `cpl` bits (cpl < 256), or
// `base` itself for cpl == 256.
NodeId RandomIdWithPrefix(const NodeId& base, int cpl, std::mt19937_64& rng);
NodeId RandomId(std::mt19937_64& rng);
// The first 8 hex digits, for logs.
std::string ShortHex(const NodeId& id);

}  // namespace dmoe::dht

#endif  // DMOE_DHT_NODE_ID_H_
