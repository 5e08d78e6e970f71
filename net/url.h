// Parsing of the URLs net's clients accept: http://host[:port][/path][?query] and ws://... alike.
// No TLS, no user info, no fragments: dmoe endpoints are "http://h:p" (PROTOCOL section 6).
#ifndef DMOE_NET_URL_H_
#define DMOE_NET_URL_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace dmoe::net {

struct Url {
  std::string scheme;  // "http" or "ws", lowercase.
  std::string host;    // Without brackets for IPv6 literals.
  uint16_t port = 80;
  std::string target;  // Path plus query; "/" when the URL has no path.

  // "host:port" (brackets around IPv6), the pool key and the Host header.
  std::string HostPort() const;
};

// kInvalidArgument for anything but the forms above, with the offending URL in the message.
Result<Url> ParseUrl(std::string_view url);

// True for hosts only this machine can reach: "localhost", 127.0.0.0/8 and ::1. Servers use it to
// refuse unauthenticated training or publication on an address others can reach.
bool IsLoopbackHost(std::string_view host);

}  // namespace dmoe::net

#endif  // DMOE_NET_URL_H_
