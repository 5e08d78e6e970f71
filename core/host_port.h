// HOST:PORT as written on command lines and in configuration: "10.0.0.5:7000", "[::1]:7000",
// "node3.example.org:7000". One parser for every flag that takes an address, so that each accepts
// and refuses the same texts with the same message.
#ifndef DMOE_CORE_HOST_PORT_H_
#define DMOE_CORE_HOST_PORT_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace dmoe {

struct HostPort {
  // An IPv4 literal, an IPv6 literal (without its brackets) or a host name. Names are not
  // resolved here.
  std::string host;
  uint16_t port = 0;

  // "host:port", with brackets around an IPv6 literal.
  std::string ToString() const;
};

enum class PortRule {
  kAnyPort,     // 0..65535: a listen address, where 0 picks a free port
  kNonZeroPort  // 1..65535: an address others connect to
};

// Parses HOST:PORT. An IPv6 literal must be bracketed ("[::1]:80"); a name may hold letters,
// digits, '-', '_' and '.'. kInvalidArgument naming the text and what is wrong with it.
Result<HostPort> ParseHostPort(std::string_view text, PortRule rule = PortRule::kAnyPort);

}  // namespace dmoe

#endif  // DMOE_CORE_HOST_PORT_H_
