#include "dht/address.h"

#include <algorithm>

#include <arpa/inet.h>

#include <cstring>
#include <string>

#include "core/host_port.h"

namespace dmoe::dht {

Address Address::V4(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint16_t port) {
  Address addr;
  addr.ip[0] = a;
  addr.ip[1] = b;
  addr.ip[2] = c;
  addr.ip[3] = d;
  addr.port = port;
  return addr;
}

Result<Address> Address::Parse(std::string_view text) {
  DMOE_ASSIGN_OR_RETURN(HostPort host_port, ParseHostPort(text));
  Address addr;
  addr.port = host_port.port;
  addr.v6 = host_port.host.find(':') != std::string::npos;
  if (inet_pton(addr.v6 ? AF_INET6 : AF_INET, host_port.host.c_str(), addr.ip.data()) != 1) {
    return InvalidArgumentError("address '" + std::string(text) +
                                "': not a numeric IP (names are not resolved here; "
                                "expected IP:PORT or [IPv6]:PORT)");
  }
  return addr;
}

Result<Address> Address::FromWire(std::span<const uint8_t> bytes) {
  Address addr;
  if (bytes.size() == 6) {
    std::memcpy(addr.ip.data(), bytes.data(), 4);
  } else if (bytes.size() == 18) {
    addr.v6 = true;
    std::memcpy(addr.ip.data(), bytes.data(), 16);
  } else {
    return InvalidArgumentError("wire address of " + std::to_string(bytes.size()) +
                                " bytes (expected 6 or 18)");
  }
  size_t n = bytes.size();
  addr.port = static_cast<uint16_t>((bytes[n - 2] << 8) | bytes[n - 1]);
  return addr;
}

std::string Address::HostString() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(v6 ? AF_INET6 : AF_INET, ip.data(), buf, sizeof(buf));
  return buf;
}

std::string Address::ToString() const {
  std::string host = HostString();
  if (v6) host = "[" + host + "]";
  return host + ":" + std::to_string(port);
}

std::string Address::ToWire() const {
  std::string out(reinterpret_cast<const char*>(ip.data()), v6 ? 16 : 4);
  out.push_back(static_cast<char>(port >> 8));
  out.push_back(static_cast<char>(port & 0xff));
  return out;
}

bool Address::IsLocalOrPrivate() const {
  if (!v6) {
    uint8_t a = ip[0], b = ip[1];
    return a == 127 || a == 10 || a == 0 || (a == 172 && (b & 0xf0) == 16) ||
           (a == 192 && b == 168) || (a == 169 && b == 254);
  }
  bool zero_to_15 = true;
  for (size_t i = 0; i < 15; ++i) zero_to_15 &= ip[i] == 0;
  if (zero_to_15 && (ip[15] == 0 || ip[15] == 1)) return true;  // :: and ::1
  return (ip[0] & 0xfe) == 0xfc || (ip[0] == 0xfe && (ip[1] & 0xc0) == 0x80);
}

bool Address::SameSubnet(const Address& other) const {
  if (v6 != other.v6) return false;
  size_t n = v6 ? 8 : 3;
  return std::equal(ip.begin(), ip.begin() + static_cast<std::ptrdiff_t>(n), other.ip.begin());
}

}  // namespace dmoe::dht
