#include "dht/node_id.h"

#include <bit>

#include "core/hex.h"

namespace dmoe::dht {

NodeId Distance(const NodeId& a, const NodeId& b) {
  NodeId d;
  for (size_t i = 0; i < d.size(); ++i) d[i] = a[i] ^ b[i];
  return d;
}

bool Closer(const NodeId& target, const NodeId& a, const NodeId& b) {
  for (size_t i = 0; i < target.size(); ++i) {
    uint8_t da = a[i] ^ target[i];
    uint8_t db = b[i] ^ target[i];
    if (da != db) return da < db;
  }
  return false;
}

int CommonPrefixLength(const NodeId& a, const NodeId& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    uint8_t x = a[i] ^ b[i];
    if (x != 0) return static_cast<int>(i * 8) + std::countl_zero(x);
  }
  return 256;
}

NodeId RandomId(std::mt19937_64& rng) {
  NodeId id;
  for (size_t i = 0; i < id.size(); i += 8) {
    uint64_t r = rng();
    for (size_t j = 0; j < 8; ++j) id[i + j] = static_cast<uint8_t>(r >> (8 * j));
  }
  return id;
}

NodeId RandomIdWithPrefix(const NodeId& base, int cpl, std::mt19937_64& rng) {
  if (cpl >= 256) return base;
  NodeId id = RandomId(rng);
  int full = cpl / 8;
  for (int i = 0; i < full; ++i) id[i] = base[i];
  int rem = cpl % 8;
  // Bits [0, rem) of byte `full` come from base, bit `rem` is flipped, the rest stay random.
  uint8_t keep_mask = static_cast<uint8_t>(0xff00 >> rem);
  uint8_t flip_bit = static_cast<uint8_t>(0x80 >> rem);
  uint8_t b = static_cast<uint8_t>((base[full] & keep_mask) | (id[full] & ~keep_mask));
  b = static_cast<uint8_t>((b & ~flip_bit) | (~base[full] & flip_bit));
  id[full] = b;
  return id;
}

std::string ShortHex(const NodeId& id) { return HexEncode(std::span<const uint8_t>(id.data(), 4)); }

}  // namespace dmoe::dht
