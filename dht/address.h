// A numeric UDP address (IPv4 or IPv6 plus port), the one address type of the DHT core.
//
// The core and the simulated network never resolve names; the UDP runtime resolves host names once
// at the edge (bootstrap flags) and then works with these. On the wire an address is 6 bytes (IPv4)
// or 18 bytes (IPv6): the address bytes in network order followed by the port, big-endian.
#ifndef DMOE_DHT_ADDRESS_H_
#define DMOE_DHT_ADDRESS_H_

#include <array>
#include <compare>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/status.h"

namespace dmoe::dht {

struct Address {
  bool v6 = false;
  std::array<uint8_t, 16> ip{};  // IPv4 uses the first 4 bytes; the rest stay zero.
  uint16_t port = 0;

  static Address V4(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint16_t port);
  // "1.2.3.4:5" or "[::1]:5". Names are not resolved here: kInvalidArgument for anything else.
  static Result<Address> Parse(std::string_view text);
  // The wire form described above; kInvalidArgument for any other length.
  static Result<Address> FromWire(std::span<const uint8_t> bytes);

  std::string ToString() const;
  // Host part only ("1.2.3.4" or "::1"); used as the per-source rate-limit key.
  std::string HostString() const;
  std::string ToWire() const;
  // Loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local or unspecified: the
  // addresses exempt from the Sybil placement limits by default (a LAN or local swarm).
  bool IsLocalOrPrivate() const;
  // Whether both lie in one /24 (IPv4) or /64 (IPv6), the unit of the Sybil placement limits.
  bool SameSubnet(const Address& other) const;
  bool SameHost(const Address& other) const { return v6 == other.v6 && ip == other.ip; }

  friend auto operator<=>(const Address&, const Address&) = default;
  friend bool operator==(const Address&, const Address&) = default;
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_ADDRESS_H_
